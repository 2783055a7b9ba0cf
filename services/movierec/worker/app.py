"""The Celery app: broker and result backend from Settings, and the production settings, each with its reason.

    celery -A movierec.worker worker --queues default,index --concurrency 2
    celery -A movierec.worker beat
    celery -A movierec.worker flower --port 5555

Queues: `default` holds the short tasks (vector refreshes, beat's housekeeping), `index` the long ones
(index builds, store loads), so a rebuild never waits in front of a refresh; run one worker on both
or a worker per queue.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import Celery

from movierec.settings import Settings
from movierec.worker import logs  # noqa: F401  (connects the JSON logging setup to Celery's signal)

log = logging.getLogger("movierec.worker")

DEFAULT_QUEUE, INDEX_QUEUE = "default", "index"
# name → (queue, soft limit s, hard limit s)
TASKS: dict[str, tuple[str, int, int]] = {
    "movierec.refresh_user_vectors": (DEFAULT_QUEUE, 120, 150),
    "movierec.refresh_aggregates": (DEFAULT_QUEUE, 120, 150),
    "movierec.drop_stale_cache": (DEFAULT_QUEUE, 300, 330),
    "movierec.build_index": (INDEX_QUEUE, 900, 960),
    "movierec.load_store": (INDEX_QUEUE, 2400, 2700),
}
LONGEST_TASK = max(hard for _, _, hard in TASKS.values())
LOCAL_BROKER = "memory://"  # no broker configured: an app that can name tasks but never reaches a server


def make_app(settings: Settings) -> Celery:
    """A Celery app for these settings (the worker's, or the API's to enqueue and read task states)."""
    broker = settings.celery_broker_url or LOCAL_BROKER
    app = Celery("movierec", broker=broker, backend=settings.celery_result_backend or _backend_of(broker),
                 include=["movierec.worker.tasks"])
    app.conf.update(
        # JSON only: a pickled message runs code chosen by whoever can write to the broker
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # acknowledge after the task ran, and put it back if its worker died (OOM, SIGKILL, node lost):
        # every task is idempotent, so running twice is safe while losing one is not
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # one message at a time per process: a long build does not sit on refreshes other processes could run
        worker_prefetch_multiplier=1,
        # a hung task is interrupted (soft: SoftTimeLimitExceeded, cleanup runs), then killed (hard)
        task_soft_time_limit=120,
        task_time_limit=150,
        task_annotations={name: {"soft_time_limit": soft, "time_limit": hard}
                          for name, (_, soft, hard) in TASKS.items()},
        task_default_queue=DEFAULT_QUEUE,
        task_routes={name: {"queue": queue} for name, (queue, _, _) in TASKS.items()},
        # PROGRESS and STARTED states are visible to GET /tasks/{id}; results go away on their own
        task_track_started=True,
        result_extended=True,
        result_expires=timedelta(seconds=settings.celery_result_expires_seconds),
        # a task held by a worker that vanished goes back to the queue after the visibility timeout;
        # it must exceed the longest task or a running task would be handed to a second worker
        broker_transport_options={
            "visibility_timeout": settings.celery_visibility_timeout_seconds,
            "unacked_restore_interval": settings.celery_restore_interval_seconds,
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"visibility_timeout": settings.celery_visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,  # Flower's task view and /metrics
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        beat_schedule=beat_schedule(settings),
        timezone="UTC",
    )
    app.conf.movierec_settings = settings
    if settings.celery_broker_url and settings.celery_visibility_timeout_seconds < LONGEST_TASK:
        log.warning("visibility timeout shorter than the longest task", extra={"fields": {
            "visibility_timeout_s": settings.celery_visibility_timeout_seconds, "longest_task_s": LONGEST_TASK,
            "effect": "a task still running after the timeout is handed to a second worker"}})
    return app


def _backend_of(broker: str) -> str:
    """Results next to the broker when no backend is named (Redis serves both)."""
    return broker if broker.startswith(("redis://", "rediss://")) else "cache+memory://"


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Housekeeping `movierec beat` enqueues; an interval of 0 leaves the job out."""
    schedule: dict[str, dict[str, Any]] = {}
    if settings.worker_aggregates_every_seconds > 0:
        schedule["refresh-aggregates"] = {"task": "movierec.refresh_aggregates",
                                          "schedule": timedelta(seconds=settings.worker_aggregates_every_seconds)}
    if settings.worker_cache_sweep_every_seconds > 0:
        schedule["drop-stale-cache"] = {"task": "movierec.drop_stale_cache",
                                        "schedule": timedelta(seconds=settings.worker_cache_sweep_every_seconds)}
    return schedule


def settings_of(app: Celery) -> Settings:
    settings: Settings = app.conf.movierec_settings
    return settings


app = make_app(Settings())
