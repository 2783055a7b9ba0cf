"""Raw MovieLens (or the gSASRec ML-1M split) → a prepared folder (see `movierec.data.prepared`).

`prepare()` detects the source layout, then for MovieLens ratings:

* maps movieIds that have at least one rating to item_idx 1..N in movieId order (0 is padding),
  and userIds to user_idx 0..U-1 in userId order;
* orders each user's ratings by timestamp, then movieId, into CSR sequences;
* splits leave-one-out as gSASRec does: the last item is the test target of every user with ≥ 2
  interactions; a seeded sample of `val_users` users with ≥ 3 interactions also holds out the
  second-to-last item as validation target; training sees history[:len-2] (len-3 for validation
  users), never less than nothing;
* writes item metadata and statistics, users, and a manifest with the source, the sha256 of
  every input file and the split parameters.

Everything is vectorised: ids are mapped through bincount lookup tables, and the per-user sort
is a 64-bit packed key (user, timestamp, item) argsorted in cache-sized chunks of whole users.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from movierec.data import gsasrec_split, movielens
from movierec.data.errors import DataError
from movierec.data.prepared import write_prepared

log = logging.getLogger(__name__)

VAL_MIN_INTERACTIONS = 3  # history[:-2] → history[-2] needs a non-empty input
TEST_MIN_INTERACTIONS = 2  # history[:-1] → history[-1]
_DENSE_LOOKUP_MAX_ID = 1 << 25  # ids below this are mapped with a lookup table, others by sorting
_SORT_CHUNK_ROWS = 1 << 18  # rows per argsort chunk (fits in cache; ~3x faster than one big argsort)
_HASH_BLOCK = 1 << 20


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def detect_format(source: str | Path) -> str:
    """movielens.CSV_FORMAT, movielens.DAT_FORMAT or gsasrec_split.FORMAT; DataError otherwise."""
    source = Path(source)
    if not source.exists():
        raise DataError("source folder not found", path=source)
    if not source.is_dir():
        raise DataError("source must be a folder (unzip the download first)", path=source)
    files = movielens.detect_movielens(source)
    if files is not None:
        return files.format
    if gsasrec_split.is_gsasrec_split(source):
        return gsasrec_split.FORMAT
    raise DataError(
        "not a dataset folder: expected ratings.csv (ML-32M layout), ratings.dat (ML-1M) "
        "or train/input.txt + dataset_stats.json (gSASRec split)",
        path=source,
    )


def prepare(
    source: str | Path,
    out: str | Path,
    val_users: int = 512,
    seed: int = 42,
    progress: bool = True,
    *,
    titles: str | Path | None = None,
) -> Path:
    """Prepare `source` into folder `out` and return `out`.

    `val_users` and `seed` choose the validation sample of MovieLens sources; the gSASRec split
    brings its own 512 validation users. `titles` (gSASRec only) is an ML-1M movies.dat or its
    folder; by default a sibling ``ml-1m-original`` folder is used when present.
    """
    source, out = Path(source), Path(out)
    fmt = detect_format(source)
    stages = Stages(progress)
    with stages.live():
        if fmt == gsasrec_split.FORMAT:
            return _prepare_gsasrec(source, out, titles, stages)
        return _prepare_movielens(source, out, fmt, val_users, seed, stages)


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


class Stages:
    """Named, timed steps: a rich progress line per step when enabled, INFO logs always."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.seconds: dict[str, float] = {}
        self._progress: Any = None

    @contextmanager
    def live(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as self._progress:
            try:
                yield
            except BaseException:
                self._progress.live.transient = True  # on failure, leave only the error on screen
                raise
            finally:
                self._progress = None

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        task = self._progress.add_task(description, total=1) if self._progress is not None else None
        start = time.perf_counter()
        yield
        self.seconds[description] = time.perf_counter() - start
        log.info("prepare: %s (%.2f s)", description, self.seconds[description])
        if task is not None:
            self._progress.update(task, completed=1)


# --------------------------------------------------------------------------------------------
# MovieLens
# --------------------------------------------------------------------------------------------


def _prepare_movielens(source: Path, out: Path, fmt: str, val_users: int, seed: int, stages: Stages) -> Path:
    files = movielens.detect_movielens(source)
    assert files is not None
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Checksums are computed beside the parse (hashlib releases the GIL).
        checksums = pool.submit(sha256_files, files.inputs, source)
        with stages.step(f"reading {files.ratings.name}"):
            user_id, movie_id, rating, timestamp = _ratings_columns(files)
            raw_ratings = len(user_id)
        with stages.step(f"reading {files.movies.name}"):
            movies = movielens.read_movies(files)
        with stages.step("mapping ids"):
            user_ids, user_idx = dense_ids(user_id, "userId", files.ratings)
            del user_id
            movie_ids, item_idx = dense_ids(movie_id, "movieId", files.ratings)
            del movie_id
            item_idx += 1
        with stages.step("sorting histories by time"):
            order, seq_offsets = sequence_order(user_idx, timestamp, item_idx, len(user_ids))
            del user_idx
        with stages.step("gathering sequences"):
            seq_items = item_idx[order]
            seq_ratings = rating[order]
            seq_timestamps = timestamp[order]
            del order, timestamp
        with stages.step("item statistics"):
            items = item_table(movie_ids, movies, seq_items, seq_ratings)
            del item_idx, rating
        lengths = np.diff(seq_offsets)
        train_len, val, test = leave_one_out_split(lengths, val_users, seed)
        with stages.step("checksums"):
            input_checksums = _checksum_result(checksums)
    manifest = {
        "source": str(source.resolve()),
        "source_format": fmt,
        "input_checksums": input_checksums,
        "source_counts": {
            "ratings": raw_ratings,
            "users": len(user_ids),
            "movies": movies.num_rows,
            "rated_movies": len(movie_ids),
            "movies_without_ratings": int(
                movies.num_rows - np.isin(movies.column("movieId").to_numpy(), movie_ids).sum()
            ),
        },
        "ordering": "per user by timestamp, then movieId",
        "split": _split_description(val_users, seed, len(val)),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with stages.step(f"writing {out}"):
        write_prepared(
            out,
            seq_offsets=seq_offsets,
            seq_items=seq_items,
            seq_ratings=seq_ratings,
            seq_timestamps=seq_timestamps,
            train_len=train_len,
            val_users=val,
            test_users=test,
            items=items,
            users=user_table(user_ids, lengths),
            manifest=manifest,
        )
    return out


def _ratings_columns(files: movielens.MovieLensFiles) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """userId int32, movieId int32, rating float32, timestamp int64 as numpy, freeing Arrow as it goes."""
    table = movielens.read_ratings(files)
    columns = []
    for name in ("userId", "movieId", "rating", "timestamp"):
        columns.append(table.column(name).to_numpy())
        table = table.drop_columns([name])
    return tuple(columns)


def _split_description(val_users: int, seed: int, chosen: int) -> dict[str, Any]:
    return {
        "method": "leave-one-out (gSASRec)",
        "seed": seed,
        "val_users_requested": val_users,
        "val_users": chosen,
        "val_min_interactions": VAL_MIN_INTERACTIONS,
        "test_min_interactions": TEST_MIN_INTERACTIONS,
        "train_len": "len - 2, or len - 3 for validation users (at least 0)",
    }


# --------------------------------------------------------------------------------------------
# Vectorised building blocks
# --------------------------------------------------------------------------------------------


def dense_ids(ids: np.ndarray, name: str, path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids, int32 position of each id among them)."""
    if len(ids) == 0:
        raise DataError(f"no {name} values", path=path)
    low, high = int(ids.min()), int(ids.max())
    if low >= 0 and high < _DENSE_LOOKUP_MAX_ID:
        present = np.bincount(ids, minlength=high + 1) > 0
        distinct = np.flatnonzero(present).astype(ids.dtype)
        lookup = np.cumsum(present, dtype=np.int32) - 1
        return distinct, lookup[ids]
    ordered = np.sort(ids)
    distinct = ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]
    return distinct, np.searchsorted(distinct, ids).astype(np.int32)


def sequence_order(
    user_idx: np.ndarray, timestamp: np.ndarray, item_idx: np.ndarray, num_users: int
) -> tuple[np.ndarray, np.ndarray]:
    """(row order grouping users 0..U-1 with rows by timestamp then item_idx, CSR offsets [U+1]).

    Rows are first grouped by user (free when the input is already sorted by userId, as the
    MovieLens files are); then each chunk of whole users is argsorted by the packed key
    (user - first user) << (ts_bits + item_bits) | (timestamp - min) << item_bits | item_idx.
    """
    n = len(user_idx)
    counts = np.bincount(user_idx, minlength=num_users)
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    grouped = None if n < 2 or bool(np.all(user_idx[1:] >= user_idx[:-1])) else np.argsort(user_idx, kind="stable")
    if n == 0:
        return np.empty(0, dtype=np.int64), offsets
    ts_min = int(timestamp.min())
    ts_bits = max(1, (int(timestamp.max()) - ts_min).bit_length())
    item_bits = max(1, int(item_idx.max()).bit_length())
    low_bits = ts_bits + item_bits
    order = np.empty(n, dtype=np.int64)
    for first, last in _user_chunks(offsets, max_users=1 << max(0, 63 - low_bits)):
        lo, hi = int(offsets[first]), int(offsets[last])
        rows = grouped[lo:hi] if grouped is not None else slice(lo, hi)
        users = user_idx[rows].astype(np.int64) - first
        times = timestamp[rows].astype(np.int64) - ts_min
        items = item_idx[rows]
        if low_bits <= 62:
            key = (users << low_bits) | (times << item_bits) | items
            local = np.argsort(key)
        else:  # timestamps too wide to pack (not MovieLens): a three-key sort
            local = np.lexsort((items, times, users))
        order[lo:hi] = (grouped[lo:hi][local]) if grouped is not None else lo + local
    return order, offsets


def _user_chunks(offsets: np.ndarray, max_users: int) -> Iterator[tuple[int, int]]:
    """[first, last) user ranges of about _SORT_CHUNK_ROWS rows and at most max_users users."""
    num_users = len(offsets) - 1
    targets = np.arange(_SORT_CHUNK_ROWS, offsets[-1], _SORT_CHUNK_ROWS)
    cuts = np.searchsorted(offsets, targets, side="left")
    cuts = np.union1d(cuts, np.arange(0, num_users, max(1, max_users)))
    cuts = np.union1d(cuts, [0, num_users])
    cuts = cuts[(cuts >= 0) & (cuts <= num_users)]
    for first, last in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
        if last > first:
            yield first, last


def leave_one_out_split(lengths: np.ndarray, val_users: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train_len int32 [U], val_users int32 sorted, test_users int32 sorted) from history lengths."""
    lengths = np.asarray(lengths, dtype=np.int64)
    eligible = np.flatnonzero(lengths >= VAL_MIN_INTERACTIONS)
    if val_users > len(eligible):
        log.warning(
            "only %d users have ≥ %d interactions; all become validation users", len(eligible), VAL_MIN_INTERACTIONS
        )
    rng = np.random.default_rng(seed)
    val = np.sort(rng.choice(eligible, size=min(max(val_users, 0), len(eligible)), replace=False))
    train_len = np.maximum(lengths - 2, 0)
    train_len[val] = lengths[val] - 3
    test = np.flatnonzero(lengths >= TEST_MIN_INTERACTIONS)
    return train_len.astype(np.int32), val.astype(np.int32), test.astype(np.int32)


def item_table(
    movie_ids: np.ndarray, movies: pa.Table | None, seq_items: np.ndarray, seq_ratings: np.ndarray
) -> pa.Table:
    """items.parquet: item_idx, movie_id, title, year, genres, rating_count, rating_mean.

    Metadata comes from `movies` (movieId, title, year, genres) by movieId; a rated movie missing
    from it gets a null title and year and no genres. rating_mean is NaN where ratings are NaN.
    """
    n = len(movie_ids)
    counts = np.bincount(seq_items, minlength=n + 1)[1:]
    sums = np.bincount(seq_items, weights=seq_ratings, minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums / counts).astype(np.float32)
    title, year, genres = _movie_metadata(movie_ids, movies)
    return pa.table(
        {
            "item_idx": pa.array(np.arange(1, n + 1, dtype=np.int32)),
            "movie_id": pa.array(np.asarray(movie_ids, dtype=np.int32)),
            "title": title,
            "year": year,
            "genres": genres,
            "rating_count": pa.array(counts.astype(np.int64)),
            "rating_mean": pa.array(means),
        }
    )


def _movie_metadata(movie_ids: np.ndarray, movies: pa.Table | None) -> tuple[pa.Array, pa.Array, pa.Array]:
    """title, year, genres for each movie id (null, null, [] when unknown)."""
    n = len(movie_ids)
    if movies is None or movies.num_rows == 0:
        return pa.nulls(n, pa.string()), pa.nulls(n, pa.int32()), _empty_lists(n)
    known = movies.column("movieId").to_numpy()
    order = np.argsort(known, kind="stable")
    pos = np.searchsorted(known[order], movie_ids)
    pos_clipped = np.minimum(pos, len(known) - 1)
    found = known[order][pos_clipped] == movie_ids
    if not found.all():
        log.warning("%d rated movies are missing from the movies file", int((~found).sum()))
    # Unknown movies point at an extra row holding null title/year and an empty genre list.
    take = pa.array(np.where(found, order[pos_clipped], len(known)))
    padded = pa.concat_tables(
        [
            movies.select(["title", "year", "genres"]),
            pa.table(
                {"title": pa.nulls(1, pa.string()), "year": pa.nulls(1, pa.int32()), "genres": _empty_lists(1)},
                schema=movies.select(["title", "year", "genres"]).schema,
            ),
        ]
    ).combine_chunks()
    chosen = padded.take(take)
    return (
        chosen.column("title").combine_chunks(),
        chosen.column("year").combine_chunks(),
        chosen.column("genres").combine_chunks(),
    )


def _empty_lists(n: int) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()))


def user_table(user_ids: np.ndarray, lengths: np.ndarray) -> pa.Table:
    """users.parquet: user_idx 0..U-1, user_id, n_interactions."""
    return pa.table(
        {
            "user_idx": pa.array(np.arange(len(user_ids), dtype=np.int32)),
            "user_id": pa.array(np.asarray(user_ids, dtype=np.int64)),
            "n_interactions": pa.array(np.asarray(lengths, dtype=np.int32)),
        }
    )


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: list[Path], root: Path) -> dict[str, str]:
    """{path relative to root (or absolute when outside it): sha256} for every file."""
    result = {}
    for path in paths:
        try:
            name = path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            name = str(path.resolve())
        result[name] = sha256_file(path)
    return result


def _checksum_result(future: Future) -> dict[str, str]:
    try:
        return future.result()
    except OSError as exc:
        raise DataError(f"cannot read input for its checksum: {exc}") from None


# --------------------------------------------------------------------------------------------
# gSASRec split
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Titles:
    path: Path | None
    movies: pa.Table | None


def _find_titles(source: Path, titles: str | Path | None) -> _Titles:
    """The ML-1M movies.dat to join titles from: explicit, else a sibling ml-1m-original folder."""
    if titles is not None:
        path = Path(titles)
        if path.is_dir():
            path = path / "movies.dat"
        return _Titles(path, movielens.read_movies_dat(path))
    for candidate in (source.parent / "ml-1m-original" / "movies.dat", source / "movies.dat"):
        if candidate.is_file():
            log.info("titles from %s", candidate)
            return _Titles(candidate, movielens.read_movies_dat(candidate))
    log.warning("%s: no ml-1m-original/movies.dat beside it; items get no titles", source)
    return _Titles(None, None)


def _prepare_gsasrec(source: Path, out: Path, titles: str | Path | None, stages: Stages) -> Path:
    with stages.step("reading gSASRec split"):
        split = gsasrec_split.read_gsasrec_split(source)
        found = _find_titles(source, titles)
    with stages.step("building histories"):
        seq_offsets, seq_items, train_len = gsasrec_split.gsasrec_histories(split)
        seq_ratings = np.full(len(seq_items), np.nan, dtype=np.float32)
        movie_ids = split.movie_ids[1:] if split.movie_ids is not None else np.zeros(split.num_items, dtype=np.int32)
        items = item_table(movie_ids, found.movies if split.movie_ids is not None else None, seq_items, seq_ratings)
        if split.movie_ids is None:
            items = items.set_column(1, "movie_id", pa.nulls(split.num_items, pa.int32()))
    with stages.step("checksums"):
        inputs = split.files + ([found.path] if found.path is not None else [])
        input_checksums = sha256_files(inputs, source)
    val = np.sort(split.val_users).astype(np.int32)
    manifest = {
        "source": str(source.resolve()),
        "source_format": gsasrec_split.FORMAT,
        "input_checksums": input_checksums,
        "source_counts": {
            "users": split.num_users,
            "items": split.num_items,
            "interactions": split.num_interactions,
            "titles": str(found.path.resolve()) if found.path is not None else None,
        },
        "ordering": "as in the gSASRec files (oldest first)",
        "split": {
            "method": "gSASRec preprocessed split (seed 42 upstream)",
            "val_users": len(val),
            "note": "test/input.txt is absent, so only the validation users have full histories; "
            "they are also the test users. Other users' history is their training line.",
        },
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with stages.step(f"writing {out}"):
        write_prepared(
            out,
            seq_offsets=seq_offsets,
            seq_items=seq_items,
            seq_ratings=seq_ratings,
            seq_timestamps=np.zeros(len(seq_items), dtype=np.int64),
            train_len=train_len,
            val_users=val,
            test_users=val,
            items=items,
            users=user_table(np.arange(1, split.num_users + 1), np.diff(seq_offsets)),
            manifest=manifest,
        )
    return out
