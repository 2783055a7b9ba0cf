"""Full-ranking evaluation: one held-out target per user, every item scored, rated items removed."""

from __future__ import annotations

from typing import Any

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


def bootstrap_interval(
    ranks: np.ndarray, metric: str = "ndcg@10", level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of a metric's mean over users (users resampled with replacement)."""
    if not len(ranks):
        return (0.0, 0.0)
    name, _, cutoff = metric.partition("@")
    k = int(cutoff) if cutoff.isdigit() else 0
    if name == "ndcg":
        per_user = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    elif name == "recall":
        per_user = (ranks < k).astype(np.float64)
    else:
        raise ValueError(f"bootstrap_interval: unknown metric {metric!r}")
    rng = np.random.default_rng(seed)
    means = per_user[rng.integers(0, len(per_user), size=(resamples, len(per_user)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return (float(low), float(high))


def summarize_with_intervals(ranks: np.ndarray, level: float = 0.95) -> dict[str, Any]:
    """`summarize` plus a bootstrap interval for each metric: {"ndcg@10_ci": [low, high], ...}."""
    out: dict[str, Any] = dict(summarize(ranks))
    for metric in ("ndcg@10", "recall@1", "recall@10"):
        out[f"{metric}_ci"] = list(bootstrap_interval(ranks, metric, level))
    return out
