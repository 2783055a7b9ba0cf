"""Versioned index folders: build into DIR/<version>/, point DIR/CURRENT at it, load it, hot-swap it.

    DIR/CURRENT                    name of the version to serve (replaced atomically: temp file + os.replace)
    DIR/<version>/index.faiss      the FAISS index
    DIR/<version>/items.parquet    item metadata for filters (the model's item_map)
    DIR/<version>/manifest.json    format, version, kind, params, dim, count, source model, build time,
                                   sha256 of the two files above

A version folder is written under a temporary name and renamed when complete, so a reader never
sees half of one; `load_index` verifies the checksums before trusting a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from movierec.errors import MovierecError
from movierec.index.base import Filters, Hits, IndexFileError, ItemAttributes, content_version, item_vectors
from movierec.index.faiss_index import FaissIndex, FaissParams, Method, build_faiss_index, read_faiss_index
from movierec.model.artifact import ArtifactError, load_artifact, sha256_file
from movierec.model.gsasrec import GSASRec
from movierec.model.padding import pad_histories

FORMAT = "movierec-index/1"
INDEX_FILE, ITEMS_FILE, MANIFEST_FILE, CURRENT_FILE = "index.faiss", "items.parquet", "manifest.json", "CURRENT"


def build_from_model(
    model_dir: str | Path, out: str | Path, method: Method = "flat", params: FaissParams | None = None
) -> str:
    """Index a model artifact's output item embeddings into a new version under `out` and make it current."""
    return build_model_index(model_dir, out, method, params).version


RECALL_K = 10


class RecallTooLow(MovierecError):
    """A new index version finds too few of the exact top-10: it was written but not made CURRENT."""

    def __init__(self, message: str, report: BuildReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class BuildReport:
    """What `build_model_index` did: the `--result-file` of `movierec index build` (and an IndexBuild's status)."""

    version: str
    path: str
    kind: str
    count: int
    dim: int
    build_seconds: float
    recall_at_10: float | None
    published: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def build_model_index(
    model_dir: str | Path,
    out: str | Path,
    method: Method = "flat",
    params: FaissParams | None = None,
    *,
    min_recall: float = 0.0,
    publish: bool = True,
    expected_sha256: str | None = None,
    recall_users: int = 1000,
    seed: int = 0,
) -> BuildReport:
    """Build a new version from a model artifact, measure its recall@10, and make it CURRENT if it is good enough.

    Recall@10 is measured against exact inner-product search over the same vectors, for `recall_users`
    user vectors the model computes from seeded random histories (items drawn by popularity when the
    item map has rating counts). It is written to the version's manifest. A version below `min_recall`
    stays on disk, unpublished, and RecallTooLow is raised; with `publish=False` CURRENT is never moved.
    """
    artifact = load_artifact(model_dir)
    model_sha256 = artifact.manifest["files"]["model.pt"]
    if expected_sha256 and model_sha256 != expected_sha256.lower():
        raise ArtifactError(f"{Path(model_dir) / 'model.pt'}: sha256 {model_sha256[:16]}..., expected "
                            f"{expected_sha256[:16]}... (not the artifact asked for)")
    source = {
        "model_path": str(Path(model_dir).resolve()),
        "model_sha256": model_sha256,
        "model_created": artifact.manifest.get("created"),
    }
    try:
        catalog = ItemAttributes(artifact.items)
    except ValueError as exc:
        raise ArtifactError(f"{Path(model_dir) / 'item_map.parquet'}: {exc}") from None
    queries = sample_user_vectors(artifact.model, artifact.items, recall_users, seed) if recall_users else None
    version = write_version(out, item_vectors(artifact.model), catalog, method, params, source,
                            publish=False, recall_queries=queries)
    manifest = read_manifest(Path(out) / version)
    recall = manifest.get("recall_at_10")
    report = BuildReport(version=version, path=str(Path(out) / version), kind=manifest["kind"], count=manifest["count"],
                         dim=manifest["dim"], build_seconds=manifest["build_seconds"], recall_at_10=recall,
                         published=False)
    if recall is not None and recall < min_recall:
        raise RecallTooLow(f"{report.path}: recall@10 {recall:.4f} is below --min-recall {min_recall:g}; "
                           f"not published (CURRENT unchanged)", report)
    if publish:
        set_current(out, version)
        report = replace(report, published=True)
    return report


def sample_user_vectors(model: GSASRec, items: pa.Table, users: int, seed: int = 0) -> np.ndarray:
    """[users, dim] user vectors of seeded random histories (3 to seq_len items, drawn by popularity if known)."""
    rng = np.random.default_rng(seed)
    num_items = int(model.output_embeddings.shape[0]) - 1
    weights = None
    if "rating_count" in items.column_names and len(items) == num_items:
        counts = np.nan_to_num(items.column("rating_count").to_numpy(zero_copy_only=False).astype(np.float64)) + 1.0
        weights = counts / counts.sum()
    lengths = rng.integers(3, max(4, model.cfg.seq_len + 1), size=users)
    histories = [rng.choice(num_items, size=int(n), p=weights) + 1 for n in lengths]
    model.eval()
    vectors: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, users, 256):
            batch = torch.from_numpy(pad_histories(histories[start:start + 256], model.cfg.seq_len))
            device = model.output_embeddings.device
            vectors.append(model.user_vectors(batch.to(device)).float().cpu().numpy())
    return np.ascontiguousarray(np.concatenate(vectors), dtype=np.float32)


def recall_at_k(index: FaissIndex, vectors: np.ndarray, queries: np.ndarray, k: int = RECALL_K) -> float:
    """Mean share of the exact top-k (inner product over `vectors`) that `index` returns for `queries`."""
    k = min(k, len(vectors))
    scores = queries @ vectors.T
    exact = np.argpartition(-scores, k - 1, axis=1)[:, :k] + 1  # item_idx = row + 1
    found = index.search(queries, k)
    return float(np.mean([len(np.intersect1d(hits.items, row)) / k for hits, row in zip(found, exact)]))


def write_version(
    out: str | Path,
    vectors: np.ndarray,
    catalog: ItemAttributes,
    method: Method = "flat",
    params: FaissParams | None = None,
    source: dict[str, Any] | None = None,
    *,
    publish: bool = True,
    recall_queries: np.ndarray | None = None,
) -> str:
    """Build a FAISS index of `vectors`, write it as out/<version>/, point out/CURRENT at it; returns the version.

    With `recall_queries`, the manifest records recall@10 against exact search for them; with
    `publish=False`, CURRENT is left alone.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params = params or FaissParams()
    created = datetime.now(UTC)
    version = _free_name(out, f"{created:%Y%m%dT%H%M%SZ}-{method}-{content_version(vectors)[:8]}")
    start = time.perf_counter()
    index = build_faiss_index(vectors, catalog, method, params, version)
    build_seconds = time.perf_counter() - start
    recall = None if recall_queries is None else round(recall_at_k(index, vectors, recall_queries), 4)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=out))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; servers may run as another user
        _write_files(staging, index, catalog, {
            "format": FORMAT,
            "version": version,
            "kind": index.kind,
            "method": method,
            "params": asdict(params),
            "dim": index.dim,
            "count": index.size,
            "source": source,
            "build_seconds": round(build_seconds, 3),
            "recall_at_10": recall,
            "created": created.isoformat(timespec="seconds"),
            "versions": {"faiss": faiss.__version__},
        })  # fmt: skip
        os.rename(staging, out / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if publish:
        set_current(out, version)
    return version


def _write_files(folder: Path, index: FaissIndex, catalog: ItemAttributes, manifest: dict[str, Any]) -> None:
    """The index, the item metadata, and the manifest with both files' sha256."""
    index.save(folder / INDEX_FILE)
    pq.write_table(catalog.table, folder / ITEMS_FILE)
    manifest["files"] = {name: sha256_file(folder / name) for name in (INDEX_FILE, ITEMS_FILE)}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def _free_name(out: Path, name: str) -> str:
    candidate, n = name, 1
    while (out / candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def set_current(root: str | Path, version: str) -> None:
    """Atomically make `version` the one `load_index(root)` and `IndexHolder` serve."""
    root = Path(root)
    if not (root / version / MANIFEST_FILE).is_file():
        raise IndexFileError(f"{root / version / MANIFEST_FILE}: not found (no such index version)")
    fd, tmp = tempfile.mkstemp(prefix=".CURRENT-", dir=root)
    os.chmod(tmp, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / CURRENT_FILE)


def current_version(root: str | Path) -> str:
    path = Path(root) / CURRENT_FILE
    if not path.is_file():
        raise IndexFileError(f"{path}: not found (build an index with `movierec index build` first)")
    version = path.read_text().strip()
    if not version or "/" in version or version.startswith("."):
        raise IndexFileError(f"{path}: does not name a version ({version!r})")
    return version


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise IndexFileError(f"{path}: not found")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise IndexFileError(f"{path}: not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise IndexFileError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def load_index(root: str | Path, version: str | None = None, verify: bool = True) -> FaissIndex:
    """Load `version` (default: the one CURRENT names) after checking every file against the manifest."""
    root = Path(root)
    version = version or current_version(root)
    folder = root / version
    manifest = read_manifest(folder)
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise IndexFileError(f"{path}: missing")
        if verify and sha256_file(path) != digest:
            raise IndexFileError(f"{path}: checksum mismatch (file is corrupt or was replaced)")
    catalog = ItemAttributes(pq.read_table(folder / ITEMS_FILE))
    params = FaissParams(**manifest["params"])
    index = read_faiss_index(folder / INDEX_FILE, catalog, manifest["method"], params, version)
    if (index.size, index.dim) != (manifest["count"], manifest["dim"]):
        found, expected = f"{index.size} x {index.dim}", f"{manifest['count']} x {manifest['dim']}"
        raise IndexFileError(f"{folder / INDEX_FILE}: holds {found} vectors, the manifest says {expected}")
    return index


class IndexHolder:
    """The index a server searches, swapped to a new version without disturbing searches in flight.

    A search takes the current index object and uses it to the end; `reload_if_changed` loads the
    new version completely (and verifies it) before replacing the reference, so a search sees the
    old index or the new one, never a half-loaded one. If loading fails the old index stays.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._reload_lock = threading.Lock()
        self._index = load_index(self.root)

    @property
    def index(self) -> FaissIndex:
        return self._index

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        filters: Filters | None = None,
        exclude: list[np.ndarray] | None = None,
    ) -> list[Hits]:
        """`ItemIndex.search` on the index held when the call starts."""
        return self._index.search(vectors, k, filters, exclude)

    def reload_if_changed(self) -> bool:
        """Load and switch to the version CURRENT names if it is not the one held; True if switched."""
        with self._reload_lock:
            version = current_version(self.root)
            if version == self._index.version:
                return False
            self._index = load_index(self.root, version)
            return True
