"""The recommendation service behind the API: history → user vector → top-k, with caching and fallbacks.

Methods:
  torchserve  the gSASRec model scores every item (remote TorchServe/KServe when configured, else in-process)
  faiss       the model's user vector, top-k from the FAISS index over the output item embeddings
  qdrant      the same vector, Qdrant search (filters run inside the engine)
  popular     most-rated movies of the training data
A user with fewer than `min_history` known ratings gets popular movies (`strategy: popular`).
`because` lists up to three movies from the user's history with the highest attention weight
of the model's last block at the most recent position: what the model looked at.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson
import torch

from movierec.errors import MovierecError
from movierec.index.base import Filters
from movierec.model.artifact import Artifact
from movierec.serving.catalog import MovieCatalog
from movierec.serving.inference import encode, exact_top_k
from movierec.serving.model_server import ModelServer, ModelServerUnavailable
from movierec.store.cache import Cache, user_prefix


class HistoryStore(Protocol):
    def user_history(self, user_id: int, limit: int | None = None) -> Sequence[tuple[int, float | None, int]]: ...


class VectorSearch(Protocol):
    version: str

    def search(self, vectors: np.ndarray, k: int, filters: Any = None, exclude: Any = None) -> list: ...


class MethodUnavailable(MovierecError):
    """The requested method has no backend right now (e.g. the FAISS index is missing)."""


@dataclass
class Recommendation:
    user_id: int
    strategy: str
    method: str
    served_by: str
    items: list[dict[str, Any]]
    model_version: str | None = None
    index_version: str | None = None
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id, "strategy": self.strategy, "method": self.method, "served_by": self.served_by,
            "model_version": self.model_version, "index_version": self.index_version, "cached": self.cached,
            "items": self.items,
        }


@dataclass
class Work:
    """One recommend_many call between its steps: what `gather` read, what `compute` made, what `save` writes."""

    user_ids: list[int]
    k: int
    method: str
    filters: Filters
    exclude_rated: bool
    read_at: dict[int, int]
    keys: dict[int, str] = field(default_factory=dict)  # user -> response key
    results: dict[int, Recommendation] = field(default_factory=dict)
    todo: list[int] = field(default_factory=list)  # distinct users without a cached response
    histories: dict[int, np.ndarray] = field(default_factory=dict)
    vectors: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # cached ones
    writes: dict[str, bytes] = field(default_factory=dict)

    def answers(self) -> list[Recommendation]:
        return [self.results[u] for u in self.user_ids]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    on_count: Callable[[bool], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, hit: bool) -> None:
        with self.lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1
        if self.on_count:
            self.on_count(hit)

    @property
    def ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class Recommender:
    def __init__(
        self,
        artifact: Artifact,
        store: HistoryStore,
        cache: Cache,
        *,
        indexes: dict[str, Callable[[], VectorSearch | None]] | None = None,
        min_history: int = 3,
        ttl: int = 300,
        observe: Callable[[str, float], None] | None = None,
        on_cache: Callable[[bool], None] | None = None,
    ) -> None:
        self.artifact = artifact
        self.model = artifact.model.eval()
        self.item_weights = self.model.output_embeddings.detach().contiguous()
        self.catalog = MovieCatalog(artifact.items)
        self.store, self.cache = store, cache
        self.indexes = indexes or {}
        self.min_history, self.ttl = min_history, ttl
        self.model_version = str(artifact.manifest.get("files", {}).get("model.pt", ""))[:12] or None
        self.cache_stats = CacheStats(on_count=on_cache)
        self.observe = observe or (lambda stage, seconds: None)
        counts = artifact.items.column("rating_count").to_numpy() if "rating_count" in artifact.items.column_names \
            else np.zeros(self.catalog.size)
        self.popularity = np.zeros(self.catalog.size + 1)
        self.popularity[artifact.items.column("item_idx").to_numpy()] = counts
        self.popularity[0] = -np.inf  # scores are the raw rating counts; ties: lower item_idx first (stable sort)
        self.remote: ModelServer | None = None  # method torchserve goes through it when set
        self.warm_up()

    def warm_up(self) -> None:
        """One pass at full length before the first request: lazy buffers and kernels are made now."""
        history = np.arange(1, min(self.catalog.size, self.model.cfg.seq_len) + 1, dtype=np.int64)
        vectors, _ = self.encode([history])
        self._exact(vectors, 10, None, [history])

    # -- histories ---------------------------------------------------------------------------
    def history(self, user_id: int, read_at: int | None = None) -> np.ndarray:
        """The user's known item_idx, oldest first (cached; dropped on update).

        `read_at`: the user's generation, when the caller has just read it.
        """
        return self.histories([user_id], None if read_at is None else {user_id: read_at})[user_id]

    def histories(self, user_ids: Sequence[int], read_at: dict[int, int] | None = None) -> dict[int, np.ndarray]:
        """`history` of several users with one cache round trip for all of them."""
        users = list(dict.fromkeys(user_ids))
        keys = [user_prefix(u) + "history" for u in users]
        if read_at is not None and all(u in read_at for u in users):
            raws = self.cache.get_many(keys)
        else:
            raws, read_at = self.cache.get_with_generations(keys, users)
        found: dict[int, np.ndarray] = {}
        fresh: dict[str, bytes] = {}
        for u, key, raw in zip(users, keys, raws):
            self.cache_stats.count(raw is not None)
            if raw is not None:
                found[u] = np.frombuffer(raw, dtype=np.int64)
                continue
            start = time.perf_counter()
            rows = self.store.user_history(u)
            self.observe("store", time.perf_counter() - start)
            found[u] = self.catalog.to_item_idx([movie for movie, _, _ in rows])
            fresh[key] = found[u].astype(np.int64).tobytes()
        self.cache.set_many(fresh, self.ttl, read_at)
        return found

    def invalidate(self, user_id: int) -> None:
        """The user's history changed: drop their cached entries, and refuse writes computed before now."""
        self.cache.invalidate_user(user_id)

    # -- the model ---------------------------------------------------------------------------
    def encode(self, histories: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """User vectors [U, d] and, per user, the item_idx that explain them (see inference.encode)."""
        start = time.perf_counter()
        encoded = encode(self.model, histories)
        self.observe("model", time.perf_counter() - start)
        return encoded.vectors.numpy(), encoded.because

    def cached_vectors(self, user_ids: Sequence[int], histories: Sequence[np.ndarray],
                       read_at: dict[int, int] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """`encode` with the cache: a user's vector and explanation live until their history changes.

        `read_at`: the generation each history was read at (default: now); stale vectors are not cached.
        """
        read_at = read_at if read_at is not None else self.cache.generations(list(user_ids))
        work = Work(list(user_ids), 0, "torchserve", Filters(), True, read_at)
        work.vectors = self._cached_vectors(user_ids)
        found = self._vectors(work, user_ids, histories)
        self.save(work)
        return found

    def _cached_vectors(self, user_ids: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The cached (vector, explaining item_idx) of those users who have one."""
        dim = self.model.cfg.dim
        found = {}
        for u, raw in zip(user_ids, self.cache.get_many([user_prefix(u) + "vector" for u in user_ids])):
            self.cache_stats.count(raw is not None)
            if raw is not None:
                found[u] = (np.frombuffer(raw, np.float32, dim), np.frombuffer(raw, np.int64, offset=4 * dim))
        return found

    def _vectors(self, work: Work, user_ids: Sequence[int], histories: Sequence[np.ndarray]
                 ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Vectors [U, d] and explanations of `user_ids`: cached ones from `work.vectors`, the rest encoded now
        (and queued in `work.writes`)."""
        vectors = np.empty((len(user_ids), self.model.cfg.dim), dtype=np.float32)
        because: list[np.ndarray] = [np.empty(0, np.int64)] * len(user_ids)
        missing = []
        for row, u in enumerate(user_ids):
            if u in work.vectors:
                vectors[row], because[row] = work.vectors[u]
            else:
                missing.append(row)
        if missing:
            fresh, explained = self.encode([histories[row] for row in missing])
            for row, vector, items in zip(missing, fresh, explained):
                vectors[row], because[row] = vector, items
                work.writes[user_prefix(user_ids[row]) + "vector"] = \
                    vector.astype(np.float32).tobytes() + items.astype(np.int64).tobytes()
        return vectors, because

    def titles(self, items: np.ndarray) -> list[str]:
        return [self.catalog.titles[int(i)] or str(self.catalog.movie_ids[int(i)]) for i in items]

    # -- ranking -----------------------------------------------------------------------------
    def _exact(self, vectors: np.ndarray, k: int, allowed: np.ndarray | None, seen: list[np.ndarray]) -> list:
        """Exact top-k over every item; `allowed` is None when no filter is set."""
        start = time.perf_counter()
        ranked = exact_top_k(torch.from_numpy(vectors), self.item_weights, k, allowed, seen)
        self.observe("exact_topk", time.perf_counter() - start)
        return ranked

    def _indexed(self, method: str, vectors: np.ndarray, k: int, filters: Filters, seen: list[np.ndarray]):
        getter = self.indexes.get(method)
        index = getter() if getter else None
        if index is None:
            raise MethodUnavailable(f"method {method!r}: no {method} index is loaded")
        start = time.perf_counter()
        results = index.search(vectors.astype(np.float32), k, None if filters.is_empty() else filters, seen)
        self.observe(f"{method}_search", time.perf_counter() - start)
        return results, index.version

    def _remote(self, method: str, histories: list[np.ndarray], k: int, filters: Filters,
                seen: list[np.ndarray]):
        """The model server's answer for method torchserve, or None to compute in-process."""
        if method != "torchserve" or self.remote is None:
            return None
        start = time.perf_counter()
        try:
            return self.remote.rank(histories, k, filters, seen)
        except ModelServerUnavailable:
            return None  # the circuit breaker logs and counts; this request is served in-process
        finally:
            self.observe("model_server", time.perf_counter() - start)

    def _popular(self, k: int, allowed: np.ndarray | None, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = self.popularity.copy() if allowed is None else np.where(allowed, self.popularity, -np.inf)
        if len(seen):
            scores[seen] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        top = top[np.isfinite(scores[top])]
        return top, scores[top]

    def lookup(self, user_id: int, k: int, method: str, filters: Filters, exclude_rated: bool
               ) -> tuple[dict[str, Any] | None, int]:
        """The cached response (or None) and the user's generation, in one cache round trip."""
        (raw,), generations = self.cache.get_with_generations(
            [self._response_key(user_id, k, method, filters, exclude_rated)], [user_id])
        return self._cached(raw), generations[user_id]

    def _cached(self, raw: bytes | None) -> dict[str, Any] | None:
        """A cached response as a dict marked `cached` (None on a miss); counts the hit or miss."""
        self.cache_stats.count(raw is not None)
        return None if raw is None else {**orjson.loads(raw), "cached": True}

    def recommend_many(
        self, user_ids: Sequence[int], k: int, method: str = "torchserve", filters: Filters | None = None,
        exclude_rated: bool = True, check_cache: bool = True, histories: dict[int, np.ndarray] | None = None,
        read_at: dict[int, int] | None = None,
    ) -> list[Recommendation]:
        """Recommendations for several users with one model pass for all sequence users.

        `check_cache=False` when the caller has just looked (the micro-batcher): every user is computed.
        `histories` are the users' histories when the caller has read them already, `read_at` the
        generations they were read at: a result computed from a history that has changed since is
        returned but not cached, so the next request sees the update.

        The three steps, for callers that run them on different threads (the API keeps cache and
        store I/O off the model thread): `gather` (cache and store reads), `compute` (the model),
        `save` (cache writes).
        """
        work = self.gather(user_ids, k, method, filters, exclude_rated, check_cache, histories, read_at)
        self.compute(work)
        self.save(work)
        return work.answers()

    def gather(
        self, user_ids: Sequence[int], k: int, method: str = "torchserve", filters: Filters | None = None,
        exclude_rated: bool = True, check_cache: bool = True, histories: dict[int, np.ndarray] | None = None,
        read_at: dict[int, int] | None = None,
    ) -> Work:
        """Everything `compute` needs from the cache and the store: cached responses, histories, cached vectors."""
        known = histories or {}
        given = read_at or {}
        read_at = {**self.cache.generations([u for u in dict.fromkeys(user_ids) if u not in given]), **given}
        filters = filters or Filters()
        work = Work(list(user_ids), k, method, filters, exclude_rated, read_at)
        work.keys = {u: self._response_key(u, k, method, filters, exclude_rated) for u in user_ids}
        distinct = list(dict.fromkeys(user_ids))
        for u, raw in zip(distinct, self.cache.get_many([work.keys[u] for u in distinct]) if check_cache else ()):
            cached = self._cached(raw)
            if cached is not None:
                work.results[u] = Recommendation(**cached)
        work.todo = [u for u in distinct if u not in work.results]
        work.histories = {**self.histories([u for u in work.todo if u not in known], read_at),
                          **{u: known[u] for u in work.todo if u in known}}
        sequence_users = [u for u in work.todo if method != "popular" and len(work.histories[u]) >= self.min_history]
        if sequence_users and (method != "torchserve" or self.remote is None or not self.remote_likely()):
            work.vectors = self._cached_vectors(sequence_users)
        return work

    def remote_likely(self) -> bool:
        """Will method torchserve go to the model server (so cached vectors are not needed)?"""
        breaker = getattr(self.remote, "breaker", None)
        return self.remote is not None and (breaker is None or breaker.state == "closed")

    def compute(self, work: Work, users: Sequence[int] | None = None) -> None:
        """Answer `users` (default: every user `gather` left to do): the model pass, no cache I/O.

        Called once per slice of a large batch, so that single requests are served between slices.
        """
        todo = work.todo if users is None else list(users)
        k, method, filters, exclude_rated = work.k, work.method, work.filters, work.exclude_rated
        allowed = None if filters.is_empty() else self.catalog.allowed(filters)
        sequence_users = [u for u in todo if method != "popular" and len(work.histories[u]) >= self.min_history]
        for u in todo:
            if u not in sequence_users:
                seen = work.histories[u] if exclude_rated else np.empty(0, np.int64)
                items, scores = self._popular(k, allowed, seen)
                work.results[u] = self._build(u, "popular", method, "in-process", items, scores, None, None)
        if sequence_users:
            hs = [work.histories[u] for u in sequence_users]
            seen_by_user = [h if exclude_rated else np.empty(0, np.int64) for h in hs]
            index_version, served_by = None, "in-process"
            remote = self._remote(method, hs, k, filters, seen_by_user)
            if remote is not None:
                (ranked, because), served_by = remote, "torchserve"
            elif method == "torchserve":
                vectors, because = self._vectors(work, sequence_users, hs)
                ranked = self._exact(vectors, k, allowed, seen_by_user)
            else:
                vectors, because = self._vectors(work, sequence_users, hs)
                ranked, index_version = self._indexed(method, vectors, k, filters, seen_by_user)
                served_by = method
            for u, b, (items, scores) in zip(sequence_users, because, ranked):
                work.results[u] = self._build(u, "sequence", method, served_by, items, scores, self.titles(b),
                                              index_version)
        for u in todo:
            work.writes[work.keys[u]] = orjson.dumps(work.results[u].to_dict())

    def save(self, work: Work) -> None:
        """Cache what `compute` made (dropped for users whose history changed since `gather` read it)."""
        self.cache.set_many(work.writes, self.ttl, work.read_at)
        work.writes = {}

    def recommend(self, user_id: int, k: int, method: str = "torchserve", filters: Filters | None = None,
                  exclude_rated: bool = True) -> Recommendation:
        return self.recommend_many([user_id], k, method, filters, exclude_rated)[0]

    def _build(self, user_id, strategy, method, served_by, items, scores, because, index_version) -> Recommendation:
        rows = [
            {**self.catalog.describe(int(i)), "score": round(float(s), 6), "because": because or []}
            for i, s in zip(items, scores)
        ]
        return Recommendation(user_id, strategy, method, served_by, rows, self.model_version, index_version)

    @staticmethod
    def _response_key(user_id: int, k: int, method: str, f: Filters, exclude_rated: bool) -> str:
        """The key of one response: the filters canonical (genres sorted and distinct, numbers as floats),
        JSON-encoded and hashed, so no two different filters share a key and the key's length is bounded."""
        canonical = orjson.dumps([sorted(set(f.genres)), f.year_min, f.year_max,
                                  None if f.min_rating is None else float(f.min_rating)])
        digest = hashlib.blake2b(canonical, digest_size=16).hexdigest()
        return f"{user_prefix(user_id)}rec:{method}:{k}:{int(exclude_rated)}:{digest}"
