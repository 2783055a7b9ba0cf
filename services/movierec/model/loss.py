"""gBCE: binary cross-entropy with k sampled negatives, calibrated by t (gSASRec, RecSys 2023).

With k negatives sampled uniformly from the |I| - 1 non-target items, the sampling rate is
alpha = k / (|I| - 1) and the positive's probability is raised to the power
beta = alpha * (t * (1 - 1/alpha) + 1/alpha). t = 0 gives beta = 1 (plain BCE); t = 1 gives
beta = alpha, which fully corrects the overconfidence that negative sampling induces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gbce_beta(num_items: int, negatives: int, t: float) -> float:
    alpha = negatives / (num_items - 1)
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def gbce_loss(
    pos_logits: torch.Tensor,
    neg_logits: torch.Tensor,
    beta: float,
    valid: torch.Tensor | None = None,
    neg_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean gBCE over valid positions and their k negatives.

    pos_logits [...], neg_logits [..., k]; `valid` masks positions (padding), `neg_valid` masks
    individual negatives (a sampled negative that equals the positive is not a negative).
    Like the reference, the sum is divided by the number of (position, candidate) pairs.
    """
    pos = beta * F.softplus(-pos_logits)
    neg = F.softplus(neg_logits).sum(-1)
    if neg_valid is not None:  # subtract the few masked-out negatives rather than multiply by a mask
        dropped = (~neg_valid).expand_as(neg_logits).nonzero(as_tuple=True)
        neg = neg.index_put(dropped[:-1], -F.softplus(neg_logits[dropped]), accumulate=True)
    per_position = pos + neg
    k1 = neg_logits.shape[-1] + 1
    if valid is None:
        return per_position.mean() / k1
    valid = valid.to(per_position.dtype)
    return (per_position * valid).sum() / (valid.sum().clamp_min(1) * k1)
