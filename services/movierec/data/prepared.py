"""The prepared-dataset format every other part of movierec reads.

A prepared dataset is a folder:

    manifest.json       format, source, counts, input checksums, split description
    items.parquet       item_idx (1..N, 0 is padding), movie_id, title, year, genres, rating_count, rating_mean
    users.parquet       user_idx (0..U-1), user_id, n_interactions
    seq_offsets.npy     int64 [U+1]   CSR offsets of each user's history
    seq_items.npy       int32 [nnz]   item_idx, oldest first (ties: timestamp, then movieId)
    seq_ratings.npy     float32 [nnz] the rating (NaN when the source has none)
    seq_timestamps.npy  int64 [nnz]   Unix seconds (0 when the source has none)
    train_len.npy       int32 [U]     training input of user u = its first train_len[u] items
    val_users.npy       int32 [V]     validation users: input = history[:-2], target = history[-2]
    test_users.npy      int32 [T]     test users:       input = history[:-1], target = history[-1]

The split is leave-one-out as in the gSASRec paper: the last item is the test target, the
second-to-last is the validation target for a seeded sample of users, and training never sees a
target it is evaluated on. Arrays are memory-mapped on load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from movierec.data.errors import DataError

FORMAT = "movierec-prepared/1"
PADDING_IDX = 0  # item_idx 0 is reserved for padding (the model's PADDING_IDX; data/ does not import model/)

_ARRAYS = ("seq_offsets", "seq_items", "seq_ratings", "seq_timestamps", "train_len", "val_users", "test_users")


class PreparedDataError(DataError):
    """A prepared folder is missing or inconsistent."""


@dataclass
class PreparedData:
    root: Path
    manifest: dict[str, Any]
    seq_offsets: np.ndarray
    seq_items: np.ndarray
    seq_ratings: np.ndarray
    seq_timestamps: np.ndarray
    train_len: np.ndarray
    val_users: np.ndarray
    test_users: np.ndarray
    _items: pa.Table | None = field(default=None, repr=False)
    _users: pa.Table | None = field(default=None, repr=False)

    @property
    def num_users(self) -> int:
        return len(self.seq_offsets) - 1

    @property
    def num_items(self) -> int:
        """Real items; item_idx runs 1..num_items."""
        return int(self.manifest["counts"]["items"])

    @property
    def items(self) -> pa.Table:
        if self._items is None:
            self._items = pq.read_table(self.root / "items.parquet")
        return self._items

    @property
    def users(self) -> pa.Table:
        if self._users is None:
            self._users = pq.read_table(self.root / "users.parquet")
        return self._users

    def history(self, user_idx: int) -> np.ndarray:
        return self.seq_items[self.seq_offsets[user_idx] : self.seq_offsets[user_idx + 1]]

    def train_sequence(self, user_idx: int) -> np.ndarray:
        start = self.seq_offsets[user_idx]
        return self.seq_items[start : start + self.train_len[user_idx]]

    def eval_pairs(self, part: str) -> tuple[list[np.ndarray], np.ndarray]:
        """Inputs (oldest first) and targets for `val` or `test` users."""
        if part not in ("val", "test"):
            raise ValueError(f"part: expected 'val' or 'test', got {part!r}")
        users = self.val_users if part == "val" else self.test_users
        cut = 2 if part == "val" else 1
        inputs, targets = [], np.empty(len(users), dtype=np.int64)
        for i, u in enumerate(users):
            h = self.history(int(u))
            inputs.append(h[: len(h) - cut])
            targets[i] = h[len(h) - cut]
        return inputs, targets

    def user_index(self) -> dict[int, int]:
        """MovieLens userId -> user_idx."""
        ids = self.users.column("user_id").to_numpy()
        return {int(u): i for i, u in enumerate(ids)}


def load_prepared(root: str | Path) -> PreparedData:
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise PreparedDataError(f"{manifest_path}: not found (run `movierec data prepare` first)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise PreparedDataError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    arrays = {}
    for name in _ARRAYS:
        path = root / f"{name}.npy"
        if not path.is_file():
            raise PreparedDataError(f"{path}: not found (prepared folder is incomplete)")
        arrays[name] = np.load(path, mmap_mode="r")
    data = PreparedData(root=root, manifest=manifest, **arrays)
    if data.seq_offsets[-1] != len(data.seq_items):
        raise PreparedDataError(f"{root}: seq_offsets does not match seq_items")
    return data


def write_prepared(
    out: str | Path,
    *,
    seq_offsets: np.ndarray,
    seq_items: np.ndarray,
    seq_ratings: np.ndarray,
    seq_timestamps: np.ndarray,
    train_len: np.ndarray,
    val_users: np.ndarray,
    test_users: np.ndarray,
    items: pa.Table,
    users: pa.Table,
    manifest: dict[str, Any],
) -> Path:
    """Write a prepared folder. `manifest` gets `format` and `counts` filled in."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "seq_offsets": np.asarray(seq_offsets, dtype=np.int64),
        "seq_items": np.asarray(seq_items, dtype=np.int32),
        "seq_ratings": np.asarray(seq_ratings, dtype=np.float32),
        "seq_timestamps": np.asarray(seq_timestamps, dtype=np.int64),
        "train_len": np.asarray(train_len, dtype=np.int32),
        "val_users": np.asarray(val_users, dtype=np.int32),
        "test_users": np.asarray(test_users, dtype=np.int32),
    }
    for name, arr in arrays.items():
        np.save(out / f"{name}.npy", arr)
    pq.write_table(items, out / "items.parquet")
    pq.write_table(users, out / "users.parquet")
    manifest = {
        "format": FORMAT,
        **manifest,
        "counts": {
            "users": int(len(arrays["seq_offsets"]) - 1),
            "items": int(items.num_rows),
            "interactions": int(len(arrays["seq_items"])),
            "val_users": int(len(arrays["val_users"])),
            "test_users": int(len(arrays["test_users"])),
        },
        "padding_item_idx": PADDING_IDX,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
