"""Padding: item index 0 is no item, and histories are padded on the left.

Left padding keeps the most recent item at the last position, so cutting padding off the left of a
batch changes nothing (the model's tests check this). Training, evaluation and serving all pad here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PADDING_IDX = 0  # item_idx 0 is reserved for padding; real items are 1..num_items


def left_pad(sequences: Sequence[np.ndarray], width: int) -> np.ndarray:
    """Stack the last `width` items of each sequence, padded on the left with PADDING_IDX."""
    out = np.full((len(sequences), width), PADDING_IDX, dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = seq[-width:]
        if len(tail):
            out[row, width - len(tail) :] = tail
    return out


def pad_histories(histories: Sequence[np.ndarray], seq_len: int) -> np.ndarray:
    """Histories (oldest first) as one left-padded batch, no wider than the longest one or seq_len."""
    width = max(1, min(seq_len, max((len(h) for h in histories), default=1)))
    return left_pad([np.asarray(h) for h in histories], width)
