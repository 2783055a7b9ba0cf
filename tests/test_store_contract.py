"""One contract for every store backend: the same tests run against SQLite and MongoDB.

MongoDB is mongoeco's wire server started by tests/mongo_server.py (or a real server when
MONGO_TEST_URI is set). mongoeco's inserts slow down with collection size, so the dataset is small:
12 movies with known titles and rating counts, 8 users, 48 ratings, prepared by the real pipeline.
Every backend loads it once per module; tests that write use users the dataset does not have and
compare counts before and after.
"""

from __future__ import annotations

import itertools
import math
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import mongo_server
from movierec.data.prepare import prepare
from movierec.data.prepared import PreparedData, load_prepared, write_prepared
from movierec.store import Counts, InvalidValue, MovieStore, StoreUnavailable, UnknownMovie, open_store
from movierec.store.rows import rating_chunks

# movie_id: (title, genres, number of users who rate it)
MOVIES = {
    1: ("Matrix, The (1999)", "Action|Sci-Fi", 8),
    2: ("Matrix Reloaded, The (2003)", "Action|Sci-Fi", 5),
    3: ("Animatrix, The (2003)", "Animation|Sci-Fi", 2),
    4: ("Toy Story (1995)", "Animation|Children|Comedy", 7),
    5: ("Heat (1995)", "Action|Crime|Thriller", 4),
    6: ("Men in Black (a.k.a. MIB) (1997)", "Action|Comedy|Sci-Fi", 6),
    7: ("Fargo (1996)", "Comedy|Crime|Drama", 3),
    8: ("Alien (1979)", "Horror|Sci-Fi", 6),
    9: ("Aliens (1986)", "Action|Horror|Sci-Fi", 3),
    10: ("50% Off (2010)", "Comedy", 1),
    11: ("Amélie (2001)", "Comedy|Romance", 2),
    12: ("Return to the Matrix (2010)", "Documentary", 1),
}
USERS = 8
MATRIX, RELOADED, ANIMATRIX, RETURN = (MOVIES[m][0] for m in (1, 2, 3, 12))
new_user_ids = itertools.count(10_000)


def write_small_movielens(folder: Path) -> Path:
    """ML-32M-style CSVs: movie m is rated by `count` users (the first ones for odd m, the last ones
    for even m); user u rates in movie_id order, one rating every 10 s."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["userId,movieId,rating,timestamp"]
    for user in range(1, USERS + 1):
        for movie, (_, _, count) in MOVIES.items():
            raters = range(1, count + 1) if movie % 2 else range(USERS - count + 1, USERS + 1)
            if user in raters:
                rating, timestamp = (user + movie) % 10 / 2 + 0.5, 1_000_000_000 + 1000 * user + 10 * movie
                lines.append(f"{user},{movie},{rating},{timestamp}")
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    movies = ["movieId,title,genres"] + [f'{m},"{title}",{genres}' for m, (title, genres, _) in MOVIES.items()]
    (folder / "movies.csv").write_text("\n".join(movies) + "\n")
    return folder


@pytest.fixture(scope="module")
def small_prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    source = write_small_movielens(tmp_path_factory.mktemp("small") / "ml-small")
    return load_prepared(prepare(source, source.parent / "prepared", val_users=2, progress=False))


@pytest.fixture(scope="session")
def mongo_uri(pytestconfig: pytest.Config) -> str:
    return mongo_server.session_uri(pytestconfig)


@dataclass
class Loaded:
    """A store holding `small_prepared`, what load_prepared returned, the counts right after loading,
    and `reopen` to open another store on the same data."""

    store: MovieStore
    load_result: Counts
    counts_after_load: Counts
    reopen: Callable[[], MovieStore]


@pytest.fixture(scope="module", params=["sqlite", "mongo"])
def loaded(request: pytest.FixtureRequest, small_prepared: PreparedData, tmp_path_factory) -> Iterator[Loaded]:
    sqlite_path = tmp_path_factory.mktemp("sqlite") / "store.sqlite"
    uri = None
    if request.param == "mongo":
        uri = mongo_server.with_database(request.getfixturevalue("mongo_uri"), f"movierec_test_{uuid.uuid4().hex[:8]}")
    store = open_store(uri, sqlite_path)
    result = store.load_prepared(small_prepared, progress=False)
    yield Loaded(store, result, store.counts(), lambda: open_store(uri, sqlite_path))
    if uri:
        from pymongo import MongoClient

        with MongoClient(uri) as client:
            client.drop_database(client.get_default_database())
    store.close()


@pytest.fixture
def store(loaded: Loaded) -> MovieStore:
    return loaded.store


@pytest.fixture
def new_user() -> int:
    return next(new_user_ids)


def dataset_history(data: PreparedData, user_id: int) -> list[tuple[int, float, int]]:
    """(movie_id, rating, timestamp) of a dataset user, oldest first, straight from the prepared arrays."""
    u = data.user_index()[user_id]
    lo, hi = data.seq_offsets[u], data.seq_offsets[u + 1]
    movie_of = dict(zip(data.items.column("item_idx").to_pylist(), data.items.column("movie_id").to_pylist()))
    return [
        (movie_of[int(i)], float(r), int(t))
        for i, r, t in zip(data.seq_items[lo:hi], data.seq_ratings[lo:hi], data.seq_timestamps[lo:hi])
    ]


# ---------------------------------------------------------------------------------------------
# load and reads
# ---------------------------------------------------------------------------------------------


def test_load_counts_match_the_dataset(loaded: Loaded, small_prepared: PreparedData) -> None:
    expected = {"movies": len(MOVIES), "ratings": sum(c for _, _, c in MOVIES.values()), "users": USERS}
    assert small_prepared.manifest["counts"]["interactions"] == expected["ratings"]
    assert loaded.load_result == expected
    assert loaded.counts_after_load == expected
    assert loaded.store.ping()


def test_get_movies_and_lookup_by_item_idx(store: MovieStore, small_prepared: PreparedData) -> None:
    movies = store.get_movies([1, 8, 999])
    assert sorted(movies) == [1, 8]
    rows = {row["movie_id"]: row for row in small_prepared.items.to_pylist()}
    for movie_id, movie in movies.items():
        row = rows[movie_id]
        assert movie["movie_id"] == movie_id
        assert (movie["title"], movie["year"], movie["genres"]) == (row["title"], row["year"], row["genres"])
        assert (movie["item_idx"], movie["rating_count"]) == (row["item_idx"], MOVIES[movie_id][2])
        assert movie["rating_mean"] == pytest.approx(row["rating_mean"], abs=1e-4)
    by_idx = store.movies_by_item_idx([rows[8]["item_idx"], 0])
    assert list(by_idx) == [rows[8]["item_idx"]]
    assert by_idx[rows[8]["item_idx"]] == movies[8]
    assert store.get_movies([]) == {}


@pytest.mark.parametrize(
    ("query", "titles"),
    [
        # starts with, then starts a word, then contains; ties by rating count
        ("Matrix", [MATRIX, RELOADED, RETURN, ANIMATRIX]),
        # the whole phrase first, then titles that hold every word
        ("the MATRIX", [RETURN, MATRIX, RELOADED, ANIMATRIX]),
        ("alien", ["Alien (1979)", "Aliens (1986)"]),
        ("amélie", ["Amélie (2001)"]),
        ("%", ["50% Off (2010)"]),  # LIKE / regex wildcards are matched literally
        ("_", []),
        ("(a.k.a.", ["Men in Black (a.k.a. MIB) (1997)"]),
        ("no such title", []),
        ("   ", []),
    ],
)
def test_search_movies(store: MovieStore, query: str, titles: list[str]) -> None:
    assert [m["title"] for m in store.search_movies(query)] == titles


def test_search_limit(store: MovieStore) -> None:
    assert [m["title"] for m in store.search_movies("matrix", limit=2)] == [MATRIX, RELOADED]
    with pytest.raises(InvalidValue, match="limit"):
        store.search_movies("matrix", limit=0)


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"limit": 3},
        {"genres": ["Horror"]},
        {"genres": ["Horror", "Crime"]},
        {"year_min": 1996, "year_max": 2003},
        {"min_rating": 3.0},
        {"genres": ["Sci-Fi"], "year_max": 1999, "min_rating": 2.0, "limit": 2},
        {"genres": ["Western"]},
    ],
)
def test_popular_movies(store: MovieStore, small_prepared: PreparedData, filters: dict) -> None:
    expected = small_prepared.items.to_pandas()
    if "genres" in filters:
        expected = expected[expected["genres"].map(lambda g: bool(set(g) & set(filters["genres"])))]
    expected = expected[expected["year"] >= filters.get("year_min", 0)]
    expected = expected[expected["year"] <= filters.get("year_max", 9999)]
    expected = expected[expected["rating_mean"] >= filters.get("min_rating", 0) - 1e-6]
    expected = expected.sort_values(["rating_count", "movie_id"], ascending=[False, True])
    expected = expected.head(filters.get("limit", 20))
    got = store.popular_movies(**filters)
    assert [m["movie_id"] for m in got] == expected["movie_id"].tolist()


def test_user_history_and_stats_of_a_loaded_user(store: MovieStore, small_prepared: PreparedData) -> None:
    history = dataset_history(small_prepared, 3)
    assert store.user_history(3) == history
    assert store.user_history(3, limit=2) == history[-2:]
    stats = store.user_stats(3)
    genres = Counter(g for movie_id, _, _ in history for g in MOVIES[movie_id][1].split("|"))
    top = sorted(genres.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert stats == {
        "user_id": 3,
        "n_ratings": len(history),
        "mean_rating": pytest.approx(np.mean([r for _, r, _ in history])),
        "first_timestamp": history[0][2],
        "last_timestamp": history[-1][2],
        "top_genres": [{"genre": g, "count": n} for g, n in top],
    }


def test_unknown_user(store: MovieStore, new_user: int) -> None:
    assert store.user_history(new_user) == []
    assert store.user_stats(new_user) is None


# ---------------------------------------------------------------------------------------------
# writes
# ---------------------------------------------------------------------------------------------


def test_add_rating_persists_and_survives_reopening(loaded: Loaded, new_user: int) -> None:
    store = loaded.store
    before = store.counts()
    first = store.add_rating(new_user, 4, 4.5, timestamp=1_700_000_000)
    assert first == {
        "user_id": new_user,
        "movie_id": 4,
        "rating": 4.5,
        "timestamp": 1_700_000_000,
        "replaced": False,
        "n_ratings": 1,
    }
    second = store.add_rating(new_user, 8, 2)  # timestamp defaults to now, an int rating is fine
    assert second["n_ratings"] == 2 and second["rating"] == 2.0 and second["timestamp"] > 1_700_000_000
    expected = [(4, 4.5, 1_700_000_000), (8, 2.0, second["timestamp"])]
    assert store.user_history(new_user) == expected
    assert store.counts() == {**before, "ratings": before["ratings"] + 2, "users": before["users"] + 1}
    with loaded.reopen() as reopened:
        assert reopened.user_history(new_user) == expected
        assert reopened.user_stats(new_user)["mean_rating"] == pytest.approx(3.25)


def test_rerating_replaces_and_moves_to_newest(store: MovieStore, new_user: int) -> None:
    for t, movie in enumerate([1, 2, 3]):
        store.add_rating(new_user, movie, 3.0, timestamp=100 + t)
    before = store.counts()
    again = store.add_rating(new_user, 1, 5.0, timestamp=200)
    assert again["replaced"] and again["n_ratings"] == 3
    assert store.user_history(new_user) == [(2, 3.0, 101), (3, 3.0, 102), (1, 5.0, 200)]
    assert store.counts() == before
    stats = store.user_stats(new_user)
    assert stats["n_ratings"] == 3
    assert stats["mean_rating"] == pytest.approx(11 / 3)
    assert (stats["first_timestamp"], stats["last_timestamp"]) == (100, 200)


def test_rerating_a_loaded_users_movie(store: MovieStore, small_prepared: PreparedData) -> None:
    history = dataset_history(small_prepared, 5)
    movie, _, _ = history[0]
    store.add_rating(5, movie, 0.5, timestamp=2_000_000_000)
    assert store.user_history(5) == history[1:] + [(movie, 0.5, 2_000_000_000)]
    stats = store.user_stats(5)
    assert stats["n_ratings"] == len(history)
    assert stats["mean_rating"] == pytest.approx(np.mean([r for _, r, _ in history[1:]] + [0.5]))


def test_unknown_movie_is_refused(store: MovieStore, new_user: int) -> None:
    before = store.counts()
    with pytest.raises(UnknownMovie, match="movie_id 424242") as caught:
        store.add_rating(new_user, 424242, 4.0)
    assert caught.value.movie_id == 424242
    assert store.counts() == before
    assert store.user_stats(new_user) is None


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("rating", {"rating": 0.0}),
        ("rating", {"rating": 5.5}),
        ("rating", {"rating": 3.3}),
        ("rating", {"rating": math.nan}),
        ("rating", {"rating": "4"}),
        ("rating", {"rating": True}),
        ("user_id", {"user_id": -1}),
        ("user_id", {"user_id": "7"}),
        ("movie_id", {"movie_id": 1.5}),
        ("timestamp", {"timestamp": -5}),
    ],
)
def test_bad_values_are_refused(store: MovieStore, new_user: int, field: str, kwargs: dict) -> None:
    args = {"user_id": new_user, "movie_id": 1, "rating": 4.0, **kwargs}
    before = store.counts()
    with pytest.raises(InvalidValue, match=f"^{field}: ") as caught:
        store.add_rating(**args)
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert store.counts() == before


def test_concurrent_writers_lose_nothing(store: MovieStore) -> None:
    """4 threads: each rates all 12 movies for its own user, and 3 distinct movies for a shared user."""
    shared, own = next(new_user_ids), [next(new_user_ids) for _ in range(4)]
    before = store.counts()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for movie in MOVIES:
                store.add_rating(own[t], movie, 0.5 + (movie % 10) / 2)
                if movie % 4 == t:
                    store.add_rating(shared, movie, 3.0)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert store.counts() == {**before, "ratings": before["ratings"] + 4 * 12 + 12, "users": before["users"] + 5}
    assert sorted(m for m, _, _ in store.user_history(shared)) == sorted(MOVIES)
    assert store.user_stats(shared)["n_ratings"] == 12
    for user in own:
        assert [m for m, _, _ in store.user_history(user)] == list(MOVIES)


def test_unreachable_mongo_is_store_unavailable(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open_store(f"mongodb://127.0.0.1:{port}/x?serverSelectionTimeoutMS=100", tmp_path / "unused") as store:
        assert not store.ping()
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}/x.*unreachable"):
            store.counts()


def test_closed_store_does_not_ping(loaded: Loaded) -> None:
    other = loaded.reopen()
    assert other.ping()
    other.close()
    assert not other.ping()


# ---------------------------------------------------------------------------------------------
# how a prepared dataset becomes rows (backend-independent)
# ---------------------------------------------------------------------------------------------


def test_rating_chunks_cut_at_users_and_keep_the_last_repeat(tmp_path: Path) -> None:
    # user 10: movies 100, 200, 100 (rated twice: the second one counts); user 20: 200; user 30: 100, 200
    root = write_prepared(
        tmp_path,
        seq_offsets=[0, 3, 4, 6],
        seq_items=[1, 2, 1, 2, 1, 2],
        seq_ratings=[1.0, 2.0, 3.0, np.nan, 4.0, 5.0],
        seq_timestamps=[10, 11, 12, 20, 30, 31],
        train_len=[1, 0, 0],
        val_users=[],
        test_users=[0, 2],
        items=pa.table(
            {
                "item_idx": pa.array([1, 2], pa.int32()),
                "movie_id": pa.array([100, 200], pa.int32()),
                "title": ["A (2000)", "B (2001)"],
                "year": pa.array([2000, 2001], pa.int32()),
                "genres": [["Drama"], ["Comedy"]],
                "rating_count": [3, 3],
                "rating_mean": pa.array([8 / 3, 3.5], pa.float32()),
            }
        ),
        users=pa.table(
            {"user_idx": pa.array([0, 1, 2], pa.int32()), "user_id": [10, 20, 30], "n_interactions": [3, 1, 2]}
        ),
        manifest={"source": "hand-made"},
    )
    chunks = list(rating_chunks(load_prepared(root), rows_per_chunk=3))
    assert [list(users.user_id) for _, users in chunks] == [[10], [20, 30]]
    ratings, users = chunks[0]
    assert list(ratings.records()) == [(10, 200, 2.0, 11, 1), (10, 100, 3.0, 12, 2)]
    assert list(users.records()) == [(10, 2, 2, 5.0, 11, 12, 3)]
    ratings, users = chunks[1]
    assert list(ratings.records()) == [(20, 200, None, 20, 0), (30, 100, 4.0, 30, 0), (30, 200, 5.0, 31, 1)]
    assert list(users.records()) == [(20, 1, 0, 0.0, 20, 20, 1), (30, 2, 2, 9.0, 30, 31, 2)]
