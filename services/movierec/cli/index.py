"""`movierec index build | info`: versioned FAISS indexes of a model's item embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from movierec.cli.errors import friendly

index_app = typer.Typer(
    help="Top-k item retrieval: build versioned FAISS indexes of a model's item embeddings and inspect them.",
    no_args_is_help=True,
)
_out = Console(soft_wrap=True)

IndexDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Index folder: versions go in OUT/<version>/.")]


@index_app.command("build")
@friendly
def build_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model folder written by `movierec train`.")],
    out: IndexDirOpt,
    kind: Annotated[
        Literal["flat", "ivf", "hnsw"], typer.Option(help="flat (exact inner product), ivf or hnsw (approximate).")
    ] = "flat",
) -> None:
    """Index the model's output item embeddings into OUT/<version>/ and point OUT/CURRENT at it.

    A server holding the index (IndexHolder) switches to the new version on its next reload check.
    """
    from movierec.index.versions import build_from_model, load_index

    version = build_from_model(model, out, kind)
    index = load_index(out, version)
    _out.print(f"built {index.kind} index of {index.size:,} items x {index.dim}: {out / version} (now CURRENT)")


@index_app.command("info")
@friendly
def info_command(
    out: Annotated[Path, typer.Argument(help="Index folder (the --out of `movierec index build`).")],
) -> None:
    """List the versions in an index folder; the CURRENT one is loaded and its checksums verified."""
    from movierec.index.versions import MANIFEST_FILE, current_version, load_index, read_manifest

    current = current_version(out)
    load_index(out, current)
    manifests = [read_manifest(path.parent) for path in sorted(out.glob(f"*/{MANIFEST_FILE}"))]
    _out.print(f"{out}: CURRENT = {current} (checksums ok)")
    for manifest in manifests:
        source = manifest.get("source") or {}
        _out.print(
            f"{'*' if manifest['version'] == current else ' '} {manifest['version']}  {manifest['kind']}  "
            f"{manifest['count']:,} items x {manifest['dim']}  built in {manifest['build_seconds']:.2f} s  "
            f"{manifest['created']}  model sha256 {(source.get('model_sha256') or '-')[:12]}"
        )
