"""`movierec demo`: the one-command tour. Data → prepare → train (bounded, reused) → evaluate → recommend."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from movierec.cli.errors import friendly
from movierec.data.errors import DataError

out = Console(soft_wrap=True)
log = logging.getLogger("movierec.demo")

SMALL = "ml-latest-small"


def find_source(data_root: Path, home: Path, offline: bool) -> tuple[Path, str]:
    """ml-latest-small from DATA_ROOT, else downloaded into HOME, else a small synthetic set."""
    local = data_root / SMALL
    if (local / "ratings.csv").is_file():
        return local, f"{SMALL} found in {data_root}"
    downloaded = home / "data" / SMALL
    if (downloaded / "ratings.csv").is_file():
        return downloaded, f"{SMALL} downloaded earlier to {downloaded}"
    if not offline:
        from movierec.data.download import download

        try:
            return download(SMALL, home / "data"), f"{SMALL} downloaded from GroupLens"
        except DataError as exc:
            out.print(f"[yellow]could not download {SMALL} ({exc}); using synthetic data[/yellow]")
    synthetic = home / "data" / "synthetic-small"
    if not (synthetic / "ratings.csv").is_file():
        from movierec.data.synth import synthesize

        synthesize(synthetic, users=1_000, movies=3_000, ratings=100_000, seed=0)
    return synthetic, "a small synthetic MovieLens-format set (1,000 users, 3,000 movies, 100,000 ratings)"


@friendly
def demo(
    data_root: Annotated[Path, typer.Option(help="Where to look for MovieLens folders (ml-latest-small).")] = Path(
        "../shared/data"
    ),
    home: Annotated[Path, typer.Option(envvar="MOVIEREC_HOME", help="Folder for prepared data and models.")] = Path(
        "artifacts"
    ),
    minutes: Annotated[float, typer.Option(help="Training budget when no trained model is there yet.")] = 3.0,
    retrain: Annotated[bool, typer.Option(help="Train again even if a model exists.")] = False,
    offline: Annotated[bool, typer.Option(help="Never try to download.")] = False,
    user: Annotated[int | None, typer.Option(help="MovieLens userId to recommend for (default: the first one).")] = None,
    serve: Annotated[bool, typer.Option(help="Finish by serving the API (Ctrl-C stops it).")] = True,
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
) -> None:
    """Run the whole pipeline on embedded defaults: no server needed, everything reused on the next run.

    data → prepare → train → evaluate → SQLite store → FAISS index → recommendations → API on localhost.
    """
    from movierec.cli.model import evaluation_rows, print_metrics, recommend
    from movierec.data.prepare import prepare
    from movierec.data.prepared import load_prepared
    from movierec.train.trainer import Trainer, TrainConfig

    source, how = find_source(data_root, home, offline)
    out.rule("[bold]1. data")
    out.print(f"using {how}: {source}")
    prepared_dir = home / "prepared" / source.name
    if not (prepared_dir / "manifest.json").is_file():
        out.rule("[bold]2. prepare")
        prepare(source, prepared_dir)
    else:
        out.print(f"prepared data reused from {prepared_dir}")
    data = load_prepared(prepared_dir)
    model_dir = home / "model"
    out.rule("[bold]3. train")
    if retrain or not (model_dir / "manifest.json").is_file():
        # a small dataset needs fewer negatives than ML-1M; everything else is the paper's setup
        cfg = TrainConfig(max_minutes=minutes, eval_every_steps=50, negatives=min(256, data.num_items // 4),
                          dropout=0.2, lr=2e-3)
        Trainer(data, model_dir, cfg).fit()
        out.print(f"model written to {model_dir} (training curve: {model_dir / 'training_curve.png'})")
    else:
        out.print(f"model reused from {model_dir} (use --retrain to train again)")
    out.rule("[bold]4. evaluate")
    print_metrics(evaluation_rows(model_dir, prepared_dir, "val"), "validation users, full ranking")
    out.rule("[bold]5. store and index")
    load_store(data, home)
    build_index(model_dir, home)
    out.rule("[bold]6. recommend")
    user_id = user if user is not None else int(data.users.column("user_id")[0].as_py())
    recommend(model_dir=model_dir, user=user_id, k=10, data=prepared_dir, as_json=False)
    if serve:
        from movierec.cli.serve import serve as serve_api

        out.rule("[bold]7. API")
        out.print(CURL.format(port=port))
        serve_api(home=home, host="127.0.0.1", port=port, workers=1)


CURL = """API on http://localhost:{port} (OpenAPI: http://localhost:{port}/docs). Try:
  curl -s -X POST localhost:{port}/recommend -H 'content-type: application/json' -d '{{"user_id": 1, "k": 10, "method": "torchserve"}}'
  curl -s -X POST localhost:{port}/update_user -H 'content-type: application/json' -d '{{"user_id": 1, "movie_id": 123, "rating": 4.5}}'
  curl -s -X POST localhost:{port}/search_movies -H 'content-type: application/json' -d '{{"query": "Matrix", "limit": 20}}'
  curl -s localhost:{port}/user_stats/1
  curl -s 'localhost:{port}/popular_movies?limit=100'
Ctrl-C stops it."""


def load_store(data, home: Path) -> None:
    """Fill the embedded SQLite store once (the API's movies, ratings and users)."""
    from movierec.settings import Settings
    from movierec.store import open_store

    path = Settings(movierec_home=home).sqlite_path
    with open_store(None, path) as store:
        if store.counts()["ratings"]:
            out.print(f"store reused: {path}")
            return
        counts = store.load_prepared(data)
    out.print(f"store {path}: {counts['movies']:,} movies, {counts['ratings']:,} ratings, {counts['users']:,} users")


def build_index(model_dir: Path, home: Path) -> None:
    """Build the FAISS index of the current model unless the current version already indexes it."""
    import json

    from movierec.index.base import IndexFileError
    from movierec.index.store import build_from_model, load_index
    from movierec.settings import Settings

    root = Settings(movierec_home=home).faiss_dir
    model_sha = json.loads((model_dir / "manifest.json").read_text())["files"]["model.pt"]
    try:
        index = load_index(root)
        if json.loads((root / index.version / "manifest.json").read_text()).get("source", {}).get("model_sha256") == model_sha:
            out.print(f"index reused: {root} (version {index.version})")
            return
    except (IndexFileError, OSError, ValueError):
        pass
    version = build_from_model(model_dir, root)
    out.print(f"index built: {root} (version {version})")
