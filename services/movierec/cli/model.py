"""`movierec train | evaluate | recommend`: fit gSASRec, score it, and ask it for movies."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from movierec.cli.errors import UsageError, friendly

out = Console(soft_wrap=True)
log = logging.getLogger("movierec")

DataOpt = Annotated[Path, typer.Option("--data", "-d", help="Prepared dataset folder (`movierec data prepare`).")]
ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="Model folder written by `movierec train`.")]


def check_device(device: str) -> str:
    import torch

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"--device: expected cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch on this machine")
    return device


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` pairs as TrainConfig fields; VALUE is read as JSON when it parses (0.2, true, null)."""
    from dataclasses import fields

    from movierec.train.trainer import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in names:
            raise UsageError(f"--set: expected KEY=VALUE with KEY one of {', '.join(sorted(names))}; got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@friendly
def train(
    data: DataOpt,
    model_dir: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write (artifact + checkpoint).")],
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this many minutes of training.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimiser steps.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt (same settings, same clock).")] = False,
    loss: Annotated[
        str | None,
        typer.Option(help="gbce (sampled negatives, the gSASRec paper), ce (softmax over the whole catalog, "
                          "SASRec+) or sampled-softmax (with --set negative_sharing=batch: a big catalog)."),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (linear warm-up, then cosine decay).")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout rate.")] = None,
    negatives: Annotated[int | None, typer.Option("--negatives", "-k", help="Sampled negatives (gbce, sampled-softmax).")] = None,
    gbce_t: Annotated[float | None, typer.Option(help="gBCE calibration t (0 = plain BCE, 1 = fully calibrated).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per step (per process under torchrun).")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Most recent items the model reads (L).")] = None,
    dim: Annotated[int | None, typer.Option(help="Embedding size (d).")] = None,
    blocks: Annotated[int | None, typer.Option(help="Transformer blocks.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Validate every N steps.")] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after N validations without improvement.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: all cores).")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Any TrainConfig field, KEY=VALUE (repeatable), e.g. --set weight_decay=0.1.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Train gSASRec and write a model artifact, metrics.json and training_curve.png.

    Defaults (TrainConfig) are the best configuration measured on ML-1M (docs/benchmarks.md, "Quality on ML-1M").
    Validation NDCG@10 is computed by full ranking every --eval-every steps; the best weights are kept.
    A checkpoint is written every few minutes. Under `torchrun --nproc-per-node N` each process trains
    on its share of every epoch (DistributedDataParallel) and rank 0 validates and writes the files.
    """
    from dataclasses import asdict

    from movierec.data.prepared import load_prepared
    from movierec.train.distributed import broadcast_object, init_distributed
    from movierec.train.objective import LOSSES
    from movierec.train.trainer import TrainConfig, Trainer

    check_device(device)
    given = {
        "loss": loss, "lr": lr, "dropout": dropout, "negatives": negatives, "gbce_t": gbce_t, "batch_size": batch_size,
        "seq_len": seq_len, "dim": dim, "blocks": blocks, "eval_every_steps": eval_every, "patience": patience,
        "seed": seed, "threads": threads, "max_minutes": max_minutes, "max_steps": max_steps, "device": device,
    }
    values = {**asdict(TrainConfig()), **{k: v for k, v in given.items() if v is not None}, **parse_overrides(overrides or [])}
    for name in ("lr", "negatives", "batch_size", "dim"):
        if values[name] <= 0:
            raise UsageError(f"--{name.replace('_', '-')}: must be positive, got {values[name]}")
    if not 0 <= values["dropout"] < 1:
        raise UsageError(f"--dropout: must be in [0, 1), got {values['dropout']}")
    if values["loss"] not in LOSSES:
        raise UsageError(f"--loss: expected one of {', '.join(LOSSES)}, got {values['loss']!r}")
    prepared = load_prepared(data)
    cfg = TrainConfig.from_dict(values)
    world = init_distributed(device)
    checkpoint = model_dir / "checkpoint.pt"
    if resume:
        saved = None
        if world.is_main and checkpoint.is_file():
            import torch

            saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["config"]
        saved = broadcast_object(saved, world)  # every rank continues with rank 0's saved settings
        if saved is not None:
            budget = {"max_minutes": max_minutes, "max_steps": max_steps, "device": device, "threads": threads}
            cfg = TrainConfig.from_dict({**saved, **{k: v for k, v in budget.items() if v is not None}})
        elif world.is_main:
            log.warning("--resume: no checkpoint at %s, starting from scratch", checkpoint)
    trainer = Trainer(prepared, model_dir, cfg)
    if resume:
        trainer.resume()
    metrics = trainer.fit(show_progress=progress)
    if not world.is_main:
        return
    out.print(
        f"trained {metrics['steps']:,} steps in {metrics['minutes']:.1f} min ({cfg.loss}, {world.size} process"
        f"{'es' if world.size > 1 else ''}); best val NDCG@10 {metrics['best_val_ndcg@10']:.4f} at step "
        f"{metrics['best_step']:,} (most popular: {metrics['val_popularity']['ndcg@10']:.4f}); wrote {model_dir}"
    )


def evaluation_rows(model_dir: Path, data: Path, part: str) -> dict[str, dict[str, float]]:
    from movierec.data.prepared import load_prepared
    from movierec.model.artifact import load_artifact
    from movierec.train.evaluate import evaluate_model, evaluate_popularity

    artifact = load_artifact(model_dir)
    prepared = load_prepared(data)
    if artifact.config.num_items != prepared.num_items:
        raise UsageError(
            f"--data: {data} has {prepared.num_items:,} items but the model was trained on "
            f"{artifact.config.num_items:,}; evaluate on the dataset it was trained on"
        )
    return {
        "gsasrec": evaluate_model(artifact.model, prepared, part, intervals=True),
        "popular": evaluate_popularity(prepared, part, intervals=True),
    }


def print_metrics(rows: dict[str, dict[str, Any]], title: str) -> None:
    table = Table(title=title, caption="[low, high]: 95 % bootstrap interval over users")
    for column in ("method", "NDCG@10", "Recall@1", "Recall@10", "users"):
        table.add_column(column, justify="left" if column == "method" else "right")

    def cell(m: dict[str, Any], metric: str) -> str:
        ci = m.get(f"{metric}_ci")
        return f"{m[metric]:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")

    for method, m in rows.items():
        table.add_row(method, cell(m, "ndcg@10"), cell(m, "recall@1"), cell(m, "recall@10"), f"{m['users']:,}")
    out.print(table)


@friendly
def evaluate(
    model_dir: ModelOpt,
    data: DataOpt,
    part: Annotated[str, typer.Option(help="val (validation users) or test (every user's last item).")] = "val",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Full-ranking evaluation (every item scored, rated items removed) next to a most-popular baseline."""
    if part not in ("val", "test"):
        raise UsageError(f"--part: expected val or test, got {part!r}")
    rows = evaluation_rows(model_dir, data, part)
    if as_json:
        typer.echo(json.dumps({"part": part, **rows}, indent=2))
    else:
        print_metrics(rows, f"{part} users, full ranking over all items")


def recommendations(model_dir: Path, data: Path | None, user: int, k: int) -> tuple[list[dict], list[dict]]:
    """(recent history, recommendations) for MovieLens user id `user`, as rows of item metadata."""
    from movierec.data.prepared import load_prepared
    from movierec.model.artifact import load_artifact
    from movierec.serving.inference import top_k

    artifact = load_artifact(model_dir)
    data = data or Path(artifact.manifest.get("data", {}).get("prepared_path") or "")
    if not str(data) or not (data / "manifest.json").is_file():
        raise UsageError("--data: give the prepared dataset folder (the model's manifest does not name one)")
    prepared = load_prepared(data)
    index = prepared.user_index()
    if user not in index:
        raise UsageError(f"--user: no user {user} in {data}")
    if not 1 <= k <= 1000:
        raise UsageError(f"-k: must be between 1 and 1000, got {k}")
    history = prepared.history(index[user])
    best = top_k(artifact.model, [history], k)
    meta = artifact.items.select(["movie_id", "title", "year", "genres"]).to_pylist()  # row i = item_idx i + 1

    def row(idx: int) -> dict:
        return meta[int(idx) - 1]

    recs = [{**row(i), "score": float(s)} for i, s in zip(best.items[0], best.scores[0])]
    return [row(i) for i in history[-5:][::-1]], recs


@friendly
def recommend(
    model_dir: ModelOpt,
    user: Annotated[int, typer.Option("--user", "-u", help="MovieLens userId.")],
    k: Annotated[int, typer.Option("-k", help="How many movies (1-1000).")] = 10,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Prepared dataset with the user's history (default: the training data).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Recommend K unseen movies for a user from their rating history (most recent last)."""
    recent, recs = recommendations(model_dir, data, user, k)
    if as_json:
        typer.echo(json.dumps({"user_id": user, "recent": recent, "recommendations": recs}, indent=2))
        return
    out.print(f"[bold]user {user}[/bold] recently rated: " + "; ".join(r["title"] or str(r["movie_id"]) for r in recent))
    table = Table(title=f"top {k} for user {user}")
    for column in ("#", "movie", "year", "genres", "score"):
        table.add_column(column, justify="right" if column in ("#", "score", "year") else "left")
    for rank, r in enumerate(recs, 1):
        table.add_row(str(rank), r["title"] or str(r["movie_id"]), str(r["year"] or ""), "|".join(r["genres"] or []),
                      f"{r['score']:.3f}")
    out.print(table)
