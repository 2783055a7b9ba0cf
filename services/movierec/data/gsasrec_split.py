"""Reader for the gSASRec preprocessed ML-1M split (``asash/gSASRec-pytorch`` ``datasets/ml1m``).

The folder holds one line per user, items as space-separated ids 1..num_items, oldest first:

    dataset_stats.json                 {"num_users": 6040, "num_items": 3416, "num_interactions": 999611}
    train/input.txt                    every user: history[:-2], or history[:-3] for validation users
    val/input.txt, val/output.txt      the validation users only: history[:-2] and history[-2]
    test/output.txt                    every user: history[-1]
    mapping/sas_to_original_items.txt  "sas_id MovieID" (optional; joins items to ML-1M movies.dat)

`test/input.txt` is not part of this copy, so the second-to-last item of a non-validation user is
unknown. :func:`gsasrec_histories` therefore rebuilds full histories only for the validation users
(``val_input + [val_output, test_output]``) and keeps the training line as the history of everyone
else; the validation users are also the test users.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from movierec.data.errors import DataError

log = logging.getLogger(__name__)

FORMAT = "gsasrec-split"
TRAIN_INPUT = "train/input.txt"
VAL_INPUT = "val/input.txt"
VAL_OUTPUT = "val/output.txt"
TEST_OUTPUT = "test/output.txt"
STATS = "dataset_stats.json"
ITEM_MAPPING = "mapping/sas_to_original_items.txt"


@dataclass(frozen=True)
class Lines:
    """A file of space-separated item ids: line i holds values[offsets[i]:offsets[i+1]]."""

    path: Path
    offsets: np.ndarray  # int64 [lines + 1]
    values: np.ndarray  # int32 [tokens]
    text: list[bytes]  # the lines themselves (whitespace-normalised), for matching

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def line(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class GsasrecSplit:
    """The parsed split; val_users are 0-based line numbers of train/input.txt."""

    root: Path
    num_users: int
    num_items: int
    num_interactions: int
    train: Lines
    val_input: Lines
    val_output: np.ndarray  # int32 [V]
    test_output: np.ndarray  # int32 [num_users]
    val_users: np.ndarray  # int32 [V], the train line each validation line continues
    movie_ids: np.ndarray | None  # int32 [num_items + 1], movie_ids[sas_id] = ML-1M MovieID (0 unused)

    @property
    def files(self) -> list[Path]:
        """Every input file read, for checksums."""
        names = [STATS, TRAIN_INPUT, VAL_INPUT, VAL_OUTPUT, TEST_OUTPUT]
        if self.movie_ids is not None:
            names.append(ITEM_MAPPING)
        return [self.root / n for n in names]


def is_gsasrec_split(root: str | Path) -> bool:
    """True when `root` looks like the gSASRec split (has train/input.txt and dataset_stats.json)."""
    root = Path(root)
    return (root / TRAIN_INPUT).is_file() and (root / STATS).is_file()


def read_gsasrec_split(root: str | Path) -> GsasrecSplit:
    """Parse and cross-check the split; DataError names the file (and line) of any inconsistency."""
    root = Path(root)
    num_users, num_items, num_interactions = _read_stats(root / STATS)
    train = read_lines(root / TRAIN_INPUT, num_items)
    val_input = read_lines(root / VAL_INPUT, num_items)
    val_output = _read_single_column(root / VAL_OUTPUT, num_items)
    test_output = _read_single_column(root / TEST_OUTPUT, num_items)
    if len(train) != num_users:
        raise DataError(f"{len(train)} lines, but {STATS} says num_users={num_users}", path=train.path)
    if len(test_output) != num_users:
        raise DataError(f"{len(test_output)} lines, expected one per user ({num_users})", path=root / TEST_OUTPUT)
    if len(val_output) != len(val_input):
        raise DataError(f"{len(val_output)} lines, but {VAL_INPUT} has {len(val_input)}", path=root / VAL_OUTPUT)
    val_users = _match_val_to_train(train, val_input)
    total = len(train.values) + 2 * num_users + len(val_users)
    if total != num_interactions:
        raise DataError(
            f"num_interactions={num_interactions}, but the split files hold {total} "
            f"(train tokens + 2 per user + 1 per validation user)",
            path=root / STATS,
        )
    movie_ids = _read_item_mapping(root / ITEM_MAPPING, num_items)
    return GsasrecSplit(
        root=root,
        num_users=num_users,
        num_items=num_items,
        num_interactions=num_interactions,
        train=train,
        val_input=val_input,
        val_output=val_output,
        test_output=test_output,
        val_users=val_users,
        movie_ids=movie_ids,
    )


def gsasrec_histories(split: GsasrecSplit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seq_offsets int64 [U+1], seq_items int32, train_len int32 [U]) in the prepared layout.

    Validation user u: history = val_input + [val_output, test_output[u]], train_len = len - 3.
    Every other user: history = its train line, train_len = len (its held-out items are unknown).
    """
    lengths = split.train.lengths.copy()
    lengths[split.val_users] += 3
    offsets = np.zeros(split.num_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = np.empty(int(offsets[-1]), dtype=np.int32)
    train_len = split.train.lengths.astype(np.int32)
    # Copy every train line into place, then append the three held-out items of validation users.
    starts = offsets[:-1]
    dest = np.repeat(starts - split.train.offsets[:-1], split.train.lengths) + np.arange(len(split.train.values))
    items[dest] = split.train.values
    for j, u in enumerate(split.val_users.tolist()):
        end = offsets[u + 1]
        items[end - 3] = split.val_input.line(j)[-1]
        items[end - 2] = split.val_output[j]
        items[end - 1] = split.test_output[u]
    return offsets, items, train_len


# --------------------------------------------------------------------------------------------
# File parsing
# --------------------------------------------------------------------------------------------


def _read_stats(path: Path) -> tuple[int, int, int]:
    if not path.is_file():
        raise DataError("file not found", path=path)
    try:
        stats = json.loads(path.read_text())
        return int(stats["num_users"]), int(stats["num_items"]), int(stats["num_interactions"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"expected JSON with num_users, num_items, num_interactions ({exc})", path=path) from None


def read_lines(path: Path, num_items: int) -> Lines:
    """Parse a file of space-separated item ids in 1..num_items, one user per line."""
    if not path.is_file():
        raise DataError("file not found", path=path)
    data = path.read_bytes()
    text = data.replace(b"\r\n", b"\n").split(b"\n")
    if text and text[-1].strip() == b"":
        text.pop()
    text = [b" ".join(line.split()) for line in text]
    lengths = np.fromiter((0 if not line else line.count(b" ") + 1 for line in text), dtype=np.int64, count=len(text))
    try:
        values = np.array(data.split(), dtype=np.int64)
    except ValueError:
        line, token = _first_bad_token(text)
        raise DataError(f"{token!r} is not an integer item id", path=path, line=line) from None
    bad = np.flatnonzero((values < 1) | (values > num_items))
    if len(bad):
        offsets = np.cumsum(lengths)
        line = int(np.searchsorted(offsets, bad[0], side="right")) + 1
        raise DataError(f"item id {values[bad[0]]} is outside 1..{num_items}", path=path, line=line)
    offsets = np.zeros(len(text) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Lines(path=path, offsets=offsets, values=values.astype(np.int32), text=text)


def _first_bad_token(text: list[bytes]) -> tuple[int, bytes]:
    for number, line in enumerate(text, start=1):
        for token in line.split():
            if not token.isdigit():
                return number, token
    return 0, b""  # pragma: no cover


def _read_single_column(path: Path, num_items: int) -> np.ndarray:
    lines = read_lines(path, num_items)
    wrong = np.flatnonzero(lines.lengths != 1)
    if len(wrong):
        raise DataError(f"expected one item id, got {lines.lengths[wrong[0]]}", path=path, line=int(wrong[0]) + 1)
    return lines.values


def _match_val_to_train(train: Lines, val_input: Lines) -> np.ndarray:
    """The train line of each validation line: train line == val_input[:-1] (users keep their order)."""
    by_text: dict[bytes, list[int]] = {}
    for i, line in enumerate(train.text):
        by_text.setdefault(line, []).append(i)
    users = np.empty(len(val_input), dtype=np.int32)
    for j, line in enumerate(val_input.text):
        prefix = line.rsplit(b" ", 1)[0] if b" " in line else b""
        candidates = by_text.get(prefix)
        if not candidates:
            raise DataError(
                "no line of train/input.txt equals this line without its last item", path=val_input.path, line=j + 1
            )
        users[j] = candidates.pop(0)
    if len(np.unique(users)) != len(users):  # pragma: no cover - pop() makes matches unique
        raise DataError("two validation lines match the same training line", path=val_input.path)
    return users


def _read_item_mapping(path: Path, num_items: int) -> np.ndarray | None:
    """movie_ids[sas_id] = original MovieID, or None when the mapping file is absent."""
    if not path.is_file():
        log.warning("%s: not found; items.parquet will have no movie_id, title or genres", path)
        return None
    try:
        pairs = np.array(path.read_bytes().split(), dtype=np.int64).reshape(-1, 2)
    except ValueError:
        raise DataError("expected lines 'sas_id MovieID'", path=path) from None
    movie_ids = np.zeros(num_items + 1, dtype=np.int32)
    sas = pairs[:, 0]
    if sas.min() < 1 or sas.max() > num_items or len(np.unique(sas)) != len(sas) or len(sas) != num_items:
        raise DataError(f"expected each sas_id 1..{num_items} exactly once", path=path)
    movie_ids[sas] = pairs[:, 1]
    return movie_ids
