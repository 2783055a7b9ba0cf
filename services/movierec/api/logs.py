"""JSON-lines request logs: one line per request with its id, route, method, status and latency."""

from __future__ import annotations

import logging
import sys

from movierec.jsonlog import JsonFormatter


def configure(level: int = logging.INFO) -> None:
    """Send movierec's logs to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("movierec")
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
