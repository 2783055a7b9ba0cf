"""MovieLens readers: real ml-latest-small / ML-1M files, CRLF vs LF, .dat round trip, years, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from movierec.data import movielens as ml
from movierec.data.errors import DataError
from shared_data import DATA_ROOT, needs_data

SMALL = DATA_ROOT / "ml-latest-small"
ML1M_MOVIES = DATA_ROOT / "ml-1m-original" / "movies.dat"
needs_small = needs_data("ml-latest-small")
needs_ml1m = needs_data("ml-1m-original/movies.dat")

RATINGS_HEADER = "userId,movieId,rating,timestamp\n"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# --------------------------------------------------------------------------------------------
# Real files
# --------------------------------------------------------------------------------------------


@needs_small
def test_ml_latest_small_counts_and_types() -> None:
    ratings = ml.read_ratings_csv(SMALL / "ratings.csv")
    movies = ml.read_movies_csv(SMALL / "movies.csv")
    assert ratings.num_rows == 100_836
    assert len(np.unique(ratings.column("userId").to_numpy())) == 610
    assert len(np.unique(ratings.column("movieId").to_numpy())) == 9_724
    assert movies.num_rows == 9_742
    assert ratings.schema == pa.schema(
        [("userId", pa.int32()), ("movieId", pa.int32()), ("rating", pa.float32()), ("timestamp", pa.int64())]
    )
    r = ratings.column("rating").to_numpy()
    assert r.min() == 0.5 and r.max() == 5.0 and np.all((r * 2) == np.round(r * 2))
    first = ratings.slice(0, 1).to_pylist()[0]
    assert first == {"userId": 1, "movieId": 1, "rating": 4.0, "timestamp": 964982703}


@needs_small
def test_ml_latest_small_movie_metadata() -> None:
    movies = {row["movieId"]: row for row in ml.read_movies_csv(SMALL / "movies.csv").to_pylist()}
    assert movies[1] == {
        "movieId": 1,
        "title": "Toy Story (1995)",
        "year": 1995,
        "genres": ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
    }
    assert movies[11]["title"] == "American President, The (1995)"  # quoted, with a comma
    assert movies[7789]["title"] == "11'09\"01 - September 11 (2002)"  # doubled quotes inside quotes
    assert movies[143410] == {"movieId": 143410, "title": "Hyena Road", "year": None, "genres": []}
    assert movies[171749]["year"] == 2006  # "(2006–2007)"
    assert movies[27008]["title"].endswith("(1999)") and movies[27008]["year"] == 1999  # trailing space


@needs_small
def test_tags_and_links() -> None:
    tags = ml.read_tags_csv(SMALL / "tags.csv")
    links = ml.read_links_csv(SMALL / "links.csv")
    assert tags.num_rows == 3_683 and links.num_rows == 9_742
    assert links.slice(0, 1).to_pylist()[0] == {"movieId": 1, "imdbId": "0114709", "tmdbId": 862}
    assert links.column("tmdbId").null_count == 8


@needs_small
def test_crlf_and_lf_give_identical_tables(tmp_path: Path) -> None:
    for name, reader in (("ratings.csv", ml.read_ratings_csv), ("movies.csv", ml.read_movies_csv)):
        crlf = (SMALL / name).read_bytes()
        assert b"\r\n" in crlf
        lf = tmp_path / name
        lf.write_bytes(crlf.replace(b"\r\n", b"\n"))
        assert reader(SMALL / name).equals(reader(lf))


@needs_ml1m
def test_ml1m_original_movies_dat() -> None:
    movies = ml.read_movies_dat(ML1M_MOVIES)
    assert movies.num_rows == 3_883
    rows = {row["movieId"]: row for row in movies.to_pylist()}
    assert rows[73]["title"] == "Misérables, Les (1995)"
    assert rows[1]["genres"] == ["Animation", "Children's", "Comedy"]
    assert movies.column("year").null_count == 0


# --------------------------------------------------------------------------------------------
# ML-1M .dat round trip
# --------------------------------------------------------------------------------------------

DAT_MOVIES = [
    (1, "Toy Story (1995)", "Animation|Children's|Comedy"),
    (582, "Metisse (Café au Lait) (1993)", "Comedy"),
    (73, "Misérables, Les (1995)", "Drama|Musical"),
    (9, 'Say "Cheese": A Movie (2000)', "Comedy"),
]
DAT_RATINGS = [(1, 1, 5, 978300760), (1, 582, 3, 978302109), (2, 73, 1, 978301968), (2, 9, 4, 978300275)]


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_ml1m_dat_round_trip(tmp_path: Path, encoding: str) -> None:
    write(tmp_path / "movies.dat", "".join(f"{m}::{t}::{g}\n" for m, t, g in DAT_MOVIES), encoding)
    write(tmp_path / "ratings.dat", "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in DAT_RATINGS))
    files = ml.detect_movielens(tmp_path)
    assert files is not None and files.format == ml.DAT_FORMAT
    movies = ml.read_movies(files).to_pylist()
    assert [(r["movieId"], r["title"], "|".join(r["genres"])) for r in movies] == DAT_MOVIES
    assert [r["year"] for r in movies] == [1995, 1993, 1995, 2000]
    ratings = ml.read_ratings(files)
    assert ratings.column_names == ["userId", "movieId", "rating", "timestamp"]
    assert [tuple(r.values()) for r in ratings.to_pylist()] == [(u, m, float(r), t) for u, m, r, t in DAT_RATINGS]


def test_dat_with_crlf(tmp_path: Path) -> None:
    lf = write(tmp_path / "lf.dat", "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in DAT_RATINGS))
    crlf = write(tmp_path / "crlf.dat", "".join(f"{u}::{m}::{r}::{t}\r\n" for u, m, r, t in DAT_RATINGS))
    assert ml.read_ratings_dat(lf).equals(ml.read_ratings_dat(crlf))


# --------------------------------------------------------------------------------------------
# Years and genres
# --------------------------------------------------------------------------------------------

YEAR_CASES = [
    ("Toy Story (1995)", 1995),
    ("Runaway Brain (1995) ", 1995),
    ("Runaway Brain (1995)   ", 1995),
    ("Death Note: Desu nôto (2006–2007)", 2006),
    ("Some Show (2006-2007)", 2006),
    ("Stranger Things (2016– )", 2016),
    ("Twin Peaks (1990- )", 1990),
    ("1984 (1984)", 1984),
    ("Babylon 5", None),
    ("Hyena Road", None),
    ("Movie (in 3D)", None),
    ("Year in the middle (1995) Redux", None),
    ("", None),
]


@pytest.mark.parametrize(("title", "year"), YEAR_CASES)
def test_parse_year(title: str, year: int | None) -> None:
    assert ml.parse_year(title) == year


def test_parse_years_matches_scalar_version() -> None:
    titles = [t for t, _ in YEAR_CASES] + [None]
    assert ml.parse_years(pa.array(titles)).to_pylist() == [y for _, y in YEAR_CASES] + [None]


def test_split_genres() -> None:
    genres = pa.array(["Comedy|Drama", "(no genres listed)", "", None, "War"])
    assert ml.split_genres(genres).to_pylist() == [["Comedy", "Drama"], [], [], [], ["War"]]


# --------------------------------------------------------------------------------------------
# Bad input: DataError names the file and (for row errors) the line
# --------------------------------------------------------------------------------------------

BAD_RATINGS = {
    "wrong field count": (RATINGS_HEADER + "1,2,4.0,10\n1,3,5\n", 3, "expected 4 fields"),
    "non-numeric id": (RATINGS_HEADER + "1,2,4.0,10\n1,abc,4.0,11\n", 3, "not an integer"),
    "non-numeric rating": (RATINGS_HEADER + "1,2,4.0,10\n2,3,good,11\n", 3, "not a number"),
    "rating too high": (RATINGS_HEADER + "1,2,4.0,10\n1,3,4.5,11\n2,3,5.5,12\n", 4, "outside 0.5..5.0"),
    "rating zero": (RATINGS_HEADER + "1,2,0.0,10\n", 2, "outside 0.5..5.0"),
    "empty field": (RATINGS_HEADER + "1,2,4.0,10\n1,,4.0,11\n", 3, "not an integer"),
    "negative id": (RATINGS_HEADER + "1,2,4.0,10\n-4,3,4.0,11\n", 3, "outside"),
    "crlf bad row": (RATINGS_HEADER.replace("\n", "\r\n") + "1,2,4.0,10\r\n1,2,9,10\r\n", 3, "outside"),
    "bad row after blank line": (RATINGS_HEADER + "1,2,4.0,10\n\n1,2,x,10\n", 4, "not a number"),
    "wrong header": ("user,item,score,time\n1,2,4.0,10\n", 1, "wrong header"),
    "no header": ("1,2,4.0,10\n", 1, "wrong header"),
    "missing column": ("userId,movieId,rating\n1,2,4.0\n", 1, "missing column(s) timestamp"),
    "empty file": ("", 1, "empty file"),
}


@pytest.mark.parametrize("case", sorted(BAD_RATINGS))
def test_bad_ratings_csv_names_file_and_line(tmp_path: Path, case: str) -> None:
    text, line, message = BAD_RATINGS[case]
    path = write(tmp_path / "ratings.csv", text)
    with pytest.raises(DataError) as caught:
        ml.read_ratings_csv(path)
    error = str(caught.value)
    assert error.startswith(f"{path}:{line}: "), error
    assert message in error
    assert "\n" not in error
    assert caught.value.line == line and caught.value.path == path


def test_empty_dataset(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", RATINGS_HEADER)
    with pytest.raises(DataError, match=r"ratings\.csv: no ratings"):
        ml.read_ratings_csv(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere\.csv: file not found"):
        ml.read_ratings_csv(tmp_path / "nowhere.csv")


def test_bad_movies_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "movies.csv", 'movieId,title,genres\n1,"A, B (1999)",Drama\nx2,C (2000),Drama\n')
    with pytest.raises(DataError, match=r"movies\.csv:3: movieId 'x2' is not an integer"):
        ml.read_movies_csv(path)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("1::2::4::10\n1::3::4\n", 2, "expected 4 fields"),
        ("1::2::4::10\n1::3::x::11\n", 2, "not a number"),
        ("1::2::4::10\n1::3::4::11\n7::1::6::11\n", 3, "outside 0.5..5.0"),
        ("UserID::MovieID::Rating::Timestamp\n1::2::4::10\n", 1, "not an integer"),
    ],
)
def test_bad_ratings_dat_names_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path / "ratings.dat", text)
    with pytest.raises(DataError) as caught:
        ml.read_ratings_dat(path)
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert message in str(caught.value)


def test_large_file_error_is_found_after_pyarrow_fails(tmp_path: Path) -> None:
    """A bad row deep in a multi-block file is still reported with its exact line."""
    rows = [f"{u},{m},4.0,{1000 + m}" for u in range(1, 2001) for m in range(1, 101)]
    rows[150_000] = "1501,51,4.0"
    path = write(tmp_path / "ratings.csv", RATINGS_HEADER + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as caught:
        ml.read_ratings_csv(path)
    assert str(caught.value).startswith(f"{path}:150002: expected 4 fields")
