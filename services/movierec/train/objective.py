"""The training objective as a module: the model plus its loss, so DDP wraps one forward.

    loss = Objective(model, "ce")(batch, norm)

`batch` is [B, N + 1] (inputs = [:, :-1], labels = [:, 1:]), left-padded. A position is trained
only when its *input* is an item: where the input is padding the label is the user's first item,
and predicting it from nothing teaches popularity (and LayerNorm of an all-zero row multiplies
its gradient by 1/sqrt(eps)). `norm` is the constant that sums are divided by (see model/loss.py).

Losses (`loss`):
  gbce             gBCE with `negatives` uniform negatives (the gSASRec paper's objective)
  ce               softmax over the whole catalog (SASRec+); `negatives` is not used
  sampled-softmax  softmax over the target and `negatives` uniform negatives
Where negatives are drawn (`sharing`), for gbce and sampled-softmax:
  sequence  k per sequence, shared by its positions: one batched GEMM [B, N, d] x [B, d, k]
  position  k per position, as the reference does (for small catalogs scored through the full logits)
  batch     one pool of k for the whole batch: one GEMM [positions, d] x [d, k]; use thousands
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from movierec.model.gsasrec import GSASRec
from movierec.model.loss import ce_loss, gbce_beta, gbce_loss, softmax_loss
from movierec.model.padding import PADDING_IDX

LOSSES = ("gbce", "ce", "sampled-softmax")
SHARING = ("sequence", "position", "batch")


class Objective(nn.Module):
    def __init__(
        self, model: GSASRec, loss: str = "gbce", negatives: int = 256, sharing: str = "sequence", gbce_t: float = 0.75
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
        if sharing not in SHARING:
            raise ValueError(f"negative sharing: expected one of {', '.join(SHARING)}, got {sharing!r}")
        if loss != "ce" and negatives < 1:
            raise ValueError(f"negatives: must be at least 1, got {negatives}")
        self.model, self.loss, self.negatives, self.sharing = model, loss, negatives, sharing
        self.num_items = model.cfg.num_items
        self.beta = gbce_beta(self.num_items, negatives, gbce_t) if loss == "gbce" else 1.0
        # per-position negatives, small catalog: all logits [M, |I|] cost less than gathering [M, k, d]
        self.score_all = self.num_items * 8 < negatives * model.cfg.dim

    def _sampled(self, pos, neg, valid, neg_valid, norm) -> torch.Tensor:
        if self.loss == "gbce":
            return gbce_loss(pos, neg, self.beta, valid=valid, neg_valid=neg_valid, norm=norm)
        return softmax_loss(pos, neg, valid=valid, neg_valid=neg_valid, norm=norm)

    def forward(self, batch: torch.Tensor, norm: float | None = None) -> torch.Tensor:
        inputs, labels = batch[:, :-1], batch[:, 1:]
        hidden = self.model(inputs)
        weights = self.model.output_embeddings
        valid = inputs != PADDING_IDX
        k, device = self.negatives, batch.device
        if self.loss != "ce" and self.sharing == "sequence":
            pos = (hidden * F.embedding(labels, weights)).sum(-1)  # F.embedding: a much cheaper backward
            neg_ids = torch.randint(1, self.num_items + 1, (batch.shape[0], k), device=device)
            neg = torch.bmm(hidden, F.embedding(neg_ids, weights).transpose(1, 2))
            neg_valid = neg_ids[:, None, :] != labels[:, :, None]  # a negative equal to the target is dropped
            return self._sampled(pos, neg, valid, neg_valid, norm)
        # the other objectives score only the valid positions, flattened: [M, d]
        h, targets = hidden[valid], labels[valid]
        if self.loss == "ce":
            logits = h @ weights.T  # the whole (contiguous) table: 1.5x faster than slicing off padding first
            logits[:, PADDING_IDX] = float("-inf")  # padding is never a candidate
            return ce_loss(logits, targets, norm)
        if self.sharing == "batch":
            neg_ids = torch.randint(1, self.num_items + 1, (k,), device=device)
            pos = (h * F.embedding(targets, weights)).sum(-1)
            neg = h @ F.embedding(neg_ids, weights).T
            return self._sampled(pos, neg, None, neg_ids[None, :] != targets[:, None], norm)
        neg_ids = torch.randint(1, self.num_items + 1, (len(targets), k), device=device)
        if self.score_all:
            logits = h @ weights.T
            pos, neg = logits.gather(1, targets[:, None])[:, 0], logits.gather(1, neg_ids)
        else:
            pos = (h * F.embedding(targets, weights)).sum(-1)
            neg = torch.einsum("md,mkd->mk", h, F.embedding(neg_ids, weights))
        return self._sampled(pos, neg, None, neg_ids != targets[:, None], norm)
