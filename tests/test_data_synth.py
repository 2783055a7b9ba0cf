"""synthesize(): exact size, realistic constraints, determinism, and that it prepares cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from movierec.data import movielens as ml
from movierec.data.errors import DataError
from movierec.data.prepare import prepare
from movierec.data.prepared import load_prepared
from movierec.data.synth import FIRST_TS, GENRES, LAST_TS, synthesize

USERS, MOVIES, RATINGS = 1_000, 3_000, 30_000


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth"), users=USERS, movies=MOVIES, ratings=RATINGS, seed=5)


@pytest.fixture(scope="module")
def ratings(synth_dir: Path) -> pd.DataFrame:
    return pd.read_csv(synth_dir / "ratings.csv")


def test_exact_count_and_per_user_floor(ratings: pd.DataFrame) -> None:
    assert len(ratings) == RATINGS
    per_user = ratings.groupby("userId").size()
    assert len(per_user) == USERS and per_user.min() >= 20
    assert per_user.max() > 5 * per_user.median()  # heavy-tailed activity


def test_no_duplicate_pairs_and_sorted(ratings: pd.DataFrame) -> None:
    assert not ratings.duplicated(["userId", "movieId"]).any()
    key = ratings["userId"].to_numpy(np.int64) * 10**9 + ratings["movieId"].to_numpy()
    assert np.all(np.diff(key) > 0)  # sorted by userId, then movieId, like the real file


def test_value_ranges(ratings: pd.DataFrame, synth_dir: Path) -> None:
    r = ratings["rating"].to_numpy()
    assert r.min() >= 0.5 and r.max() <= 5.0 and np.all(r * 2 == np.round(r * 2))
    assert len(np.unique(r)) == 10
    ts = ratings["timestamp"].to_numpy()
    assert ts.min() >= FIRST_TS and ts.max() <= LAST_TS
    movies = ml.read_movies_csv(synth_dir / "movies.csv")
    assert movies.num_rows == MOVIES
    assert set(ratings["movieId"]) <= set(movies.column("movieId").to_pylist())
    # The raw text keeps ML's format: "4.0", not "4".
    assert (synth_dir / "ratings.csv").read_text().splitlines()[1].split(",")[2] in {
        f"{x / 2:.1f}" for x in range(1, 11)
    }


def test_popularity_is_skewed(ratings: pd.DataFrame) -> None:
    counts = ratings["movieId"].value_counts().to_numpy()
    assert counts[0] > 20 * np.median(counts)


def test_movies_tags_links(synth_dir: Path) -> None:
    movies = ml.read_movies_csv(synth_dir / "movies.csv").to_pydict()
    titles = movies["title"]
    assert any("," in t for t in titles) and any('"' in t for t in titles)
    assert titles[0].startswith("Synthetic Movie ")
    assert sum(y is not None for y in movies["year"]) > 0.98 * MOVIES
    assert {g for gs in movies["genres"] for g in gs} == set(GENRES)
    assert any(gs == [] for gs in movies["genres"])  # "(no genres listed)"
    tags = ml.read_tags_csv(synth_dir / "tags.csv")
    links = ml.read_links_csv(synth_dir / "links.csv")
    assert 0 < tags.num_rows <= RATINGS and links.num_rows == MOVIES


def test_deterministic_for_a_seed(tmp_path: Path, synth_dir: Path) -> None:
    again = synthesize(tmp_path / "again", users=USERS, movies=MOVIES, ratings=RATINGS, seed=5)
    other = synthesize(tmp_path / "other", users=USERS, movies=MOVIES, ratings=RATINGS, seed=6)
    for name in ("ratings.csv", "movies.csv", "tags.csv", "links.csv"):
        assert (again / name).read_bytes() == (synth_dir / name).read_bytes()
    assert (other / "ratings.csv").read_bytes() != (synth_dir / "ratings.csv").read_bytes()


def test_prepares_cleanly(tmp_path: Path, synth_dir: Path, ratings: pd.DataFrame) -> None:
    data = load_prepared(prepare(synth_dir, tmp_path / "prepared", val_users=100, progress=False))
    counts = data.manifest["counts"]
    assert counts["users"] == USERS and counts["interactions"] == RATINGS
    assert counts["items"] == ratings["movieId"].nunique() and counts["val_users"] == 100
    assert np.all(np.diff(data.seq_offsets) >= 20)


def test_edge_sizes(tmp_path: Path) -> None:
    exact_floor = synthesize(tmp_path / "floor", users=50, movies=100, ratings=1_000, seed=1)
    assert (pd.read_csv(exact_floor / "ratings.csv").groupby("userId").size() == 20).all()
    everything = synthesize(tmp_path / "all", users=10, movies=30, ratings=300, seed=1)
    assert (pd.read_csv(everything / "ratings.csv").groupby("userId").size() == 30).all()


@pytest.mark.parametrize(
    ("users", "movies", "ratings", "message"),
    [(100, 50, 1_000, "fewer than"), (10, 30, 301, "exceed"), (10, 10, 200, "cannot give"), (0, 10, 10, "≥ 1")],
)
def test_impossible_sizes(tmp_path: Path, users: int, movies: int, ratings: int, message: str) -> None:
    with pytest.raises(DataError, match=message):
        synthesize(tmp_path, users=users, movies=movies, ratings=ratings)
