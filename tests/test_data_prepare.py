"""prepare(): exact sequences on a hand-made set, ml-latest-small against pandas, the gSASRec split."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from movierec.data import prepare as prep
from movierec.data.errors import DataError
from movierec.data.prepared import load_prepared
from shared_data import DATA_ROOT, needs_data

SMALL = DATA_ROOT / "ml-latest-small"
GSASREC = DATA_ROOT / "ml-1m-gsasrec"
needs_small = needs_data("ml-latest-small")
needs_gsasrec = needs_data("ml-1m-gsasrec")

# --------------------------------------------------------------------------------------------
# A hand-made dataset with non-contiguous ids, unsorted times, timestamp ties and an unrated movie
# --------------------------------------------------------------------------------------------

MOVIES_CSV = """movieId,title,genres
3,"Three, The (1990)",Drama
5,Five (1995),Comedy|Drama
7,Seven (2001),(no genres listed)
50,Unrated (2010),Horror
100,Hundred,Action
"""
RATINGS = [  # userId, movieId, rating, timestamp
    (10, 100, 4.0, 300),
    (10, 5, 3.0, 100),
    (10, 7, 5.0, 200),
    (10, 3, 2.5, 200),  # same second as movie 7 → movieId order: 3 before 7
    (20, 5, 4.5, 50),
    (20, 3, 1.0, 60),
    (30, 7, 0.5, 10),
    (40, 5, 3.5, 5),
    (40, 100, 3.5, 5),
    (40, 3, 3.5, 5),  # three in one second → 3, 5, 100
    (40, 7, 4.0, 1),
]
# movieId 3, 5, 7, 100 → item_idx 1, 2, 3, 4; userId 10, 20, 30, 40 → user_idx 0..3
EXPECTED_ITEMS = [[2, 1, 3, 4], [2, 1], [3], [3, 1, 2, 4]]
EXPECTED_RATINGS = [[3.0, 2.5, 5.0, 4.0], [4.5, 1.0], [0.5], [4.0, 3.5, 3.5, 3.5]]
EXPECTED_TIMES = [[100, 200, 200, 300], [50, 60], [10], [1, 5, 5, 5]]


def write_csv_dataset(folder: Path, rows: list[tuple] = RATINGS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.csv").write_text(MOVIES_CSV)
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{m},{r:.1f},{t}" for u, m, r, t in rows]
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    return folder


def histories(data) -> list[list]:  # noqa: ANN001
    return [data.history(u).tolist() for u in range(data.num_users)]


def test_tiny_dataset_exact_sequences(tmp_path: Path) -> None:
    source = write_csv_dataset(tmp_path / "src")
    data = load_prepared(prep.prepare(source, tmp_path / "out", val_users=0, progress=False))
    assert histories(data) == EXPECTED_ITEMS
    off = data.seq_offsets
    assert [data.seq_ratings[off[u] : off[u + 1]].tolist() for u in range(4)] == EXPECTED_RATINGS
    assert [data.seq_timestamps[off[u] : off[u + 1]].tolist() for u in range(4)] == EXPECTED_TIMES
    assert data.train_len.tolist() == [2, 0, 0, 2]  # len - 2, never below 0
    assert data.val_users.tolist() == []
    assert data.test_users.tolist() == [0, 1, 3]  # users with ≥ 2 interactions
    assert data.users.to_pydict() == {
        "user_idx": [0, 1, 2, 3],
        "user_id": [10, 20, 30, 40],
        "n_interactions": [4, 2, 1, 4],
    }


def test_tiny_dataset_items_and_manifest(tmp_path: Path) -> None:
    source = write_csv_dataset(tmp_path / "src")
    data = load_prepared(prep.prepare(source, tmp_path / "out", val_users=0, progress=False))
    items = data.items.to_pydict()
    assert items["item_idx"] == [1, 2, 3, 4]
    assert items["movie_id"] == [3, 5, 7, 100]  # movie 50 has no rating → no item
    assert items["title"] == ["Three, The (1990)", "Five (1995)", "Seven (2001)", "Hundred"]
    assert items["year"] == [1990, 1995, 2001, None]
    assert items["genres"] == [["Drama"], ["Comedy", "Drama"], [], ["Action"]]
    assert items["rating_count"] == [3, 3, 3, 2]
    np.testing.assert_allclose(items["rating_mean"], [7.0 / 3, 11.0 / 3, 9.5 / 3, 3.75], rtol=1e-6)
    m = data.manifest
    assert m["source"] == str(source.resolve()) and m["source_format"] == "movielens-csv"
    assert m["counts"] == {"users": 4, "items": 4, "interactions": 11, "val_users": 0, "test_users": 3}
    assert m["source_counts"]["movies_without_ratings"] == 1
    assert m["input_checksums"] == {
        name: hashlib.sha256((source / name).read_bytes()).hexdigest() for name in ("ratings.csv", "movies.csv")
    }
    assert m["split"]["seed"] == 42


def test_tiny_dataset_validation_split(tmp_path: Path) -> None:
    source = write_csv_dataset(tmp_path / "src")
    data = load_prepared(prep.prepare(source, tmp_path / "all", val_users=2, progress=False))
    assert data.val_users.tolist() == [0, 3]  # the only users with ≥ 3 interactions
    assert data.train_len.tolist() == [1, 0, 0, 1]  # len - 3 for validation users
    inputs, targets = data.eval_pairs("val")
    assert [i.tolist() for i in inputs] == [[2, 1], [3, 1]] and targets.tolist() == [3, 2]
    one = load_prepared(prep.prepare(source, tmp_path / "one", val_users=1, seed=3, progress=False))
    assert len(one.val_users) == 1 and one.val_users[0] in (0, 3)
    u = int(one.val_users[0])
    assert one.train_len[u] == len(one.history(u)) - 3


def test_unsorted_rows_give_the_same_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    shuffled = [RATINGS[i] for i in rng.permutation(len(RATINGS))]
    a = load_prepared(prep.prepare(write_csv_dataset(tmp_path / "a"), tmp_path / "pa", val_users=0, progress=False))
    b = load_prepared(
        prep.prepare(write_csv_dataset(tmp_path / "b", shuffled), tmp_path / "pb", val_users=0, progress=False)
    )
    for name in ("seq_offsets", "seq_items", "seq_ratings", "seq_timestamps", "train_len", "test_users"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_ml1m_dat_layout_gives_the_same_result(tmp_path: Path) -> None:
    csv = load_prepared(prep.prepare(write_csv_dataset(tmp_path / "csv"), tmp_path / "pc", val_users=0, progress=False))
    dat = tmp_path / "dat"
    dat.mkdir()
    (dat / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in RATINGS))
    movies = pd.read_csv(tmp_path / "csv" / "movies.csv")
    (dat / "movies.dat").write_bytes(
        "".join(f"{r.movieId}::{r.title}::{r.genres}\n" for r in movies.itertuples()).encode("latin-1")
    )
    prepared = load_prepared(prep.prepare(dat, tmp_path / "pd", val_users=0, progress=False))
    assert prepared.manifest["source_format"] == "movielens-dat"
    assert histories(prepared) == histories(csv)
    assert prepared.items.equals(csv.items)


def test_rated_movie_missing_from_movies_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = write_csv_dataset(tmp_path / "src", RATINGS + [(20, 8, 4.0, 70)])
    with caplog.at_level(logging.WARNING):
        data = load_prepared(prep.prepare(source, tmp_path / "out", val_users=0, progress=False))
    items = data.items.to_pydict()
    assert items["movie_id"] == [3, 5, 7, 8, 100]
    assert items["title"][3] is None and items["genres"][3] == [] and items["year"][3] is None
    assert "missing from the movies file" in caplog.text


def test_sequence_order_handles_wide_timestamps() -> None:
    """Millisecond-like timestamps that do not fit the packed key fall back to a three-key sort."""
    user = np.array([1, 0, 1, 0, 1], dtype=np.int32)
    ts = np.array([2**61, 5, 0, 5, 2**61], dtype=np.int64)
    item = np.array([3, 9, 1, 2, 2], dtype=np.int32)
    order, offsets = prep.sequence_order(user, ts, item, 2)
    assert offsets.tolist() == [0, 2, 5]
    assert item[order].tolist() == [2, 9, 1, 2, 3]


def test_dense_ids_large_ids_use_sorting() -> None:
    ids = np.array([10**12, 5, 10**12, 7], dtype=np.int64)
    distinct, idx = prep.dense_ids(ids, "userId")
    assert distinct.tolist() == [5, 7, 10**12] and idx.tolist() == [2, 0, 2, 1]


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a dataset folder"):
        prep.prepare(tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="source folder not found"):
        prep.prepare(tmp_path / "missing", tmp_path / "out", progress=False)


def test_movies_file_missing(tmp_path: Path) -> None:
    source = write_csv_dataset(tmp_path / "src")
    (source / "movies.csv").unlink()
    with pytest.raises(DataError, match=r"movies\.csv: file not found"):
        prep.prepare(source, tmp_path / "out", progress=False)


def test_progress_output_does_not_break(tmp_path: Path) -> None:
    source = write_csv_dataset(tmp_path / "src")
    assert prep.prepare(source, tmp_path / "out", progress=True) == tmp_path / "out"


# --------------------------------------------------------------------------------------------
# ml-latest-small against a pandas computation
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return load_prepared(prep.prepare(SMALL, tmp_path_factory.mktemp("small"), progress=False))


@pytest.fixture(scope="module")
def small_pandas() -> pd.DataFrame:
    return pd.read_csv(SMALL / "ratings.csv").sort_values(["userId", "timestamp", "movieId"], kind="stable")


@needs_small
def test_small_counts(small) -> None:  # noqa: ANN001
    assert small.manifest["counts"] == {
        "users": 610,
        "items": 9_724,
        "interactions": 100_836,
        "val_users": 512,
        "test_users": 610,
    }
    assert small.manifest["input_checksums"]["ratings.csv"] == (
        "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646"
    )


@needs_small
def test_small_sequences_match_pandas_sort(small, small_pandas: pd.DataFrame) -> None:  # noqa: ANN001
    movie_of_item = np.concatenate([[0], small.items.column("movie_id").to_numpy()])
    np.testing.assert_array_equal(movie_of_item[small.seq_items], small_pandas["movieId"].to_numpy())
    np.testing.assert_array_equal(small.seq_timestamps, small_pandas["timestamp"].to_numpy())
    np.testing.assert_array_equal(small.seq_ratings, small_pandas["rating"].to_numpy(dtype=np.float32))
    np.testing.assert_array_equal(small.users.column("user_id").to_numpy(), np.sort(small_pandas["userId"].unique()))
    sizes = small_pandas.groupby("userId").size().to_numpy()
    np.testing.assert_array_equal(np.diff(small.seq_offsets), sizes)


@needs_small
def test_small_every_sequence_is_time_sorted(small) -> None:  # noqa: ANN001
    ts, items, off = np.asarray(small.seq_timestamps), np.asarray(small.seq_items), np.asarray(small.seq_offsets)
    same_user = np.ones(len(ts) - 1, dtype=bool)
    same_user[off[1:-1] - 1] = False
    ordered = (ts[1:] > ts[:-1]) | ((ts[1:] == ts[:-1]) & (items[1:] > items[:-1]))
    assert np.all(ordered | ~same_user)
    assert np.any((ts[1:] == ts[:-1]) & same_user)  # ties exist, so the tie-break was exercised


@needs_small
def test_small_item_stats_match_pandas(small, small_pandas: pd.DataFrame) -> None:  # noqa: ANN001
    stats = small_pandas.groupby("movieId")["rating"].agg(["count", "mean"]).sort_index()
    items = small.items.to_pandas()
    np.testing.assert_array_equal(items["movie_id"], stats.index)
    np.testing.assert_array_equal(items["item_idx"], np.arange(1, len(stats) + 1))
    np.testing.assert_array_equal(items["rating_count"], stats["count"])
    np.testing.assert_allclose(items["rating_mean"], stats["mean"], rtol=1e-6)
    movies = pd.read_csv(SMALL / "movies.csv").set_index("movieId")
    assert items["title"].tolist() == movies.loc[items["movie_id"], "title"].str.rstrip().tolist()


@needs_small
def test_small_split(small, tmp_path: Path) -> None:  # noqa: ANN001
    lengths = np.diff(small.seq_offsets)
    val = np.asarray(small.val_users)
    assert len(val) == 512 and np.all(np.diff(val) > 0) and np.all(lengths[val] >= 3)
    expected = lengths - 2
    expected[val] -= 1
    np.testing.assert_array_equal(small.train_len, expected)
    again = load_prepared(prep.prepare(SMALL, tmp_path / "again", progress=False))
    np.testing.assert_array_equal(again.val_users, val)
    other = load_prepared(prep.prepare(SMALL, tmp_path / "other", seed=7, progress=False))
    assert len(other.val_users) == 512 and set(other.val_users.tolist()) != set(val.tolist())
    _, fewer, _ = prep.leave_one_out_split(lengths, 100, 42)
    assert len(fewer) == 100
    inputs, targets = small.eval_pairs("test")
    assert len(targets) == 610 and all(len(i) == n - 1 for i, n in zip(inputs, lengths, strict=True))


# --------------------------------------------------------------------------------------------
# gSASRec split
# --------------------------------------------------------------------------------------------


def read_int_lines(path: Path) -> list[list[int]]:
    return [[int(x) for x in line.split()] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def gsas(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return load_prepared(prep.prepare(GSASREC, tmp_path_factory.mktemp("gsas"), progress=False))


@needs_gsasrec
def test_gsasrec_counts(gsas) -> None:  # noqa: ANN001
    assert gsas.num_users == 6_040 and gsas.num_items == 3_416
    assert len(gsas.val_users) == 512 and gsas.test_users.tolist() == gsas.val_users.tolist()
    assert gsas.manifest["source_format"] == "gsasrec-split"
    assert gsas.users.column("user_id").to_pylist() == list(range(1, 6_041))
    assert np.all(np.isnan(gsas.seq_ratings)) and not np.any(gsas.seq_timestamps)


@needs_gsasrec
def test_gsasrec_train_sequences_equal_train_file(gsas) -> None:  # noqa: ANN001
    train = read_int_lines(GSASREC / "train" / "input.txt")
    assert [gsas.train_sequence(u).tolist() for u in range(gsas.num_users)] == train
    assert int(np.sum(gsas.train_len)) == 987_019


@needs_gsasrec
def test_gsasrec_val_and_test_pairs_equal_files(gsas) -> None:  # noqa: ANN001
    inputs, targets = gsas.eval_pairs("val")
    assert [i.tolist() for i in inputs] == read_int_lines(GSASREC / "val" / "input.txt")
    assert targets.tolist() == [x[0] for x in read_int_lines(GSASREC / "val" / "output.txt")]
    test_out = [x[0] for x in read_int_lines(GSASREC / "test" / "output.txt")]
    _, test_targets = gsas.eval_pairs("test")
    assert test_targets.tolist() == [test_out[u] for u in gsas.test_users]


@needs_gsasrec
def test_gsasrec_items(gsas) -> None:  # noqa: ANN001
    items = gsas.items.to_pydict()
    assert items["item_idx"] == list(range(1, 3_417))
    mapping = dict(read_int_lines(GSASREC / "mapping" / "sas_to_original_items.txt"))
    assert items["movie_id"] == [mapping[i] for i in range(1, 3_417)]
    assert items["title"][0] == "Raiders of the Lost Ark (1981)" and items["year"][0] == 1981
    assert items["genres"][0] == ["Action", "Adventure"]
    counts = np.bincount(np.asarray(gsas.seq_items), minlength=3_417)[1:]
    assert items["rating_count"] == counts.tolist()
    assert all(np.isnan(items["rating_mean"]))


def write_tiny_split(root: Path, val_input: str = "1 2 3 4\n6 5 4\n", interactions: int = 15) -> Path:
    """Histories: user 1 = 1..6 (validation), user 2 = 2 3 4 5, user 3 = 6 5 4 3 2 (validation)."""
    for sub in ("train", "val", "test", "mapping"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "dataset_stats.json").write_text(
        json.dumps({"num_users": 3, "num_items": 6, "num_interactions": interactions})
    )
    (root / "train" / "input.txt").write_text("1 2 3\n2 3\n6 5\n")
    (root / "val" / "input.txt").write_text(val_input)
    (root / "val" / "output.txt").write_text("5\n3\n")
    (root / "test" / "output.txt").write_text("6\n5\n2\n")
    (root / "mapping" / "sas_to_original_items.txt").write_text("".join(f"{i} {10 * i}\n" for i in range(1, 7)))
    return root


def test_tiny_gsasrec_split(tmp_path: Path) -> None:
    source = write_tiny_split(tmp_path / "split")
    (tmp_path / "movies.dat").write_bytes("10::Ten, Café (1990)::Drama\n20::Twenty (2000)::Comedy\n".encode("latin-1"))
    data = load_prepared(prep.prepare(source, tmp_path / "out", titles=tmp_path / "movies.dat", progress=False))
    assert histories(data) == [[1, 2, 3, 4, 5, 6], [2, 3], [6, 5, 4, 3, 2]]
    assert data.train_len.tolist() == [3, 2, 2]
    assert data.val_users.tolist() == [0, 2] and data.test_users.tolist() == [0, 2]
    items = data.items.to_pydict()
    assert items["movie_id"] == [10, 20, 30, 40, 50, 60]
    assert items["title"][:3] == ["Ten, Café (1990)", "Twenty (2000)", None]
    assert items["rating_count"] == [1, 3, 3, 2, 2, 2]


def test_gsasrec_val_line_without_train_match(tmp_path: Path) -> None:
    source = write_tiny_split(tmp_path / "split", val_input="1 2 3 4\n6 4 4\n")
    with pytest.raises(DataError, match=r"val/input\.txt:2: no line of train/input\.txt equals"):
        prep.prepare(source, tmp_path / "out", progress=False)


def test_gsasrec_inconsistent_stats(tmp_path: Path) -> None:
    source = write_tiny_split(tmp_path / "split", interactions=16)
    with pytest.raises(DataError, match=r"dataset_stats\.json: num_interactions=16"):
        prep.prepare(source, tmp_path / "out", progress=False)


def test_gsasrec_item_out_of_range(tmp_path: Path) -> None:
    source = write_tiny_split(tmp_path / "split")
    (source / "train" / "input.txt").write_text("1 2 3\n2 7\n6 5\n")
    with pytest.raises(DataError, match=r"train/input\.txt:2: item id 7 is outside 1\.\.6"):
        prep.prepare(source, tmp_path / "out", progress=False)
