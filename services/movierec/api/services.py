"""What the API talks to, built once from Settings: store, cache, model, indexes, and their health.

Every dependency that fails to load is recorded with a reason instead of stopping the server:
without the model the API serves popular movies; without an index that method answers 503;
`/health` lists each component and says why.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from movierec.api.metrics import ApiMetrics
from movierec.index.base import Filters
from movierec.model.artifact import ArtifactError, load_artifact
from movierec.serving.batcher import RecommendBatcher
from movierec.serving.inference import configure_scoring, scoring_plan
from movierec.serving.recommender import Recommender
from movierec.settings import Settings
from movierec.store import InvalidValue, MovieStore, open_store
from movierec.store.cache import Cache, open_cache
from movierec.worker.client import BackgroundWork, RefreshingCache, open_background_work
from movierec.worker.jobs import cached_aggregates

log = logging.getLogger("movierec.api")


@dataclass
class Component:
    ok: bool
    detail: str
    required: bool = False


@dataclass
class Services:
    settings: Settings
    store: MovieStore
    cache: Cache
    metrics: ApiMetrics
    recommender: Recommender | None = None
    batcher: RecommendBatcher | None = None  # every model pass goes through its one thread
    indexes: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    _stop: threading.Event = field(default_factory=threading.Event)
    work: BackgroundWork | None = None  # vector refreshes and reindexing: Celery, or a thread without a broker
    _genres: frozenset[str] | None = None

    @classmethod
    def start(cls, settings: Settings) -> Services:
        import faiss
        import torch
        from threadpoolctl import threadpool_limits

        # the model thread runs one batch at a time while the event loop serves HTTP on the other
        # core; thread pools that spin-wait after each call (OpenBLAS, OpenMP) only fight over the cores
        torch.set_num_threads(settings.torch_threads)
        faiss.omp_set_num_threads(1)
        threadpool_limits(1, user_api="blas")
        configure_scoring(settings.scoring_kernel, settings.scoring_calibration_seconds)  # measured at model load
        metrics = ApiMetrics()
        cache = open_cache(settings.redis_host, settings.redis_port, settings.redis_db,
                           timeout=settings.redis_timeout_ms / 1000, failures_to_open=settings.redis_failures_to_open,
                           cooldown=settings.redis_cooldown_seconds, max_bytes=settings.cache_max_bytes,
                           password=settings.redis_password)
        services = cls(settings, open_store(settings.mongo_uri, settings.sqlite_path), cache, metrics)
        services.work = open_background_work(settings, lambda: services.recommender)
        services.cache = RefreshingCache(services.cache, services.work)  # /update_user queues a vector refresh
        services.load_model()
        services.load_indexes()
        threading.Thread(target=services._watch_indexes, name="index-watch", daemon=True).start()
        # the catalog's ~10^5 long-lived lists and strings would otherwise be walked by every full
        # garbage collection (tens of ms, a p99 spike); park them outside the collector
        gc.collect()
        gc.freeze()
        return services

    def load_model(self) -> None:
        try:
            artifact = load_artifact(self.settings.model_path)
        except ArtifactError as exc:
            self.problems["model"] = f"{exc}; serving popular movies"
            log.error("model not loaded", extra={"fields": {"reason": str(exc)}})
            self.metrics.model_loaded.set(0)
            return
        self.recommender = Recommender(
            artifact, self.store, self.cache, indexes={"faiss": self._faiss, "qdrant": self._qdrant},
            min_history=self.settings.min_history, ttl=self.settings.cache_ttl_seconds,
            observe=self.metrics.observe_stage,
            on_cache=lambda hit: self.metrics.cache.labels("hit" if hit else "miss").inc(),
        )
        self.batcher = RecommendBatcher(self.recommender, on_batch=self.metrics.batch_size.observe,
                                        slice_users=self.settings.batch_slice_users,
                                        thread_setup=_one_openmp_thread)
        self.metrics.model_loaded.set(1)
        self.metrics.scoring_kernel.clear()
        for batch, kernel in scoring_plan(self.recommender.item_weights)["by_batch"].items():
            self.metrics.scoring_kernel.labels(batch, kernel).set(1)
        log.info("model loaded", extra={"fields": {"path": str(self.settings.model_path),
                                                   "version": self.recommender.model_version}})
        if self.settings.torchserve_url:
            self.recommender.remote = self._model_server_client()

    def _model_server_client(self) -> Any:
        """Method torchserve ranks on TorchServe/KServe; the in-process model answers whenever it cannot."""
        from movierec.breaker import CircuitBreaker
        from movierec.serving.torchserve.client import ModelServerClient

        s = self.settings
        breaker = CircuitBreaker(s.torchserve_failures_to_open, s.torchserve_cooldown_seconds,
                                 name=f"model server {s.torchserve_url}")
        log.info("model server", extra={"fields": {"url": s.torchserve_url, "protocol": s.torchserve_protocol}})
        assert s.torchserve_url is not None
        return ModelServerClient(s.torchserve_url, s.torchserve_protocol, s.torchserve_model,
                                 timeout=s.torchserve_timeout_ms / 1000, breaker=breaker)

    # -- indexes -----------------------------------------------------------------------------
    def load_indexes(self) -> None:
        self._load_faiss()
        self._load_qdrant()

    def _load_faiss(self) -> None:
        from movierec.index.base import IndexFileError
        from movierec.index.versions import IndexHolder

        try:
            self.indexes["faiss"] = IndexHolder(self.settings.faiss_dir)
            self._index_loaded("faiss", self.indexes["faiss"].index.version)
        except (IndexFileError, OSError) as exc:
            problem = f"{exc}; method faiss unavailable (exact scoring still works)"
            if self.problems.get("faiss") != problem:  # log once, not at every poll
                log.error("faiss index not loaded", extra={"fields": {"reason": str(exc)}})
            self.problems["faiss"] = problem

    def _load_qdrant(self) -> None:
        """Qdrant Edge in-process over the model's item embeddings (a Qdrant server when QDRANT_HOST is set)."""
        if self.recommender is None:
            self.problems["qdrant"] = "no model loaded; method qdrant unavailable"
            return
        try:
            from movierec.index.base import item_vectors
            from movierec.index.qdrant_index import open_qdrant_index

            index = open_qdrant_index(item_vectors(self.recommender.model), self.recommender.catalog.filters,
                                      self.settings.qdrant_host, self.settings.qdrant_port)
            self.indexes["qdrant"] = index
            self._index_loaded("qdrant", index.version)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the method unavailable, with the reason
            self.problems["qdrant"] = f"{exc}; method qdrant unavailable"
            log.error("qdrant index not loaded", extra={"fields": {"reason": str(exc)}})

    def _index_loaded(self, kind: str, version: str) -> None:
        self.problems.pop(kind, None)
        self.metrics.index_version.clear()
        for name, holder in self.indexes.items():
            self.metrics.index_version.labels(name, self._version(name, holder)).set(1)
        log.info("index loaded", extra={"fields": {"kind": kind, "version": version}})

    @staticmethod
    def _version(kind: str, holder: Any) -> str:
        return holder.index.version if kind == "faiss" else holder.version

    def _faiss(self):
        holder = self.indexes.get("faiss")
        return holder.index if holder is not None else None  # the version current when the request starts

    def _qdrant(self):
        return self.indexes.get("qdrant")

    def _watch_indexes(self) -> None:
        """Swap to a new FAISS version when CURRENT changes; load it if it appears after start."""
        while not self._stop.wait(self.settings.index_poll_seconds):
            try:
                holder = self.indexes.get("faiss")
                if holder is None:
                    self._load_faiss()
                elif holder.reload_if_changed():
                    self._index_loaded("faiss", holder.index.version)
            except Exception as exc:  # noqa: BLE001 - keep serving the old index
                log.error("index reload failed", extra={"fields": {"reason": str(exc)}})

    # -- health ------------------------------------------------------------------------------
    def observe_circuits(self) -> None:
        """movierec_circuit_open for each dependency behind a circuit breaker (Redis, the model server)."""
        breakers = {"redis": getattr(self.cache, "breaker", None) if self.cache.kind == "redis" else None,
                    "torchserve": getattr(getattr(self.recommender, "remote", None), "breaker", None)}
        for dependency, breaker in breakers.items():
            if breaker is not None:
                self.metrics.circuit_open.labels(dependency).set(1 if breaker.state == "open" else 0)

    def health(self) -> tuple[bool, bool, dict[str, dict[str, Any]]]:
        """(can serve, fully healthy, components)."""
        parts: dict[str, Component] = {}
        store_ok = self.store.ping()
        parts["store"] = Component(store_ok, self.store.location, required=True)
        cache_ok, cache_detail = self.cache.health()
        parts["cache"] = Component(cache_ok, cache_detail)
        parts["model"] = Component(self.recommender is not None,
                                   self.problems.get("model", str(self.settings.model_path)))
        for kind in ("faiss", "qdrant"):
            holder = self.indexes.get(kind)
            parts[kind] = Component(holder is not None,
                                    self.problems.get(kind) or f"version {self._version(kind, holder)}")
        remote = getattr(self.recommender, "remote", None) if self.recommender else None
        if remote is not None:
            ok, detail = remote.health()
            parts["torchserve"] = Component(ok, detail)
        if self.work is not None:
            parts["background"] = Component(*self.work.health())
        serving = all(p.ok for p in parts.values() if p.required)
        healthy = serving and all(p.ok for p in parts.values())
        return serving, healthy, {k: {"ok": p.ok, "detail": p.detail} for k, p in parts.items()}

    # -- input checks that need the data -------------------------------------------------------
    def known_genres(self) -> frozenset[str]:
        """The genres of the catalogue (the model's, else the store's most rated movies), computed once."""
        if self._genres is None:
            if self.recommender is not None:
                lists = self.recommender.catalog.genres
            else:
                lists = [m["genres"] for m in self.store.popular_movies(1000, None, None, None, None)]
            self._genres = frozenset(g for genres in lists for g in genres)
        return self._genres

    def check_filters(self, filters: Filters) -> None:
        """InvalidValue (a 422) naming the first genre the catalogue does not have."""
        known = self.known_genres()
        for genre in filters.genres:
            if genre not in known:
                raise InvalidValue("genres", f"unknown genre {genre!r} (known: {', '.join(sorted(known))})")

    # -- answers that need no model ------------------------------------------------------------
    def popular_for_user(self, user_id: int, k: int, method: str, filters: Filters, exclude_rated: bool
                         ) -> dict[str, Any]:
        """No model loaded: the most rated movies the user has not rated, straight from the store."""
        seen = {h.movie_id for h in self.store.user_history(user_id)} if exclude_rated else set()
        movies = self.store.popular_movies(k + len(seen), list(filters.genres) or None, filters.year_min,
                                           filters.year_max, filters.min_rating)
        items = [{"movie_id": m["movie_id"], "title": m["title"], "year": m["year"], "genres": m["genres"],
                  "score": float(m["rating_count"]), "because": []} for m in movies if m["movie_id"] not in seen][:k]
        return {"user_id": user_id, "strategy": "popular", "method": method, "served_by": "store",
                "model_version": None, "index_version": None, "cached": False, "items": items}

    def index_versions(self) -> dict[str, str]:
        return {kind: self._version(kind, holder) for kind, holder in self.indexes.items()}

    def stats(self) -> dict[str, Any]:
        """What `/stats` shows: counts, versions, cache hit ratio, latency per endpoint and method."""
        rec = self.recommender
        return {
            "counts": self.store.counts(),
            "model_version": rec.model_version if rec else None,
            "index_versions": self.index_versions(),
            "cache": {
                "kind": self.cache.kind,
                "hits": rec.cache_stats.hits if rec else 0,
                "misses": rec.cache_stats.misses if rec else 0,
                "hit_ratio": round(rec.cache_stats.ratio, 4) if rec else 0.0,
            },
            "latency": self.metrics.latency_summary(),
            "scoring": scoring_plan(rec.item_weights) if rec else None,
            "uptime_s": round(time.time() - self.started, 1),
            "aggregates": cached_aggregates(self.cache),  # beat's counts and popular movies (None without beat)
        }

    def close(self) -> None:
        self._stop.set()
        if self.work is not None:
            self.work.close()
        if self.batcher is not None:
            self.batcher.close()
        qdrant = self.indexes.pop("qdrant", None)
        if qdrant is not None:
            qdrant.close()  # an Edge shard's temporary folder goes with it
        self.store.close()


def _one_openmp_thread() -> None:
    """OpenMP's thread count is per thread, so Services.start's setting does not reach the model thread:
    without this a one-query FAISS search there ran on two threads that only fought over the cores
    (23.8 ms against 2.4 ms with one)."""
    import faiss

    faiss.omp_set_num_threads(1)
