"""gSASRec model and gBCE loss: the properties the paper and the serving code rely on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from movierec.model.gsasrec import GSASRec, ModelConfig, dropout
from movierec.model.loss import gbce_beta, gbce_loss


def model(**kw) -> GSASRec:
    torch.manual_seed(0)
    m = GSASRec(ModelConfig(num_items=50, seq_len=12, dim=16, blocks=2, heads=2, **kw))
    return m.eval()


def test_beta_formula() -> None:
    num_items, k, t = 3416, 256, 0.75
    alpha = k / (num_items - 1)
    assert gbce_beta(num_items, k, t) == pytest.approx(alpha * (t * (1 - 1 / alpha) + 1 / alpha))
    assert gbce_beta(num_items, k, 0.0) == pytest.approx(1.0)
    assert gbce_beta(num_items, k, 1.0) == pytest.approx(alpha)


def test_gbce_at_t0_is_plain_bce() -> None:
    torch.manual_seed(1)
    pos, neg = torch.randn(4, 7), torch.randn(4, 7, 5)
    logits = torch.cat([pos.unsqueeze(-1), neg], -1)
    labels = torch.zeros_like(logits)
    labels[..., 0] = 1
    expected = F.binary_cross_entropy_with_logits(logits, labels)
    assert gbce_loss(pos, neg, gbce_beta(1000, 5, 0.0)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gbce_matches_formula_with_masks() -> None:
    """-log(σ(s+)^β) - Σ log(1 - σ(s-)), averaged over valid (position, candidate) pairs."""
    torch.manual_seed(2)
    pos, neg = torch.randn(3, 4), torch.randn(3, 4, 6)
    valid = torch.tensor([[True, True, False, True]] * 3)
    neg_valid = torch.rand(3, 4, 6) > 0.2
    beta = gbce_beta(500, 6, 0.75)
    total, pairs = 0.0, 0
    for b in range(3):
        for n in range(4):
            if not valid[b, n]:
                continue
            total += -beta * math.log(torch.sigmoid(pos[b, n]).item())
            for j in range(6):
                if neg_valid[b, n, j]:
                    total += -math.log(1 - torch.sigmoid(neg[b, n, j]).item())
            pairs += 7
    assert gbce_loss(pos, neg, beta, valid=valid, neg_valid=neg_valid).item() == pytest.approx(total / pairs, rel=1e-5)


def test_causal_later_items_do_not_change_earlier_outputs() -> None:
    m = model()
    items = torch.tensor([[0, 0, 3, 9, 4, 7, 1, 22, 5, 6, 8, 2]])
    changed = items.clone()
    changed[0, 8:] = torch.tensor([40, 41, 42, 43])
    a, b = m(items), m(changed)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:], atol=1e-3)


def test_padding_invariance_and_left_truncation() -> None:
    """More left padding, or cutting padding off the left, leaves the user vector unchanged."""
    m = model()
    seq = torch.tensor([[3, 9, 4, 7, 1]])
    vectors = [m.user_vectors(F.pad(seq, (pad, 0))) for pad in (0, 3, 7)]
    for v in vectors[1:]:
        assert torch.allclose(vectors[0], v, atol=1e-5)
    # rows of different lengths in one batch give the same vectors as alone
    batch = torch.tensor([[0, 0, 0, 0, 0, 3, 9, 4, 7, 1], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    together = m.user_vectors(batch)
    assert torch.allclose(together[0], vectors[0][0], atol=1e-5)
    assert torch.allclose(together[1], m.user_vectors(batch[1:])[0], atol=1e-5)


def test_training_attention_matches_eval_without_dropout() -> None:
    """The explicit training attention (fast dropout path) and SDPA at eval agree when dropout is 0."""
    m = model(dropout=0.0)
    items = torch.tensor([[0, 0, 3, 9, 4, 7, 1, 22, 5, 6, 8, 2], [0] * 9 + [1, 2, 3]])
    eval_out = m(items)
    m.train()
    assert torch.allclose(m(items), eval_out, atol=1e-5)


def test_shared_embeddings_option() -> None:
    shared, separate = model(share_embeddings=True), model()
    assert shared.output_embeddings is shared.item_emb.weight
    assert separate.output_embeddings is not separate.item_emb.weight


def test_fast_dropout_keeps_the_expected_share_and_mean() -> None:
    torch.manual_seed(3)
    x = torch.ones(400_000)
    for p in (0.1, 0.5):
        y = dropout(x, p, training=True)
        assert (y == 0).float().mean().item() == pytest.approx(p, abs=0.01)
        assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.equal(dropout(x, 0.5, training=False), x)
    # gradients flow through kept entries only, scaled
    x = torch.ones(1000, requires_grad=True)
    dropout(x, 0.5, True).sum().backward()
    assert set(x.grad.unique().tolist()) <= {0.0, 2.0}


def test_last_attention_is_a_distribution_over_real_items() -> None:
    m = model()
    weights = m.last_attention(torch.tensor([[0, 0, 0, 3, 9, 4]]))
    assert weights.shape == (1, 6)
    assert torch.all(weights[0, :3] == 0)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_vectors_with_attention_match_the_separate_calls() -> None:
    m = model()
    items = torch.tensor([[0, 0, 0, 3, 9, 4], [1, 2, 3, 4, 5, 6]])
    vectors, weights = m.user_vectors_with_attention(items)
    assert torch.allclose(vectors, m.user_vectors(items), atol=1e-5)
    assert torch.allclose(weights, m.last_attention(items), atol=1e-6)
