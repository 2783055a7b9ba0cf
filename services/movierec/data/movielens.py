"""Readers for MovieLens files, parsed with pyarrow.csv.

Two on-disk layouts are supported:

* the CSV layout of ML-32M / ML-20M / ml-latest / ml-latest-small: ``ratings.csv``
  (``userId,movieId,rating,timestamp``), ``movies.csv`` (``movieId,title,genres``), ``tags.csv``
  (``userId,movieId,tag,timestamp``) and ``links.csv`` (``movieId,imdbId,tmdbId``), UTF-8, LF or
  CRLF line endings, titles quoted when they hold commas;
* the ``::``-separated ``.dat`` layout of ML-1M: ``ratings.dat``
  (``UserID::MovieID::Rating::Timestamp``) and ``movies.dat`` (``MovieID::Title::Genres``), Latin-1,
  no header.

Every reader returns a pyarrow Table with the CSV column names (``userId``, ``movieId``, ...), so the
two layouts look the same downstream. The fast path is a single multi-threaded ``pyarrow.csv``
read. Only when pyarrow (or a vectorised range check) reports a problem is the file scanned again
line by line, to name the first bad line in the :class:`DataError`.
"""

from __future__ import annotations

import csv as pycsv
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from movierec.data.errors import DataError

log = logging.getLogger(__name__)

RATING_MIN, RATING_MAX = 0.5, 5.0
NO_GENRES = "(no genres listed)"
INT32_MAX = 2**31 - 1

# "Toy Story (1995)", "Title (1995) " (trailing space), "Show (2006–2007)", "Show (2016- )".
_YEAR_PATTERN = r"\((?P<year>\d{4})(?:\s*[-–]\s*(?:\d{4})?)?\s*\)\s*$"
_YEAR_RE = re.compile(_YEAR_PATTERN)

_BLOCK_SIZE = 8 << 20  # bytes per pyarrow parse block (the unit of multi-threading)
_DAT_SEPARATORS = (b"\x1f", b"\x1e", b"\x1d", b"\x1c")  # single bytes that stand in for "::"

CSV_FORMAT = "movielens-csv"
DAT_FORMAT = "movielens-dat"


# --------------------------------------------------------------------------------------------
# Column specifications: the Arrow type and a per-field check used by the slow line scan.
# --------------------------------------------------------------------------------------------

FieldCheck = Callable[[str], str | None]  # returns a problem description, or None when fine


def _check_id(value: str) -> str | None:
    try:
        number = int(value)
    except ValueError:
        return f"{value!r} is not an integer id"
    if not 0 <= number <= INT32_MAX:
        return f"{value} is outside 0..{INT32_MAX}"
    return None


def _check_int(value: str) -> str | None:
    try:
        int(value)
    except ValueError:
        return f"{value!r} is not an integer"
    return None


def _check_optional_int(value: str) -> str | None:
    return None if value == "" else _check_int(value)


def _check_rating(value: str) -> str | None:
    try:
        number = float(value)
    except ValueError:
        return f"{value!r} is not a number"
    if not RATING_MIN <= number <= RATING_MAX:
        return f"{value} is outside {RATING_MIN}..{RATING_MAX}"
    return None


def _check_text(value: str) -> str | None:
    return None


@dataclass(frozen=True)
class Column:
    """One column a reader needs: its name, Arrow type and the per-field check of the slow scan."""

    name: str
    type: pa.DataType
    check: FieldCheck
    nullable: bool = False  # an empty field is null (e.g. links.csv tmdbId) instead of an error


RATINGS_COLUMNS = (
    Column("userId", pa.int32(), _check_id),
    Column("movieId", pa.int32(), _check_id),
    Column("rating", pa.float32(), _check_rating),
    Column("timestamp", pa.int64(), _check_int),
)
MOVIES_COLUMNS = (
    Column("movieId", pa.int32(), _check_id),
    Column("title", pa.string(), _check_text),
    Column("genres", pa.string(), _check_text),
)
TAGS_COLUMNS = (
    Column("userId", pa.int32(), _check_id),
    Column("movieId", pa.int32(), _check_id),
    Column("tag", pa.string(), _check_text),
    Column("timestamp", pa.int64(), _check_int),
)
LINKS_COLUMNS = (
    Column("movieId", pa.int32(), _check_id),
    Column("imdbId", pa.string(), _check_text),  # kept as text: "0114709" keeps its zeros
    Column("tmdbId", pa.int64(), _check_optional_int, nullable=True),
)


# --------------------------------------------------------------------------------------------
# Locating the file set
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MovieLensFiles:
    """The files of one MovieLens dataset folder; `format` is CSV_FORMAT or DAT_FORMAT."""

    root: Path
    format: str
    ratings: Path
    movies: Path
    tags: Path | None = None
    links: Path | None = None

    @property
    def inputs(self) -> list[Path]:
        """The files `prepare` reads (ratings and movies)."""
        return [self.ratings, self.movies]


def detect_movielens(root: str | Path) -> MovieLensFiles | None:
    """The MovieLens files under `root`, or None when it holds neither ratings.csv nor ratings.dat."""
    root = Path(root)
    if (root / "ratings.csv").is_file():
        tags, links = root / "tags.csv", root / "links.csv"
        return MovieLensFiles(
            root=root,
            format=CSV_FORMAT,
            ratings=root / "ratings.csv",
            movies=root / "movies.csv",
            tags=tags if tags.is_file() else None,
            links=links if links.is_file() else None,
        )
    if (root / "ratings.dat").is_file():
        return MovieLensFiles(root=root, format=DAT_FORMAT, ratings=root / "ratings.dat", movies=root / "movies.dat")
    return None


# --------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------


def read_ratings_csv(path: str | Path) -> pa.Table:
    """ratings.csv → Table userId int32, movieId int32, rating float32 (0.5..5.0), timestamp int64."""
    table = _read_csv_with_header(Path(path), RATINGS_COLUMNS)
    _require_rows(table, Path(path), "ratings")
    return table


def read_movies_csv(path: str | Path) -> pa.Table:
    """movies.csv → Table movieId int32, title string, year int32 (null if absent), genres list<string>."""
    table = _read_csv_with_header(Path(path), MOVIES_COLUMNS)
    _require_rows(table, Path(path), "movies")
    return _movie_metadata(table)


def read_tags_csv(path: str | Path) -> pa.Table:
    """tags.csv → Table userId int32, movieId int32, tag string, timestamp int64."""
    return _read_csv_with_header(Path(path), TAGS_COLUMNS)


def read_links_csv(path: str | Path) -> pa.Table:
    """links.csv → Table movieId int32, imdbId string, tmdbId int64 (null when empty)."""
    return _read_csv_with_header(Path(path), LINKS_COLUMNS)


def read_ratings_dat(path: str | Path) -> pa.Table:
    """ML-1M ratings.dat → the same Table as :func:`read_ratings_csv`."""
    table = _read_dat(Path(path), RATINGS_COLUMNS, text=False)
    _require_rows(table, Path(path), "ratings")
    return table


def read_movies_dat(path: str | Path) -> pa.Table:
    """ML-1M movies.dat (Latin-1) → the same Table as :func:`read_movies_csv`."""
    table = _read_dat(Path(path), MOVIES_COLUMNS, text=True)
    _require_rows(table, Path(path), "movies")
    return _movie_metadata(table)


def read_ratings(files: MovieLensFiles) -> pa.Table:
    """The ratings of a dataset folder, whichever layout it uses."""
    return read_ratings_csv(files.ratings) if files.format == CSV_FORMAT else read_ratings_dat(files.ratings)


def read_movies(files: MovieLensFiles) -> pa.Table:
    """The movies of a dataset folder, whichever layout it uses."""
    return read_movies_csv(files.movies) if files.format == CSV_FORMAT else read_movies_dat(files.movies)


# --------------------------------------------------------------------------------------------
# Titles, years and genres
# --------------------------------------------------------------------------------------------


def parse_year(title: str | None) -> int | None:
    """The release year at the end of a title: "Toy Story (1995)" → 1995, "Show (2006–2007)" → 2006."""
    if title is None:
        return None
    match = _YEAR_RE.search(title)
    return int(match.group("year")) if match else None


def parse_years(titles: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Vectorised :func:`parse_year`: int32 array, null where a title has no year."""
    titles = _combine(titles)
    years = pc.struct_field(pc.extract_regex(titles, _YEAR_PATTERN), [0])
    return pc.cast(years, pa.int32())


def split_genres(genres: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    """ "Comedy|Drama" → ["Comedy", "Drama"]; "(no genres listed)", "" and null → []."""
    genres = pc.fill_null(_combine(genres), "")
    lists = pc.split_pattern(genres, "|")
    values = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy()
    keep = pc.and_(pc.not_equal(values, ""), pc.not_equal(values, NO_GENRES)).to_numpy(zero_copy_only=False)
    counts = np.bincount(parents[keep], minlength=len(genres))
    offsets = np.zeros(len(genres) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values.filter(pa.array(keep)))


def _movie_metadata(table: pa.Table) -> pa.Table:
    """movieId/title/genres strings → movieId, title (right-trimmed), year, genres list."""
    titles = pc.utf8_rtrim_whitespace(_combine(table.column("title")))
    return pa.table(
        {
            "movieId": _combine(table.column("movieId")),
            "title": titles,
            "year": parse_years(titles),
            "genres": split_genres(table.column("genres")),
        }
    )


def _combine(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        return array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    return array


# --------------------------------------------------------------------------------------------
# CSV layout
# --------------------------------------------------------------------------------------------


def _require_file(path: Path) -> None:
    if not path.exists():
        raise DataError("file not found", path=path)
    if not path.is_file():
        raise DataError("is not a file", path=path)


def _require_rows(table: pa.Table, path: Path, what: str) -> None:
    if table.num_rows == 0:
        raise DataError(f"no {what}: the file has no data rows", path=path)


def _read_header(path: Path, columns: Sequence[Column]) -> list[str]:
    """The column names on line 1; DataError when a needed column is missing."""
    with open(path, "rb") as f:
        first = f.readline()
    expected = ",".join(c.name for c in columns)
    if not first.strip():
        raise DataError(f"empty file, expected a header line {expected!r}", path=path, line=1)
    try:
        text = first.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise DataError(f"header is not UTF-8 text, expected {expected!r}", path=path, line=1) from None
    names = [n.strip() for n in next(pycsv.reader([text]))]
    missing = [c.name for c in columns if c.name not in names]
    if len(missing) == len(columns):
        raise DataError(f"wrong header {text!r}, expected {expected!r}", path=path, line=1)
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(missing)} in header {text!r}, expected {expected!r}", path=path, line=1
        )
    return names


def _read_csv_with_header(path: Path, columns: Sequence[Column]) -> pa.Table:
    _require_file(path)
    names = _read_header(path, columns)
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=_BLOCK_SIZE, column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(newlines_in_values=False),
            convert_options=_convert_options(columns),
        )
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        raise _locate_error(path, columns, names, exc, header=True, separator=None, encoding="utf-8") from None
    _check_values(table, path, columns, names, header=True, separator=None, encoding="utf-8")
    return table


def _convert_options(columns: Sequence[Column]) -> pacsv.ConvertOptions:
    nullable = any(c.nullable for c in columns)
    return pacsv.ConvertOptions(
        column_types={c.name: c.type for c in columns},
        include_columns=[c.name for c in columns],
        # Required numeric fields must never be silently null: an empty field is a conversion error.
        null_values=[""] if nullable else [],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )


def _check_values(
    table: pa.Table,
    path: Path,
    columns: Sequence[Column],
    names: Sequence[str],
    *,
    header: bool,
    separator: bytes | None,
    encoding: str,
) -> None:
    """Vectorised range checks (ids non-negative, ratings in range, no nulls in required columns)."""
    if table.num_rows == 0:
        return
    for column in columns:
        values = table.column(column.name)
        if column.nullable or not pa.types.is_integer(column.type) and not pa.types.is_floating(column.type):
            ok = None
        elif column.check is _check_rating:
            ok = pc.and_(pc.greater_equal(values, RATING_MIN), pc.less_equal(values, RATING_MAX))
        elif column.check is _check_id:
            ok = pc.greater_equal(values, 0)
        else:
            ok = pc.is_valid(values)
        if ok is not None and not pc.all(pc.fill_null(ok, False)).as_py():
            raise _locate_error(path, columns, names, None, header=header, separator=separator, encoding=encoding)


def _locate_error(
    path: Path,
    columns: Sequence[Column],
    names: Sequence[str],
    exc: Exception | None,
    *,
    header: bool,
    separator: bytes | None,
    encoding: str,
) -> DataError:
    """Scan the file line by line (slow; only after a failure) and describe its first bad line."""
    log.debug("%s: locating the bad line after %s", path, exc)
    found = _scan_for_bad_line(path, columns, names, header=header, separator=separator, encoding=encoding)
    if found is not None:
        line, problem = found
        return DataError(problem, path=path, line=line)
    reason = str(exc).splitlines()[0] if exc is not None else "invalid values"
    return DataError(f"cannot parse: {reason}", path=path)


def _scan_for_bad_line(
    path: Path,
    columns: Sequence[Column],
    names: Sequence[str],
    *,
    header: bool,
    separator: bytes | None,
    encoding: str,
) -> tuple[int, str] | None:
    """(line number, problem) of the first line that fails its field count or a field check."""
    positions = [(names.index(c.name), c) for c in columns]
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if header and number == 1:
                continue
            line = raw.rstrip(b"\n").rstrip(b"\r")
            if not line:
                continue  # pyarrow skips empty lines too
            try:
                text = line.decode(encoding)
            except UnicodeDecodeError:
                return number, f"not valid {encoding} text"
            fields = text.split(separator.decode()) if separator is not None else next(pycsv.reader([text]))
            if len(fields) != len(names):
                return number, f"expected {len(names)} fields ({','.join(names)}), got {len(fields)}: {text[:80]!r}"
            for position, column in positions:
                problem = column.check(fields[position])
                if problem is not None:
                    return number, f"{column.name} {problem}"
    return None


# --------------------------------------------------------------------------------------------
# ML-1M .dat layout
# --------------------------------------------------------------------------------------------


def _dat_encoding(raw: bytes) -> str:
    """ML-1M is Latin-1; a file that decodes as UTF-8 (e.g. a converted copy) is taken as UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def _read_dat(path: Path, columns: Sequence[Column], *, text: bool) -> pa.Table:
    """Parse a ``::``-separated file: swap ``::`` for one unused byte, then let pyarrow.csv parse it."""
    _require_file(path)
    raw = path.read_bytes()
    separator = next((s for s in _DAT_SEPARATORS if s not in raw), None)
    if separator is None:
        raise DataError("contains every control byte used to stand in for '::'", path=path)
    encoding = _dat_encoding(raw) if text else "latin-1"
    data = raw.replace(b"::", separator)
    del raw
    if text and encoding != "utf-8":
        data = data.decode(encoding).encode("utf-8")
    names = [c.name for c in columns]
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(block_size=_BLOCK_SIZE, column_names=names),
            parse_options=pacsv.ParseOptions(delimiter=separator.decode(), quote_char=False),
            convert_options=_convert_options(columns),
        )
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        raise _locate_error(path, columns, names, exc, header=False, separator=b"::", encoding=encoding) from None
    _check_values(table, path, columns, names, header=False, separator=b"::", encoding=encoding)
    return table
