"""The cache for user histories, user vectors and responses: Redis when REDIS_HOST is set, in-process otherwise.

Values are bytes. Keys of one user share a prefix so `/update_user` can drop them all at once.
Each user also has a generation, bumped by every change of their history: a write made with the
generation its data was read at is dropped when the history has changed since (so a computation
that started before an update cannot cache its stale result over it, in any worker). When Redis
fails, the cache reports a miss (or drops the write), counts the error and marks itself degraded;
the API keeps serving uncached and `/health` says why.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Protocol

import redis


class Cache(Protocol):
    kind: str
    blocking: bool  # True when a call may wait on the network

    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, value: bytes, ttl: int) -> None: ...
    def get_many(self, keys: list[str]) -> list[bytes | None]: ...  # one round trip
    # get_many and generations in one round trip
    def get_with_generations(self, keys: list[str], user_ids: list[int]
                             ) -> tuple[list[bytes | None], dict[int, int]]: ...
    # one round trip; with `read_at`, a user's keys are written only if their generation is still that
    def set_many(self, values: dict[str, bytes], ttl: int, read_at: dict[int, int] | None = None) -> None: ...
    def generations(self, user_ids: list[int]) -> dict[int, int]: ...  # one round trip
    def invalidate_user(self, user_id: int) -> None: ...  # bump the generation, drop the user's keys
    def delete_prefix(self, prefix: str) -> None: ...
    def health(self) -> tuple[bool, str]: ...


def user_prefix(user_id: int) -> str:
    return f"movierec:user:{user_id}:"


def key_user(key: str) -> int | None:
    """The user whose prefix starts `key`, or None."""
    group = _group(key)
    return int(group[len(_USERS):-1]) if group else None


class MemoryCache:
    """A bounded LRU with per-entry expiry; thread-safe.

    Keys are also grouped by user, so dropping a user's keys touches only theirs, not the whole
    cache (the lock is held meanwhile, and the event loop reads through it).
    """

    kind = "memory"
    blocking = False

    def __init__(self, max_entries: int = 100_000) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._groups: dict[str, set[str]] = {}
        self._generations: dict[int, int] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                self._drop(key)
                return None
            self._data.move_to_end(key)
            return entry[1]

    def set(self, key: str, value: bytes, ttl: int) -> None:
        with self._lock:
            self._set(key, value, ttl)

    def _set(self, key: str, value: bytes, ttl: int) -> None:
        self._data[key] = (time.monotonic() + ttl, value)
        self._data.move_to_end(key)
        self._groups.setdefault(_group(key), set()).add(key)
        while len(self._data) > self.max_entries:
            self._drop(next(iter(self._data)))

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.get(key) for key in keys]

    def set_many(self, values: dict[str, bytes], ttl: int, read_at: dict[int, int] | None = None) -> None:
        with self._lock:  # checked and written under one lock: an invalidation cannot land in between
            for key, value in values.items():
                user = key_user(key) if read_at is not None else None
                if user is None or read_at is None or user not in read_at \
                        or self._generations.get(user, 0) == read_at[user]:
                    self._set(key, value, ttl)

    def generations(self, user_ids: list[int]) -> dict[int, int]:
        return {u: self._generations.get(u, 0) for u in user_ids}

    def get_with_generations(self, keys: list[str], user_ids: list[int]
                             ) -> tuple[list[bytes | None], dict[int, int]]:
        return self.get_many(keys), self.generations(user_ids)

    def invalidate_user(self, user_id: int) -> None:
        with self._lock:
            self._generations[user_id] = self._generations.get(user_id, 0) + 1
        self.delete_prefix(user_prefix(user_id))

    def delete_prefix(self, prefix: str) -> None:
        with self._lock:
            group = _group(prefix)  # '' unless the prefix names one user's keys
            keys = self._groups.get(group, ()) if group else list(self._data)
            for key in [k for k in keys if k.startswith(prefix)]:
                self._drop(key)

    def _drop(self, key: str) -> None:
        del self._data[key]
        group = self._groups.get(_group(key))
        if group is not None:
            group.discard(key)
            if not group:
                del self._groups[_group(key)]

    def health(self) -> tuple[bool, str]:
        return True, f"in-process ({len(self._data)} entries)"


def _group(key: str) -> str:
    """'movierec:user:42:' for every key of user 42; '' for any other key."""
    if not key.startswith(_USERS):
        return ""
    end = key.find(":", len(_USERS))
    return key[: end + 1] if end >= 0 else ""


_USERS = "movierec:user:"


def generation_key(user_id: int) -> str:
    """Outside the user's prefix: dropping the user's keys keeps it."""
    return f"movierec:generation:{user_id}"


def index_key(user_id: int) -> str:
    """The set of a user's cached keys, so that an update drops them without scanning the keyspace."""
    return f"movierec:keys:{user_id}"


GENERATION_TTL = 7 * 24 * 3600  # refreshed by every update; far longer than any computation
# KEYS: the generation key, the user's key set, then the keys to write; ARGV: the generation read at,
# the TTL, the values. Every write uses the same TTL, so the set outlives each of its members.
SET_IF_GENERATION = """
if ARGV[1] ~= '' and (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
for i = 3, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i], 'EX', ARGV[2])
  redis.call('SADD', KEYS[2], KEYS[i])
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""
# KEYS: the generation key, the user's key set; ARGV: the generation's TTL. Bump, then drop every key.
INVALIDATE_USER = """
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local keys = redis.call('SMEMBERS', KEYS[2])
for i = 1, #keys do redis.call('DEL', keys[i]) end
redis.call('DEL', KEYS[2])
return #keys
"""


class RedisCache:
    """redis-py with short timeouts; errors degrade to misses instead of failing requests."""

    kind = "redis"
    blocking = True

    def __init__(self, host: str, port: int = 6379, db: int = 0, timeout: float = 0.25) -> None:
        self.client = redis.Redis(
            host=host, port=port, db=db, socket_timeout=timeout, socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        self.address = f"{host}:{port}/{db}"
        self._set_if_generation = self.client.register_script(SET_IF_GENERATION)
        self._invalidate_user = self.client.register_script(INVALIDATE_USER)
        self.errors = 0
        self.last_error: str | None = None

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def get(self, key: str) -> bytes | None:
        try:
            return self.client.get(key)  # type: ignore[return-value]  # bytes: the client does not decode
        except redis.RedisError as exc:
            self._failed(exc)
            return None

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self.set_many({key: value}, ttl)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            return self.client.mget(keys)  # type: ignore[return-value]  # bytes: the client does not decode
        except redis.RedisError as exc:
            self._failed(exc)
            return [None] * len(keys)

    def set_many(self, values: dict[str, bytes], ttl: int, read_at: dict[int, int] | None = None) -> None:
        if not values:
            return
        by_user: dict[int, dict[str, bytes]] = {}
        plain = {}
        for key, value in values.items():
            user = key_user(key)
            if user is None:
                plain[key] = value
            else:
                by_user.setdefault(user, {})[key] = value

        def fill(pipe: redis.client.Pipeline) -> None:
            for key, value in plain.items():
                pipe.set(key, value, ex=ttl)
            for user, items in by_user.items():  # checked, written and indexed atomically inside Redis
                expected = "" if read_at is None or user not in read_at else read_at[user]
                keys = [generation_key(user), index_key(user), *items]
                # EVALSHA itself: a Script object in a pipeline costs a SCRIPT EXISTS round trip per execute
                pipe.evalsha(self._set_if_generation.sha, len(keys), *keys, expected, ttl, *items.values())

        try:
            for attempt in range(2):
                pipe = self.client.pipeline(transaction=False)
                fill(pipe)
                try:
                    pipe.execute()
                    return
                except redis.exceptions.NoScriptError:  # first use, or a restarted server: load, write again
                    if attempt:
                        raise
                    self.client.script_load(SET_IF_GENERATION)
        except redis.RedisError as exc:
            self._failed(exc)

    def generations(self, user_ids: list[int]) -> dict[int, int]:
        return self.get_with_generations([], user_ids)[1]

    def get_with_generations(self, keys: list[str], user_ids: list[int]
                             ) -> tuple[list[bytes | None], dict[int, int]]:
        if not keys and not user_ids:
            return [], {}
        try:
            values = self.client.mget([*keys, *(generation_key(u) for u in user_ids)])
        except redis.RedisError as exc:
            self._failed(exc)
            values = [None] * (len(keys) + len(user_ids))
        found: list[bytes | None] = values[:len(keys)]  # type: ignore[assignment]  # bytes: the client does not decode
        return found, {u: int(v or 0) for u, v in zip(user_ids, values[len(keys):])}

    def invalidate_user(self, user_id: int) -> None:
        """Bump the generation and drop the user's keys (those listed in their key set) in one script."""
        try:
            self._invalidate_user(keys=[generation_key(user_id), index_key(user_id)], args=[GENERATION_TTL])
        except redis.RedisError as exc:
            self._failed(exc)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under prefix (SCAN, never KEYS: a walk of the keyspace; users use invalidate_user)."""
        try:
            keys = list(self.client.scan_iter(match=prefix + "*", count=500))
            if keys:
                self.client.delete(*keys)
        except redis.RedisError as exc:
            self._failed(exc)

    def health(self) -> tuple[bool, str]:
        try:
            self.client.ping()
            return True, f"redis {self.address}"
        except redis.RedisError as exc:
            self._failed(exc)
            return False, f"redis {self.address} unreachable ({type(exc).__name__}); serving uncached"


def open_cache(host: str | None, port: int = 6379, db: int = 0) -> Cache:
    return RedisCache(host, port, db) if host else MemoryCache()
