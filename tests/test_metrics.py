"""Full-ranking metrics on cases small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from movierec.model.metrics import ndcg_at, recall_at, summarize, target_ranks
from movierec.train.evaluate import mask_seen


def test_hand_computed_case() -> None:
    inf = -np.inf
    scores = np.array(
        [
            [inf, 0.9, 0.8, 0.1, 0.5],  # target 1 is first → rank 0
            [inf, 0.9, 0.8, 0.1, 0.5],  # target 4 is third → rank 2
            [inf, 0.3, 0.3, 0.3, 0.1],  # target 2 ties two others: ties count against it → rank 2
        ]
    )
    ranks = target_ranks(scores, np.array([1, 4, 2]))
    assert ranks.tolist() == [0, 2, 2]
    assert ndcg_at(ranks, 10) == pytest.approx((1 + 2 * (1 / math.log2(4))) / 3)
    assert recall_at(ranks, 1) == pytest.approx(1 / 3)
    assert ndcg_at(ranks, 2) == pytest.approx(1 / 3)
    assert summarize(ranks) == {"ndcg@10": pytest.approx(0.6666667), "recall@1": pytest.approx(1 / 3),
                                "recall@10": 1.0, "users": 3}


def test_seen_items_are_removed_before_ranking() -> None:
    scores = np.array([[5.0, 0.9, 0.8, 0.7]])
    mask_seen(scores, [np.array([1, 2])])
    assert scores[0, 0] == -np.inf and scores[0, 1] == -np.inf and scores[0, 2] == -np.inf
    assert target_ranks(scores, np.array([3])).tolist() == [0]


def test_bootstrap_interval_brackets_the_mean_with_the_expected_width() -> None:
    from movierec.model.metrics import bootstrap_interval, summarize_with_intervals

    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 40, size=512)
    hits = (ranks < 10).astype(float)
    low, high = bootstrap_interval(ranks, "recall@10")
    assert low < hits.mean() < high
    # 512 users: the normal approximation's half-width is 1.96 * sd / sqrt(n)
    assert (high - low) / 2 == pytest.approx(1.96 * hits.std() / math.sqrt(len(hits)), rel=0.15)
    assert bootstrap_interval(np.zeros(50, dtype=int), "ndcg@10") == (1.0, 1.0)  # every target first
    summary = summarize_with_intervals(ranks)
    assert summary["ndcg@10_ci"][0] < summary["ndcg@10"] < summary["ndcg@10_ci"][1]
    assert summary["recall@10_ci"] == [low, high]
    with pytest.raises(ValueError):
        bootstrap_interval(ranks, "mrr@10")
