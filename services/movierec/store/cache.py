"""The cache for user histories, user vectors and responses: Redis when REDIS_HOST is set, in-process otherwise.

Values are bytes. Keys of one user share a prefix so `/update_user` can drop them all at once.
Each user also has a generation, bumped by every change of their history: a write made with the
generation its data was read at is dropped when the history has changed since (so a computation
that started before an update cannot cache its stale result over it, in any worker).

When Redis fails, the cache reports a miss (or drops the write), counts the error and marks itself
degraded; the API keeps serving uncached and `/health` says why. Failing is fast: short connect and
read timeouts, no retries, and a circuit breaker (`movierec.breaker`) that stops calling Redis for a
cooldown after consecutive failures. Invalidations that could not reach Redis are kept (bounded) and
replayed before anything else once it answers again, so a write acknowledged during the outage is
not hidden by an entry cached before it. The in-process cache is bounded in entries and in bytes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from movierec.breaker import CircuitBreaker


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

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 256 * 2**20) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._groups: dict[str, set[str]] = {}
        self._generations: dict[int, int] = {}
        self._floor = 0  # the generation of every user not in _generations (raised when it is cleared)
        self.max_generations = 200_000  # users with a generation held; then all are forgotten at once
        self._lock = threading.Lock()
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.bytes = 0  # keys and values held (not Python's per-object overhead: ENTRY_OVERHEAD stands for it)

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
        size = _size(key, value)
        if size > self.max_bytes:
            return  # larger than the whole cache: not cached
        if key in self._data:
            self._drop(key)
        self._data[key] = (time.monotonic() + ttl, value)
        self.bytes += size
        self._groups.setdefault(_group(key), set()).add(key)
        while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._data)))

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.get(key) for key in keys]

    def set_many(self, values: dict[str, bytes], ttl: int, read_at: dict[int, int] | None = None) -> None:
        with self._lock:  # checked and written under one lock: an invalidation cannot land in between
            for key, value in values.items():
                user = key_user(key) if read_at is not None else None
                if user is None or read_at is None or user not in read_at \
                        or self._generations.get(user, self._floor) == read_at[user]:
                    self._set(key, value, ttl)

    def generations(self, user_ids: list[int]) -> dict[int, int]:
        return {u: self._generations.get(u, self._floor) for u in user_ids}

    def get_with_generations(self, keys: list[str], user_ids: list[int]
                             ) -> tuple[list[bytes | None], dict[int, int]]:
        return self.get_many(keys), self.generations(user_ids)

    def invalidate_user(self, user_id: int) -> None:
        with self._lock:
            if len(self._generations) >= self.max_generations:
                # bounded: forget every generation, and move every user past all of them, so that a
                # write read at any earlier generation is still refused
                self._floor = max(self._generations.values()) + 1
                self._generations.clear()
            self._generations[user_id] = self._generations.get(user_id, self._floor) + 1
        self.delete_prefix(user_prefix(user_id))

    def delete_prefix(self, prefix: str) -> None:
        with self._lock:
            group = _group(prefix)  # '' unless the prefix names one user's keys
            keys = self._groups.get(group, ()) if group else list(self._data)
            for key in [k for k in keys if k.startswith(prefix)]:
                self._drop(key)

    def _drop(self, key: str) -> None:
        self.bytes -= _size(key, self._data.pop(key)[1])
        group = self._groups.get(_group(key))
        if group is not None:
            group.discard(key)
            if not group:
                del self._groups[_group(key)]

    def health(self) -> tuple[bool, str]:
        return True, f"in-process ({len(self._data)} entries, {self.bytes / 2**20:.1f} of {self.max_bytes / 2**20:.0f} MiB)"


ENTRY_OVERHEAD = 200  # bytes per entry beyond key and value: the tuple, the dict slots, the group set


def _size(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD


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
    """redis-py that fails fast: errors degrade to misses (reads) or dropped writes, never a failed request.

    `timeout` bounds connecting and each reply; redis-py's retries are off (a retry only doubles the
    wait while Redis is down); after `failures_to_open` consecutive failures the breaker skips Redis
    for `cooldown` seconds, then one call probes it. While the breaker is open every call returns at
    once, without touching the network.
    """

    kind = "redis"
    blocking = True
    MAX_PENDING_INVALIDATIONS = 100_000  # beyond that, every user's keys are dropped when Redis is back

    def __init__(self, host: str, port: int = 6379, db: int = 0, timeout: float = 0.05,
                 failures_to_open: int = 3, cooldown: float = 2.0, breaker: CircuitBreaker | None = None,
                 password: str | None = None) -> None:
        self.client = redis.Redis(
            host=host, port=port, db=db, password=password, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )
        self.address = f"{host}:{port}/{db}"
        self.breaker = breaker or CircuitBreaker(failures_to_open, cooldown, name=f"redis {self.address}")
        self._set_if_generation = self.client.register_script(SET_IF_GENERATION)
        self._invalidate_user = self.client.register_script(INVALIDATE_USER)
        self.errors = 0
        self.skipped = 0  # calls not made because the breaker was open
        self.last_error: str | None = None
        self._unsent: set[int] = set()  # users whose invalidation did not reach Redis
        self._unsent_overflow = False
        self._unsent_lock = threading.Lock()

    # -- the breaker -------------------------------------------------------------------------
    def _allow(self) -> bool:
        """May this call go to Redis? Replays unsent invalidations first (they must land before any read)."""
        if not self.breaker.allow():
            self.skipped += 1
            return False
        if self._unsent or self._unsent_overflow:
            return self._replay()
        return True

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.breaker.failure(self.last_error)

    def _ok(self) -> None:
        if self.breaker.state != "closed" or self.breaker.failures:
            self.breaker.success()

    def _replay(self) -> bool:
        with self._unsent_lock:
            users, overflow = list(self._unsent), self._unsent_overflow
        try:
            if overflow:  # too many to remember: drop every user's cached entries
                keys = list(self.client.scan_iter(match=_USERS + "*", count=1000))
                if keys:
                    self.client.delete(*keys)
            pipe = self.client.pipeline(transaction=False)
            for user in users:
                pipe.eval(INVALIDATE_USER, 2, generation_key(user), index_key(user), GENERATION_TTL)
            pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc)
            return False
        with self._unsent_lock:
            self._unsent.difference_update(users)
            self._unsent_overflow = self._unsent_overflow and not overflow
        self._ok()
        return True

    def _remember(self, user_id: int) -> None:
        with self._unsent_lock:
            if len(self._unsent) < self.MAX_PENDING_INVALIDATIONS:
                self._unsent.add(user_id)
            else:
                self._unsent_overflow = True

    # -- the Cache protocol ------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        return self.get_many([key])[0]

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self.set_many({key: value}, ttl)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        if not self._allow():
            return [None] * len(keys)
        try:
            found = self.client.mget(keys)
        except redis.RedisError as exc:
            self._failed(exc)
            return [None] * len(keys)
        self._ok()
        return found  # type: ignore[return-value]  # bytes: the client does not decode

    def set_many(self, values: dict[str, bytes], ttl: int, read_at: dict[int, int] | None = None) -> None:
        if not values or not self._allow():
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
                    break
                except redis.exceptions.NoScriptError:  # first use, or a restarted server: load, write again
                    if attempt:
                        raise
                    self.client.script_load(SET_IF_GENERATION)
        except redis.RedisError as exc:
            self._failed(exc)
            return
        self._ok()

    def generations(self, user_ids: list[int]) -> dict[int, int]:
        return self.get_with_generations([], user_ids)[1]

    def get_with_generations(self, keys: list[str], user_ids: list[int]
                             ) -> tuple[list[bytes | None], dict[int, int]]:
        if not keys and not user_ids:
            return [], {}
        values: list[bytes | None] = [None] * (len(keys) + len(user_ids))
        if self._allow():
            try:
                values = self.client.mget([*keys, *(generation_key(u) for u in user_ids)])  # type: ignore[assignment]
                self._ok()
            except redis.RedisError as exc:
                self._failed(exc)
        # down: generation 0 for all; what is computed meanwhile is not written anyway (set_many skips too)
        return values[:len(keys)], {u: int(v or 0) for u, v in zip(user_ids, values[len(keys):])}

    def invalidate_user(self, user_id: int) -> None:
        """Bump the generation and drop the user's keys (those listed in their key set) in one script.

        When Redis cannot be reached the user is remembered and invalidated before the next call that
        reaches it.
        """
        if not self._allow():
            self._remember(user_id)
            return
        try:
            self._invalidate_user(keys=[generation_key(user_id), index_key(user_id)], args=[GENERATION_TTL])
        except redis.RedisError as exc:
            self._failed(exc)
            self._remember(user_id)
            return
        self._ok()

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under prefix (SCAN, never KEYS: a walk of the keyspace; users use invalidate_user)."""
        if not self._allow():
            return
        try:
            keys = list(self.client.scan_iter(match=prefix + "*", count=500))
            if keys:
                self.client.delete(*keys)
        except redis.RedisError as exc:
            self._failed(exc)
            return
        self._ok()

    def health(self) -> tuple[bool, str]:
        """Pings Redis unless the breaker is cooling down (then it reports the breaker, without waiting)."""
        if not self._allow():
            return False, (f"redis {self.address} unreachable (circuit {self.breaker.state}: {self.last_error}); "
                           "serving uncached")
        try:
            self.client.ping()
        except redis.RedisError as exc:
            self._failed(exc)
            return False, f"redis {self.address} unreachable ({type(exc).__name__}); serving uncached"
        self._ok()
        return True, f"redis {self.address}"


def open_cache(host: str | None, port: int = 6379, db: int = 0, *, timeout: float = 0.05,
               failures_to_open: int = 3, cooldown: float = 2.0, max_bytes: int = 256 * 2**20,
               password: str | None = None) -> Cache:
    """Redis when `host` is set (failing fast, see RedisCache), else the in-process cache bounded to `max_bytes`."""
    if host:
        return RedisCache(host, port, db, timeout, failures_to_open, cooldown, password=password)
    return MemoryCache(max_bytes=max_bytes)
