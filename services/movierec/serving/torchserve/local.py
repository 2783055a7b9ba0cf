"""The model server's files and process: build `gsasrec.mar`, write config.properties, run TorchServe locally.

A model store is the folder KServe's pytorch runtime mounts at /mnt/models (a PVC or object store
behind `storageUri`):

    <store>/config/config.properties     TorchServe settings (tracked in git: model-store/config/)
    <store>/model-store/gsasrec.mar      handler + model artifact, from `movierec export`

and starts as `torchserve --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`.
`start_torchserve` runs the same store on loopback with its own ports, logs and temp files (outside
the repository), in its own process group so that `stop()` ends the frontend and every worker.
"""

from __future__ import annotations

import json
import logging
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

from movierec.model.artifact import CHECKED_FILES, load_artifact

MODEL_NAME = "gsasrec"
MODEL_VERSION = "1.0"
ARTIFACT_FILES = (*CHECKED_FILES, "manifest.json")  # what the handler loads (load_artifact verifies them)
HANDLER = Path(__file__).with_name("torchserve_handler.py")


class ModelServerError(RuntimeError):
    """TorchServe could not be started or did not become ready (the message says why, with its log)."""


def model_snapshot(batch_size: int = 16, max_batch_delay_ms: int = 1, workers: int = 1,
                   response_timeout_s: int = 60) -> str:
    models = {MODEL_NAME: {MODEL_VERSION: {
        "defaultVersion": True, "marName": f"{MODEL_NAME}.mar", "minWorkers": workers, "maxWorkers": workers,
        "batchSize": batch_size, "maxBatchDelay": max_batch_delay_ms, "responseTimeout": response_timeout_s,
    }}}
    return json.dumps({"name": "startup.cfg", "modelCount": 1, "models": models}, separators=(",", ":"))


def default_config() -> str:
    """The config.properties `movierec export` writes when the store has none (= model-store/config/config.properties)."""
    return f"""\
# TorchServe settings for the gSASRec model store, in the layout KServe's pytorch runtime reads:
#   torchserve --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties
# `movierec serve-model` runs this store on loopback with its own ports (see movierec/serving/model_server.py).
inference_address=http://0.0.0.0:8080
management_address=http://0.0.0.0:8081
metrics_address=http://0.0.0.0:8082
metrics_mode=prometheus
enable_metrics_api=true
# KServe picks the v1/v2 request envelope through TS_SERVICE_ENVELOPE in the environment
enable_envvars_config=true
disable_token_authorization=true
# the model loads from model_snapshot at start; registering others through the management API would need true
enable_model_api=false
install_py_dep_per_model=false
# log lines and per-request metrics written off the request path
async_logging=true
number_of_netty_threads=4
job_queue_size=1000
default_response_timeout=60
model_store=/mnt/models/model-store
load_models={MODEL_NAME}.mar
# one worker per pod (scale with replicas); up to 16 concurrent requests share one model pass.
# maxBatchDelay 1 ms: a lone request waits no longer, and requests that queue while the worker
# computes still batch (bench/serve.py: 1 ms beat 5 ms on latency and on throughput)
model_snapshot={model_snapshot()}
"""


def read_properties(text: str) -> dict[str, str]:
    props = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def set_properties(text: str, values: dict[str, str]) -> str:
    """`text` with each key's line replaced (or appended), comments and order kept."""
    out, done = [], set()
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
        if key in values:
            out.append(f"{key}={values[key]}")
            done.add(key)
        else:
            out.append(line)
    out += [f"{k}={v}" for k, v in values.items() if k not in done]
    return "\n".join(out) + "\n"


def build_archive(model_dir: Path, out: Path, version: str = MODEL_VERSION) -> Path:
    """`<out>/model-store/gsasrec.mar` (handler + artifact files) and `<out>/config/config.properties` if absent.

    The artifact is loaded first, so a missing or corrupt model stops here with ArtifactError. The
    archive is written beside its final name and moved into place, so a running server never sees half.
    """
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    load_artifact(model_dir)  # checksums, config, weights: fail before packing anything
    store = out / "model-store"
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=store))
    saved_tempdir = tempfile.tempdir
    try:
        # the archiver stages files in gettempdir()/<model name>: give it a private one
        tempfile.tempdir = str(staging)
        config = ModelArchiverConfig(
            model_name=MODEL_NAME, handler=str(HANDLER), version=version, export_path=str(staging),
            extra_files=",".join(str(model_dir / name) for name in ARTIFACT_FILES), force=True,
        )
        logging.disable(logging.INFO)  # the archiver logs the staging path as if it were the result
        try:
            generate_model_archive(config)
        finally:
            logging.disable(logging.NOTSET)
        os.replace(staging / f"{MODEL_NAME}.mar", store / f"{MODEL_NAME}.mar")
    finally:
        tempfile.tempdir = saved_tempdir
        shutil.rmtree(staging, ignore_errors=True)
    config_path = out / "config" / "config.properties"
    if not config_path.exists():
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(default_config())
    return store / f"{MODEL_NAME}.mar"


def local_config(store: Path, host: str, ports: tuple[int, int, int], batch_size: int | None = None,
                 max_batch_delay_ms: int | None = None) -> str:
    """The store's config.properties with loopback addresses, the local model-store path and optional batching."""
    tracked = store / "config" / "config.properties"
    text = tracked.read_text() if tracked.is_file() else default_config()
    inference, management, metrics = ports
    values = {
        "inference_address": f"http://{host}:{inference}",
        "management_address": f"http://{host}:{management}",
        "metrics_address": f"http://{host}:{metrics}",
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
                try:
                    self.process.wait(0.1)
                except subprocess.TimeoutExpired:
                    pass
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
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


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

    Ports default to port, port + 1, port + 2 (inference, management, metrics). Config, logs and
    TorchServe's temp files (the unpacked .mar, its pid file) go to `run_dir`, by default a new
    folder under the system temp dir, so several servers can run side by side. The workers run
    this Python, which imports movierec. `env` adds variables (e.g. TS_SERVICE_ENVELOPE=kservev2).
    """
    store = Path(store)
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
    urls = [f"http://{host}:{p}" for p in ports]
    return TorchServe(process, *urls, run_dir=run_dir, store=store, ports=ports)

