"""The background jobs as plain functions: the Celery tasks call them, and so does the API's thread without a broker.

Each is idempotent (running it twice leaves the same state) and uses the code the CLI and the API use:
the Recommender's cached vectors, `index.versions.build_from_model`, `MovieStore.load_prepared`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import orjson

from movierec.errors import MovierecError
from movierec.settings import Settings
from movierec.store import MovieStore, StoreUnavailable, open_store
from movierec.store.cache import Cache

log = logging.getLogger("movierec.worker")

Progress = Callable[[dict[str, Any]], None]
KINDS = ("flat", "ivf", "hnsw")
AGGREGATES_KEY = "movierec:aggregates"  # what refresh_aggregates writes: counts and the most rated movies
MODEL_VERSION_KEY = "movierec:cache-model"  # the model whose vectors the cache holds (drop_stale_cache)
POPULAR_LIMIT = 100


class TaskInputError(MovierecError, ValueError):
    """A task argument that can never work (unknown index kind or parameter, bad store target): no retry."""


class IndexNotPublished(MovierecError):
    """The new index version's recall@10 is below min_recall: it stays on disk, CURRENT is unchanged."""


def pending_key(user_id: int) -> str:
    """Set while a refresh of the user is queued: more updates before it runs enqueue nothing (coalescing)."""
    return f"movierec:refresh-pending:{user_id}"


# -- refresh_user_vectors -------------------------------------------------------------------------
def refresh_user_vectors(recommender: Any, user_ids: Sequence[int], batch: int = 256) -> dict[str, int]:
    """Put the users' vectors in the cache, keyed by the history generation they were computed from.

    Per batch: read the generations, then the histories (cached on the way), then compute only the
    vectors not cached yet (`Recommender.cached_vectors`). A vector whose history changed after its
    generation was read is not stored (the cache refuses the write), so the next request recomputes.
    Users with a history shorter than `min_history` get popular movies and need no vector.
    """
    users = list(dict.fromkeys(int(u) for u in user_ids))
    computed = short = 0
    for start in range(0, len(users), batch):
        chunk = users[start:start + batch]
        read_at = recommender.cache.generations(chunk)
        histories = recommender.histories(chunk, read_at)
        sequence_users = [u for u in chunk if len(histories[u]) >= recommender.min_history]
        short += len(chunk) - len(sequence_users)
        if sequence_users:
            misses = recommender.cache_stats.misses
            recommender.cached_vectors(sequence_users, [histories[u] for u in sequence_users], read_at)
            computed += recommender.cache_stats.misses - misses  # a vector missing from the cache was computed
    return {"users": len(users), "computed": computed, "cached_already": len(users) - short - computed,
            "short_history": short}


# -- build_index ----------------------------------------------------------------------------------
def index_params(kind: str, params: dict[str, Any] | None) -> Any:
    """FaissParams from a JSON object; a bad kind or key is a TaskInputError naming it."""
    from movierec.index.faiss_index import FaissParams

    if kind not in KINDS:
        raise TaskInputError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    known = {f.name for f in fields(FaissParams)}
    unknown = sorted(set(params or {}) - known)
    if unknown:
        raise TaskInputError(f"params.{unknown[0]}: unknown parameter (known: {', '.join(sorted(known))})")
    try:
        return FaissParams(**(params or {}))
    except (TypeError, ValueError) as exc:
        raise TaskInputError(f"params: {exc}") from None


def build_index(model_dir: Path, out: Path, kind: str = "flat", params: dict[str, Any] | None = None,
                qdrant: tuple[str, int] | None = None, progress: Progress | None = None, *,
                min_recall: float = 0.0, recall_users: int = 1000) -> dict[str, Any]:
    """What `movierec index build` does (`build_model_index`), then the Qdrant server's collection when
    `qdrant` names one.

    The version is written under a temporary name and published by replacing CURRENT atomically
    (index.versions), so API replicas polling CURRENT switch between two complete versions. If
    CURRENT already holds an index of this model with this kind and these parameters, nothing is
    built (a redelivered or repeated task finds its work done).
    """
    from movierec.index.versions import RecallTooLow, build_model_index

    report = progress or (lambda state: None)
    faiss_params = index_params(kind, params)
    model = model_sha(model_dir)
    current = _current_manifest(out)
    if current is not None and (current.get("source") or {}).get("model_sha256") == model \
            and current.get("method") == kind and current.get("params") == asdict(faiss_params):
        result: dict[str, Any] = {"version": str(current["version"]), "kind": current.get("kind"), "built": False,
                                  "recall_at_10": current.get("recall_at_10")}
        log.info("index already current", extra={"fields": {"version": result["version"], "kind": kind}})
    else:
        report({"stage": "building", "kind": kind})
        try:
            built = build_model_index(model_dir, out, kind, faiss_params,  # type: ignore[arg-type]
                                      min_recall=min_recall, recall_users=recall_users)
        except RecallTooLow as exc:  # its own constructor does not survive a JSON result: one line instead
            raise IndexNotPublished(str(exc)) from None
        result = {**built.to_json(), "built": True}
        log.info("index built", extra={"fields": {"version": built.version, "kind": built.kind, "out": str(out),
                                                  "seconds": built.build_seconds, "recall_at_10": built.recall_at_10}})
    result["qdrant"] = None
    if qdrant is not None:
        report({"stage": "qdrant", "version": result["version"]})
        result["qdrant"] = _sync_qdrant(model_dir, *qdrant)
    return result


def model_sha(model_dir: Path) -> str | None:
    from movierec.model.artifact import ArtifactError

    path = Path(model_dir) / "manifest.json"
    try:
        return str(json.loads(path.read_text())["files"]["model.pt"])
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{path}: cannot read the model manifest ({type(exc).__name__}: {exc})") from None


def _current_manifest(out: Path) -> dict[str, Any] | None:
    from movierec.index.base import IndexFileError
    from movierec.index.versions import current_version, read_manifest

    try:
        return read_manifest(Path(out) / current_version(out))
    except IndexFileError:
        return None


def _sync_qdrant(model_dir: Path, host: str, port: int) -> str:
    """The server collection of this model's item vectors (rebuilt only when they changed)."""
    from qdrant_client import QdrantClient

    from movierec.index.base import ItemAttributes, item_vectors
    from movierec.index.qdrant_index import server_collection
    from movierec.model.artifact import load_artifact

    artifact = load_artifact(model_dir)
    try:
        collection = server_collection(QdrantClient(host=host, port=port, timeout=30),
                                       item_vectors(artifact.model), ItemAttributes(artifact.items))
    except MovierecError:
        raise
    except Exception as exc:  # noqa: BLE001 - qdrant-client raises several transport errors: all mean "down"
        raise StoreUnavailable(f"qdrant {host}:{port}: {type(exc).__name__}: {exc}") from None
    return str(collection.version)


# -- load_store -----------------------------------------------------------------------------------
def open_target(target: str | None, settings: Settings) -> MovieStore:
    """None: the store the API reads (MONGO_URI, else MOVIEREC_HOME/store.sqlite); 'sqlite': that file;
    'sqlite:PATH': another file; 'mongodb://...': that MongoDB."""
    if target is None:
        return open_store(settings.mongo_uri, settings.sqlite_path)
    if target == "sqlite":
        return open_store(None, settings.sqlite_path)
    if target.startswith("sqlite:") and len(target) > len("sqlite:"):
        return open_store(None, target.removeprefix("sqlite:"))
    if target.startswith(("mongodb://", "mongodb+srv://")):
        return open_store(target, settings.sqlite_path)
    raise TaskInputError(f"target: expected sqlite, sqlite:PATH or a mongodb:// URI, got {target!r}")


def load_store(prepared: Path, target: str | None, settings: Settings,
               progress: Progress | None = None) -> dict[str, Any]:
    """Bulk-load a prepared dataset into the target store (`MovieStore.load_prepared`, the `movierec db load` code).

    The load starts by dropping what the store holds, so a load interrupted anywhere is simply run
    again from the start and never leaves a rating twice.
    """
    from movierec.data.prepared import load_prepared

    report = progress or (lambda state: None)
    data = load_prepared(prepared)
    start, last = time.perf_counter(), 0.0
    with open_target(target, settings) as store:
        if not store.ping():
            raise StoreUnavailable(f"{store.location}: the database does not answer")

        def step(stage: str, done: int, total: int) -> None:
            nonlocal last
            now = time.perf_counter()
            if now - last >= 1.0 or done == total:  # at most one state write a second
                last = now
                report({"stage": stage, "done": done, "total": total, "seconds": round(now - start, 1)})

        counts = store.load_prepared(data, progress=False, on_progress=step)
        location = store.location
    seconds = round(time.perf_counter() - start, 1)
    log.info("store loaded", extra={"fields": {"store": location, **counts, "seconds": seconds}})
    return {"store": location, **counts, "seconds": seconds}


# -- beat's housekeeping --------------------------------------------------------------------------
def refresh_aggregates(store: MovieStore, cache: Cache, ttl: int) -> dict[str, Any]:
    """Counts and the most rated movies, computed once for every replica and kept in the cache under AGGREGATES_KEY."""
    start = time.perf_counter()
    counts, popular = store.counts(), store.popular_movies(POPULAR_LIMIT)
    value = {"counts": counts, "popular": popular, "computed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    cache.set(AGGREGATES_KEY, orjson.dumps(value), ttl)
    return {**counts, "popular": len(popular), "seconds": round(time.perf_counter() - start, 3)}


def cached_aggregates(cache: Cache) -> dict[str, Any] | None:
    raw = cache.get(AGGREGATES_KEY)
    return None if raw is None else dict(orjson.loads(raw))


def drop_stale_cache(cache: Cache, model_dir: Path) -> dict[str, Any]:
    """Drop what the cache holds that no request should read any more.

    - every user's vectors and responses when the model changed since they were cached (they were
      computed by another model);
    - members of the per-user key sets whose key has expired (a set left empty goes with them).
    Only a shared (Redis) cache needs it: the in-process one has a bounded size and per-entry expiry.
    """
    client = getattr(cache, "client", None)
    if client is None:
        return {"skipped": f"{cache.kind} cache"}
    model = model_sha(model_dir)
    dropped = expired = 0
    known = client.get(MODEL_VERSION_KEY)
    if model and (known or b"").decode() != model:
        if known is not None:  # the key sets are left to the sweep below: a set deleted here could lose a new member
            for key in client.scan_iter(match="movierec:user:*", count=1000):
                dropped += client.delete(key)
        client.set(MODEL_VERSION_KEY, model)
    for key in client.scan_iter(match="movierec:keys:*", count=1000):
        members = list(client.smembers(key))
        if not members:
            continue
        pipe = client.pipeline(transaction=False)
        for member in members:
            pipe.exists(member)
        gone = [m for m, alive in zip(members, pipe.execute()) if not alive]
        if gone:  # SREM only: Redis deletes a set left empty, and a member added meanwhile stays
            expired += client.srem(key, *gone)
    result = {"model": (model or "")[:12], "dropped_entries": dropped, "expired_members": expired}
    log.info("cache swept", extra={"fields": result})
    return result
