"""The store interface the API and the CLI use, whatever database is behind it.

A store holds three kinds of record:

- movies: one per movie of the loaded dataset (`Movie`); its rating_count and rating_mean describe
  the loaded dataset and are not changed by later ratings.
- ratings: at most one per (user, movie); a user's history is their ratings in the order they were
  made (`seq`), oldest first. Rating a movie again replaces the old rating and moves the movie to
  the newest position, so the history a recommender reads shows what the user did last.
- users: one per user with at least one rating, holding counters kept up to date by every write
  (`UserStats` is computed from them).

Backends implement the abstract methods; `load_prepared` is shared and drives their bulk hooks.
"""

from __future__ import annotations

import numbers
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import NamedTuple, Self, TypedDict

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from movierec.data.prepared import PreparedData
from movierec.store.errors import InvalidValue
from movierec.store.rows import RatingRows, UserRows, movie_records, rating_chunks

MIN_RATING, MAX_RATING = 0.5, 5.0
TOP_GENRES = 3


class Movie(TypedDict):
    """A movie: MovieLens movie_id, the model's item_idx, title, year (None if unknown), genres, and
    the number and mean (None if none) of its ratings in the loaded dataset."""

    movie_id: int
    item_idx: int
    title: str
    year: int | None
    genres: list[str]
    rating_count: int
    rating_mean: float | None


class HistoryEntry(NamedTuple):
    """One rating in a user's history; rating is None for loaded data without rating values."""

    movie_id: int
    rating: float | None
    timestamp: int


class AddedRating(TypedDict):
    """The outcome of `add_rating`: what was stored, whether it replaced an earlier rating of the
    same movie, and the user's history length afterwards."""

    user_id: int
    movie_id: int
    rating: float
    timestamp: int
    replaced: bool
    n_ratings: int


class GenreCount(TypedDict):
    """How many of a user's rated movies have this genre."""

    genre: str
    count: int


class UserStats(TypedDict):
    """A user's history length, mean rating (None if no rating has a value), the earliest and latest
    rating times ever written for them (Unix seconds; a replaced rating's time still counts), and
    their most rated genres (most first, ties by name)."""

    user_id: int
    n_ratings: int
    mean_rating: float | None
    first_timestamp: int
    last_timestamp: int
    top_genres: list[GenreCount]


class Counts(TypedDict):
    """How many records the store holds of each kind."""

    movies: int
    ratings: int
    users: int


class MovieStore(ABC):
    """Movies, ratings and users behind one interface; safe to share between threads."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the data lives, for messages (a file path, or a MongoDB URI without password)."""

    def load_prepared(self, data: PreparedData, progress: bool = True,
                      on_progress: Callable[[str, int, int], None] | None = None) -> Counts:
        """Replace the store's contents with a prepared dataset; returns the new counts.

        Streams ratings in chunks (bounded memory at ML-32M scale) and builds the secondary indexes
        after the data is in. Readers running meanwhile may see a partial dataset. Starting again
        after an interruption reloads from scratch (the first step drops everything), never twice.
        `on_progress(stage, done, total)` is called after each step (the worker's task state).
        """
        report = on_progress or (lambda stage, done, total: None)
        movies = movie_records(data)
        with _load_progress(progress) as bar:
            self._begin_load()
            task = bar.add_task("movies", total=len(movies))
            self._load_movies(movies)
            bar.update(task, completed=len(movies))
            report("movies", len(movies), len(movies))
            task = bar.add_task("ratings", total=len(data.seq_items))
            done = 0
            for ratings, users in rating_chunks(data):
                self._load_chunk(ratings, users)
                bar.update(task, advance=len(ratings))
                done += len(ratings)
                report("ratings", done, len(data.seq_items))
            bar.update(task, completed=len(data.seq_items))
            task = bar.add_task("indexes", total=1)
            self._end_load()
            bar.update(task, completed=1)
            report("indexes", 1, 1)
        return self.counts()

    @abstractmethod
    def _begin_load(self) -> None:
        """Drop all movies, ratings and users."""

    @abstractmethod
    def _load_movies(self, movies: list[dict]) -> None:
        """Insert movie records (the keys of `Movie`)."""

    @abstractmethod
    def _load_chunk(self, ratings: RatingRows, users: UserRows) -> None:
        """Insert one chunk of ratings and the summaries of the users they belong to."""

    @abstractmethod
    def _end_load(self) -> None:
        """Build what the queries need once the data is in (indexes, statistics)."""

    @abstractmethod
    def get_movies(self, movie_ids: Iterable[int]) -> dict[int, Movie]:
        """The movies with these movie_ids, keyed by movie_id; unknown ids are left out."""

    @abstractmethod
    def movies_by_item_idx(self, item_idxs: Iterable[int]) -> dict[int, Movie]:
        """The movies with these model item_idx values, keyed by item_idx; unknown ones are left out."""

    @abstractmethod
    def search_movies(self, query: str, limit: int = 20) -> list[Movie]:
        """Movies whose title matches `query`, case-insensitively, best matches first.

        A title matches when it contains the query, or every word of it (so "the matrix" finds
        "Matrix, The (1999)"). Ranking: title starts with the query, then the query starts a word,
        then contains the query, then contains all its words; ties go to the most rated movie, then
        the lowest movie_id. A blank query matches nothing.
        """

    @abstractmethod
    def popular_movies(
        self,
        limit: int = 20,
        genres: Iterable[str] | None = None,
        year_min: int | None = None,
        year_max: int | None = None,
        min_rating: float | None = None,
    ) -> list[Movie]:
        """The most rated movies (ties: lowest movie_id), optionally only those with any of `genres`,
        a year within [year_min, year_max] and a rating_mean of at least `min_rating`."""

    @abstractmethod
    def add_rating(self, user_id: int, movie_id: int, rating: float, timestamp: int | None = None) -> AddedRating:
        """Store a rating with an acknowledged write and append it to the user's history.

        Creates the user if new and updates their stats. Rating a movie again replaces the earlier
        rating and moves the movie to the newest position. `timestamp` defaults to now (Unix seconds).
        Raises `InvalidValue` for a bad field and `UnknownMovie` for a movie_id the store lacks.
        """

    @abstractmethod
    def user_history(self, user_id: int, limit: int | None = None) -> list[HistoryEntry]:
        """The user's ratings, oldest first; with `limit`, only the newest `limit` of them. Empty for
        an unknown user."""

    @abstractmethod
    def user_stats(self, user_id: int) -> UserStats | None:
        """The user's stats, or None for a user without ratings."""

    @abstractmethod
    def counts(self) -> Counts:
        """How many movies, ratings and users the store holds."""

    @abstractmethod
    def ping(self) -> bool:
        """True when the database answers."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def checked_rating(user_id: int, movie_id: int, rating: float, timestamp: int | None) -> tuple[int, int, float, int]:
    """Validate the fields of `add_rating`; timestamp None becomes now. Raises InvalidValue."""
    for field, value in (("user_id", user_id), ("movie_id", movie_id)):
        if not _is_int(value) or value < 0:
            raise InvalidValue(field, f"expected a non-negative integer, got {value!r}")
    if isinstance(rating, bool) or not isinstance(rating, numbers.Real):
        raise InvalidValue("rating", f"expected a number, got {rating!r}")
    if not MIN_RATING <= rating <= MAX_RATING or rating * 2 != int(rating * 2):
        raise InvalidValue("rating", f"{rating!r} is not one of 0.5, 1.0, ..., 5.0")
    if timestamp is None:
        timestamp = int(time.time())
    elif not _is_int(timestamp) or timestamp < 0:
        raise InvalidValue("timestamp", f"expected Unix seconds (a non-negative integer), got {timestamp!r}")
    return int(user_id), int(movie_id), float(rating), int(timestamp)


def checked_limit(limit: int) -> int:
    """Validate a result-size limit: a positive integer. Raises InvalidValue."""
    if not _is_int(limit) or limit < 1:
        raise InvalidValue("limit", f"expected a positive integer, got {limit!r}")
    return int(limit)


def search_words(query: str) -> list[str]:
    """The lower-cased words of a search query (punctuation such as ',' kept inside words)."""
    return query.lower().split()


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _load_progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
