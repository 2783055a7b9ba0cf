"""Full-ranking evaluation: one held-out target per user, every item scored, rated items removed."""

from __future__ import annotations

import numpy as np


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target among all candidates (ties count against the target).

    scores [U, I] with excluded items set to -inf; targets [U] column indices.
    """
    target_scores = scores[np.arange(len(targets)), targets]
    return (scores >= target_scores[:, None]).sum(axis=1) - 1


def ndcg_at(ranks: np.ndarray, k: int) -> float:
    """With one relevant item, NDCG@k = 1/log2(rank + 2) when rank < k."""
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(gains.mean()) if len(ranks) else 0.0


def recall_at(ranks: np.ndarray, k: int) -> float:
    return float((ranks < k).mean()) if len(ranks) else 0.0


def summarize(ranks: np.ndarray) -> dict[str, float]:
    return {
        "ndcg@10": ndcg_at(ranks, 10),
        "recall@1": recall_at(ranks, 1),
        "recall@10": recall_at(ranks, 10),
        "users": int(len(ranks)),
    }
