"""Training batches: left-padded windows of users' training sequences, and uniform negatives."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from movierec.data.prepared import PreparedData
from movierec.model.padding import left_pad


class TrainBatches:
    """Yields [B, N + 1] arrays (input = [:, :-1], labels = [:, 1:]), N <= seq_len.

    Users with fewer than two training items have no (input, label) pair and are skipped.
    With `bucket=True` users of similar length share a batch, so most batches are much shorter
    than seq_len (same loss, less padding to push through attention). Sequences longer than the
    window are cut at a random point (`crop="random"`) or keep their most recent items
    (`crop="last"`, as the reference does).
    """

    def __init__(
        self,
        data: PreparedData,
        batch_size: int,
        seq_len: int,
        seed: int,
        bucket: bool = True,
        crop: str = "last",
    ) -> None:
        if crop not in ("last", "random"):
            raise ValueError(f"crop: expected 'last' or 'random', got {crop!r}")
        self.starts = np.asarray(data.seq_offsets[:-1])
        self.lengths = np.asarray(data.train_len, dtype=np.int64)
        self.items = data.seq_items
        self.users = np.flatnonzero(self.lengths >= 2)
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.bucket, self.crop = bucket, crop

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    @property
    def mean_positions(self) -> float:
        """Trained positions (input and label both items) per batch, averaged over an epoch.

        The loss of every batch is divided by this one constant, so bucketed batches of short
        users do not weigh more per interaction than batches of long ones.
        """
        positions = np.minimum(self.lengths[self.users], self.seq_len + 1) - 1
        return float(positions.sum()) / max(1, len(self))

    def epoch(self, number: int = 0, skip: int = 0, rank: int = 0, world: int = 1) -> Iterator[np.ndarray]:
        """The batches of epoch `number`, a pure function of (seed, number); `skip` resumes mid-epoch.

        With `world` > 1 processes, rank r reads every world-th batch starting at r (the epoch is cut
        to a multiple of `world` so every rank makes the same number of steps); `skip` counts this
        rank's batches.
        """
        rng = np.random.default_rng([self.seed, number])
        users = rng.permutation(self.users)
        if self.bucket:
            # sort by (capped) length with random tie-breaks, batch, then shuffle the batches
            lengths = np.minimum(self.lengths[users], self.seq_len + 1)
            users = users[np.argsort(lengths, kind="stable")]
        batches = [users[i : i + self.batch_size] for i in range(0, len(users), self.batch_size)]
        order = rng.permutation(len(batches))
        crops = rng.integers(0, 2**63 - 1, size=len(batches))
        positions = range(len(batches) - len(batches) % world)[rank::world]
        for position in positions[skip:]:
            yield self.make(batches[order[position]], np.random.default_rng(crops[position]))

    def make(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        window = self.seq_len + 1
        seqs = []
        for u in users:
            start, n = int(self.starts[u]), int(self.lengths[u])
            if n > window and self.crop == "random":
                end = int(rng.integers(window, n + 1))
            else:
                end = n
            seqs.append(self.items[start + max(0, end - window) : start + end])
        width = min(window, max(len(s) for s in seqs))
        return left_pad(seqs, width)
