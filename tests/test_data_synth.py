"""synthesize(): exact size, realistic constraints, sequential viewing, determinism, and that it prepares cleanly."""

from __future__ import annotations

import re
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
    assert "Matrix, The (1999)" in titles and any(t.startswith("Matrix 2, The (") for t in titles)
    assert len(set(titles)) > 0.9 * MOVIES  # words a person can search for, rarely the same title twice
    assert sum(y is not None for y in movies["year"]) > 0.98 * MOVIES
    assert {g for gs in movies["genres"] for g in gs} == set(GENRES)
    assert any(gs == [] for gs in movies["genres"])  # "(no genres listed)"
    tags = ml.read_tags_csv(synth_dir / "tags.csv")
    links = ml.read_links_csv(synth_dir / "links.csv")
    assert 0 < tags.num_rows <= RATINGS and links.num_rows == MOVIES


@pytest.fixture(scope="module")
def timeline(ratings: pd.DataFrame) -> pd.DataFrame:
    """Every user's ratings oldest first (ties by movieId, as prepare orders them), with the rating's year."""
    t = ratings.sort_values(["userId", "timestamp", "movieId"], kind="stable").reset_index(drop=True)
    return t.assign(year=pd.to_datetime(t["timestamp"], unit="s").dt.year)


def test_movies_are_rated_after_their_release(timeline: pd.DataFrame, synth_dir: Path) -> None:
    movies = ml.read_movies_csv(synth_dir / "movies.csv").to_pandas().set_index("movieId")
    released = timeline["movieId"].map(movies["year"]).fillna(0).to_numpy()
    assert np.mean(timeline["year"].to_numpy() >= released) > 0.99


def test_series_are_watched_in_order(timeline: pd.DataFrame, synth_dir: Path) -> None:
    """"Matrix 2, The (2001)" follows "Matrix, The (1999)": usually next, and almost never before it."""
    part = {}
    movies = ml.read_movies_csv(synth_dir / "movies.csv").to_pandas()
    for movie_id, title in zip(movies["movieId"], movies["title"], strict=True):
        name = re.sub(r" \(\d{4}\)$", "", title)
        numbered = re.match(r"^(.*?) (\d)(, The)?$", name)
        series = numbered.group(1) + (numbered.group(3) or "") if numbered else name
        part[(series, int(numbered.group(2)) if numbered else 1)] = movie_id
    pairs = [(movie_id, part[(series, k + 1)]) for (series, k), movie_id in part.items() if (series, k + 1) in part]
    assert len(pairs) > 50
    where = {(u, m): i for i, (u, m) in enumerate(zip(timeline["userId"], timeline["movieId"], strict=True))}
    gaps = [
        where[(user, after)] - where[(user, before)]
        for before, after in pairs
        for user in timeline["userId"][timeline["movieId"] == before]
        if (user, after) in where
    ]
    assert len(gaps) > 500
    assert np.mean(np.array(gaps) > 0) > 0.7 and np.mean(np.array(gaps) == 1) > 0.5


def test_tastes_come_in_runs(timeline: pd.DataFrame, synth_dir: Path) -> None:
    """Consecutive movies of a user share a genre far more often than two random ratings do."""
    movies = ml.read_movies_csv(synth_dir / "movies.csv").to_pandas()
    genres = dict(zip(movies["movieId"], movies["genres"], strict=True))
    sets = [set(genres[m]) for m in timeline["movieId"]]
    users = timeline["userId"].to_numpy()
    consecutive = np.mean([bool(sets[i] & sets[i + 1]) for i in np.flatnonzero(users[1:] == users[:-1])])
    rng = np.random.default_rng(0)
    random_pairs = np.mean([bool(sets[i] & sets[j]) for i, j in rng.integers(0, len(sets), size=(20_000, 2))])
    assert consecutive > 2.5 * random_pairs


def test_what_is_popular_depends_on_the_year(timeline: pd.DataFrame) -> None:
    top = {y: set(timeline["movieId"][timeline["year"] == y].value_counts().index[:20]) for y in (1998, 2015)}
    assert min(len(t) for t in top.values()) == 20 and len(top[1998] & top[2015]) <= 2


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
