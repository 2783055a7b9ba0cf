"""`movierec worker | beat | flower`: the Celery worker, its scheduler and its dashboard (docs/worker.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from movierec.cli.errors import UsageError, friendly

QUEUES = ("default", "index")


def _app() -> Any:
    """The Celery app, once CELERY_BROKER_URL is known to be set."""
    from movierec.settings import Settings

    if not Settings().celery_broker_url:
        raise UsageError("CELERY_BROKER_URL is not set: give the Redis broker, e.g. "
                         "CELERY_BROKER_URL=redis://localhost:6379/1 (without one the API runs its jobs itself)")
    from movierec.worker import app

    return app


@friendly
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume: default (vector refreshes, "
                                        "housekeeping), index (index builds, store loads).")] = "default,index",
    concurrency: Annotated[int, typer.Option(min=1, help="Worker processes (one task each at a time).")] = 2,
    pool: Annotated[Literal["prefork", "solo", "threads"], typer.Option(
        help="prefork: one process per task, killed at the hard time limit; solo: in this process.")] = "prefork",
    loglevel: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    hostname: Annotated[str | None, typer.Option(help="Node name, e.g. worker1@%h (default: celery@host).")] = None,
) -> None:
    """Run tasks from the broker: refresh_user_vectors, build_index, load_store and beat's housekeeping.

    Same as `celery -A movierec.worker worker`. Settings come from the environment (CELERY_BROKER_URL,
    CELERY_RESULT_BACKEND, REDIS_HOST, MONGO_URI, MOVIEREC_HOME, ...); logs are JSON lines on stderr.
    A task whose worker dies is handed to another one (acks late); stop with SIGTERM to finish running tasks first.
    """
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if not names or unknown:
        raise UsageError(f"--queues: {', '.join(unknown) or 'empty'}: expected a comma-separated subset of "
                         f"{', '.join(QUEUES)}")
    argv = ["worker", f"--queues={','.join(names)}", f"--concurrency={concurrency}", f"--pool={pool}",
            f"--loglevel={loglevel}"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    _app().worker_main(argv)


@friendly
def beat(
    schedule: Annotated[Path | None, typer.Option(
        help="File where beat remembers the last runs. [default: MOVIEREC_HOME/celerybeat-schedule]",
        show_default=False)] = None,
    loglevel: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Enqueue the housekeeping on its schedule: popular movies and /stats counts
    (WORKER_AGGREGATES_EVERY_SECONDS), stale cache keys (WORKER_CACHE_SWEEP_EVERY_SECONDS).

    Run exactly one beat per broker (the chart runs one replica). Same as `celery -A movierec.worker beat`.
    """
    from movierec.settings import Settings

    app = _app()
    path = schedule or Settings().movierec_home / "celerybeat-schedule"
    path.parent.mkdir(parents=True, exist_ok=True)
    app.start(["beat", f"--schedule={path}", f"--loglevel={loglevel}"])


@friendly
def flower(
    port: Annotated[int, typer.Option(help="TCP port of the dashboard and of /metrics.")] = 5555,
    address: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Flower: the workers, queues and tasks in a web page, and Prometheus metrics at /metrics.

    Same as `celery -A movierec.worker flower --port 5555`.
    """
    from movierec.worker import logs

    app = _app()
    logs.configure()
    app.start(["flower", f"--port={port}", f"--address={address}"])
