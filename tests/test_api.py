"""The HTTP API end to end: real SQLite store, real FAISS index, Qdrant Edge, a tiny trained model.

The published request bodies are sent verbatim; bad input must give a 4xx naming the field.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from movierec.api.app import create_app
from movierec.data.prepared import load_prepared
from movierec.index.versions import build_from_model
from movierec.settings import Settings
from movierec.store import open_store


@pytest.fixture(scope="session")
def api_home(pattern_prepared: Path, pattern_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MOVIEREC_HOME with a trained model, a loaded SQLite store and a FAISS index."""
    home = tmp_path_factory.mktemp("home")
    data = load_prepared(pattern_prepared)
    shutil.copytree(pattern_model, home / "model")
    with open_store(None, home / "store.sqlite") as store:
        store.load_prepared(data, progress=False)
    build_from_model(home / "model", home / "index" / "faiss")
    return home


def make_client(home: Path, **settings) -> TestClient:
    return TestClient(create_app(Settings(movierec_home=home, index_poll_seconds=0.2, **settings)))


@pytest.fixture
def client(api_home: Path, tmp_path: Path) -> Iterator[TestClient]:
    home = tmp_path / "home"
    shutil.copytree(api_home, home)  # each test may write ratings
    with make_client(home) as c:
        yield c


def test_published_examples_work_verbatim(client: TestClient) -> None:
    r = client.post("/recommend", json={"user_id": 1, "k": 10, "method": "torchserve"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "sequence" and len(body["items"]) == 10
    item = body["items"][0]
    assert set(item) >= {"movie_id", "title", "year", "genres", "score", "because"}
    assert 1 <= len(item["because"]) <= 3

    r = client.post("/recommend_batch", json={"user_ids": [1, 2, 3, 4, 5], "k": 10, "method": "torchserve"})
    assert r.status_code == 200 and [x["user_id"] for x in r.json()["results"]] == [1, 2, 3, 4, 5]

    r = client.post("/update_user", json={"user_id": 1, "movie_id": 12, "rating": 4.5})
    assert r.status_code == 200, r.text

    r = client.post("/search_movies", json={"query": "Movie 1", "limit": 20})
    assert r.status_code == 200 and r.json()["results"][0]["title"].startswith("Movie 1")

    r = client.get("/user_stats/1")
    assert r.status_code == 200 and r.json()["n_ratings"] >= 1

    r = client.get("/popular_movies?limit=100")
    assert r.status_code == 200
    counts = [m["rating_count"] for m in r.json()["results"]]
    assert counts == sorted(counts, reverse=True) and len(counts) == 40


def test_sequence_recommendations_follow_the_pattern_and_skip_rated(client: TestClient) -> None:
    store = client.app.state.services.store
    rated = [h.movie_id for h in store.user_history(7)]
    body = client.post("/recommend", json={"user_id": 7, "k": 5}).json()
    recs = [i["movie_id"] for i in body["items"]]
    assert len(recs) == 5 and not set(recs) & set(rated)
    unfiltered = client.post("/recommend", json={"user_id": 7, "k": 5, "exclude_rated": False}).json()
    # the pattern set: every user watches 1 → 2 → ... → 40 → 1, so the next movie is certain
    assert unfiltered["items"][0]["movie_id"] == rated[-1] % 40 + 1


def test_methods_agree_on_the_top_items(client: TestClient) -> None:
    results = {}
    for method in ("torchserve", "faiss", "qdrant"):
        r = client.post("/recommend", json={"user_id": 3, "k": 10, "method": method})
        assert r.status_code == 200, (method, r.text)
        results[method] = [i["movie_id"] for i in r.json()["items"]]
        assert r.json()["served_by"] in ("in-process", method)
    assert results["torchserve"] == results["faiss"] == results["qdrant"]
    popular = client.post("/recommend", json={"user_id": 3, "k": 10, "method": "popular"}).json()
    assert popular["strategy"] == "popular"
    # a popular item's score is its number of ratings, printed as a whole number (no tie-break residue)
    assert all(i["score"] == int(i["score"]) > 0 for i in popular["items"])


def test_filters_are_applied(client: TestClient) -> None:
    for method in ("torchserve", "faiss", "qdrant", "popular"):
        r = client.post("/recommend", json={"user_id": 2, "k": 10, "method": method, "genres": ["Horror"],
                                            "year_min": 1995, "year_max": 2010})
        assert r.status_code == 200, (method, r.text)
        items = r.json()["items"]
        assert items, method
        for item in items:
            assert "Horror" in item["genres"] and 1995 <= item["year"] <= 2010, (method, item)


def test_new_user_gets_popular_then_sequence_after_updates(client: TestClient) -> None:
    new_user = 10_000
    first = client.post("/recommend", json={"user_id": new_user, "k": 5}).json()
    assert first["strategy"] == "popular" and len(first["items"]) == 5
    for movie in (5, 6, 7):
        assert client.post("/update_user", json={"user_id": new_user, "movie_id": movie, "rating": 4.0}).status_code == 200
    after = client.post("/recommend", json={"user_id": new_user, "k": 5}).json()
    assert after["strategy"] == "sequence" and after["cached"] is False
    assert after["items"][0]["movie_id"] == 8  # the pattern: 5 → 6 → 7 → 8
    assert not {5, 6, 7} & {i["movie_id"] for i in after["items"]}


def test_update_invalidates_the_cached_response(client: TestClient) -> None:
    body = {"user_id": 4, "k": 5}
    first = client.post("/recommend", json=body).json()
    assert client.post("/recommend", json=body).json()["cached"] is True
    top = first["items"][0]["movie_id"]
    assert client.post("/update_user", json={"user_id": 4, "movie_id": top, "rating": 5.0}).status_code == 200
    after = client.post("/recommend", json=body).json()
    assert after["cached"] is False
    assert top not in [i["movie_id"] for i in after["items"]]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/update_user", {"user_id": 1, "movie_id": 999_999, "rating": 4.0}, "movie_id"),
        ("/update_user", {"user_id": 1, "movie_id": 12, "rating": 7}, "rating"),
        ("/update_user", {"user_id": 1, "movie_id": 12, "rating": 4.2}, "rating"),
        ("/update_user", {"user_id": "one", "movie_id": 12, "rating": 4.0}, "user_id"),
        ("/recommend", {"user_id": 1, "k": 0}, "k"),
        ("/recommend", {"user_id": 1, "k": 1001}, "k"),
        ("/recommend", {"user_id": 1, "method": "magic"}, "method"),
        ("/recommend", {"k": 10}, "user_id"),
        ("/recommend_batch", {"user_ids": [], "k": 10}, "user_ids"),
        ("/recommend_batch", {"user_ids": list(range(1001)), "k": 10}, "user_ids"),
        ("/search_movies", {"query": ""}, "query"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(client: TestClient, path: str, body: dict, field: str) -> None:
    r = client.post(path, json=body)
    assert 400 <= r.status_code < 500, r.text
    assert field in r.json()["detail"]


def test_malformed_json_and_bad_query(client: TestClient) -> None:
    r = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.get("/popular_movies?limit=0")
    assert r.status_code == 422 and "limit" in r.json()["detail"]
    assert client.get("/user_stats/123456").status_code == 404


def test_api_key_protects_writes(api_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(api_home, home)
    with make_client(home, api_key="s3cret") as c:
        body = {"user_id": 1, "movie_id": 12, "rating": 4.5}
        assert c.post("/update_user", json=body).status_code == 401
        assert c.post("/update_user", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/update_user", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/recommend", json={"user_id": 1}).status_code == 200  # reads stay open


def test_health_stats_metrics_and_docs(client: TestClient) -> None:
    traced = client.post("/recommend", json={"user_id": 1, "k": 10}, headers={"x-request-id": "trace-7"})
    assert traced.headers["x-request-id"] == "trace-7"
    assert len(client.get("/health").headers["x-request-id"]) == 16  # generated when none is given
    client.post("/recommend", json={"user_id": 1, "k": 10})
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok", health.json()
    stats = client.get("/stats").json()
    assert stats["counts"]["movies"] == 40 and stats["cache"]["hits"] >= 1
    assert stats["index_versions"]["faiss"]
    text = client.get("/metrics").text
    assert 'movierec_request_seconds_count{endpoint="/recommend",method="torchserve",status="200"}' in text
    assert 'movierec_cache_total{result="hit"}' in text and "movierec_index_info" in text
    assert client.get("/openapi.json").json()["paths"]["/recommend"]
    assert client.get("/docs").status_code == 200


def test_missing_model_serves_popular_and_health_says_why(api_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(api_home, home)
    (home / "model" / "model.pt").write_bytes(b"corrupt")
    with make_client(home, api_key="ops-key") as c:
        r = c.post("/recommend", json={"user_id": 1, "k": 5})
        assert r.status_code == 200 and r.json()["strategy"] == "popular" and len(r.json()["items"]) == 5
        health = c.get("/health", headers={"X-API-Key": "ops-key"}).json()
        assert health["status"] == "degraded"
        assert "checksum" in health["components"]["model"]["detail"]
        # anyone else sees the states, not the paths and reasons
        public = c.get("/health").json()
        assert public["status"] == "degraded" and public["components"]["model"] == {"ok": False}
        assert str(home) not in c.get("/health", headers={"X-API-Key": "wrong"}).text


def test_new_index_version_is_picked_up_without_restart(client: TestClient, api_home: Path) -> None:
    home = Path(client.app.state.services.settings.movierec_home)
    before = client.get("/stats").json()["index_versions"]["faiss"]
    new_version = build_from_model(home / "model", home / "index" / "faiss", method="hnsw")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert client.post("/recommend", json={"user_id": 2, "k": 5, "method": "faiss"}).status_code == 200
        if client.get("/stats").json()["index_versions"]["faiss"] == new_version:
            break
        time.sleep(0.1)
    assert client.get("/stats").json()["index_versions"]["faiss"] == new_version != before


def test_redis_cache_and_outage(api_home: Path, tmp_path: Path, redis_server) -> None:
    home = tmp_path / "home"
    shutil.copytree(api_home, home)
    with make_client(home, redis_host="127.0.0.1", redis_port=redis_server.port, api_key="k") as c:
        c.headers["X-API-Key"] = "k"
        body = {"user_id": 5, "k": 5, "method": "faiss"}
        first = c.post("/recommend", json=body).json()
        assert first["cached"] is False
        assert c.post("/recommend", json=body).json()["cached"] is True
        keys = redis_server.client().keys("movierec:user:5:*")
        assert len(keys) >= 2  # the history and the response
        # an update drops the user's cached responses in Redis (the history and vector may be refreshed at once)
        assert c.post("/update_user", json={"user_id": 5, "movie_id": 3, "rating": 3.5}).status_code == 200
        assert [k for k in redis_server.client().keys("movierec:user:5:*") if b":rec:" in k] == []
        assert c.get("/health").json()["components"]["cache"]["ok"] is True
        assert c.get("/stats").json()["cache"]["kind"] == "redis"
        # a batch reads and writes the cache in one round trip per kind of key (MGET, pipelined SET)
        batch = {"user_ids": [7, 8, 9, 7], "k": 5, "method": "torchserve"}
        first = c.post("/recommend_batch", json=batch).json()["results"]
        assert [r["cached"] for r in first] == [False] * 4 and first[0] == first[3]
        stored = {k.decode().rsplit(":", 1)[0] if ":rec:" in k.decode() else k.decode()
                  for k in redis_server.client().keys("movierec:user:7:*")}
        assert {"movierec:user:7:history", "movierec:user:7:vector"} <= stored
        again = c.post("/recommend_batch", json=batch).json()["results"]
        assert [r["cached"] for r in again] == [True] * 4
        assert [r["items"] for r in again] == [r["items"] for r in first]
        alone = c.post("/recommend", json={"user_id": 8, "k": 5, "method": "torchserve"}).json()
        assert alone["cached"] is True and alone["items"] == first[1]["items"]

        redis_server.stop()
        down = c.post("/recommend", json={"user_id": 6, "k": 5})
        assert down.status_code == 200 and down.json()["strategy"] == "sequence"
        health = c.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert "unreachable" in health.json()["components"]["cache"]["detail"]
        # writes still land in the store while the cache is down
        assert c.post("/update_user", json={"user_id": 6, "movie_id": 4, "rating": 2.0}).status_code == 200
        assert c.get("/user_stats/6").json()["last_timestamp"] > 0


def test_qdrant_server_collection_is_built_once_and_reused(pattern_model: Path) -> None:
    """The server adapter through qdrant-client's local mode (no Qdrant server runs here)."""
    from qdrant_client import QdrantClient

    from movierec.index.base import ItemAttributes, item_vectors
    from movierec.index.qdrant_index import server_collection
    from movierec.model.artifact import load_artifact

    artifact = load_artifact(pattern_model)
    vectors, catalog = item_vectors(artifact.model), ItemAttributes(artifact.items)
    client = QdrantClient(location=":memory:")
    first = server_collection(client, vectors, catalog)
    client.set_payload(first.collection, {"marker": 1}, points=[1])  # survives only if the collection is reused
    again = server_collection(client, vectors, catalog)
    assert again.version == first.version and client.retrieve(first.collection, [1])[0].payload.get("marker") == 1
    changed = server_collection(client, vectors * 2, catalog)
    assert changed.version != first.version and "marker" not in client.retrieve(first.collection, [1])[0].payload


def test_the_model_thread_runs_faiss_on_one_openmp_thread(client: TestClient) -> None:
    """OpenMP's thread count is per thread: the API's setting must reach the thread that searches FAISS."""
    import faiss

    batcher = client.app.state.services.batcher
    assert batcher.executor.submit(faiss.omp_get_max_threads).result(timeout=10) == 1
