"""How the API hands work to the background: Celery when CELERY_BROKER_URL is set, else a thread of its own.

    work = open_background_work(settings, lambda: services.recommender)
    work.user_updated(42)                        # refresh user 42's vector soon (coalesced)
    task_id = work.submit("movierec.build_index", {"kind": "hnsw"})
    work.status(task_id)                         # {"state": "PROGRESS", "progress": {...}, ...} or None

Both run the same job functions (`movierec.worker.jobs`); `/health` shows `mode`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import redis
from kombu.utils.url import maybe_sanitize_url

from movierec.settings import Settings
from movierec.store.cache import Cache
from movierec.worker import jobs

log = logging.getLogger("movierec.worker")

TASK_NAMES = ("movierec.build_index", "movierec.load_store", "movierec.refresh_user_vectors",
              "movierec.refresh_aggregates", "movierec.drop_stale_cache")
PENDING_TTL = 600  # a refresh marker outlives any queue wait we expect; if the task was lost, the next update re-enqueues


class BackgroundWork(Protocol):
    mode: str  # "celery" or "in-process"

    def user_updated(self, user_id: int) -> None: ...
    def submit(self, name: str, kwargs: dict[str, Any]) -> str: ...
    def status(self, task_id: str) -> dict[str, Any] | None: ...  # None: no such task (or it expired)
    def health(self) -> tuple[bool, str]: ...
    def close(self) -> None: ...


def open_background_work(settings: Settings, recommender: Callable[[], Any]) -> BackgroundWork:
    """Celery when a broker is configured, else a thread running the same jobs in this process."""
    if settings.celery_broker_url:
        return CeleryWork(settings)
    return ThreadWork(settings, recommender)


class RefreshingCache:
    """The API's cache, telling the background work whenever a user's entries are invalidated.

    `Recommender.invalidate` (what /update_user calls once the rating is stored) bumps the user's
    generation; right after, the user's vector is queued for a refresh, which the cache then
    accepts only at that new generation. Everything else is the wrapped cache's.
    """

    def __init__(self, cache: Cache, work: BackgroundWork) -> None:
        self.inner, self.work = cache, work
        self.kind, self.blocking = cache.kind, cache.blocking

    def invalidate_user(self, user_id: int) -> None:
        self.inner.invalidate_user(user_id)
        self.work.user_updated(user_id)

    def get(self, key: str) -> bytes | None:
        return self.inner.get(key)

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self.inner.set(key, value, ttl)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return self.inner.get_many(keys)

    def get_with_generations(self, keys: list[str], user_ids: list[int]
                             ) -> tuple[list[bytes | None], dict[int, int]]:
        return self.inner.get_with_generations(keys, user_ids)

    def set_many(self, values: dict[str, bytes], ttl: int, read_at: dict[int, int] | None = None) -> None:
        self.inner.set_many(values, ttl, read_at)

    def generations(self, user_ids: list[int]) -> dict[int, int]:
        return self.inner.generations(user_ids)

    def delete_prefix(self, prefix: str) -> None:
        self.inner.delete_prefix(prefix)

    def health(self) -> tuple[bool, str]:
        return self.inner.health()

    def __getattr__(self, name: str) -> Any:  # the backend's own attributes (client, errors, breaker, ...)
        return getattr(self.inner, name)


# -- with a broker --------------------------------------------------------------------------------
class CeleryWork:
    """Enqueue on the broker; task states from the result backend."""

    mode = "celery"

    def __init__(self, settings: Settings) -> None:
        from movierec.worker.app import make_app

        self.settings = settings
        self.app = make_app(settings)
        self.broker = maybe_sanitize_url(settings.celery_broker_url)
        timeout = 0.5  # the request path waits at most this for the broker, the backend or the cache
        self._broker_redis = redis.Redis.from_url(settings.celery_broker_url or "", socket_timeout=timeout,
                                                  socket_connect_timeout=timeout)
        backend = settings.celery_result_backend or settings.celery_broker_url or ""
        self._backend_redis = redis.Redis.from_url(backend, socket_timeout=timeout, socket_connect_timeout=timeout) \
            if backend.startswith("redis") else None
        # the markers that coalesce refreshes live where the worker's cache does
        self._cache_redis = redis.Redis(host=settings.redis_host, port=settings.redis_port, db=settings.redis_db,
                                        socket_timeout=timeout, socket_connect_timeout=timeout) \
            if settings.redis_host else None
        if self._cache_redis is None:
            log.warning("vector refresh off", extra={"fields": {
                "reason": "REDIS_HOST is not set: a worker's cache would not be the API's"}})

    def user_updated(self, user_id: int) -> None:
        """Queue a refresh of the user unless one is queued already (it will read the newest history)."""
        if self._cache_redis is None:
            return
        try:
            if not self._cache_redis.set(jobs.pending_key(user_id), b"1", nx=True, ex=PENDING_TTL):
                return  # coalesced into the refresh already queued
        except redis.RedisError as exc:
            log.warning("refresh not coalesced", extra={"fields": {"user_id": user_id, "reason": str(exc)}})
        try:
            # retry=False: a broker that is down costs this request one failed connect, not a retry loop
            self.app.send_task("movierec.refresh_user_vectors", args=[[user_id]], retry=False)
        except Exception as exc:  # noqa: BLE001 - the rating is stored; only the refresh is lost
            log.error("refresh not queued", extra={"fields": {"user_id": user_id, "broker": self.broker,
                                                              "reason": f"{type(exc).__name__}: {exc}"}})
            with contextlib.suppress(redis.RedisError):
                self._cache_redis.delete(jobs.pending_key(user_id))

    def submit(self, name: str, kwargs: dict[str, Any]) -> str:
        task_id = str(uuid.uuid4())
        if self._backend_redis is not None:  # known ids: GET /tasks/{id} tells "queued" from "no such task"
            self._backend_redis.set(_registry_key(task_id), name, ex=self.settings.celery_result_expires_seconds)
        self.app.send_task(name, kwargs=kwargs, task_id=task_id)
        return task_id

    def status(self, task_id: str) -> dict[str, Any] | None:
        result = self.app.AsyncResult(task_id)
        state = result.state
        name = getattr(result, "name", None)
        if state == "PENDING":
            registered = self._backend_redis.get(_registry_key(task_id)) if self._backend_redis else None
            if registered is None:
                return None
            name = registered.decode() if isinstance(registered, bytes) else str(registered)
        info = result.info
        return {
            "task_id": task_id,
            "name": name,
            "state": state,
            "progress": info if state == "PROGRESS" and isinstance(info, dict) else None,
            "result": info if state == "SUCCESS" else None,
            "error": _reason(info) if state in ("FAILURE", "RETRY") else None,
            "retries": getattr(result, "retries", None) or 0,
        }

    def health(self) -> tuple[bool, str]:
        try:
            self._broker_redis.ping()
        except redis.RedisError as exc:
            return False, f"celery: broker {self.broker} unreachable ({type(exc).__name__}); updates are stored, " \
                          "refreshes and reindexing wait"
        refresh = "vector refresh on" if self._cache_redis is not None else "vector refresh off (no REDIS_HOST)"
        return True, f"celery: broker {self.broker}, queues default and index; {refresh}"

    def close(self) -> None:
        for client in (self._broker_redis, self._backend_redis, self._cache_redis):
            if client is not None:
                client.close()
        self.app.close()


def _registry_key(task_id: str) -> str:
    return f"movierec:task:{task_id}"


def _reason(info: Any) -> str | None:
    if isinstance(info, BaseException):
        return f"{type(info).__name__}: {info}"
    return None if info is None else str(info)


# -- without a broker -----------------------------------------------------------------------------
class ThreadWork:
    """The same jobs in this process: one thread refreshes vectors, one runs the submitted tasks in turn."""

    mode = "in-process"
    MAX_TASKS = 1000  # task records kept for GET /tasks/{id}, oldest dropped first

    def __init__(self, settings: Settings, recommender: Callable[[], Any]) -> None:
        self.settings, self.recommender = settings, recommender
        self._pending: dict[int, None] = {}  # users waiting for a refresh, in order (a set that keeps order)
        self._wake = threading.Condition()
        self._stopped = False
        self._tasks: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="background")
        self._refresher = threading.Thread(target=self._refresh_loop, name="refresh", daemon=True)
        self._refresher.start()
        self.refreshed = 0  # users whose vector a refresh computed

    def user_updated(self, user_id: int) -> None:
        with self._wake:
            self._pending[user_id] = None  # several updates before the thread wakes: one computation
            self._wake.notify()

    def _refresh_loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    return
                users, self._pending = list(self._pending), {}
            recommender = self.recommender()
            if recommender is None:
                continue
            try:
                done = jobs.refresh_user_vectors(recommender, users, self.settings.worker_refresh_batch)
                self.refreshed += done["computed"]
            except Exception as exc:  # noqa: BLE001 - a refresh is an optimisation: the next request computes
                log.error("refresh failed", extra={"fields": {"users": len(users),
                                                              "reason": f"{type(exc).__name__}: {exc}"}})

    def submit(self, name: str, kwargs: dict[str, Any]) -> str:
        if name != "movierec.build_index":
            raise ValueError(f"{name}: only movierec.build_index runs in-process; start a worker for the others")
        task_id = str(uuid.uuid4())
        with self._lock:
            self._tasks[task_id] = {"task_id": task_id, "name": name, "state": "PENDING", "progress": None,
                                    "result": None, "error": None, "retries": 0}
            while len(self._tasks) > self.MAX_TASKS:
                self._tasks.popitem(last=False)
        self._executor.submit(self._run_build, task_id, kwargs)
        return task_id

    def _update(self, task_id: str, **values: Any) -> None:
        with self._lock:
            if task_id in self._tasks:
                self._tasks[task_id].update(values)

    def _run_build(self, task_id: str, kwargs: dict[str, Any]) -> None:
        s = self.settings
        self._update(task_id, state="STARTED")
        start = time.perf_counter()
        try:
            result = jobs.build_index(s.model_path, s.faiss_dir, kwargs.get("kind", "flat"), kwargs.get("params"),
                                      (s.qdrant_host, s.qdrant_port) if s.qdrant_host else None,
                                      lambda state: self._update(task_id, state="PROGRESS", progress=state),
                                      min_recall=kwargs.get("min_recall", 0.0))
        except Exception as exc:  # noqa: BLE001 - recorded for GET /tasks/{id}
            self._update(task_id, state="FAILURE", progress=None, error=f"{type(exc).__name__}: {exc}")
            log.error("task failed", extra={"fields": {"task_id": task_id, "reason": str(exc),
                                                       "where": traceback.format_exc(limit=-1).strip()}})
            return
        self._update(task_id, state="SUCCESS", progress=None, result=result)
        log.info("task succeeded", extra={"fields": {"task_id": task_id, **result,
                                                     "seconds": round(time.perf_counter() - start, 3)}})

    def status(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._tasks.get(task_id)
            return dict(record) if record is not None else None

    def health(self) -> tuple[bool, str]:
        return True, "in-process: no CELERY_BROKER_URL, background jobs run in a thread of the API"

    def close(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._executor.shutdown(wait=False, cancel_futures=True)
