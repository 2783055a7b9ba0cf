"""The model artifact: a folder the trainer writes and every server reads.

    model.pt            state_dict of GSASRec
    item_map.parquet    item_idx -> movie_id, title, year, genres, rating_count, rating_mean
    manifest.json       format, model config, training config, data manifest, metrics, sha256 of files
    metrics.json        validation curve and final metrics
    training_curve.png  NDCG@10 against minutes, loss against steps
Loaders verify the manifest's checksums before trusting a file.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from movierec.errors import MovierecError
from movierec.model.gsasrec import GSASRec, ModelConfig

FORMAT = "movierec-model/1"
CHECKED_FILES = ("model.pt", "item_map.parquet")


class ArtifactError(MovierecError, ValueError):
    """A model folder is missing, incomplete or corrupt."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Artifact:
    root: Path
    model: GSASRec
    manifest: dict[str, Any]
    items: pa.Table

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def save_artifact(
    out: str | Path,
    model: GSASRec,
    items: pa.Table,
    *,
    train_config: dict[str, Any],
    data_manifest: dict[str, Any],
    metrics: dict[str, Any],
) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "model.pt")
    pq.write_table(items, out / "item_map.parquet")
    manifest = {
        "format": FORMAT,
        "model_config": model.cfg.to_dict(),
        "train_config": train_config,
        "data": {k: data_manifest.get(k) for k in ("source", "counts", "input_checksums", "split", "prepared_path")},
        "metrics": metrics,
        "files": {name: sha256_file(out / name) for name in CHECKED_FILES},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "git_sha": git_sha(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def load_artifact(root: str | Path, verify: bool = True) -> Artifact:
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path}: not found (train a model with `movierec train` first)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for name in CHECKED_FILES:
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing")
        if verify and sha256_file(path) != manifest["files"][name]:
            raise ArtifactError(f"{path}: checksum mismatch (file is corrupt or was replaced)")
    model = GSASRec(ModelConfig(**manifest["model_config"]))
    model.load_state_dict(torch.load(root / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return Artifact(root=root, model=model, manifest=manifest, items=pq.read_table(root / "item_map.parquet"))
