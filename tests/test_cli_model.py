"""`movierec train | evaluate | recommend | demo` end to end, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from movierec.cli import demo
from movierec.cli.main import app

runner = CliRunner()
FAST = ["--max-steps", "60", "--eval-every", "30", "--seq-len", "32", "--dim", "32", "-k", "8",
        "--batch-size", "32", "--dropout", "0.1", "--lr", "0.005", "--no-progress"]


def one_error_line(result, *fragments: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output


@pytest.fixture(scope="module")
def trained(pattern_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tmp_path_factory.mktemp("cli") / "model"
    result = runner.invoke(app, ["train", "--data", str(pattern_prepared), "--out", str(model), *FAST])
    assert result.exit_code == 0, result.output
    assert "best val NDCG@10" in result.output
    return model


def test_every_command_has_help() -> None:
    for command in (["--help"], ["train", "--help"], ["evaluate", "--help"], ["recommend", "--help"], ["demo", "--help"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0 and "Usage" in result.output


def test_evaluate_json_has_model_and_popularity(trained: Path, pattern_prepared: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--model", str(trained), "--data", str(pattern_prepared), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows["part"] == "val" and rows["gsasrec"]["users"] == 100
    assert rows["gsasrec"]["ndcg@10"] > rows["popular"]["ndcg@10"]
    table = runner.invoke(app, ["evaluate", "--model", str(trained), "--data", str(pattern_prepared), "--part", "test"])
    assert table.exit_code == 0 and "gsasrec" in table.output and "popular" in table.output


def test_recommend_titles_for_a_user(trained: Path) -> None:
    result = runner.invoke(app, ["recommend", "--model", str(trained), "--user", "7", "-k", "5", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    recs = body["recommendations"]
    assert len(recs) == 5 and all(r["title"].startswith("Movie ") for r in recs)
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    seen = {r["movie_id"] for r in body["recent"]}
    assert not seen & {r["movie_id"] for r in recs}
    table = runner.invoke(app, ["recommend", "--model", str(trained), "--user", "7"])
    assert table.exit_code == 0 and "top 10 for user 7" in table.output


def test_resume_extends_a_run(trained: Path, pattern_prepared: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    first = runner.invoke(app, ["train", "--data", str(pattern_prepared), "--out", str(model), *FAST[:1], "10",
                                *FAST[2:]])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["train", "--data", str(pattern_prepared), "--out", str(model), "--resume",
                                "--max-steps", "20", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert json.loads((model / "metrics.json").read_text())["steps"] == 20


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--data", "/nonexistent/prepared", "--out", "/tmp/x"], ["manifest.json", "not found"]),
        (["train", "--data", "{data}", "--out", "{tmp}", "--device", "cuda"], ["--device cuda"]),
        (["train", "--data", "{data}", "--out", "{tmp}", "--device", "tpu"], ["--device"]),
        (["train", "--data", "{data}", "--out", "{tmp}", "--dropout", "1.5"], ["--dropout"]),
        (["evaluate", "--model", "/nonexistent/model", "--data", "{data}"], ["not found"]),
        (["evaluate", "--model", "{model}", "--data", "{data}", "--part", "train"], ["--part"]),
        (["recommend", "--model", "{model}", "--user", "999999"], ["--user", "999999"]),
        (["recommend", "--model", "{model}", "--user", "1", "-k", "0"], ["-k"]),
    ],
)
def test_bad_input_gives_one_line(args, fragments, trained: Path, pattern_prepared: Path, tmp_path: Path) -> None:
    if "--device" in args and "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    values = {"data": str(pattern_prepared), "tmp": str(tmp_path / "out"), "model": str(trained)}
    result = runner.invoke(app, [a.format(**values) for a in args])
    one_error_line(result, *fragments)


def test_corrupt_model_is_named(trained: Path, pattern_prepared: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / "item_map.parquet").write_bytes(b"not parquet")
    result = runner.invoke(app, ["evaluate", "--model", str(broken), "--data", str(pattern_prepared)])
    one_error_line(result, "item_map.parquet", "checksum")


def test_demo_runs_offline_on_local_data_and_reuses_its_model(pattern_source: Path, tmp_path: Path) -> None:
    """The demo with a data root holding an ml-latest-small folder (here: the pattern set)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(pattern_source, root / "ml-latest-small")
    home = tmp_path / "home"
    args = ["demo", "--data-root", str(root), "--home", str(home), "--minutes", "0.1", "--offline", "--user", "3", "--no-serve"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "ml-latest-small found" in first.output and "top 10 for user 3" in first.output
    assert (home / "model" / "manifest.json").is_file() and (home / "store.sqlite").is_file()
    assert (home / "index" / "faiss" / "CURRENT").is_file()
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    for reused in ("model reused", "prepared data reused", "store reused", "index reused"):
        assert reused in second.output


def test_demo_falls_back_to_synthetic_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = runner.invoke(app, ["demo", "--data-root", str(tmp_path / "empty"), "--home", str(home),
                                 "--minutes", "0.05", "--offline", "--no-serve"])
    assert result.exit_code == 0, result.output
    assert "synthetic" in result.output
    assert (home / "data" / demo.SYNTHETIC / "ratings.csv").is_file()


def test_serve_refuses_several_workers_without_a_shared_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("REDIS_HOST", raising=False)
    result = runner.invoke(app, ["serve", "--home", str(tmp_path), "--workers", "2"])
    one_error_line(result, "--workers 2", "REDIS_HOST")
