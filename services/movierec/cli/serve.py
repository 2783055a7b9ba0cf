"""`movierec serve`: the HTTP API on embedded defaults (or the servers named in the environment)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from movierec.cli.errors import friendly


@friendly
def serve(
    home: Annotated[Path | None, typer.Option(help="Artifacts folder: model/, index/, the SQLite db. "
                                              "[default: MOVIEREC_HOME, else artifacts]", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(
        min=1, help="Uvicorn worker processes (more than 1 needs REDIS_HOST: the cache must be shared).")] = 1,
) -> None:
    """Serve /recommend, /update_user, ... with OpenAPI docs at /docs.

    Settings come from the environment (MONGO_URI, REDIS_HOST, QDRANT_HOST, TORCHSERVE_HOST, API_KEY, ...);
    whatever is unset runs embedded: SQLite, an in-process cache, Qdrant Edge, the model in-process.
    With REDIS_HOST set, `--workers 2` on two cores about doubles throughput (one Python process is
    bound by its interpreter lock).
    """
    import uvicorn

    from movierec.api.app import create_app
    from movierec.cli.errors import UsageError
    from movierec.settings import Settings

    settings = Settings() if home is None else Settings(movierec_home=home)
    if workers > 1 and not settings.redis_host:
        raise UsageError(f"--workers {workers}: each worker would keep its own in-process cache and /update_user "
                         "would reach only one of them; set REDIS_HOST (a shared cache) or use --workers 1")
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False)
        return
    # worker processes build their own app (uvicorn's --factory) from Settings, which they read from the
    # environment they inherit: --home reaches them only that way
    env = {"MOVIEREC_HOME": str(settings.movierec_home)}
    with _environment(env):
        uvicorn.run("movierec.api.app:app", factory=True, host=host, port=port, workers=workers,
                    log_level="warning", access_log=False)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for child processes started inside the block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
