"""`movierec db ...`: load a prepared dataset into SQLite or MongoDB, report status, refuse bad input."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pymongo import MongoClient
from typer.testing import CliRunner

import mongo_server
from conftest import write_pattern_movielens
from movierec.cli.db import db_app
from movierec.data.prepare import prepare
from movierec.data.prepared import load_prepared
from movierec.store import open_store

runner = CliRunner()


def invoke(args: list[str], **env: str):
    """Run `movierec db ARGS` with only the given store variables set (never the developer's own)."""
    return runner.invoke(db_app, args, env={"MONGO_URI": None, "MOVIEREC_SQLITE": None, **env}, terminal_width=200)


def assert_one_error_line(output: str, *fragments: str) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], output


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["load", "status", "MONGO_URI"]),
        (["load"], ["--data", "--mongo-uri", "MONGO_URI", "--sqlite", "--replace", "bounded memory"]),
        (["status"], ["--mongo-uri", "--sqlite"]),
    ],
)
def test_help(command: list[str], expected: list[str]) -> None:
    result = invoke([*command, "--help"])
    assert result.exit_code == 0
    for text in expected:
        assert text in result.output


def test_load_into_sqlite_then_status_and_replace(pattern_prepared: Path, tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    counts = load_prepared(pattern_prepared).manifest["counts"]
    summary = f"{counts['items']:,} movies, {counts['interactions']:,} ratings, {counts['users']:,} users"

    result = invoke(["load", "--data", str(pattern_prepared), "--sqlite", str(db), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"into {db}: {summary}" in result.output
    with open_store(None, db) as store:
        assert store.counts() == {
            "movies": counts["items"],
            "ratings": counts["interactions"],
            "users": counts["users"],
        }

    result = invoke(["status", "--sqlite", str(db)])
    assert result.exit_code == 0 and f"{db}: {summary}" in result.output

    result = invoke(["load", "-d", str(pattern_prepared), "--sqlite", str(db), "--no-progress"])
    assert result.exit_code == 2
    assert_one_error_line(result.output, "already holds", "--replace")

    args = ["load", "-d", str(pattern_prepared), "--sqlite", str(db), "--replace", "--no-progress"]
    result = invoke(args)
    assert result.exit_code == 0, result.output


def test_load_into_mongo_from_the_environment(pytestconfig: pytest.Config, tmp_path: Path) -> None:
    source = write_pattern_movielens(tmp_path / "src", users=4)
    prepared = prepare(source, tmp_path / "prepared", val_users=1, progress=False)
    counts = load_prepared(prepared).manifest["counts"]
    uri = mongo_server.with_database(mongo_server.session_uri(pytestconfig), "movierec_cli_test")
    result = invoke(["load", "--data", str(prepared), "--no-progress"], MONGO_URI=uri)
    assert result.exit_code == 0, result.output
    assert f"{counts['interactions']:,} ratings, {counts['users']:,} users" in result.output
    with open_store(uri, tmp_path / "unused.sqlite") as store:
        assert store.counts()["ratings"] == counts["interactions"]
    with MongoClient(uri) as client:
        client.drop_database("movierec_cli_test")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["load", "--data", "{tmp}/missing"], ["missing/manifest.json", "not found"]),
        (["load", "--data", "{prepared}", "--sqlite", "{tmp}"], ["cannot open the SQLite store"]),
        (
            ["load", "-d", "{prepared}", "--mongo-uri", "mongodb://127.0.0.1:{port}/x?serverSelectionTimeoutMS=200"],
            ["does not answer"],
        ),
        (["load", "--data", "{prepared}", "--mongo-uri", "http://nope"], ["bad MongoDB URI"]),
        (["status", "--sqlite", "{tmp}/none.sqlite"], ["no such store", "movierec db load"]),
    ],
)
def test_bad_input_is_one_line(pattern_prepared: Path, tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    values = {"tmp": tmp_path, "prepared": pattern_prepared, "port": closed_port()}
    result = invoke([a.format(**values) for a in args])
    assert result.exit_code == 2
    assert_one_error_line(result.output, *fragments)
    assert "Traceback" not in result.output
