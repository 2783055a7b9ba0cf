"""Item indexes: exact top-k, filters, exclusions, versioned folders with hot reload, FAISS vs Qdrant."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import typer
from typer.testing import CliRunner

from movierec.cli.index import index_app
from movierec.data.prepared import load_prepared
from movierec.index import (
    FaissParams,
    Filters,
    IndexFileError,
    IndexHolder,
    ItemAttributes,
    ItemIndex,
    build_faiss_index,
    build_from_model,
    current_version,
    load_index,
    set_current,
)
from movierec.index.qdrant_index import QdrantEdgeIndex, QdrantServerIndex, build_qdrant_index
from movierec.model.artifact import load_artifact, save_artifact
from movierec.model.gsasrec import GSASRec, ModelConfig
from movierec.serving.inference import history_vectors, top_k
from synthetic_catalog import synthetic_items, synthetic_vectors

N, DIM, K = 3000, 16, 10
DRAMA_90S = Filters(genres=["Drama", "War"], year_min=1990, year_max=1999, min_rating=2.5)

cli = typer.Typer()
cli.add_typer(index_app, name="index")
runner = CliRunner()


@pytest.fixture(scope="module")
def catalog() -> ItemAttributes:
    return ItemAttributes(synthetic_items(np.random.default_rng(1), N))


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(2).standard_normal((N, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((20, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(pattern_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model artifact written by the real writer (seeded initial weights: the index needs no training)."""
    data = load_prepared(pattern_prepared)
    torch.manual_seed(0)
    model = GSASRec(ModelConfig(num_items=data.num_items, seq_len=16, dim=16, dropout=0.0)).eval()
    out = tmp_path_factory.mktemp("index-model") / "model"
    return save_artifact(out, model, data.items, train_config={}, data_manifest=data.manifest, metrics={})


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
                exclude: list[np.ndarray] | None = None) -> list[np.ndarray]:  # fmt: skip
    """Reference answer: item_idx of the k best allowed, non-excluded items by numpy inner product."""
    scores = queries @ vectors.T
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    for u, items in enumerate(exclude or []):
        scores[u, np.asarray(items, dtype=np.int64) - 1] = -np.inf
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [row[np.isfinite(scores[u, row])] + 1 for u, row in enumerate(best)]


@pytest.fixture(scope="module")
def edge(vectors: np.ndarray, catalog: ItemAttributes) -> Iterator[QdrantEdgeIndex]:
    index = build_qdrant_index(vectors, catalog)  # no url: embedded Qdrant Edge
    assert isinstance(index, QdrantEdgeIndex)
    yield index
    index.close()


@pytest.fixture(scope="module", params=["faiss-flat", "faiss-flat-postfilter", "qdrant-edge", "qdrant-local"])
def index(request: pytest.FixtureRequest, vectors: np.ndarray, catalog: ItemAttributes) -> Iterator[ItemIndex]:
    """Every exact backend, built over the same items: the contract tests below hold for each."""
    if request.param.startswith("faiss"):
        mode = "postfilter" if request.param.endswith("postfilter") else "selector"
        yield build_faiss_index(vectors, catalog, "flat", FaissParams(filter_mode=mode))
    elif request.param == "qdrant-edge":
        yield request.getfixturevalue("edge")
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Payload indexes have no effect")
            local = build_qdrant_index(vectors, catalog, url=":memory:")  # qdrant-client's local mode
        yield local


# a batch of 20 and of 3 queries: FAISS flat searches up to SELECTOR_QUERIES one at a time through a selector
BATCHES = pytest.mark.parametrize("batch", [20, 3], ids=["batched", "few-queries"])


@BATCHES
def test_exact_search_equals_numpy_top_k(index: ItemIndex, vectors: np.ndarray, queries: np.ndarray, batch: int) -> None:
    queries = queries[:batch]
    hits = index.search(queries, K)
    for u, expected in enumerate(brute_force(vectors, queries, K)):
        assert hits[u].items.tolist() == expected.tolist()
        np.testing.assert_allclose(hits[u].scores, vectors[expected - 1] @ queries[u], rtol=1e-5, atol=1e-4)
        assert np.all(np.diff(hits[u].scores) <= 0)


def test_filters_are_honoured_and_the_best_matches_found(
    index: ItemIndex, vectors: np.ndarray, catalog: ItemAttributes, queries: np.ndarray
) -> None:
    allowed = catalog.allowed(DRAMA_90S)
    hits = index.search(queries, K, DRAMA_90S)
    for u, expected in enumerate(brute_force(vectors, queries, K, allowed)):
        assert allowed[hits[u].items - 1].all()
        assert hits[u].items.tolist() == expected.tolist()
    # asking for more than match: every matching item, and nothing else
    everything = index.search(queries[:2], N, DRAMA_90S)
    assert all(sorted(h.items.tolist()) == (np.flatnonzero(allowed) + 1).tolist() for h in everything)


@BATCHES
@pytest.mark.parametrize("filters", [None, DRAMA_90S], ids=["unfiltered", "filtered"])
def test_exclusions_keep_k_results(
    index: ItemIndex, vectors: np.ndarray, catalog: ItemAttributes, queries: np.ndarray, filters: Filters | None, batch: int
) -> None:
    queries = queries[:batch]
    allowed = catalog.allowed(filters)
    # drop each user's own 15 best (allowed) items plus random ones, and padding / out-of-range ids
    rng = np.random.default_rng(4)
    best = brute_force(vectors, queries, 15, allowed)
    exclude = [np.concatenate([b, rng.integers(1, N + 1, 200), [0, N + 5]]) for b in best]
    hits = index.search(queries, K, filters, exclude)
    for u, expected in enumerate(brute_force(vectors, queries, K, allowed, [e[(e >= 1) & (e <= N)] for e in exclude])):
        assert len(hits[u].items) == K
        assert not np.isin(hits[u].items, exclude[u]).any()
        assert hits[u].items.tolist() == expected.tolist()


def test_padding_is_never_returned(index: ItemIndex, queries: np.ndarray) -> None:
    for hits in index.search(queries[:2], N + 50, exclude=[np.array([0, 1, 2])] * 2):
        assert hits.items.size == N - 2 and 0 not in hits.items
        assert hits.items.min() == 3 and hits.items.max() == N


def test_filter_semantics(catalog: ItemAttributes) -> None:
    mask = catalog.allowed(DRAMA_90S)
    table = catalog.table.to_pylist()
    for row, item in enumerate(table):
        matches = (
            bool({"Drama", "War"} & set(item["genres"]))
            and item["year"] is not None and 1990 <= item["year"] <= 1999
            and item["rating_mean"] == item["rating_mean"] and item["rating_mean"] >= 2.5
        )  # fmt: skip
        assert mask[row] == matches
    assert 20 < mask.sum() < N // 10
    assert catalog.allowed(Filters()) is None and catalog.allowed(None) is None
    assert not catalog.allowed(Filters(genres=["No Such Genre"])).any()
    # an item map without metadata (older artifacts): unknown everywhere, so any filter matches nothing
    bare = ItemAttributes(pa.table({"item_idx": [1, 2, 3]}))
    assert not bare.allowed(Filters(genres=["Drama"])).any() and not bare.allowed(Filters(year_min=1900)).any()
    assert bare.payloads() == [{"genres": []}] * 3


def test_model_index_ranks_like_inference(model_dir: Path, pattern_prepared: Path, tmp_path: Path) -> None:
    version = build_from_model(model_dir, tmp_path / "idx")
    index = load_index(tmp_path / "idx")
    artifact = load_artifact(model_dir)
    assert index.version == version and index.size == artifact.config.num_items
    data = load_prepared(pattern_prepared)
    histories = [data.history(u) for u in range(8)]
    expected = top_k(artifact.model, histories, k=5)
    hits = index.search(history_vectors(artifact.model, histories).numpy(), 5, exclude=histories)
    for u, h in enumerate(hits):
        assert h.items.tolist() == expected.items[u].tolist()
        np.testing.assert_allclose(h.scores, expected.scores[u], rtol=1e-4, atol=1e-5)


def test_approximate_methods_have_high_recall_and_valid_ids(catalog: ItemAttributes) -> None:
    rng = np.random.default_rng(5)
    clustered = synthetic_vectors(rng, N, DIM)
    queries = clustered[rng.integers(0, N, 50)] + 0.05 * rng.standard_normal((50, DIM)).astype(np.float32)
    exact = brute_force(clustered, queries, K)
    for method in ("ivf", "hnsw"):
        index = build_faiss_index(clustered, catalog, method)
        hits = index.search(queries, K)
        recall = np.mean([len(set(h.items.tolist()) & set(e.tolist())) / K for h, e in zip(hits, exact)])
        assert recall >= 0.9, (method, recall)
        for h in index.search(queries[:3], N + 50, exclude=[np.array([0, 1])] * 3):  # never padding, nor excluded
            assert h.items.size > 0 and h.items.min() >= 2 and h.items.max() <= N


def test_versioned_build_and_hot_reload_under_concurrent_search(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    first = runner.invoke(cli, ["index", "build", "--model", str(model_dir), "--out", str(out)])
    assert first.exit_code == 0, first.output
    v1 = current_version(out)
    loaded = load_index(out)  # loads and verifies
    assert {p.name for p in (out / v1).iterdir()} == {"index.faiss", "items.parquet", "manifest.json"}
    holder = IndexHolder(out)
    assert holder.index.version == v1 and loaded.kind == "faiss-flat"
    queries = np.random.default_rng(6).standard_normal((4, holder.index.dim)).astype(np.float32)

    stop, errors, searches = threading.Event(), [], [0]

    def search_forever() -> None:
        while not stop.is_set():
            try:
                hits = holder.search(queries, 5, Filters(genres=["Drama"]), exclude=[np.array([1, 2])] * 4)
                assert all(len(h.items) == 5 for h in hits)
                searches[0] += 1
            except Exception as exc:  # noqa: BLE001 (any failure of a concurrent search fails the test)
                errors.append(exc)

    reader = threading.Thread(target=search_forever)
    reader.start()
    try:
        second = runner.invoke(cli, ["index", "build", "-m", str(model_dir), "-o", str(out), "--kind", "hnsw"])
        assert second.exit_code == 0, second.output
        v2 = current_version(out)
        assert v2 != v1 and "hnsw" in v2
        before = searches[0]
        assert holder.reload_if_changed()
        assert holder.index.version == v2 and holder.index.kind == "faiss-hnsw"
        assert not holder.reload_if_changed()
        set_current(out, v1)  # roll back
        assert holder.reload_if_changed() and holder.index.version == v1
        while searches[0] < before + 20 and not errors:
            threading.Event().wait(0.01)
    finally:
        stop.set()
        reader.join()
    assert not errors, errors
    info = runner.invoke(cli, ["index", "info", str(out)])
    assert info.exit_code == 0 and v1 in info.output and v2 in info.output


def test_corrupt_or_missing_files_are_reported(vectors: np.ndarray, catalog: ItemAttributes, tmp_path: Path) -> None:
    from movierec.index import write_version

    out = tmp_path / "idx"
    with pytest.raises(IndexFileError, match="CURRENT: not found"):
        load_index(out)
    version = write_version(out, vectors, catalog)
    index_file = out / version / "index.faiss"
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match=r"index\.faiss: checksum mismatch"):
        load_index(out)
    result = runner.invoke(cli, ["index", "info", str(out)])
    assert result.exit_code == 2 and "index.faiss: checksum mismatch" in result.output
    (out / version / "items.parquet").unlink()
    with pytest.raises(IndexFileError, match=r"items\.parquet: missing"):
        load_index(out, verify=False)
    (out / "CURRENT").write_text("no-such-version\n")
    with pytest.raises(IndexFileError, match="manifest.json: not found"):
        load_index(out)


@pytest.mark.parametrize("filters", [None, DRAMA_90S], ids=["unfiltered", "filtered"])
def test_qdrant_edge_matches_faiss_flat(
    edge: QdrantEdgeIndex, vectors: np.ndarray, catalog: ItemAttributes, queries: np.ndarray, filters: Filters | None
) -> None:
    flat = build_faiss_index(vectors, catalog)
    exclude = [np.arange(1, 200 * (u % 3) + 1) for u in range(len(queries))]
    for kwargs in ({}, {"exclude": exclude}):
        expected = flat.search(queries, K, filters, **kwargs)
        got = edge.search(queries, K, filters, **kwargs)
        for e, g in zip(expected, got, strict=True):
            assert g.items.tolist() == e.items.tolist() and len(g.items) == K
            np.testing.assert_allclose(g.scores, e.scores, atol=1e-4)
    assert edge.size == N and edge.kind == "qdrant-edge"


def test_qdrant_client_adapter_reattaches_to_a_collection(vectors: np.ndarray, catalog: ItemAttributes) -> None:
    from qdrant_client import QdrantClient

    client = QdrantClient(":memory:")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Payload indexes have no effect")
        built = QdrantServerIndex.build(client, "items", vectors[:400], ItemAttributes(catalog.table.slice(0, 400)), "v1")
    server = QdrantServerIndex(client, "items")  # as a serving process attaches to a collection built elsewhere
    assert (server.version, server.size, server.dim, server.kind) == ("v1", 400, DIM, "qdrant")
    query = vectors[:1] + 0.1
    assert server.search(query, K)[0].items.tolist() == built.search(query, K)[0].items.tolist()


def test_an_embedded_qdrant_leaves_no_folder_behind(vectors: np.ndarray, catalog: ItemAttributes) -> None:
    """Each Edge shard lives in a temporary folder (≈ 15 MB at ML-32M scale): closing the index removes it."""
    index = build_qdrant_index(vectors, catalog)
    assert isinstance(index, QdrantEdgeIndex) and index._workdir is not None
    folder = Path(index._workdir.name)
    assert folder.is_dir() and any(folder.iterdir())
    index.close()
    assert not folder.exists()
