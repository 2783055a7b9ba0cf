"""The Celery tasks: thin wrappers that run `movierec.worker.jobs` with this process's store, cache and model.

Failures: a server that is down (store, Redis, Qdrant, TorchServe) is retried with exponential
backoff and full jitter, at most CELERY_MAX_RETRIES times, then the task fails with that reason;
anything else a user can fix (a missing model, an unknown parameter) fails at once.
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

import redis
from celery import Task, signals
from celery.utils.time import get_exponential_backoff_interval

from movierec.serving.model_server import ModelServerUnavailable
from movierec.settings import Settings
from movierec.store import MovieStore, StoreUnavailable, open_store
from movierec.store.cache import Cache, open_cache
from movierec.worker import jobs
from movierec.worker.app import app, settings_of

log = logging.getLogger("movierec.worker")

# errors of a server that may come back: worth a retry
TRANSIENT: tuple[type[BaseException], ...] = (
    StoreUnavailable, ModelServerUnavailable, redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError,
)


class Runtime:
    """What the tasks of one worker process share, opened on first use: store, cache, the model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._recommender: Any = None
        self._model_sha: str | None = None

    @cached_property
    def store(self) -> MovieStore:
        return open_store(self.settings.mongo_uri, self.settings.sqlite_path)

    @cached_property
    def cache(self) -> Cache:
        s = self.settings
        # a worker may wait longer on Redis than a request: its batches are larger and nobody waits on them
        return open_cache(s.redis_host, s.redis_port, s.redis_db, timeout=2.0, password=s.redis_password)

    def recommender(self) -> Any:
        """The model the API serves (MODEL_DIR), loaded again when its manifest says it changed."""
        from movierec.model.artifact import load_artifact
        from movierec.serving.recommender import Recommender

        sha = jobs.model_sha(self.settings.model_path)
        with self._lock:
            if self._recommender is None or sha != self._model_sha:
                import torch

                torch.set_num_threads(self.settings.torch_threads)
                artifact = load_artifact(self.settings.model_path)
                self._recommender = Recommender(artifact, self.store, self.cache,
                                                min_history=self.settings.min_history,
                                                ttl=self.settings.cache_ttl_seconds)
                self._model_sha = sha
                log.info("model loaded", extra={"fields": {"path": str(self.settings.model_path),
                                                           "version": self._recommender.model_version}})
            return self._recommender

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(settings_of(app))
    return _runtime


@signals.worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    if _runtime is not None:
        _runtime.close()


def _retry_or_fail(task: Task, exc: BaseException) -> NoReturn:
    """Retry a transient failure later (exponential backoff, full jitter); past the last retry, fail with it."""
    s = settings_of(app)
    countdown = get_exponential_backoff_interval(factor=1, retries=task.request.retries,
                                                 maximum=s.celery_retry_backoff_max_seconds, full_jitter=True)
    log.warning("task will retry", extra={"fields": {
        "reason": f"{type(exc).__name__}: {exc}", "retry": task.request.retries + 1,
        "max_retries": s.celery_max_retries, "countdown_s": countdown}})
    raise task.retry(exc=exc, countdown=countdown, max_retries=s.celery_max_retries)


def _progress(task: Task) -> jobs.Progress:
    def report(state: dict[str, Any]) -> None:
        if task.request.id:  # called directly (tests, the in-process path) there is no state to write
            task.update_state(state="PROGRESS", meta=state)
    return report


@app.task(bind=True, name="movierec.refresh_user_vectors")
def refresh_user_vectors(self: Task, user_ids: list[int]) -> dict[str, Any]:
    """Compute the users' vectors into the shared cache, so their next /recommend only scores."""
    rt = runtime()
    if rt.cache.kind != "redis":
        return {"skipped": "REDIS_HOST is not set: a worker's in-process cache is not the API's"}
    try:
        ok, detail = rt.cache.health()
        if not ok:
            raise StoreUnavailable(detail)
        # from here on a new update of these users enqueues a new refresh; earlier ones are covered by this one
        getattr(rt.cache, "client").delete(*[jobs.pending_key(int(u)) for u in user_ids])  # noqa: B009
        return jobs.refresh_user_vectors(rt.recommender(), user_ids, rt.settings.worker_refresh_batch)
    except TRANSIENT as exc:
        _retry_or_fail(self, exc)


@app.task(bind=True, name="movierec.build_index")
def build_index(self: Task, model: str | None = None, kind: str = "flat", params: dict[str, Any] | None = None,
                min_recall: float = 0.0, recall_users: int = 1000) -> dict[str, Any]:
    """`movierec index build --model MODEL --out MOVIEREC_HOME/index/faiss --kind KIND` (+ Qdrant when QDRANT_HOST)."""
    s = runtime().settings
    qdrant = (s.qdrant_host, s.qdrant_port) if s.qdrant_host else None
    try:
        return jobs.build_index(Path(model) if model else s.model_path, s.faiss_dir, kind, params, qdrant,
                                _progress(self), min_recall=min_recall, recall_users=recall_users)
    except TRANSIENT as exc:
        _retry_or_fail(self, exc)


@app.task(bind=True, name="movierec.load_store")
def load_store(self: Task, prepared: str, target: str | None = None) -> dict[str, Any]:
    """`movierec db load --data PREPARED --replace` into TARGET (default: the store the API reads)."""
    try:
        return jobs.load_store(Path(prepared), target, runtime().settings, _progress(self))
    except TRANSIENT as exc:
        _retry_or_fail(self, exc)


@app.task(bind=True, name="movierec.refresh_aggregates")
def refresh_aggregates(self: Task) -> dict[str, Any]:
    """Beat: counts and popular movies for /stats, computed once for every API replica."""
    rt = runtime()
    ttl = max(60, int(3 * rt.settings.worker_aggregates_every_seconds))  # outlives a missed beat or two
    try:
        return jobs.refresh_aggregates(rt.store, rt.cache, ttl)
    except TRANSIENT as exc:
        _retry_or_fail(self, exc)


@app.task(bind=True, name="movierec.drop_stale_cache")
def drop_stale_cache(self: Task) -> dict[str, Any]:
    """Beat: entries of another model, and expired members of the per-user key sets."""
    rt = runtime()
    try:
        return jobs.drop_stale_cache(rt.cache, rt.settings.model_path)
    except TRANSIENT as exc:
        _retry_or_fail(self, exc)
