"""Background work on Celery: vector refreshes, index builds and store loads off the request path.

`celery -A movierec.worker worker` finds `app` here; `movierec worker`, `movierec beat` and
`movierec flower` start the same app (docs/worker.md). Without a broker the API runs the same job
functions (`movierec.worker.jobs`) in a thread of its own (`movierec.worker.client`).
"""

from __future__ import annotations

from movierec.worker.app import app

__all__ = ["app"]
