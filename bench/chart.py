"""Helm chart benchmark: what checking charts/movierec offline costs, per value set.

    python bench/chart.py                # every value set, medians of 5 runs
    python bench/chart.py --repeat 9

Columns: objects rendered (and how many are custom resources), `helm install`'s offline part (values checked
against values.schema.json, then the templates rendered by Helm's Go SDK through helm-python-sdk), `helm lint
--strict`, and `kubernetes-validate --strict` of every built-in object for the oldest and the newest
Kubernetes the chart allows (schemas read once). Prints a Markdown table under machine, versions, date, git sha.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import header  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "movierec"
BUILTIN = {"", "apps", "batch", "autoscaling", "policy", "networking.k8s.io", "rbac.authorization.k8s.io"}


def value_sets() -> dict[str, dict]:
    cpu = yaml.safe_load((CHART / "values-cpu.yaml").read_text())
    kind = yaml.safe_load((CHART / "values-kind.yaml").read_text())
    off = {"worker": {"enabled": False}, "beat": {"enabled": False}, "flower": {"enabled": False},
           "operator": {"enabled": False}, "torchserve": {"enabled": False}, "qdrant": {"enabled": False},
           "networkPolicy": {"enabled": False}, "tests": {"enabled": False},
           "mongodb": {"enabled": False, "external": {"uri": "mongodb://mongo.example:27017/movierec"}},
           "redis": {"enabled": False, "external": {"host": "redis.example"}},
           "monitoring": {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False},
                          "dashboard": {"enabled": False}}}
    jobs = {"modelBootstrap": {"enabled": True},
            "training": {"singleNode": {"enabled": True}, "multiNode": {"enabled": True}}}
    return {"default (GPU)": {}, "values-cpu": cpu, "values-kind": merged(cpu, kind), "minimal (externals)": off,
            "jobs on": jobs}


def merged(base: dict, layer: dict) -> dict:
    """`-f base -f layer`: maps merge, everything else is replaced."""
    out = dict(base)
    for key, value in layer.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def median_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def row(name: str, values: dict, versions: tuple[str, str], repeat: int) -> str:
    import helm_python as helm
    import kubernetes_validate

    with helm.Chart.load(CHART) as chart:
        def render() -> list[dict]:
            chart.validate_schema(values)
            out = chart.render(values, name="bench", namespace="bench")
            return [d for path, text in out.items() if not path.endswith("NOTES.txt")
                    for d in yaml.load_all(text, Loader=yaml.CSafeLoader) if d]

        objects = render()
        render_ms = median_ms(render, repeat)
    lint_ms = median_ms(lambda: helm.lint(CHART, values, strict=True), repeat)
    builtin = [o for o in objects if o["apiVersion"].rpartition("/")[0] in BUILTIN]
    validate_ms = median_ms(lambda: [kubernetes_validate.validate(o, v, strict=True) for o in builtin for v in versions],
                            repeat)
    return f"| {name} | {len(objects)} ({len(objects) - len(builtin)}) | {render_ms:.0f} | {lint_ms:.0f} | {validate_ms:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per cell (after one warm-up)")
    args = parser.parse_args()

    import helm_python as helm
    import kubernetes_validate
    from kubernetes_validate import utils

    utils.schema_contents = functools.lru_cache(maxsize=None)(utils.schema_contents)
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    oldest = constraint.lstrip(">= ").split("-")[0]
    versions = (oldest, kubernetes_validate.latest_version())

    print(header())
    print(f"# helm-python-sdk {helm.__version__} (Helm {helm.helm_sdk_version()}), "
          f"kubernetes-validate {metadata.version('kubernetes-validate')} on Kubernetes {' and '.join(versions)}")
    print()
    print("| value set | objects (custom) | schema + render ms | lint ms | validate ms |")
    print("|---|---|---|---|---|")
    for name, values in value_sets().items():
        print(row(name, values, versions, args.repeat))
    print()
    print(json.dumps({"repeat": args.repeat, "kubernetes": versions}))


if __name__ == "__main__":
    main()
