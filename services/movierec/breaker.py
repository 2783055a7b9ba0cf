"""A circuit breaker for calls to a server that may be down: the model server, Redis.

    closed --N consecutive failures--> open --cooldown--> half-open --probe ok--> closed
                                         ^------------------probe fails-----------'

While open, no call goes to the server (the caller takes its fallback at once); after the cooldown
one call probes it. Thread-safe; the clock is injectable for tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Closed, open or half-open, from consecutive failures and a cooldown; thread-safe, clock injectable."""

    def __init__(self, failures_to_open: int = 3, cooldown: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 name: str = "model server") -> None:
        self.failures_to_open, self.cooldown, self.clock, self.name = max(1, failures_to_open), cooldown, clock, name
        self.state: Literal["closed", "open", "half-open"] = "closed"
        self.failures = 0
        self.last_error = ""
        self._since = 0.0  # when it opened, or when the probe started
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """May a request go to the server now? In half-open, only one (the probe) until it reports."""
        with self._lock:
            now = self.clock()
            if self.state == "closed":
                return True
            if now - self._since < self.cooldown:
                return False  # open and cooling down, or half-open with a probe in flight
            self._move("half-open", "cooldown over, probing")  # also re-probes if a probe never reported
            self._since = now
            return True

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            if self.state != "closed":
                self._move("closed", "server answered")

    def failure(self, error: str) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = error
            if self.state == "half-open" or (self.state == "closed" and self.failures >= self.failures_to_open):
                self._since = self.clock()
                self._move("open", f"{self.failures} consecutive failures, last: {error}")

    def _move(self, state: Literal["closed", "open", "half-open"], why: str) -> None:
        level = logging.WARNING if state == "open" else logging.INFO
        log.log(level, "%s circuit %s -> %s: %s", self.name, self.state, state, why)
        self.state = state
