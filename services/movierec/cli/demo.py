"""`movierec demo`: the one-command tour. Data → prepare → train (bounded, reused) → evaluate → recommend."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from movierec.cli.errors import friendly
from movierec.data.errors import DataError

if TYPE_CHECKING:
    from movierec.data.prepared import PreparedData
    from movierec.train.trainer import TrainConfig

out = Console(soft_wrap=True)
log = logging.getLogger("movierec.demo")

SMALL = "ml-latest-small"
SYNTHETIC = "synthetic-sequential"  # the name changes with the generator, so an older synthetic set is not reused
SYNTHETIC_SIZE: dict[str, Any] = {"users": 1_000, "movies": 3_000, "ratings": 100_000}


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
    synthetic = home / "data" / SYNTHETIC
    if not (synthetic / "ratings.csv").is_file():
        from movierec.data.synth import synthesize

        synthesize(synthetic, seed=0, **SYNTHETIC_SIZE)
    return synthetic, (
        "synthetic MovieLens-format data (1,000 users, 3,000 movies, 100,000 ratings; viewing drifts between"
        " tastes, follows series in order and what is new: not real behaviour)"
    )


def train_config(data: PreparedData, minutes: float | None) -> TrainConfig:
    """The demo's training setup for a small dataset within a few CPU minutes.

    The paper's model is cut down (sequences of the last 50 movies, 64 dimensions, batches of 64, a short
    warm-up) so that three minutes on two cores make ~1,000 steps instead of ~60; the full softmax loss
    and dropout 0.2 are the README's defaults.
    """
    from movierec.train.trainer import TrainConfig

    return TrainConfig(
        max_minutes=minutes, eval_every_steps=50, negatives=min(256, data.num_items // 4), dropout=0.2, lr=2e-3,
        seq_len=50, dim=64, batch_size=64, warmup_steps=20,
    )  # fmt: skip


def model_matches(model_dir: Path, data: PreparedData) -> bool:
    """True when the model in `model_dir` was trained on these data (same input checksums and item count)."""
    try:
        manifest = json.loads((model_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    trained_on = manifest.get("data") or {}
    return (
        trained_on.get("input_checksums") == data.manifest.get("input_checksums")
        and (trained_on.get("counts") or {}).get("items") == data.num_items
    )


def verdict(rows: dict[str, dict], source: str) -> str:
    """One line: what the model is worth on these data against most-popular (validation NDCG@10)."""
    model, popular = rows["gsasrec"], rows["popular"]
    m, p = model["ndcg@10"], popular["ndcg@10"]
    m_low, m_high = model.get("ndcg@10_ci") or (m, m)
    p_low, p_high = popular.get("ndcg@10_ci") or (p, p)
    if m_low > p_high:
        word = f"beats most-popular ({m / p:.1f}×, 95 % intervals apart)" if p > 0 else "beats most-popular"
    elif m_high < p_low:
        word = "is worse than most-popular (95 % intervals apart)"
    else:
        word = "is level with most-popular (95 % intervals overlap)"
    return f"on {source}, the model {word}: validation NDCG@10 {m:.4f} against {p:.4f}"


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
    port: Annotated[int, typer.Option(min=1, max=65535, help="API port (make demo PORT=8100).")] = 8000,
) -> None:
    """Run the whole pipeline on embedded defaults: no server needed, everything reused on the next run.

    data → prepare → train → evaluate → SQLite store → FAISS index → recommendations → API on localhost.
    """
    from movierec.cli.model import evaluation_rows, print_metrics
    from movierec.data.prepare import prepare
    from movierec.data.prepared import load_prepared
    from movierec.train.trainer import Trainer

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
    if retrain or not model_matches(model_dir, data):
        if (model_dir / "manifest.json").is_file() and not retrain:
            out.print(f"the model in {model_dir} was trained on other data: training again")
        Trainer(data, model_dir, train_config(data, minutes)).fit()
        out.print(f"model written to {model_dir} (training curve: {model_dir / 'training_curve.png'})")
    else:
        out.print(f"model reused from {model_dir} (use --retrain to train again)")
    out.rule("[bold]4. evaluate")
    rows = evaluation_rows(model_dir, prepared_dir, "val")
    print_metrics(rows, "validation users, full ranking")
    out.print(f"[bold]{verdict(rows, source.name)}[/bold]")
    out.rule("[bold]5. store and index")
    store_path = load_store(data, home)
    build_index(model_dir, home)
    out.rule("[bold]6. recommend")
    user_id = user if user is not None else int(data.users.column("user_id")[0].as_py())
    top = recommend_live(model_dir, store_path, user_id)
    if serve:
        from movierec.cli.serve import serve as serve_api

        out.rule("[bold]7. API")
        out.print(CURL.format(port=port, user=user_id, movie=top, ct="-H 'content-type: application/json'"))
        out.print(web_page_line(port))
        serve_api(home=home, host="127.0.0.1", port=port, workers=1)


def web_page_line(port: int) -> str:
    """Where the web page is, or why there is none (it is built by `make web` where Node.js >= 20 is)."""
    from movierec.settings import Settings

    if (Settings().web_path / "index.html").is_file():
        return f"[bold]Web page: http://localhost:{port}/[/bold] (pick a user, rate movies, watch the list change)"
    return ("No web page: it is built by `make web`, which needs Node.js 20 or later; "
            f"http://localhost:{port}/ says how, and the API runs without it.")


CURL = """API on http://localhost:{port} (OpenAPI: http://localhost:{port}/docs). Try:
  curl -s -X POST localhost:{port}/recommend {ct} -d '{{"user_id": {user}, "k": 10, "method": "torchserve"}}'
  curl -s -X POST localhost:{port}/update_user {ct} -d '{{"user_id": {user}, "movie_id": {movie}, "rating": 4.5}}'
  curl -s -X POST localhost:{port}/search_movies {ct} -d '{{"query": "Matrix", "limit": 20}}'
  curl -s localhost:{port}/user_stats/{user}
  curl -s 'localhost:{port}/popular_movies?limit=100'
The update is the user's first recommendation; the next /recommend (and the next `make demo`) sees it.
Ctrl-C stops it."""


def load_store(data, home: Path) -> Path:
    """Fill the embedded SQLite store once (the API's movies, ratings and users); returns its path.

    A store filled from other data (another source in the same home) is filled again.
    """
    from movierec.settings import Settings
    from movierec.store import open_store

    path = Settings(movierec_home=home).sqlite_path
    marker = path.with_name(path.name + ".source.json")
    source = json.dumps(data.manifest.get("input_checksums"), sort_keys=True)
    with open_store(None, path) as store:
        counts = store.counts()
    filled = counts["ratings"] > 0
    same = marker.read_text() == source if marker.is_file() else counts["movies"] == data.num_items
    if filled and same:
        marker.write_text(source)
        out.print(f"store reused: {path} (with the ratings added through the API)")
        return path
    if filled:
        for leftover in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
            leftover.unlink(missing_ok=True)
        out.print(f"store {path} held other data: filled again")
    with open_store(None, path) as store:
        counts = store.load_prepared(data)
    marker.write_text(source)
    out.print(f"store {path}: {counts['movies']:,} movies, {counts['ratings']:,} ratings, {counts['users']:,} users")
    return path


def recommend_live(model_dir: Path, store_path: Path, user_id: int, k: int = 10) -> int:
    """Recommend from the user's history as the store has it now (with every /update_user so far).

    Prints the newest five of that history and the top k; returns the first recommendation's movieId.
    """
    import numpy as np
    from rich.table import Table

    from movierec.cli.errors import UsageError
    from movierec.model.artifact import load_artifact
    from movierec.serving.inference import top_k
    from movierec.store import open_store

    artifact = load_artifact(model_dir)
    movie_ids = artifact.items.column("movie_id").to_pylist()  # row i = item_idx i + 1
    item_idx = {movie_id: i + 1 for i, movie_id in enumerate(movie_ids)}
    with open_store(None, store_path) as store:
        history = store.user_history(user_id)
        titles = store.get_movies([h.movie_id for h in history[-5:]])
    if not history:
        raise UsageError(f"--user: no ratings of user {user_id} in {store_path}")
    known = [item_idx[h.movie_id] for h in history if h.movie_id in item_idx]
    best = top_k(artifact.model, [np.asarray(known, dtype=np.int64)], k)
    meta = artifact.items.select(["movie_id", "title", "year", "genres"]).to_pylist()
    newest = history[::-1][:5]
    recent = "; ".join(titles[h.movie_id]["title"] if h.movie_id in titles else str(h.movie_id) for h in newest)
    out.print(f"[bold]user {user_id}[/bold] has {len(history):,} ratings in the store; newest first: {recent}")
    table = Table(title=f"top {k} for user {user_id}")
    for column in ("#", "movie", "year", "genres", "score"):
        table.add_column(column, justify="right" if column in ("#", "score", "year") else "left")
    for rank, (idx, score) in enumerate(zip(best.items[0].tolist(), best.scores[0].tolist(), strict=True), 1):
        row = meta[idx - 1]
        table.add_row(str(rank), row["title"] or str(row["movie_id"]), str(row["year"] or ""),
                      "|".join(row["genres"] or []), f"{score:.3f}")  # fmt: skip
    out.print(table)
    return int(meta[int(best.items[0][0]) - 1]["movie_id"])


def build_index(model_dir: Path, home: Path) -> None:
    """Build the FAISS index of the current model unless the current version already indexes it."""
    import json

    from movierec.index.base import IndexFileError
    from movierec.index.versions import build_from_model, load_index
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
