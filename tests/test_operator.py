"""The IndexBuild operator: Job construction (pure functions), then the real operator against an emulated API server.

There is no cluster here. The end-to-end tests run the operator (`kopf.operator`, the same handlers
`movierec-operator` runs) against kmock's Kubernetes emulator on a loopback port, configured with
the resources of our CRD and Kubernetes' built-in ones. The emulator stores objects and streams watch
events, but has no controllers: the tests play the parts of the API server (uid, generation), the
Job controller (pods, Job status) and the garbage collector (owner references) themselves.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf
import pytest
import pytest_asyncio
import typer
import yaml
from typer.testing import CliRunner

from movierec.cli.index import index_app
from movierec.index.versions import build_from_model
from movierec_operator import handlers, jobs

pytestmark = pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")  # kmock 0.8
REPO = Path(__file__).resolve().parents[1]
CRD = yaml.safe_load((REPO / "manifests" / "crds" / "indexbuilds.movierec.io.yaml").read_text())
NS = "movierec"
TEST_AGENT = "movierec-tests"  # the test's own requests (playing Kubernetes' controllers), not the operator's
IB = kmock.resource("movierec.io", "v1alpha1", "indexbuilds")
JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
EVENTS = kmock.resource("", "v1", "events")
DEFAULTS = jobs.JobDefaults(image="registry.example/movierec:1.2", model_claim="models", index_claim="indexes",
                            qdrant_host="qdrant", qdrant_port=6333)
HNSW_SPEC: dict[str, Any] = {
    "model": {"path": "runs/ml-1m", "sha256": "ab" * 32},
    "index": {"kind": "hnsw", "target": "faiss", "M": 16, "efConstruction": 80, "efSearch": 96},
    "qdrant": {"sync": True}, "publish": True, "minRecall": 0.95,
    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    "nodeSelector": {"pool": "cpu"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}],
    "backoffLimit": 3, "ttlSecondsAfterFinished": 600, "activeDeadlineSeconds": 900,
}


# -- Job construction --


def test_job_runs_the_build_command_with_the_spec() -> None:
    job = jobs.build_index_job("nightly", 4, HNSW_SPEC, DEFAULTS)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["index", "build"]
    flags = [a for a in args if a.startswith("--")]
    assert "--qdrant-sync" in flags and "--no-publish" not in flags
    value = {flag: args[args.index(flag) + 1] for flag in flags if flag != "--qdrant-sync"}
    assert value["--model"] == "/var/lib/movierec/model/runs/ml-1m"
    assert value["--out"] == "/var/lib/movierec/index/faiss"
    assert (value["--kind"], value["--hnsw-m"], value["--hnsw-ef-construction"], value["--hnsw-ef-search"]) == (
        "hnsw", "16", "80", "96")
    assert value["--min-recall"] == "0.95" and value["--expected-sha256"] == "ab" * 32
    assert value["--result-file"] == container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["image"] == "registry.example/movierec:1.2"
    assert {"name": "QDRANT_HOST", "value": "qdrant"} in container["env"]


def test_job_name_is_deterministic_and_valid() -> None:
    assert jobs.job_name("nightly", 4) == jobs.job_name("nightly", 4) == "nightly-g4"
    assert jobs.job_name("nightly", 5) != jobs.job_name("nightly", 4)
    long_a, long_b = "a" * 80 + "x", "a" * 80 + "y"
    assert len(jobs.job_name(long_a, 12)) <= 63 and jobs.job_name(long_a, 12).endswith("-g12")
    assert jobs.job_name(long_a, 12) != jobs.job_name(long_b, 12)
    job = jobs.build_index_job(long_a, 1, {"model": {}}, DEFAULTS)
    assert all(len(value) <= 63 for value in job["metadata"]["labels"].values())


def test_job_mounts_volumes_and_places_the_pod() -> None:
    job = jobs.build_index_job("nightly", 1, HNSW_SPEC, DEFAULTS)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"model": {"claimName": "models", "readOnly": True}, "index": {"claimName": "indexes"}}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["model"]["readOnly"] and mounts["model"]["mountPath"] == "/var/lib/movierec/model"
    assert mounts["index"]["mountPath"] == "/var/lib/movierec/index" and not mounts["index"].get("readOnly")
    assert container["resources"] == HNSW_SPEC["resources"]
    assert pod["nodeSelector"] == {"pool": "cpu"} and pod["tolerations"] == HNSW_SPEC["tolerations"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"]
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["ttlSecondsAfterFinished"], spec["activeDeadlineSeconds"]) == (3, 600, 900)
    rule = spec["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [jobs.PERMANENT_EXIT]
    assert job["metadata"]["labels"][jobs.LABEL_TARGET] == "faiss"
    assert job["spec"]["template"]["metadata"]["labels"] == job["metadata"]["labels"]


def test_job_for_a_flat_build_on_another_claim_without_publishing() -> None:
    spec = {"model": {"uri": "pvc://experiments/run-7/"}, "index": {"kind": "flat", "target": "canary"},
            "publish": False}
    job = jobs.build_index_job("canary", 2, spec, DEFAULTS)
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--model") + 1] == "/var/lib/movierec/model/run-7"
    assert args[args.index("--out") + 1] == "/var/lib/movierec/index/canary"
    assert "--no-publish" in args and "--qdrant-sync" not in args and "--hnsw-m" not in args
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "experiments", "readOnly": True}} in pod["volumes"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert pod["containers"][0]["image"] == DEFAULTS.image


def test_job_refuses_a_path_out_of_the_volume() -> None:
    with pytest.raises(ValueError, match="spec.model.path"):
        jobs.build_index_job("x", 1, {"model": {"path": "a/../../etc"}}, DEFAULTS)


def test_adopt_sets_the_owner_reference() -> None:
    owner = kopf.Body({"apiVersion": "movierec.io/v1alpha1", "kind": "IndexBuild",
                       "metadata": {"name": "nightly", "namespace": NS, "uid": "u-1"}})
    job = jobs.build_index_job("nightly", 1, {"model": {}}, DEFAULTS)
    kopf.adopt(job, owner=owner)
    (ref,) = job["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"], ref["blockOwnerDeletion"]) == (
        "IndexBuild", "nightly", "u-1", True, True)
    assert job["metadata"]["namespace"] == NS


def test_outcome_of_a_job() -> None:
    job = jobs.build_index_job("b", 1, {"model": {}, "backoffLimit": 2}, DEFAULTS)
    assert jobs.job_outcome(job, None).phase == "Running"
    job["status"] = {"failed": 1, "active": 1}
    retrying = jobs.job_outcome(job, '{"error": "model.pt: checksum mismatch"}')
    assert retrying.phase == "Running" and "attempt 1 of 3 failed (model.pt: checksum mismatch)" in retrying.message
    job["status"] = {"failed": 3, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                  "message": "Job has reached the specified backoff limit"}]}
    failed = jobs.job_outcome(job, "Traceback ...\nMemoryError: out of memory")
    assert failed.phase == "Failed" and failed.message == "BackoffLimitExceeded: MemoryError: out of memory"
    job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    done = jobs.job_outcome(job, json.dumps({"version": "v9", "recall_at_10": 0.987, "published": True}))
    assert done.phase == "Succeeded" and done.result["version"] == "v9" and "0.9870" in done.message


# -- the operator against the emulated API server --


class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus what the API server does on a write that the operator relies on.

    It names objects created with generateName (Kopf's Events), stamps uid, creationTimestamp and
    generation on creation, and increments the generation when a patch changes the spec.
    """

    async def _handle(self, request: Any) -> Any:
        data, resource = request.data, request.resource
        if isinstance(data, dict) and resource is not None and request.method == kmock.method.POST:
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", jobs.now())
            meta.setdefault("generation", 1)
        elif (isinstance(data, dict) and "spec" in data and request.method == kmock.method.PATCH
              and request.name and not request.subresource):
            stored = self.objects[resource, request.namespace, request.name]
            data.setdefault("metadata", {})["generation"] = stored["metadata"].get("generation", 1) + 1
        return await super()._handle(request)


def resource_info() -> kmock.ResourceInfo:
    names = CRD["spec"]["names"]
    (version,) = CRD["spec"]["versions"]
    return kmock.ResourceInfo(kind=names["kind"], singular=names["singular"], namespaced=CRD["spec"]["scope"] == "Namespaced",
                              shortnames=names["shortNames"], categories=names.get("categories", []),
                              subresources=set(version.get("subresources", {})),
                              verbs={"create", "delete", "get", "list", "patch", "update", "watch"})


class Cluster:
    """The test's side of the emulated API server, doing what Kubernetes' own controllers would."""

    def __init__(self, server: kmock.KubernetesEmulator, session: aiohttp.ClientSession) -> None:
        self.server, self.session = server, session

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.session.request(method, path, json=body, headers=headers) as response:
            assert response.status < 300, f"{method} {path}: {response.status} {await response.text()}"
            return await response.json()

    # the API server
    async def create_build(self, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": "movierec.io/v1alpha1", "kind": "IndexBuild",
                "metadata": {"name": name, "namespace": NS}, "spec": spec}
        await self.request("POST", f"/apis/movierec.io/v1alpha1/namespaces/{NS}/indexbuilds", body)

    async def change_spec(self, name: str, spec: dict[str, Any]) -> None:
        await self.request("PATCH", f"/apis/movierec.io/v1alpha1/namespaces/{NS}/indexbuilds/{name}", {"spec": spec})

    async def delete_build(self, name: str) -> None:
        await self.request("DELETE", f"/apis/movierec.io/v1alpha1/namespaces/{NS}/indexbuilds/{name}")

    # the Job controller
    async def end_pod(self, job: str, attempt: int, exit_code: int, message: str) -> None:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{job}-{attempt}", "namespace": NS, "labels": {"job-name": job}},
               "spec": {"containers": [{"name": jobs.CONTAINER, "image": DEFAULTS.image}]},
               "status": {"phase": "Failed" if exit_code else "Succeeded", "containerStatuses": [{
                   "name": jobs.CONTAINER, "image": DEFAULTS.image, "imageID": "", "ready": False,
                   "restartCount": 0, "state": {"terminated": {
                       "exitCode": exit_code, "message": message, "finishedAt": f"2026-01-01T00:00:0{attempt}Z"}}}]}}
        await self.request("POST", f"/api/v1/namespaces/{NS}/pods", pod)

    async def job_status(self, job: str, status: dict[str, Any]) -> None:
        await self.request("PATCH", f"/apis/batch/v1/namespaces/{NS}/jobs/{job}/status", {"status": status})

    # the garbage collector
    async def collect_garbage(self) -> None:
        live = {obj["metadata"].get("uid") for obj in self.objects(IB)}
        for job in self.objects(JOBS):
            if any(ref["uid"] not in live for ref in job["metadata"].get("ownerReferences") or []):
                await self.request("DELETE", f"/apis/batch/v1/namespaces/{NS}/jobs/{job['metadata']['name']}")

    # reading the state
    def objects(self, resource: kmock.resource) -> list[dict[str, Any]]:
        return [dict(obj.raw) for (res, _, _), obj in self.server.objects.items() if res == resource and not obj.deleted]

    def build(self, name: str) -> dict[str, Any]:
        (found,) = [obj for obj in self.objects(IB) if obj["metadata"]["name"] == name]
        return found

    def job_names(self) -> list[str]:
        return sorted(job["metadata"]["name"] for job in self.objects(JOBS))

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [event for event in self.objects(EVENTS) if event.get("reason") == reason]

    async def until(self, what: Callable[[], Any], timeout: float = 15.0) -> Any:
        """Wait for `what()` to be truthy (the operator works in the background); fail after `timeout` s."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not (value := what()):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what.__doc__ or what}")
            await asyncio.sleep(0.05)
        return value

    def phase(self, name: str) -> str | None:
        return (self.build(name).get("status") or {}).get("phase")


@pytest.fixture
def kmock_options() -> dict[str, Any]:
    return {"cls": ApiServer}


@pytest_asyncio.fixture
async def cluster(kmock: kmock.KubernetesEmulator, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    kmock.resources.load_bundled()  # pods, jobs, events, ...: without them Kopf waits for resources forever
    kmock.resources["movierec.io/v1alpha1/indexbuilds"] = resource_info()
    kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": "kmock",
                  "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
                  "users": [{"name": "test", "user": {"token": "test"}}],
                  "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test", "namespace": NS}}]}
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setenv("OPERATOR_IMAGE", DEFAULTS.image)
    monkeypatch.setenv("OPERATOR_PENDING_SECONDS", "0.5")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    async with aiohttp.ClientSession(base_url=str(kmock.url), headers={"User-Agent": TEST_AGENT}) as session:
        yield Cluster(kmock, session)


class Operator:
    """The real operator in a thread of its own with its own event loop (as `movierec-operator` runs it)."""

    def __init__(self, health_port: int) -> None:
        self.thread: threading.Thread | None = None
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None
        self.health_url = f"http://127.0.0.1:{health_port}/healthz"

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(kopf.operator(registry=kopf.get_default_registry(), standalone=True,
                                      clusterwide=True,  # kmock 0.8 cannot list namespaces
                                      liveness_endpoint=self.health_url, stop_flag=self.stop_flag, ready_flag=ready))
        except BaseException as exc:  # reported by stop()
            self.error = exc

    async def start(self) -> None:
        self.stop_flag, ready = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="operator", daemon=True)
        self.thread.start()
        assert await asyncio.to_thread(ready.wait, 15), "the operator did not start within 15 s"

    async def stop(self) -> None:
        if self.thread is not None:
            self.stop_flag.set()
            await asyncio.to_thread(self.thread.join, 15)
            thread, self.thread = self.thread, None
            assert not thread.is_alive(), "the operator did not stop within 15 s"
            assert self.error is None, f"the operator failed: {self.error!r}"


@pytest_asyncio.fixture
async def operator(cluster: Cluster, unused_tcp_port: int) -> AsyncIterator[Operator]:
    running = Operator(unused_tcp_port)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


SPEC = {"model": {"path": "."}, "index": {"kind": "hnsw", "target": "faiss", "M": 32, "efConstruction": 64,
                                          "efSearch": 128}, "publish": True, "minRecall": 0.9, "backoffLimit": 1}
RESULT = {"version": "20260101T000000Z-hnsw-abcd1234", "path": "/var/lib/movierec/index/faiss/20260101T000000Z-hnsw-abcd1234",
          "kind": "faiss-hnsw", "build_seconds": 1.25, "recall_at_10": 0.9731, "published": True}


@pytest.mark.asyncio
async def test_created_build_gets_one_owned_job_then_succeeds(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_build("nightly", SPEC)
    await cluster.until(lambda: cluster.job_names() == ["nightly-g1"])
    (job,) = cluster.objects(JOBS)
    (ref,) = job["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"]) == ("IndexBuild", "nightly", cluster.build("nightly")["metadata"]["uid"])
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--kind") + 1] == "hnsw" and args[args.index("--min-recall") + 1] == "0.9"
    await cluster.until(lambda: cluster.phase("nightly") == "Running")
    assert cluster.build("nightly")["status"]["jobName"] == "nightly-g1"

    await cluster.end_pod("nightly-g1", 1, 0, json.dumps(RESULT))
    await cluster.job_status("nightly-g1", {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    await cluster.until(lambda: cluster.phase("nightly") == "Succeeded")
    status = cluster.build("nightly")["status"]
    assert (status["indexVersion"], status["recallAt10"], status["buildSeconds"]) == (
        RESULT["version"], RESULT["recall_at_10"], RESULT["build_seconds"])
    assert status["published"] is True and status["observedGeneration"] == 1
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Built"]["status"] == "True" and conditions["Published"]["status"] == "True"
    await cluster.until(lambda: cluster.events("Published"))
    assert cluster.job_names() == ["nightly-g1"]  # nothing built twice


@pytest.mark.asyncio
async def test_failed_job_retries_then_fails_with_the_reason(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_build("broken", SPEC)
    await cluster.until(lambda: cluster.job_names() == ["broken-g1"])
    await cluster.end_pod("broken-g1", 1, 137, "")  # killed: the Job controller retries
    await cluster.job_status("broken-g1", {"failed": 1, "active": 1})
    await cluster.until(lambda: "attempt 1 of 2 failed" in (cluster.build("broken").get("status") or {}).get(
        "message", ""))
    assert cluster.phase("broken") == "Running"
    reason = "model.pt: checksum mismatch (file is corrupt or was replaced)"
    await cluster.end_pod("broken-g1", 2, 2, json.dumps({"error": reason}))
    await cluster.job_status("broken-g1", {"failed": 2, "active": 0, "conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit code 2"}]})
    await cluster.until(lambda: cluster.phase("broken") == "Failed")
    status = cluster.build("broken")["status"]
    assert status["message"] == f"PodFailurePolicy: {reason}" and status["attempts"] == 2
    (event,) = await cluster.until(lambda: cluster.events("BuildFailed"))
    assert event["type"] == "Warning" and reason in event["message"]
    assert event["involvedObject"]["name"] == "broken"


@pytest.mark.asyncio
async def test_restart_mid_build_adopts_the_job(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_build("nightly", SPEC)
    await cluster.until(lambda: cluster.phase("nightly") == "Running")
    await operator.stop()
    await operator.start()  # resumes every IndexBuild it finds
    await cluster.end_pod("nightly-g1", 1, 0, json.dumps(RESULT))
    await cluster.job_status("nightly-g1", {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    await cluster.until(lambda: cluster.phase("nightly") == "Succeeded")
    assert cluster.job_names() == ["nightly-g1"]
    assert len(cluster.server[kmock.method.POST, JOBS]) == 1
    await operator.stop()
    await operator.start()  # a finished generation is not built again
    await asyncio.sleep(1.0)
    assert len(cluster.server[kmock.method.POST, JOBS]) == 1 and cluster.phase("nightly") == "Succeeded"


@pytest.mark.asyncio
async def test_job_that_ended_while_the_operator_was_down_is_reported(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_build("overnight", SPEC)
    await cluster.until(lambda: cluster.phase("overnight") == "Running")
    await operator.stop()
    await cluster.end_pod("overnight-g1", 1, 0, json.dumps(RESULT))
    await cluster.job_status("overnight-g1", {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    assert cluster.phase("overnight") == "Running"
    await operator.start()  # lists the Jobs it missed and reports them
    await cluster.until(lambda: cluster.phase("overnight") == "Succeeded")
    assert cluster.build("overnight")["status"]["indexVersion"] == RESULT["version"]
    assert cluster.job_names() == ["overnight-g1"]


@pytest.mark.asyncio
async def test_handler_rerun_creates_no_second_job(cluster: Cluster) -> None:
    handlers.load_kube_config()
    await cluster.create_build("again", SPEC)
    body = kopf.Body(cluster.build("again"))
    call = dict(body=body, spec=body.spec, meta=body.meta, status=body.status, name="again", namespace=NS,
                uid=body.meta["uid"])
    for _ in range(2):
        await asyncio.to_thread(handlers.ensure_build, **call)
    assert cluster.job_names() == ["again-g1"]
    assert len(cluster.server[kmock.method.POST, JOBS]) == 1


@pytest.mark.asyncio
async def test_new_generation_supersedes_the_running_job(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_build("nightly", SPEC)
    await cluster.until(lambda: cluster.job_names() == ["nightly-g1"])
    await cluster.change_spec("nightly", {"index": {"kind": "ivf", "nprobe": 16}})
    await cluster.until(lambda: cluster.job_names() == ["nightly-g2"])
    (job,) = cluster.objects(JOBS)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--kind") + 1] == "ivf" and args[args.index("--ivf-probe") + 1] == "16"
    await cluster.until(lambda: cluster.build("nightly")["status"].get("jobName") == "nightly-g2")
    assert cluster.build("nightly")["status"]["observedGeneration"] == 2
    assert cluster.events("Superseded")


@pytest.mark.asyncio
async def test_second_build_of_a_target_waits_pending(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_build("first", SPEC)
    await cluster.until(lambda: cluster.job_names() == ["first-g1"])
    await cluster.create_build("second", SPEC)
    await cluster.until(lambda: cluster.phase("second") == "Pending")
    assert "first-g1" in cluster.build("second")["status"]["message"]
    assert cluster.job_names() == ["first-g1"]
    await cluster.create_build("elsewhere", {**SPEC, "index": {**SPEC["index"], "target": "canary"}})
    await cluster.until(lambda: "elsewhere-g1" in cluster.job_names())  # another target is not blocked

    await cluster.end_pod("first-g1", 1, 0, json.dumps(RESULT))
    await cluster.job_status("first-g1", {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    await cluster.until(lambda: "second-g1" in cluster.job_names())
    await cluster.until(lambda: cluster.phase("second") == "Running")


@pytest.mark.asyncio
async def test_deleted_build_takes_its_job(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_build("doomed", SPEC)
    await cluster.until(lambda: cluster.job_names() == ["doomed-g1"])
    await cluster.delete_build("doomed")
    await cluster.until(lambda: not cluster.objects(IB))  # no finalizer holds the deletion up
    await cluster.collect_garbage()  # what Kubernetes does with the Job's owner reference
    assert cluster.job_names() == []


VERBS = {kmock.action.LIST: "list", kmock.action.WATCH: "watch", kmock.action.FETCH: "get",
         kmock.action.CREATE: "create", kmock.action.DELETE: "delete"}


def granted(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
               for rule in rules)


@pytest.mark.asyncio
async def test_role_grants_every_call_the_operator_makes(cluster: Cluster, operator: Operator) -> None:
    """manifests/operator/rbac.yaml against the calls of a whole lifecycle: least privilege that works."""
    await cluster.create_build("audited", SPEC)
    await cluster.until(lambda: cluster.job_names() == ["audited-g1"])
    await cluster.end_pod("audited-g1", 1, 0, json.dumps(RESULT))
    await cluster.job_status("audited-g1", {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    await cluster.until(lambda: cluster.phase("audited") == "Succeeded")
    await cluster.change_spec("audited", {"index": {"kind": "flat"}})
    await cluster.until(lambda: cluster.job_names() == ["audited-g2"])
    await cluster.until(lambda: cluster.events("Superseded"))
    await operator.stop()

    (role,) = [doc for doc in yaml.safe_load_all((REPO / "manifests/operator/rbac.yaml").read_text())
               if doc["kind"] == "Role"]
    calls = set()
    for request in cluster.server:
        if request.headers.get("User-Agent") == TEST_AGENT or request.resource is None or not request.resource.plural:
            continue  # the test's own calls; API discovery (allowed to every authenticated client)
        if (request.resource.group, request.resource.plural) == ("apiextensions.k8s.io", "customresourcedefinitions"):
            continue  # Kopf watches CRDs when it may and carries on without (it runs namespaced in the cluster)
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        verb = VERBS.get(request.action) or request.method.value.lower()
        calls.add((request.resource.group, resource, verb))
    assert ("batch", "jobs", "create") in calls and ("movierec.io", "indexbuilds/status", "patch") in calls
    missing = sorted(call for call in calls if not granted(role["rules"], *call))
    assert not missing, f"the Role does not grant {missing}"


@pytest.mark.asyncio
async def test_liveness_endpoint_reports_the_api_server(cluster: Cluster, operator: Operator) -> None:
    async def probe() -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(operator.health_url) as response:
            return response.status, await response.json()

    deadline = asyncio.get_running_loop().time() + 15
    while True:  # the endpoint starts beside the operator's other tasks, soon after it is ready
        try:
            status, body = await probe()
            break
        except aiohttp.ClientConnectionError:
            assert asyncio.get_running_loop().time() < deadline, f"nothing listens on {operator.health_url}"
            await asyncio.sleep(0.1)
    assert status == 200 and body["api"] == "ok"
    probes = [r for r in cluster.server[kmock.action.LIST, IB] if r.headers.get("User-Agent") != TEST_AGENT
              and r.params.get("limit") == "1"]
    assert probes  # the probe listed IndexBuilds on the API server


# -- the command the Job runs: `movierec index build` for real, in a subprocess, on a small trained model --


index_cli = typer.Typer()
index_cli.add_typer(index_app, name="index")


def index_build(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    movierec = Path(sys.executable).parent / "movierec"
    environ = {k: v for k, v in os.environ.items() if k != "QDRANT_HOST"} | (env or {})
    return subprocess.run([str(movierec), "index", "build", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=environ)


def test_build_command_writes_the_result_and_publishes(pattern_model: Path, tmp_path: Path) -> None:
    out, result = tmp_path / "faiss", tmp_path / "result.json"
    done = index_build("--model", pattern_model, "--out", out, "--kind", "hnsw", "--hnsw-m", "16",
                       "--min-recall", "0.5", "--result-file", result)
    assert done.returncode == 0, done.stderr
    report = json.loads(result.read_text())
    assert (out / "CURRENT").read_text().strip() == report["version"] and report["published"] is True
    assert report["path"] == str(out / report["version"]) and report["kind"] == "faiss-hnsw"
    assert 0.5 <= report["recall_at_10"] <= 1.0 and report["build_seconds"] >= 0
    manifest = json.loads((out / report["version"] / "manifest.json").read_text())
    assert manifest["recall_at_10"] == report["recall_at_10"] and manifest["params"]["hnsw_m"] == 16

    flat = index_build("--model", pattern_model, "--out", out, "--kind", "flat", "--no-publish", "--result-file", result)
    assert flat.returncode == 0, flat.stderr
    unpublished = json.loads(result.read_text())
    assert unpublished["recall_at_10"] == 1.0 and unpublished["published"] is False  # exact search finds itself
    assert (out / "CURRENT").read_text().strip() == report["version"]  # --no-publish: CURRENT unchanged


def test_build_command_below_min_recall_keeps_the_old_current(pattern_model: Path, tmp_path: Path) -> None:
    out, result = tmp_path / "faiss", tmp_path / "result.json"
    build_from_model(pattern_model, out, "flat")
    current = (out / "CURRENT").read_text()
    # a starved IVF index (one list probed of many) cannot find everything exact search finds
    done = index_build("--model", pattern_model, "--out", out, "--kind", "ivf", "--ivf-lists", "16",
                       "--ivf-probe", "1", "--min-recall", "0.999", "--result-file", result)
    assert done.returncode == jobs.PERMANENT_EXIT  # the Job's podFailurePolicy fails at once, no retry
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]  # FAISS may warn too
    assert "recall@10" in line and "below --min-recall 0.999" in line and "Traceback" not in done.stderr
    report = json.loads(result.read_text())
    assert report["recall_at_10"] < 0.999 and report["published"] is False and "error" in report
    assert (out / "CURRENT").read_text() == current
    assert (out / report["version"] / "manifest.json").is_file()  # kept for inspection, not served
    # and the operator reads that result file as the reason
    outcome = jobs.job_outcome({"metadata": {"name": "j"}, "spec": {}, "status": {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}}, result.read_text())
    assert outcome.phase == "Failed" and "below --min-recall" in outcome.message


def test_build_command_refuses_a_corrupt_or_unexpected_artifact(pattern_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(pattern_model, model)
    result = tmp_path / "result.json"
    wrong = CliRunner().invoke(index_cli, ["index", "build", "--model", str(model), "--out", str(tmp_path / "faiss"),
                                           "--expected-sha256", "0" * 64, "--result-file", str(result)])
    assert wrong.exit_code == jobs.PERMANENT_EXIT and "sha256" in wrong.output
    assert "sha256" in json.loads(result.read_text())["error"]
    with open(model / "model.pt", "r+b") as f:
        f.seek(100)
        f.write(b"corrupt!")
    corrupt = index_build("--model", model, "--out", tmp_path / "faiss")
    assert corrupt.returncode == jobs.PERMANENT_EXIT
    (line,) = corrupt.stderr.strip().splitlines()
    assert "model.pt" in line and "Traceback" not in corrupt.stderr
    assert not (tmp_path / "faiss" / "CURRENT").exists()
    no_qdrant = CliRunner().invoke(index_cli, ["index", "build", "--model", str(pattern_model), "--out",
                                               str(tmp_path / "faiss"), "--qdrant-sync"], env={"QDRANT_HOST": ""})
    assert no_qdrant.exit_code == 2 and "QDRANT_HOST" in no_qdrant.output


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_the_job_command_is_one_the_cli_runs(kind: str, pattern_model: Path, tmp_path: Path) -> None:
    """The contract between operator and image: the Job's args, paths moved to this machine, build and report."""
    spec = {"model": {"path": "."}, "index": {"kind": kind, "target": "faiss", "nlist": 2, "nprobe": 2, "M": 16,
                                              "efConstruction": 40, "efSearch": 64},
            "qdrant": {"sync": False}, "publish": True, "minRecall": 0.5}
    job = jobs.build_index_job("contract", 1, spec, DEFAULTS)
    moved = {jobs.MODEL_MOUNT: str(pattern_model), jobs.INDEX_MOUNT: str(tmp_path / "index"),
             jobs.RESULT_FILE: str(tmp_path / "termination-log")}
    args = [next((arg.replace(old, new) for old, new in moved.items() if arg.startswith(old)), arg)
            for arg in job["spec"]["template"]["spec"]["containers"][0]["args"]]
    done = CliRunner().invoke(index_cli, args)
    assert done.exit_code == 0, done.output
    outcome = jobs.job_outcome({"metadata": {"name": "contract-g1"}, "status": {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True"}]}}, (tmp_path / "termination-log").read_text())
    assert outcome.phase == "Succeeded" and outcome.result["kind"] == f"faiss-{kind}"
    assert (tmp_path / "index" / "faiss" / "CURRENT").read_text().strip() == outcome.result["version"]
    assert outcome.result["recall_at_10"] >= 0.5


@pytest.mark.parametrize("version", ["1.29.0", "latest"])
def test_job_and_manifests_pass_kubernetes_schemas(version: str) -> None:
    """What the operator creates and what `kubectl apply -f manifests/operator/` sends, against Kubernetes' schemas."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version() if version == "latest" else version
    owner = kopf.Body({"apiVersion": "movierec.io/v1alpha1", "kind": "IndexBuild",
                       "metadata": {"name": "nightly", "namespace": NS, "uid": "u-1"}})
    objects = [jobs.build_index_job("nightly", 3, HNSW_SPEC, DEFAULTS),
               jobs.build_index_job("canary", 1, {"model": {"uri": "pvc://experiments/run-7"}, "publish": False,
                                                  "index": {"kind": "ivf", "nlist": 64}}, DEFAULTS)]
    for job in objects:
        kopf.adopt(job, owner=owner)
    for path in sorted((REPO / "manifests" / "operator").glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert {obj["kind"] for obj in objects} == {"Job", "ServiceAccount", "Role", "RoleBinding", "Deployment"}
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)  # raises on any unknown or mistyped field


@pytest.mark.parametrize("invocation", [["movierec-operator"], ["movierec", "operator"]])
def test_operator_command_without_a_cluster_says_so_in_one_line(tmp_path: Path, invocation: list[str]) -> None:
    command = [str(Path(sys.executable).parent / invocation[0]), *invocation[1:]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")} | {
        "KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: no cluster to watch") and "Traceback" not in done.stderr
    if invocation != ["movierec-operator"]:
        return
    command = command[0]
    usage = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert usage.returncode == 0 and "IndexBuild" in usage.stdout and "/healthz" in usage.stdout
