"""Kopf handlers: an IndexBuild's generation → one build Job; the Job's progress → the IndexBuild's status.

    create / resume / spec change   ensure_build: supersede older Jobs, wait while another build holds
                                    the target (Pending), else create this generation's Job (adopted)
    Job added / modified            follow_job: phase, attempts, result (version, recall, seconds) or
                                    failure reason into .status, with an Event at each transition

Handlers are sync (Kopf runs them in its thread pool) and call the official kubernetes client. They
are idempotent: the Job's name is fixed by the IndexBuild's name and generation, so a re-run (a retry,
an operator restart) finds the Job instead of creating a second one, and a finished generation is
never built again. Deleting an IndexBuild deletes its Job through the owner reference.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any, cast

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

from movierec.settings import Settings
from movierec_operator import jobs

log = logging.getLogger(__name__)
RESOURCE = (jobs.GROUP, jobs.VERSION, jobs.PLURAL)
_target_lock = threading.Lock()  # one check-then-create at a time, so two builds never both take a target


class Clients:
    """The kubernetes API clients, made once the configuration is loaded (startup)."""

    def __init__(self) -> None:
        self.batch = kubernetes.client.BatchV1Api()
        self.core = kubernetes.client.CoreV1Api()
        self.custom = kubernetes.client.CustomObjectsApi()


_state: dict[str, Any] = {}


def clients() -> Clients:
    if "clients" not in _state:
        _state["clients"] = Clients()
    return cast(Clients, _state["clients"])


def settings() -> Settings:
    if "settings" not in _state:
        _state["settings"] = Settings()
    return cast(Settings, _state["settings"])


def job_defaults() -> jobs.JobDefaults:
    s = settings()
    return jobs.JobDefaults(image=s.operator_image, model_claim=s.operator_model_claim,
                            index_claim=s.operator_index_claim, qdrant_host=s.qdrant_host, qdrant_port=s.qdrant_port)


def load_kube_config() -> None:
    """In a pod: its service account; elsewhere: KUBECONFIG or ~/.kube/config (as kubectl)."""
    _state.clear()  # settings and clients are made anew for the configuration loaded here
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubeconfig = settings().kubeconfig
        kubernetes.config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Kopf's own connection: the pod's service account, else the kubeconfig (read when the operator starts)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep Kopf's bookkeeping in annotations (the structural status schema would prune status.kopf)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="movierec.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="movierec.io")
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300  # the API server ends a watch after this; Kopf reconnects
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    load_kube_config()


@kopf.on.probe(id="api")
def api_reachable(**_: Any) -> str:
    """Part of /healthz: IndexBuilds can be listed (API server up, CRD installed, rights granted), else it fails."""
    namespace = settings().operator_namespace
    if namespace:
        clients().custom.list_namespaced_custom_object(*RESOURCE[:2], namespace, RESOURCE[2], limit=1)
    else:
        clients().custom.list_cluster_custom_object(*RESOURCE, limit=1)
    return "ok"


def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """A Kubernetes Event on the IndexBuild (`kubectl describe ib` shows it), and the same line in the log."""
    meta = body.get("metadata") or {}
    log.info("%s/%s: %s %s: %s", meta.get("namespace"), meta.get("name"), type_, reason, message)
    with contextlib.suppress(LookupError):  # outside a running operator (a handler called directly): the log only
        kopf.event(cast(kopf.Body, body), type=type_, reason=reason, message=message)


def generation_of(meta: Mapping[str, Any]) -> int:
    return int(meta.get("generation") or 1)


def build_jobs(namespace: str) -> list[dict[str, Any]]:
    """The operator's Jobs in a namespace, as plain dicts (the raw JSON: no model classes to build and undo)."""
    selector = f"{jobs.LABEL_MANAGED_BY}={jobs.MANAGED_BY}"
    response: Any = clients().batch.list_namespaced_job(namespace, label_selector=selector, _preload_content=False)
    items: list[dict[str, Any]] = json.loads(response.data)["items"]
    return [job for job in items if job["metadata"].get("labels", {}).get(jobs.LABEL_MANAGED_BY) == jobs.MANAGED_BY]


def owned_by(job: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in job["metadata"].get("ownerReferences") or [])


def active_builds(found: list[dict[str, Any]], target: str, except_uid: str) -> list[dict[str, Any]]:
    """Unfinished Jobs of other IndexBuilds writing the same target index."""
    return [job for job in found
            if job["metadata"].get("labels", {}).get(jobs.LABEL_TARGET) == target and not owned_by(job, except_uid)
            and jobs.job_finished(job) is None and not job["metadata"].get("deletionTimestamp")]


def patch_status(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    clients().custom.patch_namespaced_custom_object_status(*RESOURCE[:2], namespace, RESOURCE[2], name,
                                                           {"status": dict(status)})


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
def ensure_build(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, name: str,
                 namespace: str | None, uid: str, **_: Any) -> None:
    """This generation's build Job exists (or has finished), older generations' Jobs are gone."""
    assert namespace, "IndexBuild is namespaced"
    generation = generation_of(meta)
    wanted = jobs.job_name(name, generation)
    conditions = list(status.get("conditions") or [])
    try:
        job = jobs.build_index_job(name, generation, spec, job_defaults())
    except ValueError as exc:  # a spec the schema admits but no Job can run
        patch_status(namespace, name, {"phase": "Failed", "message": str(exc), "observedGeneration": generation,
                                       "conditions": jobs.set_condition(conditions, "Built", "False", "InvalidSpec",
                                                                        str(exc), generation)})
        raise kopf.PermanentError(str(exc)) from None

    target = jobs.target_of(spec)
    with _target_lock:
        found = build_jobs(namespace)
        for old in found:
            if owned_by(old, uid) and old["metadata"]["name"] != wanted:
                delete_job(namespace, old["metadata"]["name"])
                post_event(body, "Normal", "Superseded",
                           f"generation {generation} replaces Job {old['metadata']['name']}")
                old["metadata"]["deletionTimestamp"] = jobs.now()
        if status.get("observedGeneration") == generation and status.get("phase") in ("Succeeded", "Failed"):
            log.info("%s/%s: generation %d already %s", namespace, name, generation, status["phase"])
            return
        if any(job["metadata"]["name"] == wanted and owned_by(job, uid) for job in found):
            log.info("%s/%s: Job %s exists, following it", namespace, name, wanted)
            return
        busy = active_builds(found, target, except_uid=uid)
        if busy:
            message = f"waiting: Job {busy[0]['metadata']['name']} is building target {target!r}"
            if status.get("message") != message:
                patch_status(namespace, name, {"phase": "Pending", "message": message, "observedGeneration": generation,
                                               "conditions": jobs.set_condition(conditions, "Built", "Unknown",
                                                                                "Waiting", message, generation)})
            raise kopf.TemporaryError(message, delay=settings().operator_pending_seconds)
        message = f"building in Job {wanted}"
        patch_status(namespace, name, {
            "phase": "Running", "message": message, "observedGeneration": generation, "jobName": wanted,
            "startTime": jobs.now(), "completionTime": None, "indexVersion": None, "indexPath": None,
            "buildSeconds": None, "recallAt10": None, "published": None, "attempts": 0,
            "conditions": jobs.set_condition(conditions, "Built", "Unknown", "JobCreated", message, generation),
        })
        kopf.adopt(job, owner=body)
        try:
            clients().batch.create_namespaced_job(namespace, job)  # type: ignore[arg-type]  # a dict is accepted
        except ApiException as exc:
            if exc.status != 409:
                raise
            log.info("%s/%s: Job %s already exists, following it", namespace, name, wanted)
            return
    kind = (spec.get("index") or {}).get("kind", "flat")
    post_event(body, "Normal", "JobCreated", f"Job {wanted} builds a {kind} index into target {target!r}")


def delete_job(namespace: str, job: str) -> None:
    try:
        clients().batch.delete_namespaced_job(job, namespace, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise
    log.info("%s: deleted superseded Job %s", namespace, job)


@kopf.on.event("batch", "v1", "jobs", labels={jobs.LABEL_MANAGED_BY: jobs.MANAGED_BY})
def follow_job(body: kopf.Body, name: str, namespace: str | None, type: str | None, **_: Any) -> None:
    """A build Job changed: report its phase (and once it ends, its result or reason) on the IndexBuild."""
    assert namespace, "Jobs are namespaced"
    if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        return
    owner = next((ref for ref in body["metadata"].get("ownerReferences") or []
                  if ref.get("kind") == "IndexBuild"), None)
    if owner is None:
        return
    try:
        build = cast(kopf.Body, clients().custom.get_namespaced_custom_object(
            *RESOURCE[:2], namespace, RESOURCE[2], owner["name"]))
    except ApiException as exc:
        if exc.status == 404:
            return  # the IndexBuild is gone; the garbage collector takes the Job
        raise
    generation = int(body["metadata"].get("labels", {}).get(jobs.LABEL_GENERATION) or 0)
    status = build.get("status") or {}
    if build["metadata"].get("uid") != owner.get("uid") or generation != generation_of(build["metadata"]):
        return  # a Job of an older generation or of a deleted namesake
    if status.get("observedGeneration") == generation and status.get("phase") in ("Succeeded", "Failed"):
        return  # already reported
    job_status = body.get("status") or {}
    needs_message = jobs.job_finished(body) or int(job_status.get("failed") or 0) > int(status.get("attempts") or 0)
    message = termination_message(namespace, name) if needs_message else None
    outcome = jobs.job_outcome(body, message)
    if outcome.phase == status.get("phase") and outcome.message == status.get("message"):
        return
    patch_status(namespace, owner["name"], jobs.outcome_status(outcome, name, generation,
                                                                list(status.get("conditions") or [])))
    if outcome.phase == "Failed":
        post_event(build, "Warning", "BuildFailed", outcome.message)
    elif outcome.phase == "Succeeded":
        post_event(build, "Normal", "Published" if outcome.result.get("published") else "Built", outcome.message)
    elif outcome.failed_attempts:
        post_event(build, "Warning", "BuildRetrying", outcome.message)
    else:
        log.info("%s/%s: %s: %s", namespace, owner["name"], outcome.phase, outcome.message)


def termination_message(namespace: str, job: str) -> str | None:
    """The build container's termination message: the CLI's --result-file JSON, or the log's last lines."""
    response: Any = clients().core.list_namespaced_pod(namespace, label_selector=f"job-name={job}",
                                                  _preload_content=False)
    found: list[dict[str, Any]] = json.loads(response.data)["items"]
    return jobs.termination_message([pod for pod in found
                                     if (pod.get("metadata") or {}).get("labels", {}).get("job-name") == job])
