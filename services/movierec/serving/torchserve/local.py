"""Run a model store on TorchServe locally: `movierec serve-model`, the tests and the benchmarks.

`start_torchserve` runs a store (see `archive.py`) on loopback with its own ports, logs and temp
files (outside the repository), in its own process group so that `stop()` ends the frontend and
every worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from movierec.errors import MovierecError
from movierec.serving.torchserve.archive import (
    MODEL_NAME,
    default_config,
    model_snapshot,
    read_properties,
    set_properties,
)

MANAGEMENT_HOST = "127.0.0.1"


class ModelServerError(MovierecError):
    """TorchServe could not be started or did not become ready (the message says why, with its log)."""


def local_config(store: Path, host: str, ports: tuple[int, int, int], batch_size: int | None = None,
                 max_batch_delay_ms: int | None = None) -> str:
    """The store's config.properties with loopback addresses, the local model-store path and optional batching.

    gRPC takes the two ports after metrics (inference + 3, + 4): TorchServe always opens its gRPC servers,
    and at their defaults (7070, 7071) a second server on the same machine would fail to bind. The
    management APIs (HTTP and gRPC) listen on loopback whatever `host` is: they can unregister the model.
    """
    tracked = store / "config" / "config.properties"
    text = tracked.read_text() if tracked.is_file() else default_config()
    inference, management, metrics = ports
    values = {
        "inference_address": f"http://{host}:{inference}",
        "management_address": f"http://{MANAGEMENT_HOST}:{management}",  # never public, whatever `host` is
        "metrics_address": f"http://{host}:{metrics}",
        "grpc_inference_address": host,
        "grpc_management_address": MANAGEMENT_HOST,
        "grpc_inference_port": str(inference + 3),
        "grpc_management_port": str(inference + 4),
        "model_store": str((store / "model-store").resolve()),
    }
    if batch_size is not None or max_batch_delay_ms is not None:
        snapshot = json.loads(read_properties(text).get("model_snapshot") or model_snapshot())
        for versions in snapshot["models"].values():
            for entry in versions.values():
                if batch_size is not None:
                    entry["batchSize"] = batch_size
                if max_batch_delay_ms is not None:
                    entry["maxBatchDelay"] = max_batch_delay_ms
        values["model_snapshot"] = json.dumps(snapshot, separators=(",", ":"))
    return set_properties(text, values)


@dataclass
class TorchServe:
    """A TorchServe started by `start_torchserve`: its URLs, its run folder (config, logs, temp), stop()."""

    process: subprocess.Popen
    inference_url: str
    management_url: str
    metrics_url: str
    run_dir: Path
    store: Path
    ports: tuple[int, int, int] = field(default=(0, 0, 0))

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 120.0, model: str = MODEL_NAME) -> None:
        """Until the model has a READY worker; ModelServerError (with the log's tail) if it exits or times out."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if not self.running():
                    raise ModelServerError(f"torchserve exited with status {self.process.returncode}\n{self.log_tail()}")
                try:
                    r = http.get(f"{self.management_url}/models/{model}")
                    if r.status_code == 200 and any(w.get("status") == "READY" for w in r.json()[0].get("workers", [])):
                        return
                except (httpx.HTTPError, ValueError, LookupError):
                    pass
                time.sleep(0.25)
        raise ModelServerError(f"torchserve: model {model} not ready after {timeout:.0f} s\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for name in ("console.log", "ts_log.log", "model_log.log"):
            path = self.log_dir / name
            if path.is_file():
                parts.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the whole process group (launcher, Java frontend, Python workers); SIGKILL what lingers."""
        group = self.process.pid
        _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(group):
            if self.process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(0.1)
            else:
                time.sleep(0.1)
        if _group_alive(group):
            _signal_group(group, signal.SIGKILL)
        self.process.wait(5)
        shutil.rmtree(self.run_dir / "tmp", ignore_errors=True)  # the unpacked .mar and worker sockets; logs stay

    def __enter__(self) -> TorchServe:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start_torchserve(
    store: Path,
    port: int = 8080,
    management_port: int | None = None,
    metrics_port: int | None = None,
    host: str = "127.0.0.1",
    run_dir: Path | None = None,
    batch_size: int | None = None,
    max_batch_delay_ms: int | None = None,
    env: dict[str, str] | None = None,
    foreground_output: bool = False,
) -> TorchServe:
    """Start TorchServe on `store` (a folder with model-store/gsasrec.mar) and return at once; see wait_ready().

    Ports default to port, port + 1, port + 2 (inference, management, metrics); gRPC uses port + 3, + 4. Config, logs and
    TorchServe's temp files (the unpacked .mar, its pid file) go to `run_dir`, by default a new
    folder under the system temp dir, so several servers can run side by side. The workers run
    this Python, which imports movierec. `env` adds variables (e.g. TS_SERVICE_ENVELOPE=kservev2).
    """
    store = Path(store).resolve()  # TorchServe runs in run_dir: a relative path would point there
    archive = store / "model-store" / f"{MODEL_NAME}.mar"
    if not archive.is_file():
        raise ModelServerError(f"{archive}: not found (build it with `movierec export --model M --out {store}`)")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ModelServerError("java: not found (TorchServe needs Java 11+; install openjdk-17-jre-headless)")
    ports = (port, management_port or port + 1, metrics_port or port + 2)
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix=f"movierec-torchserve-{port}-"))
    for sub in ("logs", "tmp"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    config = run_dir / "config.properties"
    config.write_text(local_config(store, host, ports, batch_size, max_batch_delay_ms))
    variables = {
        **os.environ,
        "LOG_LOCATION": str(run_dir / "logs"), "METRICS_LOCATION": str(run_dir / "logs"),
        "TEMP": str(run_dir / "tmp"),  # java.io.tmpdir: where the .mar is unpacked
        "TMPDIR": str(run_dir / "tmp"),  # the launcher's pid file: one per server, not one per machine
        **(env or {}),
    }
    command = [sys.executable, "-c", "from ts.model_server import start; start()", "--start", "--foreground",
               "--ncs", "--ts-config", str(config), "--model-store", str(archive.parent)]
    output = None if foreground_output else open(run_dir / "logs" / "console.log", "ab")  # noqa: SIM115
    try:
        process = subprocess.Popen(command, cwd=run_dir, env=variables, stdout=output, stderr=subprocess.STDOUT
                                   if output else None, stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        if output is not None:
            output.close()
    inference, metrics = f"http://{host}:{ports[0]}", f"http://{host}:{ports[2]}"
    management = f"http://{MANAGEMENT_HOST}:{ports[1]}"
    return TorchServe(process, inference, management, metrics, run_dir=run_dir, store=store, ports=ports)

