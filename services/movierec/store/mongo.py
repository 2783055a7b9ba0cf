"""The MongoDB store: collections `movies`, `ratings` and `users` in the URI's database (default
`movierec`), written with acknowledged writes (the URI's write concern, else w=1).

movies: _id = movie_id, indexed on item_idx (unique), on (rating_count desc, _id) for popularity
and on genres. ratings: one document per (user_id, movie_id) (unique index) with a `seq` that orders
the user's history (index user_id, seq). users: _id = user_id with running counters that every
write changes with $inc/$min/$max, so concurrent writers never lose an update.

Title search matches case-insensitive regular expressions (a collection scan over ~90k short
titles): a text index would not find partial words and would rank differently from the SQLite store.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any, ParamSpec, TypeVar

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConfigurationError, ConnectionFailure, PyMongoError
from pymongo.write_concern import WriteConcern

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

DEFAULT_DATABASE = "movierec"
BATCH = 10_000
SERVER_TIMEOUT_MS = 5_000

P = ParamSpec("P")
R = TypeVar("R")


def _unavailable_as_store_error(method: Callable[P, R]) -> Callable[P, R]:
    """Report a lost or unreachable server as StoreUnavailable."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except ConnectionFailure as exc:
            store: Any = args[0]
            raise StoreUnavailable(f"{store.location}: MongoDB unreachable ({type(exc).__name__})") from None

    return wrapper


class MongoStore(MovieStore):
    """A store in the MongoDB at `uri`; the server is first contacted by the first operation, which
    gives up after `SERVER_TIMEOUT_MS` unless the URI sets serverSelectionTimeoutMS."""

    def __init__(self, uri: str) -> None:
        try:
            self._location = _without_password(uri)
            timeout: dict[str, Any] = {"serverSelectionTimeoutMS": SERVER_TIMEOUT_MS}
            if "serverselectiontimeoutms" in uri.lower():
                timeout = {}
            self._client: MongoClient = MongoClient(uri, appname="movierec", **timeout)
        except (ConfigurationError, ValueError, TypeError) as exc:
            raise StoreError(f"bad MongoDB URI: {exc}") from None
        concern = self._client.write_concern
        if not concern.acknowledged:
            raise StoreError(f"{self._location}: w=0 is not allowed, the store needs acknowledged writes")
        db = self._client.get_default_database(
            default=DEFAULT_DATABASE, write_concern=concern if concern.document else WriteConcern(w=1)
        )
        self._movies = db.movies
        self._ratings = db.ratings
        self._users = db.users

    @property
    def location(self) -> str:
        return self._location

    # -- bulk load ---------------------------------------------------------------------------

    @_unavailable_as_store_error
    def _begin_load(self) -> None:
        for collection in (self._movies, self._ratings, self._users):
            collection.drop()

    @_unavailable_as_store_error
    def _load_movies(self, movies: list[dict]) -> None:
        docs = ({"_id": m["movie_id"], **{k: v for k, v in m.items() if k != "movie_id"}} for m in movies)
        self._insert(self._movies, docs)

    @_unavailable_as_store_error
    def _load_chunk(self, ratings: RatingRows, users: UserRows) -> None:
        rating_keys = ("user_id", "movie_id", "rating", "timestamp", "seq")
        self._insert(self._ratings, (dict(zip(rating_keys, r, strict=True)) for r in ratings.records()))
        user_keys = ("_id", "n_ratings", "n_rated", "rating_sum", "first_timestamp", "last_timestamp", "next_seq")
        self._insert(self._users, (dict(zip(user_keys, u, strict=True)) for u in users.records()))

    @staticmethod
    def _insert(collection: Collection, docs: Iterable[dict]) -> None:
        """Unordered insert_many in batches of `BATCH`, holding one batch in memory."""
        docs = iter(docs)
        while batch := list(islice(docs, BATCH)):
            try:
                collection.insert_many(batch, ordered=False)
            except BulkWriteError as exc:
                first = exc.details["writeErrors"][0]
                raise StoreError(f"{collection.name}: insert failed ({first['errmsg']})") from None

    @_unavailable_as_store_error
    def _end_load(self) -> None:
        self._movies.create_index([("item_idx", ASCENDING)], unique=True)
        self._movies.create_index([("rating_count", DESCENDING), ("_id", ASCENDING)])
        self._movies.create_index([("genres", ASCENDING)])
        self._ratings.create_index([("user_id", ASCENDING), ("movie_id", ASCENDING)], unique=True)
        self._ratings.create_index([("user_id", ASCENDING), ("seq", ASCENDING)])

    # -- reads -------------------------------------------------------------------------------

    @_unavailable_as_store_error
    def get_movies(self, movie_ids: Iterable[int]) -> dict[int, Movie]:
        ids = [int(i) for i in movie_ids]
        return {doc["_id"]: _movie(doc) for doc in self._movies.find({"_id": {"$in": ids}})}

    @_unavailable_as_store_error
    def movies_by_item_idx(self, item_idxs: Iterable[int]) -> dict[int, Movie]:
        idxs = [int(i) for i in item_idxs]
        return {doc["item_idx"]: _movie(doc) for doc in self._movies.find({"item_idx": {"$in": idxs}})}

    @_unavailable_as_store_error
    def search_movies(self, query: str, limit: int = 20) -> list[Movie]:
        limit = checked_limit(limit)
        words = search_words(query)
        if not words:
            return []
        phrase = re.escape(" ".join(words))

        def matches(pattern: str) -> dict:
            return {"$regexMatch": {"input": "$title", "regex": pattern, "options": "i"}}

        rank = {
            "$switch": {
                "branches": [
                    {"case": matches(f"^{phrase}"), "then": 0},
                    {"case": matches(f" {phrase}"), "then": 1},
                    {"case": matches(phrase), "then": 2},
                ],
                "default": 3,
            }
        }
        every_word = [{"title": {"$regex": re.escape(w), "$options": "i"}} for w in words]
        pipeline: list[dict[str, Any]] = [
            {"$match": {"$or": [{"title": {"$regex": phrase, "$options": "i"}}, {"$and": every_word}]}},
            {"$addFields": {"_rank": rank}},
            {"$sort": {"_rank": 1, "rating_count": -1, "_id": 1}},
            {"$limit": limit},
        ]
        return [_movie(doc) for doc in self._movies.aggregate(pipeline)]

    @_unavailable_as_store_error
    def popular_movies(
        self,
        limit: int = 20,
        genres: Iterable[str] | None = None,
        year_min: int | None = None,
        year_max: int | None = None,
        min_rating: float | None = None,
    ) -> list[Movie]:
        limit = checked_limit(limit)
        query: dict[str, Any] = {}
        genres = list(genres or [])
        if genres:
            query["genres"] = {"$in": genres}
        year = {op: v for op, v in (("$gte", year_min), ("$lte", year_max)) if v is not None}
        if year:
            query["year"] = year
        if min_rating is not None:
            query["rating_mean"] = {"$gte": min_rating}
        cursor = self._movies.find(query).sort([("rating_count", DESCENDING), ("_id", ASCENDING)]).limit(limit)
        return [_movie(doc) for doc in cursor]

    @_unavailable_as_store_error
    def user_history(self, user_id: int, limit: int | None = None) -> list[HistoryEntry]:
        cursor = self._ratings.find({"user_id": int(user_id)}, {"_id": 0, "movie_id": 1, "rating": 1, "timestamp": 1})
        if limit is None:
            return [_entry(doc) for doc in cursor.sort("seq", ASCENDING)]
        newest = cursor.sort("seq", DESCENDING).limit(checked_limit(limit))
        return [_entry(doc) for doc in newest][::-1]

    @_unavailable_as_store_error
    def user_stats(self, user_id: int) -> UserStats | None:
        user = self._users.find_one({"_id": int(user_id)})
        if user is None or not user.get("n_ratings"):
            return None
        genres = self._ratings.aggregate(
            [
                {"$match": {"user_id": int(user_id)}},
                {
                    "$lookup": {
                        "from": self._movies.name,
                        "localField": "movie_id",
                        "foreignField": "_id",
                        "as": "movie",
                    }
                },
                {"$unwind": "$movie"},
                {"$unwind": "$movie.genres"},
                {"$group": {"_id": "$movie.genres", "count": {"$sum": 1}}},
                {"$sort": {"count": -1, "_id": 1}},
                {"$limit": TOP_GENRES},
            ]
        )
        return {
            "user_id": int(user_id),
            "n_ratings": user["n_ratings"],
            "mean_rating": user["rating_sum"] / user["n_rated"] if user["n_rated"] else None,
            "first_timestamp": user["first_timestamp"],
            "last_timestamp": user["last_timestamp"],
            "top_genres": [{"genre": g["_id"], "count": g["count"]} for g in genres],
        }

    @_unavailable_as_store_error
    def counts(self) -> Counts:
        """From collection metadata (estimated_document_count): instant even at 32M ratings."""
        return {
            "movies": self._movies.estimated_document_count(),
            "ratings": self._ratings.estimated_document_count(),
            "users": self._users.estimated_document_count(),
        }

    # -- writes ------------------------------------------------------------------------------

    @_unavailable_as_store_error
    def add_rating(self, user_id: int, movie_id: int, rating: float, timestamp: int | None = None) -> AddedRating:
        """Three acknowledged single-document writes: reserve the user's next `seq` (creating the user),
        upsert the rating (returning the one it replaces), then apply the counter deltas."""
        user_id, movie_id, rating, timestamp = checked_rating(user_id, movie_id, rating, timestamp)
        if self._movies.find_one({"_id": movie_id}, {"_id": 1}) is None:
            raise UnknownMovie(movie_id)
        user = self._users.find_one_and_update(
            {"_id": user_id},
            {"$inc": {"next_seq": 1}},
            projection={"next_seq": 1},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert user is not None  # upsert=True with ReturnDocument.AFTER always returns the document
        old = self._ratings.find_one_and_update(
            {"user_id": user_id, "movie_id": movie_id},
            {"$set": {"rating": rating, "timestamp": timestamp, "seq": user["next_seq"] - 1}},
            projection={"_id": 0, "rating": 1},
            upsert=True,
        )
        old_rating = None if old is None else old.get("rating")
        user = self._users.find_one_and_update(
            {"_id": user_id},
            {
                "$inc": {
                    "n_ratings": int(old is None),
                    "n_rated": int(old_rating is None),
                    "rating_sum": rating - (0.0 if old_rating is None else old_rating),
                },
                "$min": {"first_timestamp": timestamp},
                "$max": {"last_timestamp": timestamp},
            },
            projection={"n_ratings": 1},
            return_document=ReturnDocument.AFTER,
        )
        assert user is not None  # created by the upsert above
        return {
            "user_id": user_id,
            "movie_id": movie_id,
            "rating": rating,
            "timestamp": timestamp,
            "replaced": old is not None,
            "n_ratings": user["n_ratings"],
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def ping(self) -> bool:
        try:
            self._client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    def close(self) -> None:
        self._client.close()


def _movie(doc: dict) -> Movie:
    return {
        "movie_id": doc["_id"],
        "item_idx": doc["item_idx"],
        "title": doc["title"],
        "year": doc["year"],
        "genres": doc["genres"],
        "rating_count": doc["rating_count"],
        "rating_mean": doc["rating_mean"],
    }


def _entry(doc: dict) -> HistoryEntry:
    return HistoryEntry(doc["movie_id"], doc.get("rating"), doc["timestamp"])


def _without_password(uri: str) -> str:
    """The URI with any password replaced by ***, for messages."""
    return re.sub(r"(//[^:/@]+:)[^@/]*@", r"\1***@", uri, count=1)
