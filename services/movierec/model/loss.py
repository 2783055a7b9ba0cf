"""Training objectives for next-item prediction: gBCE, full softmax (CE) and sampled softmax.

Every loss here returns a *sum over positions divided by `norm`*. The trainer passes one constant
`norm` for the whole run (the mean number of valid positions per batch), so a length-bucketed
batch of short users weighs what its interactions are worth and every interaction counts the same.
Without `norm` the sum is divided by the number of valid positions of this batch (a plain mean).

* gBCE (gSASRec, RecSys 2023): binary cross-entropy with k sampled negatives, calibrated by t.
  With k negatives sampled uniformly from the |I| - 1 non-target items, the sampling rate is
  alpha = k / (|I| - 1) and the positive's probability is raised to the power
  beta = alpha * (t * (1 - 1/alpha) + 1/alpha). t = 0 gives beta = 1 (plain BCE, SASRec with k = 1);
  t = 1 gives beta = alpha, which fully corrects the overconfidence that negative sampling induces.
* CE (SASRec+, Klenitskiy & Vasilev, RecSys 2023): softmax over the whole catalog. Best quality per
  step; one [positions, |I|] GEMM per step, so it suits catalogs up to some tens of thousands of items.
* sampled softmax: the softmax over the target and a pool of sampled negatives (for a big catalog:
  thousands shared by the whole batch, scored by one GEMM). Negatives equal to the target are masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gbce_beta(num_items: int, negatives: int, t: float) -> float:
    alpha = negatives / (num_items - 1)
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def _normalise(per_position: torch.Tensor, valid: torch.Tensor | None, norm: float | None) -> torch.Tensor:
    if valid is not None:
        per_position = per_position * valid.to(per_position.dtype)
    if norm is not None:
        return per_position.sum() / norm
    return per_position.sum() / (valid.sum().clamp_min(1) if valid is not None else per_position.numel())


def gbce_loss(
    pos_logits: torch.Tensor,
    neg_logits: torch.Tensor,
    beta: float,
    valid: torch.Tensor | None = None,
    neg_valid: torch.Tensor | None = None,
    norm: float | None = None,
) -> torch.Tensor:
    """gBCE over positions and their k negatives.

    pos_logits [...], neg_logits [..., k]; `valid` masks positions (padding), `neg_valid` masks
    individual negatives (a sampled negative that equals the positive is not a negative; any shape
    that broadcasts to neg_logits). Like the reference, each position's sum is divided by k + 1
    (the number of candidates); then positions are summed and divided by `norm` (default: their count).
    """
    pos = beta * F.softplus(-pos_logits)
    neg = F.softplus(neg_logits).sum(-1)
    if neg_valid is not None:  # subtract the few masked-out negatives rather than multiply by a mask
        dropped = (~neg_valid).expand_as(neg_logits).nonzero(as_tuple=True)
        neg = neg.index_put(dropped[:-1], -F.softplus(neg_logits[dropped]), accumulate=True)
    k1 = neg_logits.shape[-1] + 1
    return _normalise(pos + neg, valid, norm) / k1


def softmax_loss(
    pos_logits: torch.Tensor,
    neg_logits: torch.Tensor,
    valid: torch.Tensor | None = None,
    neg_valid: torch.Tensor | None = None,
    norm: float | None = None,
) -> torch.Tensor:
    """Sampled softmax: -log(e^s+ / (e^s+ + Σ e^s-)) per position, masked negatives left out.

    Shapes as in `gbce_loss`. With uniform negatives the logQ correction is one constant for every
    candidate and cancels, so none is applied.
    """
    if neg_valid is not None:
        neg_logits = neg_logits.masked_fill(~neg_valid, float("-inf"))
    logits = torch.cat([pos_logits.unsqueeze(-1), neg_logits], -1)
    return _normalise(torch.logsumexp(logits, -1) - pos_logits, valid, norm)


def ce_loss(logits: torch.Tensor, targets: torch.Tensor, norm: float | None = None) -> torch.Tensor:
    """Full softmax cross-entropy: logits [M, C] over every candidate, targets [M] column indices."""
    total = F.cross_entropy(logits, targets, reduction="sum")
    return total / (norm if norm is not None else max(1, targets.numel()))
