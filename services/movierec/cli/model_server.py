"""`movierec export | serve-model`: the TorchServe model archive and a local TorchServe to serve it."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from movierec.cli.errors import UsageError, friendly

out = Console(soft_wrap=True)


@friendly
def export(
    model_dir: Annotated[Path, typer.Option("--model", "-m", help="Model folder written by `movierec train`.")],
    store: Annotated[Path, typer.Option("--out", "-o", help="Model store to write (KServe's storageUri layout).")
                     ] = Path("model-store"),
    version: Annotated[str, typer.Option(help="Model version inside the archive (the config's model_snapshot names 1.0).")
                       ] = "1.0",
) -> None:
    """Build OUT/model-store/gsasrec.mar (TorchServe handler + model artifact) and OUT/config/config.properties.

    The config is written only when absent (git tracks model-store/config/).

    Serve it with `movierec serve-model --store OUT`, or use OUT as a KServe storageUri.
    """
    from model_archiver.model_archiver_error import ModelArchiverError

    from movierec.serving.torchserve.archive import build_archive

    try:
        archive = build_archive(model_dir, store, version=version)
    except ModelArchiverError as exc:
        raise UsageError(f"torch-model-archiver: {exc}") from None
    out.print(f"wrote {archive} ({archive.stat().st_size / 1e6:.1f} MB); config: {store / 'config' / 'config.properties'}")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@friendly
def serve_model(
    store: Annotated[Path, typer.Option("--store", "-s", help="Model store from `movierec export`.")] = Path("model-store"),
    port: Annotated[int, typer.Option(help="Inference port (/predictions, /v2/models/.../infer, /ping).")] = 8080,
    management_port: Annotated[int | None, typer.Option(help="Management API port (default: PORT + 1).")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus /metrics port (default: PORT + 2).")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    batch_size: Annotated[int | None, typer.Option(help="TorchServe batchSize (default: the config's model_snapshot).")
                          ] = None,
    max_batch_delay: Annotated[int | None, typer.Option(help="TorchServe maxBatchDelay in ms (default: the config's).")
                               ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Config, logs and temp files (default: a new temp folder).")
                       ] = None,
) -> None:
    """Run TorchServe on the model store in the foreground (Ctrl-C stops it).

    It uses STORE/config/config.properties with loopback addresses and these ports.

    Point the API at it: TORCHSERVE_HOST=127.0.0.1 TORCHSERVE_PORT=PORT movierec serve
    """
    from movierec.serving.torchserve.local import ModelServerError, start_torchserve

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per readiness poll
    for name, value in (("--batch-size", batch_size), ("--max-batch-delay", max_batch_delay)):
        if value is not None and value < (1 if name == "--batch-size" else 0):
            raise UsageError(f"{name}: must be positive, got {value}")
    server = start_torchserve(store, port, management_port, metrics_port, host, run_dir, batch_size,
                              max_batch_delay, foreground_output=False)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    try:
        out.print(f"starting TorchServe (logs: {server.log_dir}) ...")
        server.wait_ready()
        out.print(f"[bold]gsasrec ready[/bold]\n"
                  f"  native      POST {server.inference_url}/predictions/gsasrec\n"
                  f"  v2 (KServe) POST {server.inference_url}/v2/models/gsasrec/infer\n"
                  f"  health      GET  {server.inference_url}/ping\n"
                  f"  management       {server.management_url}/models/gsasrec\n"
                  f"  metrics          {server.metrics_url}/metrics\n"
                  f"Ctrl-C stops it.")
        server.process.wait()
        raise UsageError(f"torchserve exited with status {server.process.returncode}; logs in {server.log_dir}")
    except ModelServerError as exc:
        raise ModelServerError(f"{str(exc).splitlines()[0]}; logs in {server.log_dir}") from None
    except KeyboardInterrupt:
        out.print("stopping TorchServe ...")
    finally:
        server.stop()
