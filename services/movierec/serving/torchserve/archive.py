"""The model store KServe mounts: build `gsasrec.mar` and write its `config.properties`.

A model store is the folder KServe's pytorch runtime mounts at /mnt/models (a PVC or object store
behind `storageUri`):

    <store>/config/config.properties     TorchServe settings (tracked in git: model-store/config/)
    <store>/model-store/gsasrec.mar      handler + model artifact, from `movierec export`

and starts as `torchserve --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from movierec.model.artifact import CHECKED_FILES, load_artifact

MODEL_NAME = "gsasrec"
MODEL_VERSION = "1.0"
ARTIFACT_FILES = (*CHECKED_FILES, "manifest.json")  # what the handler loads (load_artifact verifies them)
HANDLER = Path(__file__).with_name("handler.py")  # the .mar and KServe load movierec.serving.torchserve.handler


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
# `movierec serve-model` runs this store on loopback with its own ports (see movierec/serving/torchserve/local.py).
# Only inference is public (KServe and the API need nothing else). The management API (unregister
# the model, scale its workers to 0) listens on loopback only: nothing outside the pod can reach it,
# so token authorization can stay off. Metrics stay on every interface for Prometheus to scrape (read
# only; keep port 8082 off the Service and let a NetworkPolicy admit only the scraper). gRPC is bound
# to loopback too. See docs/reliability.md.
inference_address=http://0.0.0.0:8080
management_address=http://127.0.0.1:8081
metrics_address=http://0.0.0.0:8082
grpc_inference_address=127.0.0.1
grpc_management_address=127.0.0.1
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
