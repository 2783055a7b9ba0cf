"""`movierec serve`: the HTTP API on embedded defaults (or the servers named in the environment)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from movierec.cli.errors import friendly


@friendly
def serve(
    home: Annotated[Path, typer.Option(envvar="MOVIEREC_HOME", help="Artifacts folder: model/, index/, the SQLite db.")] = Path("artifacts"),
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
    import os

    import uvicorn

    from movierec.cli.errors import UsageError
    from movierec.settings import Settings

    if workers > 1 and not Settings().redis_host:
        raise UsageError(f"--workers {workers}: each worker would keep its own in-process cache and /update_user "
                         "would reach only one of them; set REDIS_HOST (a shared cache) or use --workers 1")
    os.environ["MOVIEREC_HOME"] = str(home)
    uvicorn.run("movierec.api.app:app", factory=True, host=host, port=port, workers=workers,
                log_level="warning", access_log=False)
