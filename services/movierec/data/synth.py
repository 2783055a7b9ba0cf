"""A seeded synthetic MovieLens dataset in the ML-32M CSV layout, for benchmarks and tests.

`synthesize()` writes ``ratings.csv``, ``movies.csv``, ``tags.csv`` and ``links.csv`` with the same
columns, quoting and sort order as the real ML-32M files:

* movie popularity follows a Zipf–Mandelbrot law over a random popularity rank (so popularity is
  unrelated to movieId) with an exponential cut-off; at full scale the top movie gets ~60k ratings
  and the median movie ~25 (heavy users' uniform top-ups reach almost every movie);
* user activity is heavy-tailed (log-normal above a floor of `min_per_user` ratings, capped at 40 %
  of the catalogue), and the per-user counts add up to exactly `ratings`;
* no user rates a movie twice; ``ratings.csv`` is sorted by userId, then movieId;
* each user rates inside one activity window between 1995-01-09 and 2023-10-12; within the window
  the timestamps are drawn independently, so (as in the real file) the movieId order is not the
  time order and a few ratings share a timestamp;
* ratings are half stars 0.5..5.0 from a movie quality + user bias + noise model (whole stars
  before February 2003, when MovieLens introduced half stars);
* titles end in a year, e.g. "Synthetic Movie 123 (1999)"; a few contain commas or quotes (quoted
  as in the real file), a few have no year; 1-4 of 20 genres, `|`-separated, or "(no genres listed)".

Everything is vectorised numpy; the big file is written in chunks with ``pyarrow.csv.CSVWriter``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from movierec.data.errors import DataError

log = logging.getLogger(__name__)

ML32M_USERS, ML32M_MOVIES, ML32M_RATINGS = 200_948, 87_585, 32_000_204
FIRST_TS, LAST_TS = 789_652_004, 1_697_164_147  # 1995-01-09 .. 2023-10-12, as in ML-32M
HALF_STARS_SINCE = 1_045_008_000  # 2003-02-12: MovieLens ratings are whole stars before this
GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western", "Biography",
)  # fmt: skip
RATING_LABELS = pa.array([f"{(code + 1) / 2:.1f}" for code in range(10)])  # code 0..9 → "0.5".."5.0"
TAG_WORDS = (
    "funny", "atmospheric", "visually appealing", "dark comedy", "twist ending", "classic",
    "based on a book", "slow, but worth it", "sci-fi", "thought-provoking", "soundtrack",
    "overrated", "quirky", "great acting", "predictable, boring", 'the "best" one',
)  # fmt: skip

_ZIPF_EXPONENT, _ZIPF_OFFSET, _TAIL_CUTOFF = 1.0, 60.0, 4.5
_CHUNK_ROWS = 4_000_000

Progress = Callable[[str], None]


def synthesize(
    out: str | Path,
    users: int = ML32M_USERS,
    movies: int = ML32M_MOVIES,
    ratings: int = ML32M_RATINGS,
    seed: int = 0,
    *,
    min_per_user: int = 20,
    on_stage: Progress | None = None,
) -> Path:
    """Write a synthetic dataset of exactly `ratings` ratings into folder `out`; returns `out`."""
    _check_sizes(users, movies, ratings, min_per_user)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = on_stage or (lambda message: log.info("synth: %s", message))
    rng = np.random.default_rng(seed)

    stage("movies")
    movie_ids = _movie_ids(rng, movies)
    popularity = _popularity(rng, movies)
    stage("ratings per user")
    counts = _user_counts(rng, users, movies, ratings, min_per_user)
    stage("choosing movies")
    keys = _distinct_user_movies(rng, counts, popularity, movies)
    user_idx = (keys // movies).astype(np.int32)
    movie_idx = (keys % movies).astype(np.int32)
    del keys
    stage("ratings and timestamps")
    timestamps = _timestamps(rng, user_idx, users)
    codes = _rating_codes(rng, user_idx, movie_idx, timestamps, users, movies)
    stage("writing ratings.csv")
    _write_ratings(out / "ratings.csv", user_idx, movie_ids[movie_idx], codes, timestamps)
    stage("writing movies.csv, tags.csv, links.csv")
    _write_movies(out / "movies.csv", rng, movie_ids)
    _write_tags(out / "tags.csv", rng, user_idx, movie_ids[movie_idx], timestamps, ratings)
    _write_links(out / "links.csv", rng, movie_ids)
    log.info("synth: wrote %s (%d users, %d movies, %d ratings, seed %d)", out, users, movies, ratings, seed)
    return out


def _check_sizes(users: int, movies: int, ratings: int, min_per_user: int) -> None:
    if users < 1 or movies < 1 or min_per_user < 1:
        raise DataError(f"users ({users}), movies ({movies}) and min_per_user ({min_per_user}) must be ≥ 1")
    if min_per_user > movies:
        raise DataError(f"{movies} movies cannot give every user {min_per_user} distinct ratings")
    if ratings < users * min_per_user:
        raise DataError(f"{ratings} ratings are fewer than {users} users × {min_per_user} per user")
    if ratings > users * movies:
        raise DataError(f"{ratings} ratings exceed {users} users × {movies} movies")


def _movie_ids(rng: np.random.Generator, movies: int) -> np.ndarray:
    """Sorted, sparse movieIds (the real ML-32M ids run up to ~3.3 × the movie count)."""
    ids = rng.choice(np.arange(1, int(movies * 3.3) + 2), size=movies, replace=False)
    ids.sort()
    return ids.astype(np.int32)


def _popularity(rng: np.random.Generator, movies: int) -> np.ndarray:
    """Sampling probability of each movie index: Zipf–Mandelbrot on a random rank, exponential tail."""
    rank = rng.permutation(movies).astype(np.float64)
    weight = (rank + _ZIPF_OFFSET) ** -_ZIPF_EXPONENT * np.exp(-_TAIL_CUTOFF * rank / movies)
    return weight / weight.sum()


def _user_counts(rng: np.random.Generator, users: int, movies: int, ratings: int, floor: int) -> np.ndarray:
    """Ratings per user: `floor` + a log-normal share of the rest, capped, summing to `ratings`."""
    cap = max(floor, int(0.4 * movies))
    if ratings > users * cap:
        cap = movies
    excess_total = ratings - users * floor
    weight = rng.lognormal(mean=0.0, sigma=1.4, size=users)
    excess = np.minimum(np.floor(weight / weight.sum() * excess_total).astype(np.int64), cap - floor)
    remaining = excess_total - int(excess.sum())
    while remaining > 0:  # hand out what rounding and the cap left over, by weight, to users with room
        room = np.flatnonzero(excess < cap - floor)
        if remaining <= len(room):
            excess[rng.choice(room, size=remaining, replace=False)] += 1
            break
        share = np.floor(weight[room] / weight[room].sum() * remaining).astype(np.int64)
        share = np.maximum(np.minimum(share, cap - floor - excess[room]), 0)
        if share.sum() == 0:
            share[:] = 1  # remaining > len(room), so one more each cannot overshoot
        excess[room] += share
        remaining -= int(share.sum())
    counts = floor + excess
    return counts


def _distinct_user_movies(
    rng: np.random.Generator, counts: np.ndarray, popularity: np.ndarray, movies: int
) -> np.ndarray:
    """Sorted keys user × movies + movie, exactly counts[u] distinct movies for every user u.

    Round 1 draws counts[u] movies by popularity with replacement and drops repeats. Later rounds
    top up each user's shortfall, drawing more than needed (popularity in round 2, then uniform,
    which converges fast since counts ≤ 40 % of the catalogue or all of it), dropping movies the
    user already has, and keeping a random subset of exactly the shortfall.
    """
    users = len(counts)
    sampler = _AliasSampler(popularity)
    owner = np.repeat(np.arange(users, dtype=np.int64), counts)
    keys = owner * movies + sampler.draw(rng, len(owner))
    del owner
    keys.sort()
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    have = np.bincount(keys // movies, minlength=users)
    extra = np.empty(0, dtype=np.int64)  # keys added by the top-up rounds, sorted
    for round_no in range(2, 200):
        need = counts - have
        wanted = np.flatnonzero(need > 0)
        if len(wanted) == 0:
            break
        if round_no > 40 or (need[wanted] * 2 > movies).any():
            return _fill_exhaustively(rng, np.sort(np.concatenate([keys, extra])), need, movies)
        # Oversample by the chance of hitting a movie the user already has (uniform), more for popularity.
        taken = have[wanted] / movies
        draws = np.ceil(need[wanted] * (1.5 if round_no == 2 else 1.2) / (1.0 - taken)).astype(np.int64) + 2
        owner = np.repeat(wanted.astype(np.int64), draws)
        movie = sampler.draw(rng, len(owner)) if round_no == 2 else rng.integers(0, movies, size=len(owner))
        fresh = np.sort(owner * movies + movie)
        fresh = fresh[np.concatenate(([True], fresh[1:] != fresh[:-1]))]
        fresh = fresh[~_contains(keys, fresh) & ~_contains(extra, fresh)]
        fresh = _keep_random_per_owner(rng, fresh, need, movies)
        extra = np.sort(np.concatenate([extra, fresh]))
        have += np.bincount(fresh // movies, minlength=users)
    else:  # pragma: no cover
        raise RuntimeError("synthesize: could not draw distinct movies")
    return np.sort(np.concatenate([keys, extra])) if len(extra) else keys


def _fill_exhaustively(rng: np.random.Generator, keys: np.ndarray, need: np.ndarray, movies: int) -> np.ndarray:
    """Top up the remaining shortfalls user by user from the movies each user has not rated yet."""
    extra = []
    for user in np.flatnonzero(need > 0):
        lo, hi = np.searchsorted(keys, [user * movies, (user + 1) * movies])
        free = np.setdiff1d(np.arange(movies), keys[lo:hi] - user * movies, assume_unique=True)
        extra.append(user * movies + rng.choice(free, size=int(need[user]), replace=False))
    return np.sort(np.concatenate([keys, *extra]))


def _contains(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Boolean mask: which queries occur in sorted_keys."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), dtype=bool)
    pos = np.searchsorted(sorted_keys, queries)
    pos[pos == len(sorted_keys)] = 0
    return sorted_keys[pos] == queries


def _keep_random_per_owner(rng: np.random.Generator, keys: np.ndarray, need: np.ndarray, movies: int) -> np.ndarray:
    """A random subset of `keys` with at most need[u] keys of each user u."""
    owner = keys // movies
    order = np.lexsort((rng.random(len(keys)), owner))
    owner_sorted = owner[order]
    starts = np.flatnonzero(np.concatenate(([True], owner_sorted[1:] != owner_sorted[:-1])))
    rank = np.arange(len(keys)) - np.repeat(starts, np.diff(np.append(starts, len(keys))))
    return np.sort(keys[order[rank < need[owner_sorted]]])


class _AliasSampler:
    """Walker's alias method: O(1) per draw from a fixed discrete distribution."""

    def __init__(self, p: np.ndarray) -> None:
        n = len(p)
        scaled = (np.asarray(p, dtype=np.float64) * n / np.sum(p)).tolist()
        alias = list(range(n))
        small = [i for i, x in enumerate(scaled) if x < 1.0]
        large = [i for i, x in enumerate(scaled) if x >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            alias[s] = g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)
        for i in small + large:
            scaled[i] = 1.0
        self.prob = np.array(scaled)
        self.alias = np.array(alias, dtype=np.int64)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` independent indices (int64)."""
        idx = rng.integers(0, len(self.prob), size=size)
        accept = rng.random(size) < self.prob[idx]
        return np.where(accept, idx, self.alias[idx])


def _rating_codes(
    rng: np.random.Generator,
    user_idx: np.ndarray,
    movie_idx: np.ndarray,
    timestamps: np.ndarray,
    users: int,
    movies: int,
) -> np.ndarray:
    """Half-star codes 0..9 (rating = (code + 1) / 2): 3.5 + movie quality + user bias + noise.

    Before MovieLens introduced half stars (February 2003) ratings are whole stars, as in the real data.
    """
    quality = rng.normal(0.0, 0.45, size=movies).astype(np.float32)
    bias = rng.normal(0.0, 0.35, size=users).astype(np.float32)
    score = rng.normal(3.55, 0.85, size=len(user_idx)).astype(np.float32)
    score += quality[movie_idx]
    score += bias[user_idx]
    half = np.rint(score * 2)
    whole = np.rint(score) * 2
    stars = np.where(timestamps < HALF_STARS_SINCE, whole, half)
    return np.clip(stars - 1, 0, 9).astype(np.int8)


def _timestamps(rng: np.random.Generator, user_idx: np.ndarray, users: int) -> np.ndarray:
    """Unix seconds inside a per-user activity window (log-uniform length, 1 hour .. 28 years)."""
    full = LAST_TS - FIRST_TS
    span = np.exp(rng.uniform(np.log(3600.0), np.log(full), size=users))
    start = FIRST_TS + rng.random(users) * (full - span)
    offset = rng.random(len(user_idx))
    offset *= span[user_idx]
    offset += start[user_idx]
    return offset.astype(np.int64)


def _write_ratings(
    path: Path, user_idx: np.ndarray, movie_id: np.ndarray, codes: np.ndarray, timestamps: np.ndarray
) -> None:
    """ratings.csv as in ML-32M: header, then `userId,movieId,4.0,timestamp` rows, LF endings."""
    schema = pa.schema(
        [
            ("userId", pa.int32()),
            ("movieId", pa.int32()),
            ("rating", pa.dictionary(pa.int8(), pa.string())),
            ("timestamp", pa.int64()),
        ]
    )
    options = pacsv.WriteOptions(include_header=False, quoting_style="none", batch_size=1 << 16)
    with open(path, "wb") as f:
        f.write(b"userId,movieId,rating,timestamp\n")
        with pacsv.CSVWriter(f, schema, write_options=options) as writer:
            for start in range(0, len(user_idx), _CHUNK_ROWS):
                part = slice(start, start + _CHUNK_ROWS)
                batch = pa.record_batch(
                    [
                        pa.array(user_idx[part] + 1),
                        pa.array(movie_id[part]),
                        pa.DictionaryArray.from_arrays(pa.array(codes[part]), RATING_LABELS),
                        pa.array(timestamps[part]),
                    ],
                    schema=schema,
                )
                writer.write_batch(batch)


def _write_movies(path: Path, rng: np.random.Generator, movie_ids: np.ndarray) -> None:
    """movies.csv: movieId,title,genres with ML-style titles and minimal quoting."""
    n = len(movie_ids)
    years = np.clip(np.rint(2023 - rng.exponential(18.0, size=n)), 1902, 2023).astype(int)
    kind = rng.random(n)
    n_genres = rng.choice([0, 1, 2, 3, 4], p=[0.03, 0.32, 0.35, 0.2, 0.1], size=n)
    genre_rank = np.argsort(rng.random((n, len(GENRES))), axis=1)
    rows = []
    for i, movie_id in enumerate(movie_ids.tolist()):
        name = f"Synthetic Movie {movie_id}"
        if kind[i] < 0.04:
            name += ", The"  # comma → quoted field
        elif kind[i] < 0.05:
            name = f'Synthetic "Quoted" Movie {movie_id}'  # doubled quotes inside a quoted field
        title = name if kind[i] > 0.995 else f"{name} ({years[i]})"  # a few have no year, as in ML-32M
        chosen = sorted(GENRES[j] for j in genre_rank[i, : n_genres[i]])
        rows.append((movie_id, title, "|".join(chosen) or "(no genres listed)"))
    _write_small_csv(path, ("movieId", "title", "genres"), rows)


def _write_tags(
    path: Path,
    rng: np.random.Generator,
    user_idx: np.ndarray,
    movie_id: np.ndarray,
    timestamps: np.ndarray,
    ratings: int,
) -> None:
    """tags.csv: a small sample (≈ 0.1 %) of rated (user, movie) pairs, each with one tag."""
    n = max(10, ratings // 1000)
    picked = np.sort(rng.choice(len(user_idx), size=min(n, len(user_idx)), replace=False))
    words = rng.integers(0, len(TAG_WORDS), size=len(picked))
    delay = rng.integers(0, 600, size=len(picked))
    rows = zip(
        (user_idx[picked] + 1).tolist(),
        movie_id[picked].tolist(),
        [TAG_WORDS[w] for w in words],
        (timestamps[picked] + delay).tolist(),
        strict=True,
    )
    _write_small_csv(path, ("userId", "movieId", "tag", "timestamp"), rows)


def _write_links(path: Path, rng: np.random.Generator, movie_ids: np.ndarray) -> None:
    """links.csv: movieId, a unique 7-digit imdbId, a tmdbId (empty for ~0.1 %)."""
    n = len(movie_ids)
    imdb = rng.choice(np.arange(1, 9_999_999), size=n, replace=False)
    tmdb = rng.choice(np.arange(1, 1_300_000), size=n, replace=False)
    missing = rng.random(n) < 0.001
    rows = [
        (m, f"{i:07d}", "" if miss else t)
        for m, i, t, miss in zip(movie_ids.tolist(), imdb.tolist(), tmdb.tolist(), missing.tolist(), strict=True)
    ]
    _write_small_csv(path, ("movieId", "imdbId", "tmdbId"), rows)


def _write_small_csv(path: Path, header: tuple[str, ...], rows) -> None:  # noqa: ANN001
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(header)
        writer.writerows(rows)
