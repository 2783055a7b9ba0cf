"""The model server: the .mar, the TorchServe handler, the v2/native client, its circuit breaker and the fallback.

Everything runs for real: the archive is built by torch-model-archiver from the small pattern model,
the handler is loaded by TorchServe's own Python loader (with and without KServe's envelopes), and
the integration tests start a real TorchServe (Java frontend + Python worker) on free loopback ports
through `start_torchserve`, the code path of `movierec serve-model`. Skipped only without Java.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from movierec.api.app import create_app
from movierec.breaker import CircuitBreaker
from movierec.cli.main import app as cli
from movierec.data.prepared import load_prepared
from movierec.index.base import Filters
from movierec.index.versions import build_from_model
from movierec.model.artifact import load_artifact
from movierec.serving.catalog import MovieCatalog
from movierec.serving.inference import encode, exact_top_k
from movierec.serving.model_server import ModelServerUnavailable
from movierec.serving.torchserve.archive import build_archive, default_config
from movierec.serving.torchserve.client import ModelServerClient
from movierec.serving.torchserve.local import TorchServe, start_torchserve
from movierec.serving.torchserve.wire import (
    RankRequest,
    RankResult,
    native_request,
    native_response,
    parse_native_request,
    parse_native_response,
    parse_v2_request,
    parse_v2_response,
    v2_request,
    v2_response,
)
from movierec.settings import Settings
from movierec.store import open_store

REPO = Path(__file__).resolve().parents[1]
HORROR_90S = Filters(genres=("Horror",), year_min=1995, year_max=2010)


# -- shared data ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_store(pattern_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("model-store")
    build_archive(pattern_model, store)
    return store


@pytest.fixture(scope="module")
def artifact(pattern_model: Path):
    return load_artifact(pattern_model)


@pytest.fixture(scope="module")
def histories(pattern_prepared: Path) -> list[np.ndarray]:
    data = load_prepared(pattern_prepared)
    return [np.asarray(data.history(u), dtype=np.int64) for u in range(12)]


def expected(artifact, request: RankRequest) -> RankResult:
    """What the in-process path computes for a request: the functions the API calls."""
    encoded = encode(artifact.model, request.histories)
    allowed = None if request.filters.is_empty() else MovieCatalog(artifact.items).allowed(request.filters)
    ranked = exact_top_k(encoded.vectors, artifact.model.output_embeddings.detach(), request.k, allowed,
                         request.exclude)
    return RankResult([i for i, _ in ranked], [s for _, s in ranked], encoded.because,
                      encoded.vectors.numpy() if request.return_vectors else None)


def assert_same_ranking(got: RankResult, want: RankResult) -> None:
    assert len(got.items) == len(want.items)
    for u in range(len(want.items)):
        assert got.items[u].tolist() == want.items[u].tolist(), u
        np.testing.assert_allclose(got.scores[u], want.scores[u], atol=1e-5, rtol=0)
        assert got.because[u].tolist() == want.because[u].tolist(), u
    if want.vectors is not None:
        np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5, rtol=0)


# -- the circuit breaker -------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_circuit_breaker_opens_probes_and_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures_to_open=3, cooldown=5.0, clock=clock)
    assert breaker.allow() and breaker.state == "closed"
    breaker.failure("refused")
    breaker.success()  # a success resets the count: failures must be consecutive
    for _ in range(2):
        breaker.failure("refused")
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure("timed out")
    assert breaker.state == "open" and breaker.last_error == "timed out"
    assert not breaker.allow()
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow() and breaker.state == "half-open"  # this caller is the probe
    assert not breaker.allow()  # everyone else still falls back while it is in flight
    breaker.failure("still refused")
    assert breaker.state == "open" and not breaker.allow()  # one failed probe re-opens at once
    clock.now += 5.0
    assert breaker.allow() and breaker.state == "half-open"
    clock.now += 5.0
    assert breaker.allow()  # a probe that never reported does not wedge it: another one goes
    breaker.success()
    assert breaker.state == "closed" and breaker.failures == 0 and breaker.allow()


def test_client_fails_fast_and_reports_an_open_circuit() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock = Clock()
    client = ModelServerClient(f"http://127.0.0.1:{port}", "v2", timeout=0.5,
                               breaker=CircuitBreaker(failures_to_open=2, cooldown=30, clock=clock))
    history = [np.array([1, 2, 3])]
    ok, detail = client.health()
    assert not ok and "unreachable" in detail  # a failed ping counts as one failure
    with pytest.raises(ModelServerUnavailable, match="ConnectError"):
        client.rank(history, 5, Filters(), [np.empty(0, np.int64)])
    assert client.breaker.state == "open"
    started = time.monotonic()
    with pytest.raises(ModelServerUnavailable, match="circuit open"):
        client.rank(history, 5, Filters(), [np.empty(0, np.int64)])
    assert time.monotonic() - started < 0.1  # no connection attempt while open
    ok, detail = client.health()
    assert not ok and "circuit open: ConnectError" in detail
    client.close()


# -- the wire formats ----------------------------------------------------------------------------
def test_requests_round_trip_in_both_protocols() -> None:
    request = RankRequest([np.array([5, 6, 7]), np.array([9]), np.array([1, 2, 3, 4])], k=7,
                          exclude=[np.array([5, 6, 7]), np.array([], np.int64), np.array([4])],
                          filters=Filters(genres=("Drama", "Horror"), year_min=1990, min_rating=3.5),
                          return_vectors=True)
    for encode_, decode in ((native_request, parse_native_request), (v2_request, parse_v2_request)):
        wire = json.loads(json.dumps(encode_(request)))
        back = decode(wire)
        assert [h.tolist() for h in back.histories] == [h.tolist() for h in request.histories]
        assert [e.tolist() for e in back.exclude] == [e.tolist() for e in request.exclude]
        assert (back.k, back.filters, back.return_vectors) == (7, request.filters, True)
    v2 = v2_request(request)["inputs"]
    history = next(t for t in v2 if t["name"] == "history")
    assert history["shape"] == [3, 4] and history["datatype"] == "INT64"
    assert history["data"][:4] == [0, 5, 6, 7]  # left-padded, flat
    assert next(t for t in v2 if t["name"] == "filters")["datatype"] == "BYTES"


def test_responses_round_trip_including_flattened_v2() -> None:
    result = RankResult([np.array([3, 1, 2]), np.array([8])], [np.array([0.5, -0.25, -1.0], np.float32),
                        np.array([2.0], np.float32)], [np.array([4, 5]), np.array([6, 7, 9])],
                        np.arange(8, dtype=np.float32).reshape(2, 4) / 3)
    for body, parse in ((native_response(result), parse_native_response),
                        (v2_response(result, "gsasrec", "1.0", "req-1"), parse_v2_response)):
        back = parse(json.loads(json.dumps(body)), 2)
        assert [i.tolist() for i in back.items] == [[3, 1, 2], [8]]
        assert [s.tolist() for s in back.scores] == [s.tolist() for s in result.scores]  # float32 exact
        assert [b.tolist() for b in back.because] == [[4, 5], [6, 7, 9]]
        np.testing.assert_array_equal(back.vectors, result.vectors)
    flattened = v2_response(result, "gsasrec", "1.0", None)
    for output in flattened["outputs"]:  # what TorchServe's kservev2 envelope sends: shape [n]
        output["shape"] = [len(output["data"])]
    assert parse_v2_response(flattened, 2).items[0].tolist() == [3, 1, 2]


def test_bad_requests_name_the_field() -> None:
    from movierec.serving.torchserve.wire import WireError

    for body, field in (({"k": 5}, "histories"), ({"histories": [[1]], "k": 0}, "k"),
                        ({"histories": [[1]], "filters": {"genre": "x"}}, "filters"),
                        ({"histories": [[]]}, "histories[0]"), ({"histories": [[1]], "extra": 1}, "extra")):
        with pytest.raises(WireError, match=field.replace("[", r"\[").replace("]", r"\]")):
            parse_native_request(body)


# -- the handler, loaded by TorchServe's worker code without a server ----------------------------
@pytest.fixture(scope="module")
def unpacked_mar(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .mar unpacked the way TorchServe unpacks it for a worker."""
    folder = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(model_store / "model-store" / "gsasrec.mar") as mar:
        mar.extractall(folder)
        names = set(mar.namelist())
    assert {"model.pt", "item_map.parquet", "manifest.json", "handler.py", "MAR-INF/MANIFEST.json"} <= names
    return folder


def load_service(model_dir: Path, envelope: str | None):
    """What ts/model_service_worker.py does on a load message: ModelLoader with the manifest's handler."""
    import ts
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.model_loader import ModelLoaderFactory

    if str(model_dir) not in sys.path:
        sys.path.append(str(model_dir))  # the worker runs with the unpacked archive on its path
    metrics = MetricsCacheYamlImpl(config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    return ModelLoaderFactory.get_model_loader().load(
        "gsasrec", str(model_dir), manifest["model"]["handler"], None, 8, envelope, True, metrics)


def predict(service, bodies: list) -> tuple[list, list[int], list[dict]]:
    """One TorchServe batch through the service's entry point: (outputs, status codes, response headers)."""
    from ts.service import Service

    batch = [{"requestId": f"req-{i}".encode(), "headers": [],
              "parameters": [{"name": "body", "contentType": "application/json", "value": body}]}
             for i, body in enumerate(bodies)]
    headers, inputs, ids = Service.retrieve_data_for_inference(batch)
    context = service.context
    context.request_ids, context.request_processor, context.metrics.request_ids = ids, headers, ids
    outputs = service._entry_point(inputs, context)
    codes = [context.get_response_status(i)[0] or 200 for i in range(len(bodies))]
    return outputs, codes, [context.get_response_headers(i) for i in range(len(bodies))]


def test_handler_batches_mixed_requests_like_in_process(unpacked_mar: Path, artifact, histories) -> None:
    service = load_service(unpacked_mar, envelope=None)
    requests = [
        RankRequest(histories[0:3], k=5, exclude=histories[0:3]),
        RankRequest(histories[3:4], k=10, return_vectors=True),
        RankRequest(histories[4:6], k=5, exclude=histories[4:6]),  # same k and filters as the first: one top-k
        RankRequest(histories[6:8], k=10, filters=HORROR_90S, exclude=histories[6:8]),
    ]
    bodies = [native_request(requests[0]), v2_request(requests[1]), native_request(requests[2]),
              v2_request(requests[3])]
    bad = {"histories": [[1, 2, 10_000]], "k": 5}  # an item_idx the model does not have
    outputs, codes, headers = predict(service, [*bodies, bad, b"{not json"])
    assert codes == [200, 200, 200, 200, 400, 400]
    assert all(h["x-movierec-batch"] == "6" for h in headers)
    assert "1..40" in json.loads(outputs[4])["error"] and "not JSON" in json.loads(outputs[5])["error"]
    for i, request in enumerate(requests):
        body = json.loads(outputs[i])
        got = parse_v2_response(body, len(request.histories)) if i % 2 else parse_native_response(
            body, len(request.histories))
        assert_same_ranking(got, expected(artifact, request))
    v2 = json.loads(outputs[3])
    assert v2["model_name"] == "gsasrec" and v2["id"] == "req-3"
    shapes = {o["name"]: o["shape"] for o in v2["outputs"]}
    assert shapes["items"] == shapes["scores"] and shapes["items"][0] == 2 and shapes["because"] == [2, 3]


def test_handler_under_kserve_envelopes(unpacked_mar: Path, artifact, histories) -> None:
    """kservev2 (what KServe sets for protocol v2): one request, flattened outputs; body: batches work."""
    request = RankRequest(histories[0:3], k=6, exclude=histories[0:3], filters=HORROR_90S, return_vectors=True)
    outputs, codes, _ = predict(load_service(unpacked_mar, envelope="kservev2"), [v2_request(request)])
    (response,) = outputs
    assert codes == [200] and response["model_name"] == "gsasrec"
    assert [o["name"] for o in response["outputs"]] == ["items", "scores", "because", "vectors"]
    assert all(len(o["shape"]) == 1 for o in response["outputs"])  # the envelope flattens every output
    assert_same_ranking(parse_v2_response(json.loads(json.dumps(response)), 3), expected(artifact, request))

    second = RankRequest(histories[5:7], k=3)
    outputs, codes, _ = predict(load_service(unpacked_mar, envelope="body"),
                                [v2_request(request), native_request(second)])
    assert codes == [200, 200]
    assert_same_ranking(parse_v2_response(json.loads(outputs[0]), 3), expected(artifact, request))
    assert_same_ranking(parse_native_response(json.loads(outputs[1]), 2), expected(artifact, second))


# -- export --------------------------------------------------------------------------------------
def test_tracked_config_is_what_export_writes(model_store: Path) -> None:
    tracked = (REPO / "model-store" / "config" / "config.properties").read_text()
    assert tracked == default_config() == (model_store / "config" / "config.properties").read_text()
    for line in ("metrics_address=http://0.0.0.0:8082", "metrics_mode=prometheus", "enable_envvars_config=true",
                 "disable_token_authorization=true", "model_store=/mnt/models/model-store"):
        assert line in tracked.splitlines()


def test_only_inference_and_metrics_listen_beyond_loopback(model_store: Path, tmp_path: Path) -> None:
    """The management API (unregister the model, scale workers to 0; no token) is reachable from the pod only."""
    from movierec.serving.torchserve.archive import read_properties
    from movierec.serving.torchserve.local import local_config

    tracked = read_properties((REPO / "model-store" / "config" / "config.properties").read_text())
    hosts = {key: httpx.URL(value).host if "://" in value else value
             for key, value in tracked.items() if key.endswith("_address")}
    assert hosts.pop("inference_address") == "0.0.0.0"  # KServe's predictor port
    assert hosts.pop("metrics_address") == "0.0.0.0"  # Prometheus scrapes it (read only)
    assert hosts == {"management_address": "127.0.0.1", "grpc_inference_address": "127.0.0.1",
                     "grpc_management_address": "127.0.0.1"}
    # `movierec serve-model --host 0.0.0.0` still keeps management on loopback
    local = read_properties(local_config(model_store, "0.0.0.0", (9000, 9001, 9002)))
    assert httpx.URL(local["management_address"]).host == "127.0.0.1" == local["grpc_management_address"]
    assert httpx.URL(local["inference_address"]).host == "0.0.0.0"


def test_export_cli(pattern_model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "--model", str(pattern_model), "--out", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "store" / "model-store" / "gsasrec.mar").is_file()
    assert (tmp_path / "store" / "config" / "config.properties").is_file()
    assert [p.name for p in (tmp_path / "store" / "model-store").iterdir()] == ["gsasrec.mar"]  # no staging left

    missing = runner.invoke(cli, ["export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "s2")])
    corrupt_model = tmp_path / "corrupt"
    shutil.copytree(pattern_model, corrupt_model)
    (corrupt_model / "model.pt").write_bytes(b"not a model")
    corrupt = runner.invoke(cli, ["export", "--model", str(corrupt_model), "--out", str(tmp_path / "s3")])
    for result, fragment in ((missing, "manifest.json: not found"), (corrupt, "checksum mismatch")):
        assert result.exit_code == 2 and "Traceback" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and fragment in errors[0], result.output
    assert not (tmp_path / "s3" / "model-store" / "gsasrec.mar").exists()
    assert runner.invoke(cli, ["serve-model", "--help"]).exit_code == 0


# -- a real TorchServe ---------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Server:
    """One TorchServe on fixed free ports that a test may stop and start again."""

    def __init__(self, store: Path, run_dir: Path) -> None:
        self.store, self.run_dir = store, run_dir
        self.ports = free_ports(3)
        self.current: TorchServe | None = None

    def start(self) -> TorchServe:
        # a short maxBatchDelay: concurrent requests share a batch, a lone request waits at most 50 ms
        self.current = start_torchserve(self.store, *self.ports, run_dir=self.run_dir, batch_size=8,
                                        max_batch_delay_ms=50)
        try:
            self.current.wait_ready(timeout=120)
        except Exception:
            self.current.stop()
            raise
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"


@pytest.fixture(scope="module")
def torchserve(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if shutil.which("java") is None:
        pytest.skip("java is not installed: TorchServe's frontend needs Java 11+ (apt-get install openjdk-17-jre-headless)")
    server = Server(model_store, tmp_path_factory.mktemp("torchserve-run"))
    try:
        server.start()
        yield server
    finally:
        server.stop()  # the whole process group: frontend and workers


@pytest.fixture(scope="module")
def api_home(pattern_prepared: Path, pattern_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("ts-home")
    shutil.copytree(pattern_model, home / "model")
    with open_store(None, home / "store.sqlite") as store:
        store.load_prepared(load_prepared(pattern_prepared), progress=False)
    build_from_model(home / "model", home / "index" / "faiss")
    return home


def api(home: Path, server: Server | None = None, protocol: str = "v2", **settings) -> TestClient:
    remote = dict(torchserve_host="127.0.0.1", torchserve_port=server.ports[0], torchserve_protocol=protocol,
                  torchserve_timeout_ms=10_000) if server else {}
    return TestClient(create_app(Settings(movierec_home=home, index_poll_seconds=60, **{**remote, **settings})))


@pytest.fixture(scope="module")
def in_process(api_home: Path) -> Iterator[TestClient]:
    with api(api_home) as client:
        yield client


def assert_same_items(got: dict, want: dict) -> None:
    assert [i["movie_id"] for i in got["items"]] == [i["movie_id"] for i in want["items"]]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got["items"], want["items"])) <= 1e-5
    assert [i["because"] for i in got["items"]] == [i["because"] for i in want["items"]]


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["v2", "native"])
def test_recommend_through_torchserve_matches_in_process(protocol: str, torchserve: Server, api_home: Path,
                                                         in_process: TestClient) -> None:
    with api(api_home, torchserve, protocol) as remote:
        for body in ({"user_id": 1, "k": 10}, {"user_id": 2, "k": 10}, {"user_id": 17, "k": 5},
                     {"user_id": 42, "k": 20, "exclude_rated": False},
                     {"user_id": 5, "k": 10, "genres": ["Horror"], "year_min": 1995, "year_max": 2010}):
            got, want = remote.post("/recommend", json=body), in_process.post("/recommend", json=body)
            assert got.status_code == 200, got.text
            assert got.json()["served_by"] == "torchserve" and want.json()["served_by"] == "in-process"
            assert got.json()["strategy"] == "sequence" and len(got.json()["items"]) == len(want.json()["items"]) > 0
            assert_same_items(got.json(), want.json())
        batch = {"user_ids": [3, 4, 6, 7], "k": 10}
        got, want = remote.post("/recommend_batch", json=batch).json(), in_process.post("/recommend_batch", json=batch).json()
        for g, w in zip(got["results"], want["results"]):
            assert g["served_by"] == "torchserve"
            assert_same_items(g, w)
        health = remote.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok", health.json()
        assert health.json()["components"]["torchserve"]["ok"] is True


@pytest.mark.slow
def test_concurrent_requests_share_a_torchserve_batch(torchserve: Server, artifact, histories) -> None:
    requests = [RankRequest(histories[i:i + 1], k=5 + i % 3, exclude=histories[i:i + 1],
                            filters=HORROR_90S if i % 4 == 0 else Filters()) for i in range(12)]
    start = threading.Barrier(len(requests))

    def send(i: int) -> httpx.Response:
        path, body = (("/v2/models/gsasrec/infer", v2_request(requests[i])) if i % 2
                      else ("/predictions/gsasrec", native_request(requests[i])))
        start.wait()
        return httpx.post(torchserve.url + path, json=body, timeout=30)

    with ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(send, range(len(requests))))
    for i, (request, response) in enumerate(zip(requests, responses)):
        assert response.status_code == 200, response.text
        parse = parse_v2_response if i % 2 else parse_native_response
        assert_same_ranking(parse(response.json(), 1), expected(artifact, request))
    sizes = [int(r.headers["x-movierec-batch"]) for r in responses]
    assert max(sizes) > 1, sizes  # TorchServe handed the handler several requests at once


@pytest.mark.slow
def test_fallback_while_torchserve_is_down_and_recovery(torchserve: Server, api_home: Path,
                                                        in_process: TestClient) -> None:
    users = iter(range(100, 200))  # a new user per request: responses are cached per user

    def recommend(client: TestClient) -> dict:
        user = next(users)
        response = client.post("/recommend", json={"user_id": user, "k": 10})
        assert response.status_code == 200, response.text
        want = in_process.post("/recommend", json={"user_id": user, "k": 10}).json()
        assert_same_items(response.json(), want)
        return response.json()

    settings = dict(torchserve_failures_to_open=2, torchserve_cooldown_seconds=0.3, torchserve_timeout_ms=3000,
                    api_key="ops")
    with api(api_home, torchserve, "v2", **settings) as client:
        client.headers["X-API-Key"] = "ops"  # /health details are for key holders
        assert recommend(client)["served_by"] == "torchserve"
        torchserve.stop()
        for _ in range(3):  # two failures open the circuit; the third is not even sent
            assert recommend(client)["served_by"] == "in-process"
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        component = health.json()["components"]["torchserve"]
        assert component["ok"] is False and "circuit open" in component["detail"], component

        torchserve.start()  # same ports
        # /health alone (no request) probes once the cooldown has passed, and says ok again
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not client.get("/health").json()["components"]["torchserve"]["ok"]:
            time.sleep(0.3)
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["components"]["torchserve"]["ok"] is True, health
        deadline = time.monotonic() + 30
        served_by = None
        while time.monotonic() < deadline and served_by != "torchserve":
            time.sleep(0.3)  # the breaker's cooldown, then one probe
            served_by = recommend(client)["served_by"]
        assert served_by == "torchserve"
        assert recommend(client)["served_by"] == "torchserve"
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["components"]["torchserve"]["ok"] is True


def test_handler_runs_on_cpu_without_a_gpu_id(unpacked_mar: Path) -> None:
    service = load_service(unpacked_mar, envelope=None)
    assert service.context.system_properties["gpu_id"] is None
    handler = service._entry_point.__self__
    assert handler.device == torch.device("cpu") and handler.item_weights.device.type == "cpu"


def test_model_server_settings() -> None:
    assert Settings(torchserve_host=None).torchserve_url is None
    assert Settings(torchserve_host="10.0.0.7", torchserve_port=8085).torchserve_url == "http://10.0.0.7:8085"
    assert Settings(torchserve_host="http://gsasrec.models.svc/").torchserve_url == "http://gsasrec.models.svc"
    with pytest.raises(ValueError, match="torchserve_protocol"):
        Settings(torchserve_protocol="grpc")
