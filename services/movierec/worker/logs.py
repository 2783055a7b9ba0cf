"""JSON-lines logs for the worker, beat and Flower: one object per line, like the API's.

Celery's own logging setup is skipped (the `setup_logging` signal is connected), so every logger,
Celery's included, writes through one handler; a line written inside a task names the task and its id.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from celery import signals
from celery._state import get_current_task


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        task = get_current_task()
        if task is not None and task.request.id:
            line["task"], line["task_id"] = task.name, task.request.id
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line, default=str)


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
