"""The embedded store: one SQLite file in WAL mode, one connection per thread.

Tables: movies (genres as a JSON array), ratings (primary key user_id, seq: a user's history in
order) and users (running counters). Readers never block each other or the writer; writes take the
database lock at BEGIN IMMEDIATE and wait up to `BUSY_TIMEOUT_S` for another writer. Title search
uses LIKE, which folds case for ASCII letters only.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from movierec.store.base import (
    TOP_GENRES,
    AddedRating,
    Counts,
    HistoryEntry,
    Movie,
    MovieStore,
    UserStats,
    checked_limit,
    checked_rating,
    search_words,
)
from movierec.store.errors import StoreError, StoreUnavailable, UnknownMovie
from movierec.store.rows import RatingRows, UserRows

BUSY_TIMEOUT_S = 30.0

TABLES = """
CREATE TABLE IF NOT EXISTS movies (
    movie_id INTEGER PRIMARY KEY, item_idx INTEGER NOT NULL, title TEXT NOT NULL, year INTEGER,
    genres TEXT NOT NULL, rating_count INTEGER NOT NULL, rating_mean REAL
);
CREATE TABLE IF NOT EXISTS ratings (
    user_id INTEGER NOT NULL, seq INTEGER NOT NULL, movie_id INTEGER NOT NULL, rating REAL,
    timestamp INTEGER NOT NULL, PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    user_id INTEGER PRIMARY KEY, n_ratings INTEGER NOT NULL, n_rated INTEGER NOT NULL,
    rating_sum REAL NOT NULL, first_timestamp INTEGER NOT NULL, last_timestamp INTEGER NOT NULL,
    next_seq INTEGER NOT NULL
);
"""
INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS movies_item_idx ON movies (item_idx);
CREATE INDEX IF NOT EXISTS movies_popular ON movies (rating_count DESC, movie_id);
CREATE UNIQUE INDEX IF NOT EXISTS ratings_user_movie ON ratings (user_id, movie_id);
"""
# A new user starts at the VALUES row; an existing one gets the deltas of this rating.
UPSERT_USER = """
INSERT INTO users VALUES (:user_id, 1, 1, :rating, :timestamp, :timestamp, 1)
ON CONFLICT (user_id) DO UPDATE SET
    n_ratings = n_ratings + :new_movie, n_rated = n_rated + :new_value, rating_sum = rating_sum + :delta,
    first_timestamp = min(first_timestamp, :timestamp), last_timestamp = max(last_timestamp, :timestamp),
    next_seq = next_seq + 1
RETURNING n_ratings, next_seq
"""
MOVIE_COLUMNS = "movie_id, item_idx, title, year, genres, rating_count, rating_mean"


class SQLiteStore(MovieStore):
    """A store in the SQLite file at `path` (created with its folder if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn().executescript(TABLES + INDEXES)
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise StoreUnavailable(f"{self.path}: cannot open the SQLite store ({exc})") from None

    @property
    def location(self) -> str:
        return str(self.path)

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise StoreError(f"{self.path}: the store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:
                    raise StoreError(f"{self.path}: the store is closed")
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
                self._connections.append(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the database lock from its start; rolled back on error."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- bulk load ---------------------------------------------------------------------------

    def _begin_load(self) -> None:
        conn = self._conn()
        conn.executescript("DROP TABLE IF EXISTS movies; DROP TABLE IF EXISTS ratings; DROP TABLE IF EXISTS users;")
        conn.executescript(TABLES)

    def _load_movies(self, movies: list[dict]) -> None:
        rows = [
            (m["movie_id"], m["item_idx"], m["title"], m["year"], json.dumps(m["genres"]), m["rating_count"],
             m["rating_mean"])
            for m in movies
        ]
        with self._write() as conn:
            conn.executemany(f"INSERT INTO movies ({MOVIE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def _load_chunk(self, ratings: RatingRows, users: UserRows) -> None:
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO ratings (user_id, movie_id, rating, timestamp, seq) VALUES (?, ?, ?, ?, ?)",
                ratings.records(),
            )
            conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?)", users.records())

    def _end_load(self) -> None:
        self._conn().executescript(INDEXES + "ANALYZE;")

    # -- reads -------------------------------------------------------------------------------

    def get_movies(self, movie_ids: Iterable[int]) -> dict[int, Movie]:
        return {m["movie_id"]: m for m in self._movies_where("movie_id", movie_ids)}

    def movies_by_item_idx(self, item_idxs: Iterable[int]) -> dict[int, Movie]:
        return {m["item_idx"]: m for m in self._movies_where("item_idx", item_idxs)}

    def _movies_where(self, column: str, values: Iterable[int]) -> list[Movie]:
        values = [int(v) for v in values]
        movies: list[Movie] = []
        for start in range(0, len(values), 500):  # stay under SQLite's bound-parameter limit
            batch = values[start : start + 500]
            sql = f"SELECT {MOVIE_COLUMNS} FROM movies WHERE {column} IN ({', '.join('?' * len(batch))})"
            movies.extend(_movie(row) for row in self._conn().execute(sql, batch))
        return movies

    def search_movies(self, query: str, limit: int = 20) -> list[Movie]:
        limit = checked_limit(limit)
        words = search_words(query)
        if not words:
            return []
        phrase = _like_escape(" ".join(words))
        all_words = " AND ".join(f"title LIKE :w{i} ESCAPE '\\'" for i in range(len(words)))
        sql = f"""
            SELECT {MOVIE_COLUMNS} FROM movies
            WHERE title LIKE :contains ESCAPE '\\' OR ({all_words})
            ORDER BY CASE
                WHEN title LIKE :prefix ESCAPE '\\' THEN 0
                WHEN title LIKE :word ESCAPE '\\' THEN 1
                WHEN title LIKE :contains ESCAPE '\\' THEN 2
                ELSE 3 END, rating_count DESC, movie_id
            LIMIT :limit"""
        params = {"contains": f"%{phrase}%", "prefix": f"{phrase}%", "word": f"% {phrase}%", "limit": limit}
        params |= {f"w{i}": f"%{_like_escape(w)}%" for i, w in enumerate(words)}
        return [_movie(row) for row in self._conn().execute(sql, params)]

    def popular_movies(
        self,
        limit: int = 20,
        genres: Iterable[str] | None = None,
        year_min: int | None = None,
        year_max: int | None = None,
        min_rating: float | None = None,
    ) -> list[Movie]:
        limit = checked_limit(limit)
        where: list[str] = []
        params: list[object] = []
        genres = list(genres or [])
        if genres:
            where.append(
                f"EXISTS (SELECT 1 FROM json_each(movies.genres) WHERE value IN ({', '.join('?' * len(genres))}))"
            )
            params += genres
        for condition, value in (("year >= ?", year_min), ("year <= ?", year_max), ("rating_mean >= ?", min_rating)):
            if value is not None:
                where.append(condition)
                params.append(value)
        sql = f"SELECT {MOVIE_COLUMNS} FROM movies {'WHERE ' + ' AND '.join(where) if where else ''}"
        sql += " ORDER BY rating_count DESC, movie_id LIMIT ?"
        return [_movie(row) for row in self._conn().execute(sql, [*params, limit])]

    def user_history(self, user_id: int, limit: int | None = None) -> list[HistoryEntry]:
        newest = -1 if limit is None else checked_limit(limit)
        rows = self._conn().execute(
            "SELECT movie_id, rating, timestamp FROM"
            " (SELECT * FROM ratings WHERE user_id = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            (int(user_id), newest),
        )
        return [HistoryEntry(*row) for row in rows]

    def user_stats(self, user_id: int) -> UserStats | None:
        conn = self._conn()
        row = conn.execute(
            "SELECT n_ratings, n_rated, rating_sum, first_timestamp, last_timestamp FROM users WHERE user_id = ?",
            (int(user_id),),
        ).fetchone()
        if row is None:
            return None
        n_ratings, n_rated, rating_sum, first, last = row
        genres = conn.execute(
            "SELECT g.value, count(*) AS n FROM ratings r JOIN movies m ON m.movie_id = r.movie_id,"
            " json_each(m.genres) g WHERE r.user_id = ? GROUP BY g.value ORDER BY n DESC, g.value LIMIT ?",
            (int(user_id), TOP_GENRES),
        )
        return {
            "user_id": int(user_id),
            "n_ratings": n_ratings,
            "mean_rating": rating_sum / n_rated if n_rated else None,
            "first_timestamp": first,
            "last_timestamp": last,
            "top_genres": [{"genre": genre, "count": n} for genre, n in genres],
        }

    def counts(self) -> Counts:
        """Ratings are summed from the users' counters, which every write keeps exact."""
        movies, ratings, users = self._conn().execute(
            "SELECT (SELECT count(*) FROM movies), coalesce(sum(n_ratings), 0), count(*) FROM users"
        ).fetchone()
        return {"movies": movies, "ratings": ratings, "users": users}

    # -- writes ------------------------------------------------------------------------------

    def add_rating(self, user_id: int, movie_id: int, rating: float, timestamp: int | None = None) -> AddedRating:
        user_id, movie_id, rating, timestamp = checked_rating(user_id, movie_id, rating, timestamp)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM movies WHERE movie_id = ?", (movie_id,)).fetchone() is None:
                raise UnknownMovie(movie_id)
            old = conn.execute(
                "DELETE FROM ratings WHERE user_id = ? AND movie_id = ? RETURNING rating", (user_id, movie_id)
            ).fetchone()
            old_rating = None if old is None else old[0]
            n_ratings, next_seq = conn.execute(
                UPSERT_USER,
                {
                    "user_id": user_id,
                    "rating": rating,
                    "timestamp": timestamp,
                    "new_movie": int(old is None),
                    "new_value": int(old_rating is None),
                    "delta": rating - (0.0 if old_rating is None else old_rating),
                },
            ).fetchone()
            conn.execute(
                "INSERT INTO ratings (user_id, seq, movie_id, rating, timestamp) VALUES (?, ?, ?, ?, ?)",
                (user_id, next_seq - 1, movie_id, rating, timestamp),
            )
        return {
            "user_id": user_id,
            "movie_id": movie_id,
            "rating": rating,
            "timestamp": timestamp,
            "replaced": old is not None,
            "n_ratings": n_ratings,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def ping(self) -> bool:
        try:
            return self._conn().execute("SELECT 1").fetchone() == (1,)
        except (StoreError, sqlite3.Error):
            return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def _movie(row: tuple) -> Movie:
    movie_id, item_idx, title, year, genres, rating_count, rating_mean = row
    return {
        "movie_id": movie_id,
        "item_idx": item_idx,
        "title": title,
        "year": year,
        "genres": json.loads(genres),
        "rating_count": rating_count,
        "rating_mean": rating_mean,
    }


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
