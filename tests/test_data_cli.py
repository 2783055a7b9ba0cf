"""`movierec data ...` commands, and download() against a loopback HTTP server (no internet needed)."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from movierec.cli.data import data_app
from movierec.data import download as dl
from movierec.data.errors import DataError
from movierec.data.prepared import load_prepared

runner = CliRunner()
MOVIES = "movieId,title,genres\n1,One (1990),Drama\n2,Two (1991),Comedy\n"


def make_source(folder: Path, ratings_text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(ratings_text)
    (folder / "movies.csv").write_text(MOVIES)
    return folder


def assert_one_error_line(output: str, *fragments: str) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ")
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in lines[0]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["download", "synth", "prepare"]),
        (["download"], ["--dir", "ml-32m", "md5"]),
        (["synth"], ["--users", "--movies", "--ratings", "--out", "--seed"]),
        (["prepare"], ["--source", "--out", "--val-users", "--seed", "--titles"]),
    ],
)
def test_help(command: list[str], expected: list[str]) -> None:
    result = runner.invoke(data_app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for word in expected:
        assert word in result.stdout


def test_registered_in_main_app() -> None:
    from movierec.cli.main import app

    result = runner.invoke(app, ["data", "--help"])
    assert result.exit_code == 0 and "prepare" in result.stdout


BAD_INPUTS = {
    "malformed row": ("userId,movieId,rating,timestamp\n1,1,4.0,5\n1,2,4.0\n", ["ratings.csv:3:", "expected 4 fields"]),
    "non-numeric id": ("userId,movieId,rating,timestamp\n1,1,4.0,5\none,2,4.0,6\n", ["ratings.csv:3:", "userId"]),
    "rating out of range": ("userId,movieId,rating,timestamp\n1,1,4.0,5\n1,2,7.5,6\n", ["ratings.csv:3:", "7.5"]),
    "wrong header": ("user,movie,score,time\n1,1,4.0,5\n", ["ratings.csv:1:", "wrong header"]),
    "missing column": ("userId,movieId,timestamp\n1,1,5\n", ["ratings.csv:1:", "rating"]),
    "empty dataset": ("userId,movieId,rating,timestamp\n", ["ratings.csv:", "no ratings"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_prepare_bad_input_is_one_line(tmp_path: Path, case: str) -> None:
    text, fragments = BAD_INPUTS[case]
    source = make_source(tmp_path / "src", text)
    result = runner.invoke(data_app, ["prepare", "--source", str(source), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert_one_error_line(result.stderr, *fragments)
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_prepare_missing_source(tmp_path: Path) -> None:
    result = runner.invoke(data_app, ["prepare", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "nope", "not found")


def test_real_entry_point_in_a_subprocess(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src", "userId,movieId,rating,timestamp\n1,1,4.0,5\n1,x,4.0,6\n")
    argv = ["data", "prepare", "--source", str(source), "--out", str(tmp_path / "out"), "--no-progress"]
    proc = subprocess.run(
        [sys.executable, "-c", "from movierec.cli.main import app; app()", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, f"{source / 'ratings.csv'}:3:", "movieId")


def test_synth_then_prepare(tmp_path: Path) -> None:
    synth = runner.invoke(
        data_app,
        ["synth", "--out", str(tmp_path / "s"), "--users", "60", "--movies", "200", "--ratings", "3000", "--seed", "2"],
    )
    assert synth.exit_code == 0, synth.output
    assert "3,000 ratings" in synth.stdout
    prep = runner.invoke(
        data_app,
        [
            "prepare",
            "--source",
            str(tmp_path / "s"),
            "--out",
            str(tmp_path / "p"),
            "--val-users",
            "10",
            "--no-progress",
        ],
    )
    assert prep.exit_code == 0, prep.output
    data = load_prepared(tmp_path / "p")
    assert data.manifest["counts"]["interactions"] == 3000 and len(data.val_users) == 10


def test_synth_impossible_sizes(tmp_path: Path) -> None:
    result = runner.invoke(data_app, ["synth", "--out", str(tmp_path), "--users", "10", "--ratings", "10"])
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "fewer than")


# --------------------------------------------------------------------------------------------
# download(): offline failure and checksum verification over loopback
# --------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_offline_fails_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DataError) as caught:
        dl.download("ml-latest-small", tmp_path, base_url=f"http://127.0.0.1:{closed_port()}/x", progress=False)
    assert time.monotonic() - start < dl.CONNECT_TIMEOUT
    assert str(caught.value).startswith("cannot reach 127.0.0.1:") and "\n" not in str(caught.value)


def test_cli_download_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "BASE_URL", f"http://127.0.0.1:{closed_port()}")
    result = runner.invoke(data_app, ["download", "ml-latest-small", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "cannot reach 127.0.0.1")


def test_cli_download_unknown_name(tmp_path: Path) -> None:
    result = runner.invoke(data_app, ["download", "ml-3m", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "unknown dataset 'ml-3m'")


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder it serves) of an HTTP server on 127.0.0.1."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


ZIP = make_zip(
    {
        "ml-latest-small/ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,5\n",
        "ml-latest-small/movies.csv": MOVIES.encode(),
    }
)
ZIP_MD5 = hashlib.md5(ZIP, usedforsecurity=False).hexdigest()


def test_download_verifies_and_unzips(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    (root / "ml-latest-small.zip").write_bytes(ZIP)
    (root / "ml-latest-small.zip.md5").write_text(f"{ZIP_MD5}  ml-latest-small.zip\n")
    target = dl.download("ml-latest-small", tmp_path / "data", base_url=url, progress=False)
    assert target == tmp_path / "data" / "ml-latest-small"
    assert (target / "movies.csv").read_text() == MOVIES
    assert not (tmp_path / "data" / "ml-latest-small.zip").exists()
    # Present already: reused without any request, even with the server gone.
    again = dl.download("ml-latest-small", tmp_path / "data", base_url=f"http://127.0.0.1:{closed_port()}")
    assert again == target


def test_download_progress_bar_runs(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    (root / "ml-latest-small.zip").write_bytes(ZIP)
    (root / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {ZIP_MD5}\n")
    assert dl.download("ml-latest-small", tmp_path, base_url=url, progress=True, keep_zip=True).is_dir()
    assert dl.md5_file(tmp_path / "ml-latest-small.zip") == ZIP_MD5


def test_download_rejects_bad_published_checksum(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    (root / "ml-latest-small.zip").write_bytes(ZIP)
    (root / "ml-latest-small.zip.md5").write_text("0" * 32 + "  ml-latest-small.zip\n")
    with pytest.raises(DataError, match=f"checksum mismatch: md5 {ZIP_MD5}, published 0{{32}}"):
        dl.download("ml-latest-small", tmp_path, base_url=url, progress=False)
    assert not (tmp_path / "ml-latest-small.zip").exists() and not (tmp_path / "ml-latest-small").exists()


def test_download_expected_md5_without_published_file(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    (root / "ml-latest-small.zip").write_bytes(ZIP)
    with pytest.raises(DataError, match="no checksum"):
        dl.download("ml-latest-small", tmp_path / "a", base_url=url, progress=False)
    with pytest.raises(DataError, match="checksum mismatch"):
        dl.download("ml-latest-small", tmp_path / "b", base_url=url, progress=False, expected_md5="f" * 32)
    assert dl.download("ml-latest-small", tmp_path / "c", base_url=url, progress=False, expected_md5=ZIP_MD5).is_dir()


def test_download_checks_recorded_md5(server: tuple[str, Path], tmp_path: Path) -> None:
    """ml-1m has a recorded md5; a zip that matches only its own .md5 file is still rejected."""
    url, root = server
    (root / "ml-1m.zip").write_bytes(ZIP)
    (root / "ml-1m.zip.md5").write_text(f"{ZIP_MD5}  ml-1m.zip\n")
    with pytest.raises(DataError, match=f"expected {dl.DATASETS['ml-1m']}"):
        dl.download("ml-1m", tmp_path, base_url=url, progress=False)


def test_download_refuses_unsafe_zip(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    evil = make_zip({"../evil.txt": b"x"})
    (root / "ml-latest-small.zip").write_bytes(evil)
    (root / "ml-latest-small.zip.md5").write_text(hashlib.md5(evil, usedforsecurity=False).hexdigest())
    with pytest.raises(DataError, match="unsafe member path"):
        dl.download("ml-latest-small", tmp_path / "d", base_url=url, progress=False)
    assert not (tmp_path / "evil.txt").exists()


def test_download_http_error(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    (root / "ml-latest-small.zip.md5").write_text(ZIP_MD5)
    with pytest.raises(DataError, match=r"ml-latest-small\.zip: HTTP 404"):
        dl.download("ml-latest-small", tmp_path, base_url=url, progress=False)


def test_parse_md5() -> None:
    assert dl.parse_md5("D472BE332D4DAA821EDC399621853B57  ml-32m.zip\n") == "d472be332d4daa821edc399621853b57"
    assert dl.parse_md5("MD5 (ml-1m.zip) = c4d9eecfca2ab87c1945afe126590906") == "c4d9eecfca2ab87c1945afe126590906"
    assert dl.parse_md5("<html>not found</html>") is None
