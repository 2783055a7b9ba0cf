"""The demo on synthetic data: its model beats popularity, README's search finds something, the
recommend step reads the live history (with an update it just got), and `make demo` takes PORT and
MOVIEREC_HOME."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from movierec.cli import demo
from movierec.data.prepare import prepare
from movierec.data.prepared import load_prepared
from movierec.data.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
STEPS = 120  # the demo's own setup, a 120-step budget instead of 3 minutes


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller synthetic set than the demo's (400 users, 1,000 movies), prepared."""
    root = tmp_path_factory.mktemp("demo-synth")
    source = synthesize(root / "synthetic-sequential", users=400, movies=1_000, ratings=30_000, seed=0)
    return prepare(source, root / "prepared", val_users=400, progress=False)


@pytest.fixture(scope="module")
def trained(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from movierec.train.trainer import Trainer

    data = load_prepared(synthetic)
    cfg = replace(demo.train_config(data, minutes=None), max_steps=STEPS, eval_every_steps=STEPS, threads=1)
    out = tmp_path_factory.mktemp("demo-model") / "model"
    Trainer(data, out, cfg).fit(show_progress=False)
    return out


@pytest.mark.slow
def test_the_demo_model_beats_popularity_on_synthetic_data(trained: Path, synthetic: Path) -> None:
    from movierec.cli.model import evaluation_rows

    rows = evaluation_rows(trained, synthetic, "val")
    model, popular = rows["gsasrec"], rows["popular"]
    assert model["ndcg@10_ci"][0] > popular["ndcg@10_ci"][1], rows  # 95 % intervals apart
    assert model["ndcg@10"] > 2 * popular["ndcg@10"]
    assert "the model beats most-popular" in demo.verdict(rows, "synthetic-sequential")


def test_verdict_says_level_and_worse() -> None:
    row = {"ndcg@10": 0.02, "ndcg@10_ci": [0.015, 0.025]}
    assert "is level with" in demo.verdict({"gsasrec": row, "popular": {**row, "ndcg@10": 0.019}}, "x")
    worse = {"ndcg@10": 0.05, "ndcg@10_ci": [0.04, 0.06]}
    line = demo.verdict({"gsasrec": row, "popular": worse}, "ml-latest-small")
    assert line == "on ml-latest-small, the model is worse than most-popular (95 % intervals apart): " \
                   "validation NDCG@10 0.0200 against 0.0500"  # fmt: skip


def test_readme_search_finds_movies_in_synthetic_data(synthetic: Path, tmp_path: Path) -> None:
    from movierec.store import open_store

    with open_store(None, tmp_path / "store.sqlite") as store:
        store.load_prepared(load_prepared(synthetic), progress=False)
        titles = [m["title"] for m in store.search_movies("Matrix", limit=20)]
        assert "Matrix, The (1999)" in titles and len(titles) >= 2
        assert store.search_movies("the matrix", limit=5)[0]["title"] == "Matrix, The (1999)"


def test_recommend_step_shows_the_history_after_an_update(trained: Path, synthetic: Path, tmp_path: Path) -> None:
    """After an /update_user (a store write), the demo's recommend step shows it and stops recommending it."""
    from movierec.store import open_store

    data = load_prepared(synthetic)
    store_path = demo.load_store(data, tmp_path)
    assert demo.load_store(data, tmp_path) == store_path  # reused, not filled twice
    user = int(data.users.column("user_id")[0].as_py())
    with demo.out.capture() as before:
        top = demo.recommend_live(trained, store_path, user)
    with open_store(None, store_path) as store:
        title = store.get_movies([top])[top]["title"]
        store.add_rating(user, top, 4.5)  # what POST /update_user does
    with demo.out.capture() as after:
        again = demo.recommend_live(trained, store_path, user)
    assert f"newest first: {title};" not in before.get()
    assert f"newest first: {title};" in after.get()
    assert again != top


def test_model_from_other_data_is_not_reused(trained: Path, synthetic: Path, tmp_path: Path) -> None:
    assert demo.model_matches(trained, load_prepared(synthetic))
    other = synthesize(tmp_path / "other", users=60, movies=200, ratings=2_000, seed=1)
    assert not demo.model_matches(trained, load_prepared(prepare(other, tmp_path / "p", val_users=10, progress=False)))
    assert not demo.model_matches(tmp_path / "no-model", load_prepared(synthetic))


@pytest.mark.parametrize(
    ("variables", "env", "expected"),
    [
        ([], {}, "--home artifacts --port 8000"),
        (["PORT=8100"], {}, "--home artifacts --port 8100"),
        ([], {"MOVIEREC_HOME": "/tmp/x", "PORT": "8200"}, "--home /tmp/x --port 8200"),
        (["MOVIEREC_HOME=elsewhere"], {}, "--home elsewhere --port 8000"),
    ],
)
def test_make_demo_takes_port_and_home(variables: list[str], env: dict[str, str], expected: str) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in ("MOVIEREC_HOME", "PORT", "MAKEFLAGS", "MFLAGS")}
    shown = subprocess.run(["make", "-n", "demo", *variables], cwd=REPO, env={**clean, **env}, capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert f"movierec demo --data-root ../shared/data {expected}" in shown
