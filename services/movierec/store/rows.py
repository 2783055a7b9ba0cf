"""A prepared dataset turned into store rows: movie records, then ratings and users in bounded chunks.

Ratings are cut at user boundaries into chunks of about `rows_per_chunk` rows, so loading ML-32M
never holds more than one chunk of column arrays (and the backend's batch of records) at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from movierec.data.prepared import PreparedData

ROWS_PER_CHUNK = 200_000


@dataclass(frozen=True)
class RatingRows:
    """Column arrays, one row per (user, movie) rating; `seq` orders a user's history, oldest first.

    `rating` is float64 with NaN where the source has no rating value.
    """

    user_id: np.ndarray
    movie_id: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    seq: np.ndarray

    def __len__(self) -> int:
        return len(self.user_id)

    def records(self) -> Iterator[tuple[int, int, float | None, int, int]]:
        """(user_id, movie_id, rating or None, timestamp, seq) as plain Python values."""
        rating = self.rating.astype(object)
        rating[np.isnan(self.rating)] = None
        return zip(
            self.user_id.tolist(),
            self.movie_id.tolist(),
            rating.tolist(),
            self.timestamp.tolist(),
            self.seq.tolist(),
            strict=True,
        )


@dataclass(frozen=True)
class UserRows:
    """Column arrays, one row per user, summarising that user's ratings in the same chunk.

    n_rated counts ratings with a value and rating_sum adds those values; next_seq is the `seq` the
    user's next rating gets.
    """

    user_id: np.ndarray
    n_ratings: np.ndarray
    n_rated: np.ndarray
    rating_sum: np.ndarray
    first_timestamp: np.ndarray
    last_timestamp: np.ndarray
    next_seq: np.ndarray

    def __len__(self) -> int:
        return len(self.user_id)

    def records(self) -> Iterator[tuple[int, int, int, float, int, int, int]]:
        """(user_id, n_ratings, n_rated, rating_sum, first_timestamp, last_timestamp, next_seq)."""
        return zip(
            self.user_id.tolist(),
            self.n_ratings.tolist(),
            self.n_rated.tolist(),
            self.rating_sum.tolist(),
            self.first_timestamp.tolist(),
            self.last_timestamp.tolist(),
            self.next_seq.tolist(),
            strict=True,
        )


def movie_records(data: PreparedData) -> list[dict[str, Any]]:
    """One dict per movie: movie_id, item_idx, title, year, genres, rating_count, rating_mean.

    year and rating_mean are None when unknown; rating_mean is rounded to 4 decimals.
    """
    records = []
    for row in data.items.to_pylist():
        mean = row["rating_mean"]
        records.append(
            {
                "movie_id": int(row["movie_id"]),
                "item_idx": int(row["item_idx"]),
                "title": row["title"],
                "year": row["year"],
                "genres": list(row["genres"] or []),
                "rating_count": int(row["rating_count"]),
                "rating_mean": None if mean is None or math.isnan(mean) else round(mean, 4),
            }
        )
    return records


def rating_chunks(data: PreparedData, rows_per_chunk: int = ROWS_PER_CHUNK) -> Iterator[tuple[RatingRows, UserRows]]:
    """Ratings and user summaries of consecutive runs of users, each run about `rows_per_chunk` ratings.

    A movie a user rated more than once keeps only its last rating (the store holds one rating per
    user and movie); every prepared user has at least one rating.
    """
    offsets = np.asarray(data.seq_offsets)
    user_ids = data.users.column("user_id").to_numpy().astype(np.int64)
    movie_of_item = np.zeros(data.num_items + 1, dtype=np.int64)
    movie_of_item[data.items.column("item_idx").to_numpy()] = data.items.column("movie_id").to_numpy()
    start_user = 0
    while start_user < data.num_users:
        end_user = int(np.searchsorted(offsets, offsets[start_user] + rows_per_chunk, side="right")) - 1
        end_user = min(max(end_user, start_user + 1), data.num_users)
        yield _chunk(data, offsets, user_ids, movie_of_item, start_user, end_user)
        start_user = end_user


def _chunk(
    data: PreparedData,
    offsets: np.ndarray,
    user_ids: np.ndarray,
    movie_of_item: np.ndarray,
    start_user: int,
    end_user: int,
) -> tuple[RatingRows, UserRows]:
    lo, hi = int(offsets[start_user]), int(offsets[end_user])
    lengths = np.diff(offsets[start_user : end_user + 1])
    local_user = np.repeat(np.arange(end_user - start_user), lengths)
    items = np.asarray(data.seq_items[lo:hi], dtype=np.int64)
    seq = np.arange(hi - lo) - np.repeat(offsets[start_user:end_user] - lo, lengths)
    keep = _last_of_each_pair(local_user, items, data.num_items + 1)
    local_user, items, seq = local_user[keep], items[keep], seq[keep]
    rating = np.asarray(data.seq_ratings[lo:hi], dtype=np.float64)[keep]
    timestamp = np.asarray(data.seq_timestamps[lo:hi], dtype=np.int64)[keep]

    n_users = end_user - start_user
    rated = ~np.isnan(rating)
    n_ratings = np.bincount(local_user, minlength=n_users)
    starts = np.concatenate(([0], np.cumsum(n_ratings)[:-1]))
    ratings = RatingRows(
        user_id=user_ids[start_user:end_user][local_user],
        movie_id=movie_of_item[items],
        rating=rating,
        timestamp=timestamp,
        seq=seq,
    )
    users = UserRows(
        user_id=user_ids[start_user:end_user],
        n_ratings=n_ratings,
        n_rated=np.bincount(local_user, weights=rated, minlength=n_users).astype(np.int64),
        rating_sum=np.bincount(local_user, weights=np.where(rated, rating, 0.0), minlength=n_users),
        first_timestamp=np.minimum.reduceat(timestamp, starts),
        last_timestamp=np.maximum.reduceat(timestamp, starts),
        next_seq=lengths.astype(np.int64),
    )
    return ratings, users


def _last_of_each_pair(users: np.ndarray, items: np.ndarray, num_keys: int) -> np.ndarray:
    """Mask keeping the last row of each (user, item) pair; all True when there are no repeats."""
    keys = users * num_keys + items
    _, first_from_end = np.unique(keys[::-1], return_index=True)
    if len(first_from_end) == len(keys):
        return np.ones(len(keys), dtype=bool)
    keep = np.zeros(len(keys), dtype=bool)
    keep[len(keys) - 1 - first_from_end] = True
    return keep
