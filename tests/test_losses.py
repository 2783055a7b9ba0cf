"""Training objectives: values against naive loops, padding inputs untrained, one normaliser, learning."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from movierec.data.prepared import load_prepared
from movierec.model.gsasrec import GSASRec, ModelConfig
from movierec.model.loss import ce_loss, gbce_beta, gbce_loss, softmax_loss
from movierec.train.batches import TrainBatches
from movierec.train.objective import LOSSES, SHARING, Objective
from movierec.train.trainer import TrainConfig, Trainer

OBJECTIVES = [("ce", "sequence")] + [(loss, sharing) for loss in ("gbce", "sampled-softmax") for sharing in SHARING]


def test_softmax_loss_matches_a_loop_with_masks_and_norm() -> None:
    torch.manual_seed(0)
    pos, neg = torch.randn(2, 3), torch.randn(2, 3, 5)
    valid = torch.tensor([[False, True, True], [True, True, True]])
    neg_valid = torch.rand(2, 3, 5) > 0.3
    total = 0.0
    for b in range(2):
        for n in range(3):
            if valid[b, n]:
                terms = [pos[b, n].item()] + [neg[b, n, j].item() for j in range(5) if neg_valid[b, n, j]]
                total += math.log(sum(math.exp(x) for x in terms)) - pos[b, n].item()
    got = softmax_loss(pos, neg, valid=valid, neg_valid=neg_valid, norm=7.0)
    assert got.item() == pytest.approx(total / 7.0, rel=1e-5)
    # without norm: the mean over valid positions
    assert softmax_loss(pos, neg, valid=valid, neg_valid=neg_valid).item() == pytest.approx(total / 5, rel=1e-5)


def test_ce_loss_matches_a_loop() -> None:
    torch.manual_seed(1)
    logits, targets = torch.randn(4, 6), torch.tensor([0, 5, 2, 2])
    total = sum(math.log(sum(math.exp(v) for v in logits[i].tolist())) - logits[i, t].item()
                for i, t in enumerate(targets.tolist()))
    assert ce_loss(logits, targets, norm=10.0).item() == pytest.approx(total / 10.0, rel=1e-5)


def test_gbce_norm_divides_the_sum() -> None:
    torch.manual_seed(2)
    pos, neg = torch.randn(3, 4), torch.randn(3, 4, 6)
    valid = torch.rand(3, 4) > 0.4
    beta = gbce_beta(100, 6, 0.75)
    mean = gbce_loss(pos, neg, beta, valid=valid)
    assert gbce_loss(pos, neg, beta, valid=valid, norm=50.0).item() == pytest.approx(
        mean.item() * valid.sum().item() / 50.0, rel=1e-5
    )


def tiny_model(seed: int = 0) -> GSASRec:
    torch.manual_seed(seed)
    return GSASRec(ModelConfig(num_items=30, seq_len=10, dim=16, blocks=1, heads=1, dropout=0.0))


BATCH = torch.tensor([[0, 0, 0, 5, 7, 9, 11], [0, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7]])


def test_ce_objective_equals_the_naive_full_softmax() -> None:
    model = tiny_model()
    inputs, labels = BATCH[:, :-1], BATCH[:, 1:]
    hidden, table = model(inputs), model.output_embeddings
    total = 0.0
    for b in range(inputs.shape[0]):
        for n in range(inputs.shape[1]):
            if inputs[b, n] != 0:  # positions whose input is padding are not trained
                scores = (table[1:] @ hidden[b, n]).tolist()
                total += math.log(sum(math.exp(s) for s in scores)) - scores[int(labels[b, n]) - 1]
    assert Objective(model, "ce")(BATCH, norm=4.0).item() == pytest.approx(total / 4.0, rel=1e-4)


@pytest.mark.parametrize(("loss", "sharing"), OBJECTIVES)
def test_padding_inputs_are_not_trained_and_gradients_are_finite(loss: str, sharing: str) -> None:
    model = tiny_model()
    objective = Objective(model, loss, negatives=8, sharing=sharing)
    torch.manual_seed(5)
    value = objective(BATCH, norm=12.0)
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # a user whose only label follows a padding input (predicting the first item from nothing) adds nothing
    extra = torch.cat([BATCH, torch.tensor([[0, 0, 0, 0, 0, 0, 29]])])
    torch.manual_seed(5)
    assert objective(extra, norm=12.0).item() == pytest.approx(value.item(), rel=1e-5)


def test_position_negatives_agree_between_the_two_scoring_paths() -> None:
    """Small catalogs score per-position negatives through the full logits; big ones by gathering rows."""
    model = tiny_model()
    objective = Objective(model, "gbce", negatives=4, sharing="position")
    values = []
    for score_all in (True, False):
        objective.score_all = score_all
        torch.manual_seed(3)
        values.append(objective(BATCH).item())
    assert values[0] == pytest.approx(values[1], rel=1e-5)


def test_one_normaliser_weighs_every_interaction_the_same(pattern_prepared: Path) -> None:
    data = load_prepared(pattern_prepared)
    batches = TrainBatches(data, batch_size=16, seq_len=200, seed=0, bucket=True)
    epoch = list(batches.epoch())
    positions = sum(int((b[:, :-1] != 0).sum()) for b in epoch)
    assert batches.mean_positions == pytest.approx(positions / len(epoch))


@pytest.mark.parametrize(("loss", "sharing", "negatives"),
                         [("gbce", "sequence", 8), ("ce", "sequence", 8), ("sampled-softmax", "batch", 32),
                          ("gbce", "position", 1)])
def test_a_short_run_lowers_the_loss(pattern_prepared: Path, tmp_path: Path, loss: str, sharing: str,
                                     negatives: int) -> None:
    data = load_prepared(pattern_prepared)
    cfg = TrainConfig(seq_len=32, dim=32, batch_size=32, dropout=0.1, lr=5e-3, warmup_steps=5, threads=2,
                      loss=loss, negative_sharing=sharing, negatives=negatives, max_steps=80, eval_every_steps=80,
                      lr_decay="none")
    losses = [v for _, v in Trainer(data, tmp_path / "m", cfg).fit(show_progress=False)["losses"]]
    assert len(losses) == 4 and np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0]


def test_unknown_objective_is_refused() -> None:
    with pytest.raises(ValueError, match="loss"):
        Objective(tiny_model(), "hinge")
    with pytest.raises(ValueError, match="sharing"):
        Objective(tiny_model(), "gbce", sharing="user")
    assert set(LOSSES) == {"gbce", "ce", "sampled-softmax"}
