"""`movierec index build | info`: versioned FAISS indexes of a model's item embeddings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from movierec.cli.errors import UsageError, friendly
from movierec.errors import MovierecError
from movierec.settings import Settings

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
    ivf_lists: Annotated[int | None, typer.Option(min=1, help="ivf: lists (default about sqrt of the items).")] = None,
    ivf_probe: Annotated[int, typer.Option(min=1, help="ivf: lists scanned per query.")] = 32,
    hnsw_m: Annotated[int, typer.Option(min=2, help="hnsw: graph degree M.")] = 32,
    hnsw_ef_construction: Annotated[int, typer.Option(min=1, help="hnsw: candidates kept while building.")] = 64,
    hnsw_ef_search: Annotated[int, typer.Option(min=1, help="hnsw: candidates kept while searching.")] = 128,
    min_recall: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Recall@10 against exact search the new version needs to become CURRENT; below it "
        "the version is kept unpublished and the command fails (exit 2).")] = 0.0,
    publish: Annotated[bool, typer.Option(
        "--publish/--no-publish", help="Make the new version CURRENT (served by every API replica).")] = True,
    expected_sha256: Annotated[str | None, typer.Option(
        help="Fail unless the model's model.pt has this sha256 (the artifact you meant).")] = None,
    qdrant_sync: Annotated[bool, typer.Option(
        "--qdrant-sync", help="Also upload the item vectors to the Qdrant server at QDRANT_HOST.")] = False,
    recall_users: Annotated[int, typer.Option(
        min=0, help="User vectors (seeded random histories) recall@10 is measured on; 0: not measured.")] = 1000,
    result_file: Annotated[Path | None, typer.Option(
        help="Write the result as JSON here (version, path, kind, count, dim, build_seconds, recall_at_10, "
        "published; or error): a Kubernetes Job passes /dev/termination-log.")] = None,
) -> None:
    """Index the model's output item embeddings into OUT/<version>/, measure recall@10, point OUT/CURRENT at it.

    A server holding the index (IndexHolder) switches to the new version on its next reload check.
    """
    from movierec.index.faiss_index import FaissParams
    from movierec.index.versions import RecallTooLow, build_model_index

    params = FaissParams(ivf_lists=ivf_lists, ivf_probe=ivf_probe, hnsw_m=hnsw_m,
                         hnsw_ef_construction=hnsw_ef_construction, hnsw_ef_search=hnsw_ef_search)
    try:
        if qdrant_sync and not Settings().qdrant_host:
            raise UsageError("--qdrant-sync: QDRANT_HOST is not set (no Qdrant server to sync to)")
        report = build_model_index(model, out, kind, params, min_recall=min_recall, publish=publish,
                                   expected_sha256=expected_sha256, recall_users=recall_users)
        if qdrant_sync:
            _sync_qdrant(model, Settings())
    except RecallTooLow as exc:
        _write_result(result_file, {**exc.report.to_json(), "error": str(exc)})
        raise
    except MovierecError as exc:
        _write_result(result_file, {"error": str(exc)})
        raise
    _write_result(result_file, report.to_json())
    recall = "not measured" if report.recall_at_10 is None else f"{report.recall_at_10:.4f}"
    where = "now CURRENT" if report.published else "not published: CURRENT unchanged"
    _out.print(f"built {report.kind} index of {report.count:,} items x {report.dim} in {report.build_seconds:.2f} s, "
               f"recall@10 {recall}: {report.path} ({where})")


def _write_result(path: Path | None, result: dict[str, object]) -> None:
    if path is not None:
        path.write_text(json.dumps(result) + "\n")


def _sync_qdrant(model: Path, settings: Settings) -> None:
    """The model's item vectors into the Qdrant server's collection (reused when it already holds them)."""
    from qdrant_client import QdrantClient

    from movierec.index.base import ItemAttributes, item_vectors
    from movierec.index.qdrant_index import server_collection
    from movierec.model.artifact import load_artifact

    artifact = load_artifact(model)
    try:
        client = QdrantClient(host=settings.qdrant_host, port=settings.qdrant_port, timeout=10)
        collection = server_collection(client, item_vectors(artifact.model), ItemAttributes(artifact.items))
    except Exception as exc:  # the server's client raises many kinds; one line says which server failed
        raise UsageError(f"--qdrant-sync: Qdrant at {settings.qdrant_host}:{settings.qdrant_port}: {exc}") from exc
    _out.print(f"synced {collection.size:,} item vectors to Qdrant at {settings.qdrant_host}:{settings.qdrant_port}")


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
