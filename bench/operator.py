"""Operator benchmark: how fast the IndexBuild operator reacts, and how much memory it holds.

    python bench/operator.py              # 20 builds
    python bench/operator.py --builds 50

Runs the real `movierec-operator` (a child process, as in its pod) against kmock's Kubernetes
emulator on a loopback port, and plays the Job controller: for each IndexBuild it measures
create → the build Job exists (operator reaction 1) and Job marked Complete with a result in the
pod's termination message → IndexBuild status Succeeded (reaction 2); then deletes the three objects,
as a Job's TTL would. Also the operator's RSS
after the run (psutil). Prints a Markdown table under a line naming machine, versions, date and
git sha. Medians and 95th percentiles; the emulator is polled every 5 ms, which bounds resolution.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
NS = "bench"
IB = kmock.resource("movierec.io", "v1alpha1", "indexbuilds")
JOBS = kmock.resource("batch", "v1", "jobs")
EVENTS = kmock.resource("", "v1", "events")
SPEC = {"model": {"path": "."}, "index": {"kind": "hnsw", "target": "faiss", "M": 32, "efConstruction": 64,
                                          "efSearch": 128}, "publish": True, "minRecall": 0.9, "backoffLimit": 1}


class ApiServer(kmock.KubernetesEmulator):
    """The emulator plus the API server's writes the operator relies on (names, uid, generation)."""

    async def _handle(self, request: Any) -> Any:
        data = request.data
        if isinstance(data, dict) and request.resource is not None and request.method == kmock.method.POST:
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("generation", 1)
        return await super()._handle(request)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def objects(server: kmock.KubernetesEmulator, resource: kmock.resource) -> list[dict[str, Any]]:
    return [dict(o.raw) for (res, _, _), o in server.objects.items() if res == resource and not o.deleted]


async def until(check: Any, timeout: float = 30.0) -> float:
    """Seconds until check() holds, polled every 5 ms (often enough to resolve, rarely enough not to compete)."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the operator did not react within 30 s")
        await asyncio.sleep(0.005)
    return time.perf_counter() - start


async def run(builds: int) -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "manifests/crds/indexbuilds.movierec.io.yaml").read_text())
    async with ApiServer() as server, kmock.Server(server):
        server.resources.load_bundled()
        server.resources["movierec.io/v1alpha1/indexbuilds"] = kmock.ResourceInfo(
            kind="IndexBuild", singular="indexbuild", namespaced=True, shortnames=crd["spec"]["names"]["shortNames"],
            subresources={"status"}, verbs={"create", "delete", "get", "list", "patch", "update", "watch"})
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
                "clusters": [{"name": "kmock", "cluster": {"server": str(server.url).rstrip("/")}}],
                "users": [{"name": "bench", "user": {"token": "bench"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "bench"}}]}))
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OPERATOR_", "KUBERNETES_"))}
            env |= {"KUBECONFIG": str(kubeconfig), "OPERATOR_HEALTH_PORT": str(port)}
            with open(Path(tmp) / "operator.log", "w") as log:
                operator = subprocess.Popen([str(Path(sys.executable).parent / "movierec-operator")], env=env,
                                            stdout=subprocess.DEVNULL, stderr=log)
                try:
                    return await measure(server, operator, port, builds)
                finally:
                    operator.terminate()
                    operator.wait(30)


async def measure(server: kmock.KubernetesEmulator, operator: subprocess.Popen[bytes], port: int,
                  builds: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(base_url=str(server.url)) as session:
        async def call(method: str, path: str, body: Any) -> None:
            headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
            async with session.request(method, path, json=body, headers=headers) as response:
                response.raise_for_status()

        start = time.perf_counter()
        while True:  # ready: /healthz answers
            try:
                async with aiohttp.ClientSession() as probe, probe.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            if time.perf_counter() - start > 60 or operator.poll() is not None:
                raise RuntimeError("the operator did not start")
            await asyncio.sleep(0.05)
        startup = time.perf_counter() - start
        to_job, to_status, rss = [], [], []
        for i in range(builds):
            name = f"b{i}"
            await call("POST", f"/apis/movierec.io/v1alpha1/namespaces/{NS}/indexbuilds",
                       {"apiVersion": "movierec.io/v1alpha1", "kind": "IndexBuild",
                        "metadata": {"name": name, "namespace": NS}, "spec": SPEC})
            job = f"{name}-g1"
            to_job.append(await until(lambda job=job: any(j["metadata"]["name"] == job  # type: ignore[misc]
                                                          for j in objects(server, JOBS))))
            result = {"version": f"v{i}", "path": f"/x/v{i}", "kind": "faiss-hnsw", "build_seconds": 1.0,
                      "recall_at_10": 0.97, "published": True}
            await call("POST", f"/api/v1/namespaces/{NS}/pods", {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{job}-x", "namespace": NS,
                                                                "labels": {"job-name": job}},
                "spec": {"containers": [{"name": "build", "image": "movierec"}]},
                "status": {"containerStatuses": [{"name": "build", "image": "movierec", "imageID": "", "ready": False,
                                                  "restartCount": 0, "state": {"terminated": {
                                                      "exitCode": 0, "message": json.dumps(result)}}}]}})
            await call("PATCH", f"/apis/batch/v1/namespaces/{NS}/jobs/{job}/status",
                       {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}})
            to_status.append(await until(lambda name=name: any(  # type: ignore[misc]
                o["metadata"]["name"] == name and (o.get("status") or {}).get("phase") == "Succeeded"
                for o in objects(server, IB))))
            rss.append(psutil.Process(operator.pid).memory_info().rss)
            # a finished build goes (as with ttlSecondsAfterFinished): the emulator scans every stored object
            # on each request, so a growing pile would measure the emulator rather than the operator
            await call("DELETE", f"/api/v1/namespaces/{NS}/pods/{job}-x", None)
            await call("DELETE", f"/apis/batch/v1/namespaces/{NS}/jobs/{job}", None)
            await call("DELETE", f"/apis/movierec.io/v1alpha1/namespaces/{NS}/indexbuilds/{name}", None)
            for key in [key for key, obj in server.objects.items() if obj.deleted or key[0] == EVENTS]:
                del server.objects[key]  # the emulator keeps deleted objects' histories; a cluster compacts
        return {"startup": startup, "to_job": to_job, "to_status": to_status, "rss": max(rss)}


def header() -> str:
    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no", "--", "operators", "bench"):
        sha += "-dirty"
    return (f"# {os.cpu_count()} vCPU {cpu}, Python {platform.python_version()}, kopf {kopf.__version__}, "
            f"kmock {kmock.__version__}, {date.today().isoformat()}, {sha}")


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builds", type=int, default=20, help="IndexBuilds created one after the other")
    parser.add_argument("--raw", action="store_true", help="also print every build's two reaction times (JSON)")
    args = parser.parse_args()
    figures = asyncio.run(run(args.builds))
    if args.raw:
        sys.stdout.write(json.dumps({k: figures[k] for k in ("to_job", "to_status")}) + "\n")
    lines = [header(), "",
             "| operator step (emulated API server) | builds | median ms | p95 ms |",
             "|---|---|---|---|"]
    for label, key in (("IndexBuild created → Job created", "to_job"),
                       ("Job Complete → status Succeeded", "to_status")):
        values = figures[key]
        lines.append(f"| {label} | {len(values)} | {1000 * statistics.median(values):.0f} | "
                     f"{1000 * p95(values):.0f} |")
    lines += ["", f"operator RSS after {args.builds} builds: {figures['rss'] / 2**20:.0f} MiB; "
                  f"start to healthy: {figures['startup']:.1f} s; load average {os.getloadavg()[0]:.1f}"]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
