"""Where the API keeps movies, ratings and users: SQLite (embedded default) or MongoDB.

    with open_store(mongo_uri, sqlite_path) as store:
        store.add_rating(user_id=7, movie_id=2571, rating=4.5)
        store.user_history(7)

`MovieStore` (store.base) documents every operation; store.errors lists what they raise.
"""

from __future__ import annotations

from pathlib import Path

from movierec.store.base import AddedRating, Counts, HistoryEntry, Movie, MovieStore, UserStats
from movierec.store.errors import InvalidValue, StoreError, StoreUnavailable, UnknownMovie

__all__ = [
    "AddedRating",
    "Counts",
    "HistoryEntry",
    "InvalidValue",
    "Movie",
    "MovieStore",
    "StoreError",
    "StoreUnavailable",
    "UnknownMovie",
    "UserStats",
    "open_store",
]


def open_store(mongo_uri: str | None, sqlite_path: str | Path) -> MovieStore:
    """The MongoDB store at `mongo_uri` when one is given (non-empty), else the SQLite store at
    `sqlite_path`. Backends are imported on demand, so SQLite needs no pymongo."""
    if mongo_uri:
        from movierec.store.mongo import MongoStore

        return MongoStore(mongo_uri)
    from movierec.store.sqlite import SQLiteStore

    return SQLiteStore(sqlite_path)
