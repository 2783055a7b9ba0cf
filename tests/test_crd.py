"""The IndexBuild CRD: structural, its defaults valid, the examples accepted and bad specs rejected.

The API server validates custom resources against the CRD's openAPIV3Schema after applying its
defaults, and `kubectl apply` asks it to reject unknown fields (server-side field validation
Strict). These tests do the same with jsonschema, so a bad spec is known to be refused by the API
server, never left for the operator to find. The chart ships a copy of the CRD: it must not drift.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CRD_PATH = REPO / "manifests" / "crds" / "indexbuilds.movierec.io.yaml"
CHART_CRD_PATH = REPO / "charts" / "movierec" / "crds" / "indexbuilds.movierec.io.yaml"
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("indexbuild-*.yaml"))
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def to_json_schema(node: Any, strict: bool = True) -> Any:
    """OpenAPI v3 (Kubernetes dialect) → JSON Schema; strict: unknown fields are errors (kubectl's default)."""
    if isinstance(node, list):
        return [to_json_schema(item, strict) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_json_schema(value, strict) for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if strict and "properties" in node and "additionalProperties" not in node and not node.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: absent fields get their default, recursively."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in set(value) - set(schema.get("properties", {})):
                value[name] = apply_defaults(extra, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def admit(resource: dict[str, Any]) -> dict[str, Any]:
    """What the API server stores for `resource`: defaults applied, then validated (raises ValidationError)."""
    schema = schema_of(load_crd())
    stored = apply_defaults(schema, copy.deepcopy(resource))
    jsonschema.Draft7Validator(to_json_schema(schema)).validate(stored)
    return stored


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any], bool]]:
    """Every schema node with its path; the flag says whether it sits under a junctor (allOf, not, ...)."""
    found = [(path, node, False)]
    for name, sub in node.get("properties", {}).items():
        found += walk(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found += walk(node[key], f"{path}[{key}]")
    for junctor in JUNCTORS:
        subs = node.get(junctor)
        for i, sub in enumerate(subs if isinstance(subs, list) else [subs] if subs else []):
            found += [(p, n, True) for p, n, _ in walk(sub, f"{path}<{junctor}{i}>")]
    return found


def test_chart_ships_an_identical_copy() -> None:
    assert CHART_CRD_PATH.read_bytes() == CRD_PATH.read_bytes(), (
        f"cp {CRD_PATH.relative_to(REPO)} {CHART_CRD_PATH.relative_to(REPO)}")


def test_names_scope_and_status_subresource() -> None:
    crd = load_crd()
    assert crd["metadata"]["name"] == "indexbuilds.movierec.io"
    assert (crd["spec"]["group"], crd["spec"]["scope"]) == ("movierec.io", "Namespaced")
    assert crd["spec"]["names"]["kind"] == "IndexBuild"
    assert crd["spec"]["names"]["shortNames"] == ["ib"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_schema_is_structural() -> None:
    """Every field typed (or int-or-string); junctors carry no type, default, description or additionalProperties."""
    for path, node, in_junctor in walk(schema_of(load_crd())):
        if in_junctor:
            banned = {"type", "default", "description", "additionalProperties", "nullable"} & set(node)
            assert not banned, f"{path}: {sorted(banned)} inside a junctor"
        else:
            assert node.get("type") or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
            if node.get("type") == "array":
                assert isinstance(node.get("items"), dict), f"{path}: an array needs typed items"


def test_defaults_are_valid_for_their_field() -> None:
    schema = schema_of(load_crd())
    defaulted = [(path, node) for path, node, _ in walk(schema) if "default" in node]
    assert len(defaulted) >= 10
    for path, node in defaulted:
        value = apply_defaults(node, copy.deepcopy(node["default"]))
        errors = list(jsonschema.Draft7Validator(to_json_schema(node)).iter_errors(value))
        assert not errors, f"{path}: default {node['default']!r}: {errors[0].message}"


def test_printer_columns_point_at_schema_fields() -> None:
    (version,) = load_crd()["spec"]["versions"]
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert list(columns)[:5] == ["Phase", "Kind", "Version", "Recall@10", "Age"]
    paths = {path for path, _, _ in walk(version["schema"]["openAPIV3Schema"])}
    for name, json_path in columns.items():
        assert json_path in paths or json_path == ".metadata.creationTimestamp", f"column {name}: {json_path}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_admitted(path: Path) -> None:
    resource = yaml.safe_load(path.read_text())
    assert (resource["apiVersion"], resource["kind"]) == ("movierec.io/v1alpha1", "IndexBuild")
    stored = admit(resource)
    assert stored["spec"]["index"]["kind"] in ("flat", "hnsw")
    assert stored["spec"]["index"]["target"] == "faiss"  # a default filled in


def test_a_minimal_spec_gets_every_default() -> None:
    stored = admit({"apiVersion": "movierec.io/v1alpha1", "kind": "IndexBuild", "metadata": {"name": "m"},
                    "spec": {"model": {}}})
    spec = stored["spec"]
    assert spec["index"] == {"kind": "flat", "target": "faiss", "nprobe": 32, "M": 32, "efConstruction": 64,
                             "efSearch": 128}
    assert spec["qdrant"] == {"sync": False}
    assert (spec["publish"], spec["minRecall"], spec["backoffLimit"]) == (True, 0.9, 2)
    assert spec["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert "image" not in spec  # the operator's default image


BAD_SPECS = {
    "unknown index kind": {"model": {}, "index": {"kind": "annoy"}},
    "minRecall above 1": {"model": {}, "minRecall": 1.5},
    "negative backoffLimit": {"model": {}, "backoffLimit": -1},
    "backoffLimit too high": {"model": {}, "backoffLimit": 100},
    "HNSW M too small": {"model": {}, "index": {"kind": "hnsw", "M": 2}},
    "nlist zero": {"model": {}, "index": {"kind": "ivf", "nlist": 0}},
    "both path and uri": {"model": {"path": "a", "uri": "pvc://models/a"}},
    "uri of another scheme": {"model": {"uri": "http://example.invalid/model"}},
    "path escaping the volume": {"model": {"path": "../etc"}},
    "absolute path": {"model": {"path": "/etc"}},
    "sha256 not hex": {"model": {"sha256": "xyz"}},
    "no model": {"index": {"kind": "flat"}},
    "unknown field": {"model": {}, "replicas": 3},
    "unknown index field": {"model": {}, "index": {"kind": "flat", "nlists": 3}},
    "bad target name": {"model": {}, "index": {"target": "Bad_Name"}},
    "toleration operator": {"model": {}, "tolerations": [{"key": "gpu", "operator": "Maybe"}]},
    "resource quantity": {"model": {}, "resources": {"requests": {"cpu": "lots"}}},
    "nodeSelector value not a string": {"model": {}, "nodeSelector": {"disk": 1}},
    "publish not a boolean": {"model": {}, "publish": "yes"},
}


@pytest.mark.parametrize("spec", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_bad_specs_are_rejected(spec: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        admit({"apiVersion": "movierec.io/v1alpha1", "kind": "IndexBuild", "metadata": {"name": "bad"}, "spec": spec})


def test_bad_status_is_rejected() -> None:
    resource = {"apiVersion": "movierec.io/v1alpha1", "kind": "IndexBuild", "metadata": {"name": "s"},
                "spec": {"model": {}}, "status": {"phase": "Done"}}
    with pytest.raises(jsonschema.ValidationError):
        admit(resource)
    resource["status"] = {"phase": "Succeeded", "recallAt10": 0.97, "indexVersion": "v", "conditions": [
        {"type": "Built", "status": "True", "reason": "Succeeded", "observedGeneration": 1}]}
    assert admit(resource)["status"]["phase"] == "Succeeded"


@pytest.mark.parametrize("version", ["1.29.0", "latest"])
def test_crd_passes_the_kubernetes_schema(version: str) -> None:
    import kubernetes_validate

    version = kubernetes_validate.latest_version() if version == "latest" else version
    kubernetes_validate.validate(load_crd(), version, strict=True)
