"""The in-process cache: LRU bound, expiry, and dropping one user's keys without touching others."""

from __future__ import annotations

import time

import pytest

from movierec.store.cache import MemoryCache, RedisCache, user_prefix


def test_dropping_a_user_keeps_every_other_key() -> None:
    cache = MemoryCache()
    for user in (4, 42, 420):
        cache.set_many({user_prefix(user) + "history": b"h", user_prefix(user) + "rec:a": b"r"}, ttl=60)
    cache.set("movierec:popular", b"p", ttl=60)
    cache.delete_prefix(user_prefix(4))
    assert cache.get_many([user_prefix(4) + "history", user_prefix(4) + "rec:a"]) == [None, None]
    assert cache.get_many([user_prefix(42) + "history", user_prefix(420) + "rec:a"]) == [b"h", b"r"]
    assert cache.get("movierec:popular") == b"p"
    # a prefix that is not one user's (here: every rec key of user 42) still works, by a scan
    cache.delete_prefix(user_prefix(42) + "rec")
    assert cache.get(user_prefix(42) + "rec:a") is None and cache.get(user_prefix(42) + "history") == b"h"
    cache.delete_prefix("movierec:")
    assert cache.get(user_prefix(420) + "history") is None and cache.get("movierec:popular") is None


def test_lru_bound_and_expiry() -> None:
    cache = MemoryCache(max_entries=3)
    for i in range(3):
        cache.set(user_prefix(i) + "x", bytes([i]), ttl=60)
    cache.get(user_prefix(0) + "x")  # 0 is now the most recently used
    cache.set(user_prefix(9) + "x", b"9", ttl=60)
    assert cache.get(user_prefix(1) + "x") is None  # the least recently used went
    assert cache.get(user_prefix(0) + "x") == bytes([0])
    cache.set(user_prefix(5) + "x", b"5", ttl=0)
    time.sleep(0.01)
    assert cache.get(user_prefix(5) + "x") is None
    cache.delete_prefix(user_prefix(1))  # evicted earlier: nothing left to drop, no error
    assert cache.health()[0] is True


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_write_from_before_an_update_is_dropped_in_every_worker(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "memory":
        shared = MemoryCache()
        worker_a = worker_b = shared  # one process: both paths share the cache object
    else:  # two workers: two clients of one Redis server
        server = request.getfixturevalue("redis_server")
        worker_a, worker_b = RedisCache("127.0.0.1", server.port), RedisCache("127.0.0.1", server.port)
    read_at = worker_a.generations([7, 8])
    assert read_at == {7: 0, 8: 0}
    worker_b.invalidate_user(7)  # user 7 rated a movie meanwhile (another worker)
    assert worker_a.generations([7, 8]) == {7: 1, 8: 0}
    worker_a.set_many({user_prefix(7) + "rec:x": b"stale", user_prefix(8) + "rec:x": b"fresh",
                       "movierec:other": b"no user"}, ttl=60, read_at=read_at)
    assert worker_b.get(user_prefix(7) + "rec:x") is None  # computed from the old history: not cached
    assert worker_b.get_many([user_prefix(8) + "rec:x", "movierec:other"]) == [b"fresh", b"no user"]
    worker_a.set_many({user_prefix(7) + "rec:x": b"new"}, ttl=60, read_at=worker_a.generations([7]))
    assert worker_b.get(user_prefix(7) + "rec:x") == b"new"
    worker_b.invalidate_user(7)
    assert worker_a.get(user_prefix(7) + "rec:x") is None and worker_a.generations([7]) == {7: 2}


def test_redis_drops_a_users_keys_from_their_key_set_not_a_scan(redis_server) -> None:
    cache = RedisCache("127.0.0.1", redis_server.port)
    cache.set(user_prefix(3) + "history", b"h", ttl=60)  # plain writes are indexed too
    cache.set_many({user_prefix(3) + "rec:a": b"r", user_prefix(30) + "rec:a": b"other"}, ttl=60)
    raw = redis_server.client()
    assert {k.decode() for k in raw.smembers("movierec:keys:3")} == {user_prefix(3) + "history", user_prefix(3) + "rec:a"}
    assert 0 < raw.ttl("movierec:keys:3") <= 60
    cache.invalidate_user(3)
    assert raw.keys("movierec:user:3:*") == [] and not raw.exists("movierec:keys:3")
    assert cache.get(user_prefix(30) + "rec:a") == b"other"
    assert cache.generations([3, 30]) == {3: 1, 30: 0}
    raw.script_flush()  # as after a restart: the write loads its script again
    cache.set_many({user_prefix(3) + "rec:b": b"again"}, ttl=60, read_at=cache.generations([3]))
    assert cache.get(user_prefix(3) + "rec:b") == b"again" and cache.errors == 0


def test_memory_generations_are_bounded_and_stay_safe() -> None:
    """Every /update_user adds a generation; past the bound all are forgotten, and no stale write gets in."""
    cache = MemoryCache()
    cache.max_generations = 3
    before = cache.generations([1, 2, 9])  # 9 never changes: its generation is the floor
    for user in (1, 2, 3):
        cache.invalidate_user(user)
    assert len(cache._generations) == 3
    cache.invalidate_user(4)  # the bound: everything forgotten, every user moved past
    assert len(cache._generations) == 1
    after = cache.generations([1, 2, 3, 4, 9])
    assert all(after[u] > before.get(u, 0) for u in (1, 2, 9)) and after[4] > after[9]
    cache.set_many({user_prefix(u) + "rec:x": b"stale" for u in (1, 2, 9)}, ttl=60, read_at=before)
    assert cache.get_many([user_prefix(u) + "rec:x" for u in (1, 2, 9)]) == [None, None, None]
    cache.set_many({user_prefix(9) + "rec:x": b"fresh"}, ttl=60, read_at=cache.generations([9]))
    assert cache.get(user_prefix(9) + "rec:x") == b"fresh"
