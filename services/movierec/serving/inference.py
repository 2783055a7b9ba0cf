"""In-process gSASRec inference: histories in, top-k items out.

The one place where a user's history becomes scores; the CLI, the API and the TorchServe
handler all call it, so every serving path ranks identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from movierec.model.gsasrec import GSASRec
from movierec.model.padding import pad_histories
from movierec.serving.kernels import Fp32, configure, mask_, matrix_for, plan_for, top_k_of

BECAUSE = 3  # history items returned as the explanation of a recommendation
ENCODE_CHUNK = 16  # users per transformer pass; users are sorted by length so a chunk carries little padding


@dataclass(frozen=True)
class Encoded:
    vectors: torch.Tensor  # [U, dim] user vectors
    because: list[np.ndarray]  # per user: up to BECAUSE item_idx from the history, most attended first


@dataclass(frozen=True)
class TopK:
    items: np.ndarray  # [U, k] item_idx, best first
    scores: np.ndarray  # [U, k] float32


@torch.inference_mode()
def history_vectors(model: GSASRec, histories: Sequence[np.ndarray]) -> torch.Tensor:
    """[U, dim] query vectors for histories of item_idx (oldest first; the last seq_len items count)."""
    items = torch.from_numpy(pad_histories(list(histories), model.cfg.seq_len))
    return model.user_vectors(items.to(model.output_embeddings.device))


@torch.inference_mode()
def encode(model: GSASRec, histories: Sequence[np.ndarray]) -> Encoded:
    """User vectors and explanations in one pass.

    The explanation is the last block's attention from the most recent position, averaged over
    heads: the history items the model looked at most (ties: the older item first). Many users
    are encoded in chunks of similar length: a 20-item history is not padded to 200.
    """
    histories = [np.asarray(h, dtype=np.int64) for h in histories]
    device = model.output_embeddings.device
    vectors = torch.empty(len(histories), model.cfg.dim, device=device)
    because: list[np.ndarray] = [np.empty(0, np.int64)] * len(histories)
    order = np.argsort([len(h) for h in histories], kind="stable")
    for start in range(0, len(order), ENCODE_CHUNK):
        rows = order[start:start + ENCODE_CHUNK]
        chunk = [histories[r] for r in rows]
        items = torch.from_numpy(pad_histories(chunk, model.cfg.seq_len))
        width = items.shape[1]
        chunk_vectors, weights = model.user_vectors_with_attention(items.to(device))
        vectors[torch.from_numpy(rows).to(device)] = chunk_vectors
        attention = weights.cpu().numpy()
        for i, (row, history) in enumerate(zip(rows, chunk)):
            n = min(len(history), width)
            top = np.argsort(-attention[i, width - n:], kind="stable")[:BECAUSE]
            because[row] = history[len(history) - n:][top]
    return Encoded(vectors, because)


@torch.inference_mode()
def exact_top_k(
    vectors: torch.Tensor,
    item_weights: torch.Tensor,
    k: int,
    allowed: np.ndarray | None = None,
    exclude: Sequence[np.ndarray] = (),
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per user (item_idx, score) of the k best allowed, not excluded items, best first (may be < k).

    On CPU the item matrix gets a plan (`kernels.plan_for`): per batch size, the first-pass kernel
    measured fastest on this CPU at load (or the one SCORING_KERNEL forces). A first pass over a
    compact copy of the matrix (int8, fp16) finds every item that can be in the top k, with an
    error bound proven for its quantizer, and those few are re-scored in fp32: the ranking is exact.
    Ties in fp32 go to the lower item_idx.
    """
    vectors = vectors.to(item_weights.device, item_weights.dtype)
    k = min(k, item_weights.shape[0])
    if not _on_cpu_fp32(item_weights) or len(vectors) == 0 or k <= 0:
        return top_k_of(masked_scores(vectors, item_weights, allowed, exclude), k)
    vectors = vectors.contiguous()
    # the first ranking's vectors (the warm-up's) are what the calibration measures with
    return plan_for(item_weights, like=vectors).kernel_for(len(vectors)).top_k(vectors, k, allowed, exclude)


def scoring_plan(item_weights: torch.Tensor) -> dict[str, Any]:
    """What ranks batches of each size over this item matrix, and why (for /stats and logs)."""
    if not _on_cpu_fp32(item_weights):
        return {"by_batch": {}, "forced": False, "reason": f"{item_weights.device} {item_weights.dtype}: "
                "one product, no first pass"}
    return plan_for(item_weights).describe()


def configure_scoring(kernel: str = "auto", calibration_seconds: float = 3.0) -> None:
    """SCORING_KERNEL and SCORING_CALIBRATION_SECONDS: call before the first ranking (later: plans are redone)."""
    configure(kernel, calibration_seconds)


def _on_cpu_fp32(weights: torch.Tensor) -> bool:
    return weights.device.type == "cpu" and weights.dtype == torch.float32


def masked_scores(
    vectors: torch.Tensor,
    item_weights: torch.Tensor,
    allowed: np.ndarray | None = None,
    exclude: Sequence[np.ndarray] = (),
) -> torch.Tensor:
    """Inner products [U, num_items + 1] with padding, disallowed items and exclude[u] set to -inf."""
    if _on_cpu_fp32(item_weights) and vectors.dtype == torch.float32:
        scores = Fp32(matrix_for(item_weights)).scores(vectors)
    else:
        scores = vectors @ item_weights.T
    return mask_(scores, allowed, exclude)


@torch.inference_mode()
def top_k(
    model: GSASRec,
    histories: Sequence[np.ndarray],
    k: int,
    exclude_seen: bool = True,
    exclude: Sequence[np.ndarray] | None = None,
) -> TopK:
    """Exact top-k over every item by inner product with the output embeddings.

    Padding is never returned; with `exclude_seen` the items in each history are removed, and
    `exclude[u]` removes more item_idx for user u.
    """
    drop = []
    for row, history in enumerate(histories):
        parts = [np.asarray(history, dtype=np.int64)] if exclude_seen else []
        if exclude is not None:
            parts.append(np.asarray(exclude[row], dtype=np.int64))
        drop.append(np.concatenate(parts) if parts else np.empty(0, np.int64))
    scores = masked_scores(history_vectors(model, histories), model.output_embeddings, exclude=drop)
    values, indices = torch.topk(scores, min(k, scores.shape[1] - 1), dim=1)
    return TopK(items=indices.cpu().numpy(), scores=values.float().cpu().numpy())
