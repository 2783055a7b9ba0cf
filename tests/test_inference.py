"""serving.inference: batched encoding and exact top-k agree with the plain computation (kernels: test_kernels.py)."""

from __future__ import annotations

import numpy as np
import torch

from movierec.model.gsasrec import GSASRec, ModelConfig
from movierec.serving import kernels
from movierec.serving.inference import ENCODE_CHUNK, encode, exact_top_k, masked_scores


def small_model(seed: int = 0) -> GSASRec:
    torch.manual_seed(seed)
    return GSASRec(ModelConfig(num_items=300, seq_len=50, dim=32, heads=2)).eval()


def test_encoding_many_users_in_length_chunks_equals_one_at_a_time() -> None:
    model = small_model()
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, 301, int(n)) for n in rng.integers(1, 80, 3 * ENCODE_CHUNK + 5)]
    together = encode(model, histories)
    for i, history in enumerate(histories):
        alone = encode(model, [history])
        torch.testing.assert_close(together.vectors[i], alone.vectors[0], atol=1e-5, rtol=1e-5)
        assert together.because[i].tolist() == alone.because[0].tolist()
        assert set(together.because[i].tolist()) <= set(history[-50:].tolist())
        assert len(together.because[i]) == min(3, len(history))


def test_exact_top_k_is_the_brute_force_ranking_with_masks() -> None:
    model = small_model()
    rng = np.random.default_rng(1)
    vectors = torch.randn(4, 32)
    allowed = rng.random(301) < 0.5
    exclude = [rng.integers(1, 301, 20) for _ in range(4)]
    ranked = exact_top_k(vectors, model.output_embeddings, 10, allowed, exclude)
    brute = (vectors @ model.output_embeddings.detach().T).numpy()
    for row, (items, scores) in enumerate(ranked):
        candidates = [i for i in range(1, 301) if allowed[i] and i not in set(exclude[row].tolist())]
        order = sorted(candidates, key=lambda i: -brute[row, i])[:10]
        assert items.tolist() == order
        np.testing.assert_allclose(scores, brute[row, order], atol=1e-5)


def test_the_transposed_item_matrix_follows_in_place_updates() -> None:
    model = small_model()
    weights = model.output_embeddings
    vector = torch.randn(1, 32)
    before = masked_scores(vector, weights).clone()
    with torch.no_grad():
        weights.mul_(2.0)  # e.g. a training step on the same tensor
    after = masked_scores(vector, weights)
    torch.testing.assert_close(after[:, 1:], 2 * before[:, 1:], atol=1e-4, rtol=1e-4)


def large_catalog(items: int = 20_000, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """Item weights big enough for a first-pass kernel (row 0 is padding)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(items + 1, dim, generator=generator) * 0.05


def brute_force(vectors: torch.Tensor, weights: torch.Tensor, k: int, allowed=None, exclude=()):
    scores = (vectors.double() @ weights.double().T).numpy()
    out = []
    for row in range(len(vectors)):
        ok = np.ones(len(weights), bool) if allowed is None else allowed.copy()
        ok[0] = False
        if len(exclude):
            ok[exclude[row]] = False
        candidates = np.flatnonzero(ok)
        out.append(candidates[np.argsort(-scores[row, candidates], kind="stable")[:k]])
    return out, scores


def test_large_catalogs_get_a_measured_plan_and_rank_exactly_at_every_batch_size() -> None:
    weights = large_catalog()
    kernels.configure("auto", budget_seconds=2.0)
    try:
        plan = kernels.plan_for(weights)
        assert plan.ms["fp32"] and not plan.forced, "a large catalog is measured"
        rng = np.random.default_rng(2)
        for users in (1, 3, 16, 40):
            vectors = torch.randn(users, 32) * 3
            allowed = rng.random(len(weights)) < 0.3
            exclude = [rng.integers(1, len(weights), 200) for _ in range(users)]
            for mask, drop in ((None, ()), (allowed, exclude)):
                ranked = exact_top_k(vectors, weights, 10, mask, drop)
                expected, scores = brute_force(vectors, weights, 10, mask, drop)
                for row, (items, values) in enumerate(ranked):
                    assert items.tolist() == expected[row].tolist(), (users, row)
                    np.testing.assert_allclose(values, scores[row, expected[row]], atol=1e-5)
    finally:
        kernels.configure("auto")
