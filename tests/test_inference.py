"""serving.inference: batched encoding and exact top-k agree with the plain computation."""

from __future__ import annotations

import numpy as np
import torch

from movierec.model.gsasrec import GSASRec, ModelConfig
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
