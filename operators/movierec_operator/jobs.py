"""Pure functions from an IndexBuild to its build Job and from a finished Job back to the IndexBuild's status.

Nothing here talks to a cluster: `build_index_job` is a plain dict the handlers adopt and create, and
`job_outcome` reads a Job (and its pod's termination message) the way the handlers report it. The
build container runs `movierec index build ... --result-file /dev/termination-log`, so the result
(version, recall, seconds) comes back in the pod's `terminationMessage`, never by parsing logs; on a
failure the CLI writes {"error": ...} there (or, if it died before writing, the kubelet falls back
to the log's last lines: `terminationMessagePolicy: FallbackToLogsOnError`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

GROUP, VERSION, PLURAL = "movierec.io", "v1alpha1", "indexbuilds"
HOME = "/var/lib/movierec"  # MOVIEREC_HOME of the image
MODEL_MOUNT, INDEX_MOUNT = f"{HOME}/model", f"{HOME}/index"
RESULT_FILE = "/dev/termination-log"
CONTAINER = "build"
# exit status of `movierec index build` for an error a retry cannot fix (bad artifact, checksum, recall)
PERMANENT_EXIT = 2

LABEL_BUILD = "movierec.io/indexbuild"
LABEL_GENERATION = "movierec.io/generation"
LABEL_TARGET = "movierec.io/target"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "movierec-operator"

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class JobDefaults:
    """What the operator's deployment decides for every build: image and the claims to mount."""

    image: str
    model_claim: str
    index_claim: str
    qdrant_host: str | None = None
    qdrant_port: int = 6333


def dns_name(name: str, suffix: str = "", limit: int = 63) -> str:
    """`name + suffix` within `limit` characters; a longer name is cut and a hash of it keeps it unique."""
    if len(name) + len(suffix) <= limit:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - len(suffix) - 9].rstrip('-.')}-{digest}{suffix}"


def job_name(build_name: str, generation: int) -> str:
    """The one Job of an IndexBuild's generation: deterministic, so creating it twice is a conflict, not a copy."""
    return dns_name(build_name, f"-g{generation}")


def target_of(spec: Mapping[str, Any]) -> str:
    return str((spec.get("index") or {}).get("target") or "faiss")


def model_location(spec: Mapping[str, Any], defaults: JobDefaults) -> tuple[str, str]:
    """(claim to mount, model folder inside the container) from spec.model.path or spec.model.uri."""
    model = spec.get("model") or {}
    uri = model.get("uri")
    if uri:
        if not uri.startswith("pvc://"):
            raise ValueError(f"spec.model.uri: expected pvc://CLAIM/PATH, got {uri!r}")
        claim, _, sub = uri.removeprefix("pvc://").partition("/")
        return claim, f"{MODEL_MOUNT}/{sub.strip('/')}".rstrip("/")
    path = str(model.get("path") or ".").strip("/")
    if ".." in path.split("/"):
        raise ValueError(f"spec.model.path: must stay inside the model volume, got {path!r}")
    return defaults.model_claim, MODEL_MOUNT if path in ("", ".") else f"{MODEL_MOUNT}/{path}"


def build_args(spec: Mapping[str, Any], model_dir: str) -> list[str]:
    """Arguments of `movierec index build` (the image's ENTRYPOINT is `movierec`) for the spec."""
    index = spec.get("index") or {}
    kind = index.get("kind", "flat")
    args = ["index", "build", "--model", model_dir, "--out", f"{INDEX_MOUNT}/{target_of(spec)}", "--kind", kind,
            "--min-recall", str(spec.get("minRecall", 0.9)), "--result-file", RESULT_FILE]
    if kind == "ivf":
        if index.get("nlist"):
            args += ["--ivf-lists", str(index["nlist"])]
        args += ["--ivf-probe", str(index.get("nprobe", 32))]
    elif kind == "hnsw":
        args += ["--hnsw-m", str(index.get("M", 32)), "--hnsw-ef-construction", str(index.get("efConstruction", 64)),
                 "--hnsw-ef-search", str(index.get("efSearch", 128))]
    if sha256 := (spec.get("model") or {}).get("sha256"):
        args += ["--expected-sha256", sha256]
    if (spec.get("qdrant") or {}).get("sync"):
        args.append("--qdrant-sync")
    if not spec.get("publish", True):
        args.append("--no-publish")
    return args


def build_index_job(name: str, generation: int, spec: Mapping[str, Any], defaults: JobDefaults) -> dict[str, Any]:
    """The batch/v1 Job that builds generation `generation` of IndexBuild `name` (owner reference added by adopt)."""
    model_claim, model_dir = model_location(spec, defaults)
    labels = {
        "app.kubernetes.io/name": "movierec",
        "app.kubernetes.io/component": "index-build",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_BUILD: dns_name(name),
        LABEL_GENERATION: str(generation),
        LABEL_TARGET: target_of(spec),
    }
    env = [{"name": "MOVIEREC_HOME", "value": HOME}]
    if (spec.get("qdrant") or {}).get("sync") and defaults.qdrant_host:
        env += [{"name": "QDRANT_HOST", "value": defaults.qdrant_host},
                {"name": "QDRANT_PORT", "value": str(defaults.qdrant_port)}]
    container = {
        "name": CONTAINER,
        "image": spec.get("image") or defaults.image,
        "args": build_args(spec, model_dir),
        "env": env,
        "resources": dict(spec.get("resources") or {}),
        "volumeMounts": [
            {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True},
            {"name": "index", "mountPath": INDEX_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePath": RESULT_FILE,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [
            {"name": "model", "persistentVolumeClaim": {"claimName": model_claim, "readOnly": True}},
            {"name": "index", "persistentVolumeClaim": {"claimName": defaults.index_claim}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if spec.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(spec["nodeSelector"])
    if spec.get("tolerations"):
        pod_spec["tolerations"] = [dict(t) for t in spec["tolerations"]]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(name, generation), "labels": labels,
                     "annotations": {"movierec.io/indexbuild-name": name}},
        "spec": {
            "backoffLimit": spec.get("backoffLimit", 2),
            "activeDeadlineSeconds": spec.get("activeDeadlineSeconds", 3600),
            "ttlSecondsAfterFinished": spec.get("ttlSecondsAfterFinished", 86400),
            # an error the CLI reports as permanent (exit 2) fails the Job at once; a crash or eviction is retried
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                      "values": [PERMANENT_EXIT]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


# -- from the Job back to the IndexBuild --


@dataclass
class Outcome:
    """What a Job says about its build: the phase, and the result or the reason once it is known."""

    phase: Phase
    message: str
    failed_attempts: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def job_finished(job: Mapping[str, Any]) -> Literal["Complete", "Failed"] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"]
    return None


def read_result(message: str | None) -> dict[str, Any]:
    """The build's result from a termination message: the JSON the CLI wrote, else {"error": its last line}."""
    text = (message or "").strip()
    if not text:
        return {}
    try:
        result = json.loads(text)
    except json.JSONDecodeError:
        return {"error": text.splitlines()[-1][:1000]}
    return result if isinstance(result, dict) else {"error": text[:1000]}


def termination_message(pods: list[Mapping[str, Any]]) -> str | None:
    """The build container's termination message of the pod that ended last (pods of one Job)."""
    ended: list[tuple[str, str]] = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if status.get("name") == CONTAINER and terminated:
                ended.append((terminated.get("finishedAt") or "", terminated.get("message") or ""))
    return max(ended)[1] if ended else None


def job_outcome(job: Mapping[str, Any], message: str | None) -> Outcome:
    """The IndexBuild's phase from its Job, with the result or failure reason read from `message`."""
    status = job.get("status") or {}
    failed = int(status.get("failed") or 0)
    result = read_result(message)
    finished = job_finished(job)
    if finished == "Complete":
        version = result.get("version", "?")
        if result.get("published"):
            text = f"index {version} built and published (recall@10 {_recall(result)})"
        else:
            text = f"index {version} built, not published (recall@10 {_recall(result)}; publish is false)"
        return Outcome("Succeeded", text, failed, result, "Built")
    if finished == "Failed":
        condition = next(c for c in status.get("conditions") or [] if c.get("type") == "Failed")
        reason = result.get("error") or condition.get("message") or condition.get("reason") or "the Job failed"
        return Outcome("Failed", f"{condition.get('reason') or 'Failed'}: {reason}", failed, result,
                       condition.get("reason") or "Failed")
    if failed:
        backoff = (job.get("spec") or {}).get("backoffLimit", 0)
        why = result.get("error") or "the build pod failed"
        return Outcome("Running", f"attempt {failed} of {backoff + 1} failed ({why}); retrying", failed, result,
                       "Retrying")
    return Outcome("Running", f"building in Job {job['metadata']['name']}", 0, {}, "JobRunning")


def _recall(result: Mapping[str, Any]) -> str:
    recall = result.get("recall_at_10")
    return "n/a" if recall is None else f"{recall:.4f}"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]], type_: str, status: str, reason: str, message: str, generation: int
) -> list[dict[str, Any]]:
    """Kubernetes-style conditions: one per type; lastTransitionTime changes only when the status does."""
    old = next((c for c in conditions if c.get("type") == type_), None)
    changed = old is None or old.get("status") != status
    new = {"type": type_, "status": status, "reason": reason, "message": message[:1000],
           "lastTransitionTime": now() if changed or old is None else old.get("lastTransitionTime", now()),
           "observedGeneration": generation}
    return [c for c in conditions if c.get("type") != type_] + [new]


def outcome_status(outcome: Outcome, job_name_: str, generation: int,
                   conditions: list[dict[str, Any]]) -> dict[str, Any]:
    """The IndexBuild status patch for a Job's outcome."""
    built = {"Succeeded": "True", "Failed": "False"}.get(outcome.phase, "Unknown")
    status: dict[str, Any] = {
        "phase": outcome.phase, "message": outcome.message[:1000], "observedGeneration": generation,
        "jobName": job_name_, "attempts": outcome.failed_attempts + (outcome.phase == "Succeeded"),
        "conditions": set_condition(conditions, "Built", built, outcome.reason, outcome.message, generation),
    }
    if outcome.phase in ("Succeeded", "Failed"):
        status["completionTime"] = now()
    result = outcome.result
    for key, name in (("version", "indexVersion"), ("path", "indexPath"), ("build_seconds", "buildSeconds"),
                      ("recall_at_10", "recallAt10"), ("published", "published")):
        if result.get(key) is not None:
            status[name] = result[key]
    if outcome.phase == "Succeeded":
        published = "True" if result.get("published") else "False"
        why = "Published" if result.get("published") else "NotPublished"
        status["conditions"] = set_condition(status["conditions"], "Published", published, why, outcome.message,
                                             generation)
    return status
