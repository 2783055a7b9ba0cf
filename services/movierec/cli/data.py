"""`movierec data ...`: download, synthesise and prepare MovieLens data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from movierec.cli.errors import friendly

data_app = typer.Typer(
    help="Get MovieLens data ready for training: download it, or synthesise an ML-32M-sized set, "
    "then prepare it (dense ids, time-ordered histories, leave-one-out split).",
    no_args_is_help=True,
)
_out = Console(soft_wrap=True)
_err = Console(stderr=True, soft_wrap=True)


@data_app.command("download")
@friendly
def download_command(
    name: Annotated[str, typer.Argument(help="Dataset: ml-32m, ml-20m, ml-1m or ml-latest-small.")],
    directory: Annotated[
        Path, typer.Option("--dir", "-d", help="Folder to unzip into; the data lands in DIR/NAME.")
    ] = Path("data"),
    md5: Annotated[str | None, typer.Option(help="Expected md5 of the zip (overrides the recorded one).")] = None,
    force: Annotated[bool, typer.Option(help="Download again even if DIR/NAME exists.")] = False,
    keep_zip: Annotated[bool, typer.Option(help="Keep the .zip after unzipping.")] = False,
) -> None:
    """Download NAME from files.grouplens.org, verify its md5 and unzip it.

    MovieLens data is for research use; cite Harper & Konstan (2015), ACM TiiS 5(4).
    """
    from movierec.data.download import download

    target = download(name, directory, expected_md5=md5, force=force, keep_zip=keep_zip)
    _out.print(f"{name}: ready in {target}")


@data_app.command("synth")
@friendly
def synth_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write ratings/movies/tags/links.csv into.")],
    users: Annotated[int, typer.Option(help="Number of users (each gets ≥ 20 ratings).")] = 200_948,
    movies: Annotated[int, typer.Option(help="Number of movies in movies.csv.")] = 87_585,
    ratings: Annotated[int, typer.Option(help="Exact number of ratings.")] = 32_000_204,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
) -> None:
    """Write a synthetic dataset in the ML-32M CSV layout (defaults: ML-32M's sizes)."""
    from movierec.data.synth import synthesize

    start = time.perf_counter()
    with _err.status("synthesising") as status:
        synthesize(out, users=users, movies=movies, ratings=ratings, seed=seed, on_stage=status.update)
    _out.print(
        f"wrote {out}: {users:,} users, {movies:,} movies, {ratings:,} ratings ({time.perf_counter() - start:.1f} s)"
    )


@data_app.command("prepare")
@friendly
def prepare_command(
    source: Annotated[
        Path,
        typer.Option(
            "--source",
            "-s",
            help="Dataset folder: ML-32M/20M/latest CSVs (ratings.csv), ML-1M (ratings.dat) or the gSASRec "
            "ML-1M split (train/input.txt).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Prepared folder to write.")],
    val_users: Annotated[int, typer.Option(help="Validation users, sampled among users with ≥ 3 ratings.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed of the validation sample.")] = 42,
    titles: Annotated[
        Path | None,
        typer.Option(help="gSASRec split only: ML-1M movies.dat (or its folder) for titles and genres."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress of each stage.")] = True,
) -> None:
    """Prepare a dataset for training: dense ids, time-ordered histories, leave-one-out split."""
    from movierec.data.prepare import prepare
    from movierec.data.prepared import load_prepared

    start = time.perf_counter()
    prepare(source, out, val_users=val_users, seed=seed, progress=progress, titles=titles)
    counts = load_prepared(out).manifest["counts"]
    _out.print(
        f"prepared {out}: {counts['users']:,} users, {counts['items']:,} items, "
        f"{counts['interactions']:,} interactions, {counts['val_users']:,} validation / "
        f"{counts['test_users']:,} test users ({time.perf_counter() - start:.1f} s)"
    )
