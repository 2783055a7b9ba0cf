"""JSON-lines logs for the worker, beat and Flower: one object per line, like the API's.

Celery's own logging setup is skipped (the `setup_logging` signal is connected), so every logger,
Celery's included, writes through one handler; a line written inside a task names the task and its id.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import signals
from celery._state import get_current_task

from movierec.jsonlog import JsonFormatter as BaseFormatter


class JsonFormatter(BaseFormatter):
    """The API's JSON lines, plus the task and its id for a line written inside a task."""

    def context(self) -> dict[str, Any]:
        task = get_current_task()
        return {"task": task.name, "task_id": task.request.id} if task is not None and task.request.id else {}


def configure(level: int | str = logging.INFO) -> None:
    """Every log record to stderr as one JSON line (idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        for handler in list(root.handlers):
            root.removeHandler(handler)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings (Celery's SecurityWarning, ...) become JSON lines too


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: object) -> None:
    configure(loglevel or logging.INFO)


@signals.celeryd_init.connect
def _worker_starting(options: dict[str, object] | None = None, **_: object) -> None:
    """Earlier than setup_logging: the worker's first warnings (running as root, ...) are JSON lines too."""
    level = (options or {}).get("loglevel") or logging.INFO
    configure(level if isinstance(level, (int, str)) else logging.INFO)
