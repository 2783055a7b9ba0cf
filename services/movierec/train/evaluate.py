"""Offline evaluation by full ranking: every item is scored, items the user rated are removed."""

from __future__ import annotations

import numpy as np
import torch

from movierec.data.prepared import PreparedData
from movierec.model.gsasrec import GSASRec
from movierec.model.metrics import summarize, summarize_with_intervals, target_ranks
from movierec.model.padding import PADDING_IDX, pad_histories


def mask_seen(scores: np.ndarray, histories: list[np.ndarray]) -> None:
    """Set padding and every item in each user's history to -inf, in place."""
    scores[:, PADDING_IDX] = -np.inf
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    if len(rows):
        scores[rows, np.concatenate(histories)] = -np.inf


@torch.no_grad()
def model_scores(model: GSASRec, histories: list[np.ndarray]) -> np.ndarray:
    """Scores over all items [U, num_items + 1] for histories (oldest first)."""
    was_training = model.training
    model.eval()
    items = torch.from_numpy(pad_histories(histories, model.cfg.seq_len))
    scores = (model.user_vectors(items) @ model.output_embeddings.T).float().numpy()
    model.train(was_training)
    return scores


def rank_targets(
    score_fn, histories: list[np.ndarray], targets: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    ranks = []
    for i in range(0, len(histories), batch_size):
        h = histories[i : i + batch_size]
        scores = score_fn(h)
        mask_seen(scores, h)
        ranks.append(target_ranks(scores, targets[i : i + batch_size]))
    return np.concatenate(ranks) if ranks else np.empty(0, dtype=np.int64)


def model_ranks(model: GSASRec, data: PreparedData, part: str = "val") -> np.ndarray:
    histories, targets = data.eval_pairs(part)
    return rank_targets(lambda h: model_scores(model, h), histories, targets)


def evaluate_model(model: GSASRec, data: PreparedData, part: str = "val", intervals: bool = False) -> dict:
    """NDCG@10, Recall@1/10 by full ranking; with `intervals`, a 95 % bootstrap interval for each."""
    ranks = model_ranks(model, data, part)
    return summarize_with_intervals(ranks) if intervals else summarize(ranks)


def popularity_counts(data: PreparedData) -> np.ndarray:
    """How often each item occurs in the training sequences: [num_items + 1]."""
    starts = np.asarray(data.seq_offsets[:-1])
    lengths = np.asarray(data.train_len, dtype=np.int64)
    idx = np.repeat(starts, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    return np.bincount(np.asarray(data.seq_items)[idx], minlength=data.num_items + 1).astype(np.float32)


def evaluate_popularity(data: PreparedData, part: str = "val", intervals: bool = False) -> dict:
    histories, targets = data.eval_pairs(part)
    counts = popularity_counts(data)
    # ties among equally popular items are broken by item_idx so the baseline is deterministic
    base = counts + np.linspace(0, 0.5, len(counts), dtype=np.float64)[::-1]
    ranks = rank_targets(lambda h: np.tile(base, (len(h), 1)), histories, targets)
    return summarize_with_intervals(ranks) if intervals else summarize(ranks)
