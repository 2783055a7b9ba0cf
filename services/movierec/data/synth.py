"""A seeded synthetic MovieLens dataset in the ML-32M CSV layout, for benchmarks, tests and the offline demo.

`synthesize()` writes ``ratings.csv``, ``movies.csv``, ``tags.csv`` and ``links.csv`` with the same
columns, quoting and sort order as the real ML-32M files:

* movie popularity follows a Zipf–Mandelbrot law over a random popularity rank (so popularity is
  unrelated to movieId) with an exponential cut-off; at full scale the top movie gets ~60k ratings
  and the median movie ~25;
* user activity is heavy-tailed (log-normal above a floor of `min_per_user` ratings, capped at 40 %
  of the catalogue), and the per-user counts add up to exactly `ratings`;
* no user rates a movie twice; ``ratings.csv`` is sorted by userId, then movieId (so, as in the real
  file, the movieId order is not the time order, and a few ratings share a timestamp);
* ratings are half stars 0.5..5.0 from a movie quality + user bias + noise model (whole stars
  before February 2003, when MovieLens introduced half stars);
* titles end in a year and are made of words a person can search for: "Silent Harbor (1987)",
  "Matrix, The (1999)" and its sequels; a few contain commas or quotes (quoted as in the real file),
  a few have no year; 1-4 of 20 genres, `|`-separated, or "(no genres listed)".

Viewing is sequential the way real viewing is, so that a sequence model has something to learn
beyond popularity:

* **eras**: each user rates inside one activity window between 1995-01-09 and 2023-10-12, in time
  order; a movie can only be watched from its release year on, and is most watched in the few years
  after it (what is popular depends on when);
* **drifting tastes**: every movie has one of 20 tastes (its first genre); a user has three favourite
  tastes and watches in runs of one taste, the favourite of the moment drifting from the first to the
  third over the user's history, with a few runs of any taste;
* **series**: ~8 % of movies belong to a series (2-5 parts, released a few years apart); after a part,
  the next one is usually the next movie watched.

Each rating is drawn from its (taste, year) pool, weighted by popularity × recency, with Walker alias
tables; repeats are redrawn (then filled by popularity, then uniformly). Everything is vectorised numpy;
the big file is written in chunks with ``pyarrow.csv.CSVWriter``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass
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
# Series titles: the first ones go to the most popular series, so the README's searches find something.
SERIES_NAMES = (
    "The Matrix", "Star Quest", "Toy Chest", "The Lost Kingdom", "Iron Falcon", "Night Watchers",
    "The Godfather's Garden", "Jurassic Valley", "The Silent Detective", "Ocean Drift", "Space Rangers",
    "The Crimson Crown",
)  # fmt: skip
ADJECTIVES = (
    "Silent", "Crimson", "Broken", "Golden", "Hidden", "Last", "Wild", "Dark", "Electric", "Frozen",
    "Lost", "Burning", "Secret", "Midnight", "Falling", "Distant", "Iron", "Savage", "Quiet", "Endless",
    "Little", "Bright", "Hollow", "Scarlet", "Velvet", "Wicked", "Lonely", "Final", "Paper", "Glass",
    "Stolen", "Bitter", "Sweet", "Restless", "Eternal", "Shattered", "Northern", "Southern", "Lucky", "Crooked",
)  # fmt: skip
NOUNS = (
    "River", "Harbor", "Kingdom", "Road", "Garden", "Empire", "Storm", "Mirror", "Frontier", "Station",
    "Orchard", "Promise", "Horizon", "Circus", "Island", "Shadow", "Winter", "Summer", "Heart", "City",
    "Echo", "Machine", "Signal", "Forest", "Desert", "Voyage", "Witness", "Stranger", "Letter", "Dream",
    "Crown", "Engine", "Canyon", "Lighthouse", "Carnival", "Detective", "Symphony", "Galaxy", "Ranch", "Bridge",
)  # fmt: skip
ENDINGS = (
    "Blues", "Rising", "Returns", "Diaries", "Affair", "Protocol", "Chronicles", "Legacy", "Story", "Song",
    "Confidential", "Forever", "Express", "Club", "Tapes", "Reunion", "Experiment", "Paradox", "Journey", "Code",
)  # fmt: skip

_ZIPF_EXPONENT, _ZIPF_OFFSET, _TAIL_CUTOFF = 1.0, 60.0, 4.5
_CHUNK_ROWS = 4_000_000
_YEAR_S = 31_556_952  # mean Gregorian year in seconds
FIRST_YEAR, LAST_YEAR = 1995, 2023
_RECENCY_BOOST, _RECENCY_YEARS = 8.0, 2.0  # a movie is (1 + 8·e^(−age/2)) × as likely right after release
_SWITCH_P = 0.12  # chance that a user's next movie starts a run of another taste
_EXPLORE_P = 0.15  # chance that a run's taste is any taste rather than one of the user's three favourites
_SEQUEL_P = 0.75  # chance that the next part of a series is the next movie watched
_SERIES_SHARE = 0.08
_POOL_MAX = 1_000  # movies kept per (taste, year) pool: the most likely ones
_REDRAW_ROUNDS = 3
_RELEASED_ROUNDS = 20
# Heavy users watch beyond the hits: a viewing comes from a flatter pool (popularity ** 0.3) with
# probability count / (count + 400), count being the user's number of ratings.
_NICHE_FLATTEN, _NICHE_HALF = 0.3, 400.0

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
    catalogue = _catalogue(rng, movies)
    stage("ratings per user")
    counts = _user_counts(rng, users, movies, ratings, min_per_user)
    stage("timelines")
    timestamps, taste, year = _timelines(rng, counts, catalogue)
    stage("choosing movies")
    user_idx, movie_idx, position = _choose_movies(rng, counts, catalogue, taste, year)
    del taste, year
    timestamps = timestamps[position]  # from timeline order to file order (userId, movieId)
    del position
    stage("ratings")
    codes = _rating_codes(rng, user_idx, movie_idx, timestamps, users, movies)
    stage("writing ratings.csv")
    _write_ratings(out / "ratings.csv", user_idx, movie_ids[movie_idx], codes, timestamps)
    stage("writing movies.csv, tags.csv, links.csv")
    _write_movies(out / "movies.csv", rng, movie_ids, catalogue)
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


@dataclass
class _Catalogue:
    """Per movie index: popularity, release year, taste, series membership; the taste mix."""

    popularity: np.ndarray  # float64, sums to 1
    year: np.ndarray  # int16 release year
    taste: np.ndarray  # int8, index into GENRES
    taste_weight: np.ndarray  # float64 [len(GENRES)], how common each taste is
    series: np.ndarray  # int32 series number, -1 for none
    part: np.ndarray  # int16, 0 for the first part
    sequel: np.ndarray  # int32 movie index of the next part, -1 for none
    series_names: list[str]


def _catalogue(rng: np.random.Generator, movies: int) -> _Catalogue:
    """Popularity, years and tastes of the movies; ~8 % of them grouped into series of 2-5 parts.

    The first series are the most popular ones and take the names of SERIES_NAMES ("The Matrix" is the
    most popular movie, a 1999 Sci-Fi film), so that searching for them finds something.
    """
    popularity = _popularity(rng, movies)
    year = np.clip(np.rint(2023 - rng.exponential(18.0, size=movies)), 1902, 2023).astype(np.int16)
    taste_weight = rng.gamma(2.0, size=len(GENRES))
    taste_weight /= taste_weight.sum()
    taste = rng.choice(len(GENRES), size=movies, p=taste_weight).astype(np.int8)
    series = np.full(movies, -1, dtype=np.int32)
    part = np.zeros(movies, dtype=np.int16)
    sequel = np.full(movies, -1, dtype=np.int32)
    n_series = int(movies * _SERIES_SHARE / 3.5) if movies >= 60 else int(movies >= 10)
    lengths = rng.integers(2, 6, size=n_series)
    named = min(n_series, len(SERIES_NAMES))
    heads = np.argsort(-popularity, kind="stable")[:named]
    rest = rng.permutation(np.setdiff1d(np.arange(movies), heads))
    heads = np.concatenate([heads, rest[: n_series - named]])
    others = rest[n_series - named :]
    names = list(SERIES_NAMES[:named])
    for _ in range(n_series - named):
        adjective, noun = ADJECTIVES[rng.integers(len(ADJECTIVES))], NOUNS[rng.integers(len(NOUNS))]
        names.append(f"The {adjective} {noun}" if rng.random() < 0.3 else f"{adjective} {noun}")
    used = 0
    for number, (head, length) in enumerate(zip(heads.tolist(), lengths.tolist(), strict=True)):
        members = [head, *others[used : used + length - 1].tolist()]
        used += length - 1
        first_year = 1999 if number == 0 else min(int(year[head]), 2023 - 3 * (length - 1))
        if number == 0:
            taste[head] = GENRES.index("Sci-Fi")
        years = np.minimum(first_year + np.concatenate(([0], np.cumsum(rng.integers(1, 5, size=length - 1)))), 2023)
        for k, movie in enumerate(members):
            series[movie], part[movie], year[movie], taste[movie] = number, k, years[k], taste[head]
            popularity[movie] = popularity[head] * 0.7**k
            if k + 1 < len(members):
                sequel[movie] = members[k + 1]
    popularity /= popularity.sum()
    return _Catalogue(popularity, year, taste, taste_weight, series, part, sequel, names)


def _timelines(
    rng: np.random.Generator, counts: np.ndarray, catalogue: _Catalogue
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's viewing times (oldest first, user after user) and the taste and year of each viewing.

    A user is active inside one window (log-uniform length, 1 hour .. 28 years); the times are the order
    statistics of uniform draws in it (normalised exponential gaps: no sort). Tastes come in runs: a new
    run starts with probability _SWITCH_P; its taste is one of the user's three favourites, the first
    early in the history and the third late (a drift), or with probability _EXPLORE_P any taste.
    """
    users, n = len(counts), int(counts.sum())
    full = LAST_TS - FIRST_TS
    span = np.exp(rng.uniform(np.log(3600.0), np.log(full), size=users))
    start = FIRST_TS + rng.random(users) * (full - span)
    first = np.cumsum(counts) - counts
    owner = np.repeat(np.arange(users, dtype=np.int32), counts)
    gaps = rng.standard_exponential(n)
    cum = np.cumsum(gaps)
    base = cum[first] - gaps[first]
    del gaps
    total = cum[first + counts - 1] - base + rng.standard_exponential(users)
    cum -= base[owner]
    cum /= total[owner]
    cum *= span[owner]
    cum += start[owner]
    timestamps = cum.astype(np.int64)
    del cum
    year = np.clip(1970 + timestamps // _YEAR_S, FIRST_YEAR, LAST_YEAR).astype(np.int16)

    tastes = len(GENRES)
    favourite = rng.choice(tastes, size=(users, 3), p=catalogue.taste_weight).astype(np.int8)
    switch = rng.random(n) < _SWITCH_P
    switch[first] = True
    run_start = np.flatnonzero(switch)
    run_owner = owner[run_start]
    del owner
    late = (run_start - first[run_owner]) / counts[run_owner]  # 0 at the first viewing, → 1 at the last
    u = rng.random(len(run_start))
    early = 0.1 + 0.6 * (1.0 - late)
    slot = (u >= early).astype(np.int8) + (u >= early + 0.3)
    run_taste = favourite[run_owner, slot]
    explore = rng.random(len(run_start)) < _EXPLORE_P
    run_taste[explore] = rng.choice(tastes, size=int(explore.sum()), p=catalogue.taste_weight)
    run = np.cumsum(switch, dtype=np.int64)
    run -= 1
    taste = run_taste[run]
    return timestamps, taste, year


class _Pools:
    """One alias table per (taste, year): the movies out by that year, weighted by popularity × recency."""

    def __init__(self, catalogue: _Catalogue, flatten: float = 1.0, size_max: int = _POOL_MAX) -> None:
        years = LAST_YEAR - FIRST_YEAR + 1
        released = catalogue.year.astype(np.int64)
        prob, item, alias, size, offset = [], [], [], [], []
        at = 0
        for taste in range(len(GENRES)):
            of_taste = np.flatnonzero(catalogue.taste == taste)
            for year in range(FIRST_YEAR, LAST_YEAR + 1):
                pool = of_taste[released[of_taste] <= year]
                if len(pool) == 0:  # a small catalogue: any taste, else any year
                    pool = np.flatnonzero(released <= year)
                    if len(pool) == 0:
                        pool = np.arange(len(released))
                age = np.maximum(year - released[pool], 0)
                weight = catalogue.popularity[pool] ** flatten * (1.0 + _RECENCY_BOOST * np.exp(-age / _RECENCY_YEARS))
                if len(pool) > size_max:
                    top = np.argpartition(-weight, size_max)[:size_max]
                    pool, weight = pool[top], weight[top]
                sampler = _AliasSampler(weight)
                prob.append(sampler.prob)
                item.append(pool)
                alias.append(pool[sampler.alias])
                size.append(len(pool))
                offset.append(at)
                at += len(pool)
        assert len(size) == len(GENRES) * years
        self.prob = np.concatenate(prob)
        self.item = np.concatenate(item).astype(np.int32)
        self.alias = np.concatenate(alias).astype(np.int32)
        self.size = np.array(size, dtype=np.int64)
        self.offset = np.array(offset, dtype=np.int64)

    def draw(self, rng: np.random.Generator, taste: np.ndarray, year: np.ndarray) -> np.ndarray:
        """One movie index (int32) per (taste, year) pair."""
        cell = taste.astype(np.int64) * (LAST_YEAR - FIRST_YEAR + 1) + (year - FIRST_YEAR)
        idx = rng.random(len(cell))
        idx *= self.size[cell]
        idx = idx.astype(np.int64)
        idx += self.offset[cell]
        del cell
        accept = rng.random(len(idx)) < self.prob[idx]
        return np.where(accept, self.item[idx], self.alias[idx])


def _choose_movies(
    rng: np.random.Generator, counts: np.ndarray, catalogue: _Catalogue, taste: np.ndarray, year: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The movie of every viewing, distinct per user, in file order: (user index, movie index, timeline position).

    Each viewing draws from its (taste, year) pool; after a part of a series the next part follows
    with probability _SEQUEL_P (once it is out). A movie a user has already seen is drawn again from the
    user's flatter pool of that taste and year (_REDRAW_ROUNDS times), then by popularity, then uniformly
    (among movies already out for _RELEASED_ROUNDS rounds), and the last few users whose shortfall is
    large get the rest from the movies they have not rated.
    """
    users, movies, n = len(counts), len(catalogue.popularity), len(taste)
    first = np.cumsum(counts) - counts
    pools = _Pools(catalogue)
    niche = _Pools(catalogue, flatten=_NICHE_FLATTEN, size_max=4 * _POOL_MAX)
    movie = pools.draw(rng, taste, year)
    activity = np.repeat(counts.astype(np.float32), counts)
    deep = np.flatnonzero(rng.random(n, dtype=np.float32) * (activity + _NICHE_HALF) < activity)
    del activity
    movie[deep] = niche.draw(rng, taste[deep], year[deep])
    del deep
    _follow_series(rng, movie, first, catalogue, year)

    pos_bits = int(counts.max()).bit_length()
    if (users * movies).bit_length() + pos_bits > 63:
        raise DataError(f"{users} users × {movies} movies is too large to synthesise")
    mask = (1 << pos_bits) - 1
    owner = np.repeat(np.arange(users, dtype=np.int64), counts)
    packed = owner * movies
    del owner
    packed += movie
    del movie
    packed <<= pos_bits
    packed |= np.arange(n, dtype=np.int64) - np.repeat(first, counts)  # position within the user
    packed.sort()
    key = packed >> pos_bits
    repeat = np.empty(n, dtype=bool)
    repeat[0] = False
    np.equal(key[1:], key[:-1], out=repeat[1:])
    vacant = packed[repeat]
    kept = packed[~repeat]
    kept_keys = key[~repeat]
    del packed, key, repeat

    v_owner = (vacant >> pos_bits) // movies
    v_pos = vacant & mask
    del vacant
    extra_keys: list[np.ndarray] = []  # keys filled in by each later round, each sorted
    extra: list[np.ndarray] = []  # their packed (key, position), each sorted
    popular = _AliasSampler(catalogue.popularity)
    for round_no in range(1, 50):
        if len(v_owner) == 0:
            break
        if round_no > 40 or np.bincount(v_owner).max() * 2 > movies:
            extra.append(_fill_exhaustively(rng, kept_keys, extra_keys, v_owner, v_pos, movies, pos_bits))
            break
        where = first[v_owner] + v_pos
        if round_no <= _REDRAW_ROUNDS:
            candidate = niche.draw(rng, taste[where], year[where])
        elif round_no <= _REDRAW_ROUNDS + 1:
            candidate = popular.draw(rng, len(v_owner))
        else:
            candidate = rng.integers(0, movies, size=len(v_owner))
        order = np.argsort(v_owner * movies + candidate)  # sorted queries: cache-friendly look-ups
        v_owner, v_pos, candidate = v_owner[order], v_pos[order], candidate[order]
        ckey = v_owner * movies + candidate
        ok = np.ones(len(ckey), dtype=bool)
        ok[1:] = ckey[1:] != ckey[:-1]  # one candidate per (user, movie) in a round
        if round_no <= _RELEASED_ROUNDS:  # not before its release (later, anything: a 1995 user may need more)
            ok &= catalogue.year[candidate] <= year[where[order]]
        for keys in (kept_keys, *extra_keys):
            ok &= ~_contains(keys, ckey)
        log.debug("synth: round %d, %d vacancies, %d filled", round_no, len(ok), int(ok.sum()))
        extra_keys.append(ckey[ok])
        extra.append((ckey[ok] << pos_bits) | v_pos[ok])
        v_owner, v_pos = v_owner[~ok], v_pos[~ok]
    else:  # pragma: no cover
        raise RuntimeError("synthesize: could not draw distinct movies")

    everything = np.concatenate([kept, *extra])
    del kept, extra
    everything.sort(kind="stable")  # a few sorted runs: timsort merges them
    key = everything >> pos_bits
    user_idx = (key // movies).astype(np.int32)
    movie_idx = (key % movies).astype(np.int32)
    del key
    position = first[user_idx] + (everything & mask)
    return user_idx, movie_idx, position


def _follow_series(
    rng: np.random.Generator, movie: np.ndarray, first: np.ndarray, catalogue: _Catalogue, year: np.ndarray
) -> None:
    """In place: after a part of a series, the next viewing of the same user is often the next part."""
    n = len(movie)
    last_of_user = np.zeros(n, dtype=bool)
    last_of_user[np.append(first[1:] - 1, n - 1)] = True
    at = np.flatnonzero(catalogue.sequel[movie] >= 0)
    while len(at):
        at = at[~last_of_user[at]]
        following = catalogue.sequel[movie[at]]
        go = (following >= 0) & (rng.random(len(at)) < _SEQUEL_P) & (catalogue.year[following] <= year[at + 1])
        at = at[go] + 1
        movie[at] = following[go]


def _fill_exhaustively(
    rng: np.random.Generator,
    kept_keys: np.ndarray,
    extra_keys: list[np.ndarray],
    v_owner: np.ndarray,
    v_pos: np.ndarray,
    movies: int,
    pos_bits: int,
) -> np.ndarray:
    """Packed (key, position) for the remaining vacancies, user by user, from the movies each has not rated."""
    packed = []
    bounds = np.flatnonzero(np.concatenate(([True], v_owner[1:] != v_owner[:-1], [True])))
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        user = int(v_owner[lo])
        own = [user * movies, (user + 1) * movies]
        seen = [keys[slice(*np.searchsorted(keys, own))] for keys in (kept_keys, *extra_keys)]
        free = np.setdiff1d(np.arange(movies), np.concatenate(seen) - user * movies, assume_unique=True)
        chosen = rng.choice(free, size=hi - lo, replace=False)
        packed.append(((user * movies + chosen) << pos_bits) | v_pos[lo:hi])
    return np.concatenate(packed)


def _contains(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Boolean mask: which queries occur in sorted_keys."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), dtype=bool)
    pos = np.searchsorted(sorted_keys, queries)
    pos[pos == len(sorted_keys)] = 0
    return sorted_keys[pos] == queries


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


def _write_movies(path: Path, rng: np.random.Generator, movie_ids: np.ndarray, catalogue: _Catalogue) -> None:
    """movies.csv: movieId,title,genres with ML-style titles ("Harbor, The (1990)") and minimal quoting.

    The first genre of a movie is its taste; 0-3 more are random, 3 % have "(no genres listed)".
    """
    n = len(movie_ids)
    kind = rng.random(n)
    words = rng.integers(0, len(NOUNS), size=(n, 4))
    more = rng.choice([0, 1, 2, 3], p=[0.35, 0.35, 0.2, 0.1], size=n)
    no_genres = rng.random(n) < 0.03
    genre_rank = np.argsort(rng.random((n, len(GENRES))), axis=1)
    rows = []
    for i, movie_id in enumerate(movie_ids.tolist()):
        adjective, noun, other, ending = (
            ADJECTIVES[words[i, 0] % len(ADJECTIVES)], NOUNS[words[i, 1]], NOUNS[words[i, 2]],
            ENDINGS[words[i, 3] % len(ENDINGS)],
        )  # fmt: skip
        number = int(catalogue.series[i])
        if number >= 0:
            name = catalogue.series_names[number]
            if catalogue.part[i]:
                name += f" {catalogue.part[i] + 1}"
            if name.startswith("The "):
                name = f"{name[4:]}, The"  # as MovieLens writes it: "Matrix, The (1999)"
        elif kind[i] < 0.04:
            name = f"{adjective} {noun}, The"  # comma → quoted field
        elif kind[i] < 0.05:
            name = f'{adjective} "{noun}" {ending}'  # doubled quotes inside a quoted field
        elif kind[i] < 0.4:
            name = f"{adjective} {noun} {ending}"
        elif kind[i] < 0.7:
            name = f"{noun} of the {adjective} {other}"
        else:
            name = f"{adjective} {noun}"
        title = name if kind[i] > 0.995 and number < 0 else f"{name} ({catalogue.year[i]})"  # a few have no year
        taste = int(catalogue.taste[i])
        chosen = [GENRES[taste], *(GENRES[j] for j in genre_rank[i] if j != taste)][: 1 + more[i]]
        rows.append((movie_id, title, "(no genres listed)" if no_genres[i] else "|".join(sorted(chosen))))
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
