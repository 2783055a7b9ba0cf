"""In-process gSASRec inference: histories in, top-k items out.

The one place where a user's history becomes scores; the CLI, the API and the TorchServe
handler all call it, so every serving path ranks identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from movierec.data.prepared import PADDING_IDX
from movierec.model.gsasrec import GSASRec
from movierec.train.batches import left_pad


@dataclass(frozen=True)
class TopK:
    items: np.ndarray  # [U, k] item_idx, best first
    scores: np.ndarray  # [U, k] float32


@torch.no_grad()
def user_vectors(model: GSASRec, histories: Sequence[np.ndarray]) -> torch.Tensor:
    """[U, dim] query vectors for histories of item_idx (oldest first; the last seq_len items count)."""
    width = max(1, min(model.cfg.seq_len, max((len(h) for h in histories), default=1)))
    items = torch.from_numpy(left_pad([np.asarray(h) for h in histories], width))
    return model.user_vectors(items.to(model.output_embeddings.device))


@torch.no_grad()
def top_k(
    model: GSASRec,
    histories: Sequence[np.ndarray],
    k: int,
    exclude_seen: bool = True,
    exclude: Sequence[np.ndarray] | None = None,
) -> TopK:
    """Exact top-k over every item by inner product with the output embeddings.

    Padding is never returned; with `exclude_seen` the items in each history are removed, and
    `exclude[u]` removes more item_idx for user u.
    """
    vectors = user_vectors(model, histories)
    scores = vectors @ model.output_embeddings.T
    scores[:, PADDING_IDX] = -torch.inf
    for row in range(len(histories)):
        drop = []
        if exclude_seen and len(histories[row]):
            drop.append(np.asarray(histories[row], dtype=np.int64))
        if exclude is not None and len(exclude[row]):
            drop.append(np.asarray(exclude[row], dtype=np.int64))
        if drop:
            scores[row, torch.from_numpy(np.concatenate(drop))] = -torch.inf
    k = min(k, scores.shape[1] - 1)
    values, indices = torch.topk(scores, k, dim=1)
    return TopK(items=indices.cpu().numpy(), scores=values.float().cpu().numpy())
