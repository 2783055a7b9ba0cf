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
from movierec.cache import Cache, open_cache
from movierec.model.artifact import ArtifactError, load_artifact
from movierec.serving.batcher import RecommendBatcher
from movierec.serving.recommender import Recommender
from movierec.settings import Settings
from movierec.store import MovieStore, open_store

log = logging.getLogger("movierec.api")


QDRANT_COLLECTION = "movierec-items"


def qdrant_collection(client: Any, vectors: Any, catalog: Any, collection: str = QDRANT_COLLECTION) -> Any:
    """The server collection for these item vectors: reused when it already holds them, else (re)built."""
    from movierec.index.base import content_version
    from movierec.index.qdrant_index import QdrantServerIndex

    version = content_version(vectors)
    if client.collection_exists(collection):
        existing = QdrantServerIndex(client, collection)
        if existing.version == version and existing.size == len(vectors):
            return existing
    log.info("building qdrant collection", extra={"fields": {"collection": collection, "version": version}})
    return QdrantServerIndex.build(client, collection, vectors, catalog, version=version)


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
        metrics = ApiMetrics()
        services = cls(settings, open_store(settings.mongo_uri, settings.sqlite_path),
                       open_cache(settings.redis_host, settings.redis_port, settings.redis_db), metrics)
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
        self.batcher = RecommendBatcher(self.recommender, on_batch=self.metrics.batch_size.observe)
        self.metrics.model_loaded.set(1)
        log.info("model loaded", extra={"fields": {"path": str(self.settings.model_path),
                                                   "version": self.recommender.model_version}})
        if self.settings.torchserve_url:
            self.recommender.remote = self._model_server_client()

    def _model_server_client(self) -> Any:
        """Method torchserve ranks on TorchServe/KServe; the in-process model answers whenever it cannot."""
        from movierec.serving.model_client import CircuitBreaker, ModelServerClient

        s = self.settings
        breaker = CircuitBreaker(s.torchserve_failures_to_open, s.torchserve_cooldown_seconds,
                                 name=f"model server {s.torchserve_url}")
        log.info("model server", extra={"fields": {"url": s.torchserve_url, "protocol": s.torchserve_protocol}})
        return ModelServerClient(s.torchserve_url, s.torchserve_protocol, s.torchserve_model,
                                 timeout=s.torchserve_timeout_ms / 1000, breaker=breaker)

    # -- indexes -----------------------------------------------------------------------------
    def load_indexes(self) -> None:
        self._load_faiss()
        self._load_qdrant()

    def _load_faiss(self) -> None:
        from movierec.index.base import IndexFileError
        from movierec.index.store import IndexHolder

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

            vectors = item_vectors(self.recommender.model)
            catalog = self.recommender.catalog.filters
            if self.settings.qdrant_host:
                from qdrant_client import QdrantClient

                client = QdrantClient(host=self.settings.qdrant_host, port=self.settings.qdrant_port, timeout=5)
                index = qdrant_collection(client, vectors, catalog)
            else:
                from movierec.index.qdrant_index import QdrantEdgeIndex

                index = QdrantEdgeIndex.build(vectors, catalog)
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
        serving = all(p.ok for p in parts.values() if p.required)
        healthy = serving and all(p.ok for p in parts.values())
        return serving, healthy, {k: {"ok": p.ok, "detail": p.detail} for k, p in parts.items()}

    def close(self) -> None:
        self._stop.set()
        if self.batcher is not None:
            self.batcher.close()
        self.store.close()
