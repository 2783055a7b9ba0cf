"""In-process gSASRec inference: histories in, top-k items out.

The one place where a user's history becomes scores; the CLI, the API and the TorchServe
handler all call it, so every serving path ranks identically.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from movierec.model.gsasrec import GSASRec
from movierec.model.padding import PADDING_IDX, pad_histories

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

    On CPU, a batch of up to INT8_MAX_USERS users over a large catalog is ranked in two passes:
    int8 scores of every item (an int8 GEMM reads a quarter of the bytes of the fp32 matrix, which
    is what a skinny GEMM is bound by), then fp32 scores of the few items that can still be in the
    top k. The result is the exact ranking: the int8 error has a proven bound (`_int8_scores`).
    """
    vectors = vectors.to(item_weights.device, item_weights.dtype)
    k = min(k, item_weights.shape[0])
    matrix = _prepared(item_weights)
    if matrix.codes is not None and 0 < len(vectors) <= INT8_MAX_USERS:
        return _two_pass_top_k(matrix, item_weights, vectors, k, allowed, exclude)
    return _top_k_of(masked_scores(vectors, item_weights, allowed, exclude), k)


def _top_k_of(scores: torch.Tensor, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    values, indices = top.values.float().cpu().numpy(), top.indices.cpu().numpy()
    return [(i[np.isfinite(v)], v[np.isfinite(v)]) for i, v in zip(indices, values)]


def masked_scores(
    vectors: torch.Tensor,
    item_weights: torch.Tensor,
    allowed: np.ndarray | None = None,
    exclude: Sequence[np.ndarray] = (),
) -> torch.Tensor:
    """Inner products [U, num_items + 1] with padding, disallowed items and exclude[u] set to -inf."""
    if item_weights.device.type == "cpu" and item_weights.dtype == torch.float32 and vectors.dtype == torch.float32:
        # [U, d] @ [d, N] in OpenBLAS: 2-3x faster than torch's MKL for this skinny shape on AMD CPUs
        scores = torch.from_numpy(vectors.detach().numpy() @ _prepared(item_weights).columns)
    else:
        scores = vectors @ item_weights.T
    return _mask_(scores, allowed, exclude)


def _mask_(scores: torch.Tensor, allowed: np.ndarray | None, exclude: Sequence[np.ndarray]) -> torch.Tensor:
    scores[:, PADDING_IDX] = -torch.inf
    if allowed is not None:
        scores.masked_fill_(~torch.from_numpy(allowed).to(scores.device), -torch.inf)
    for row, items in enumerate(exclude):
        if len(items):
            scores[row].index_fill_(0, torch.as_tensor(np.array(items, dtype=np.int64), device=scores.device),
                                    -torch.inf)
    return scores


# -- the int8 first pass ------------------------------------------------------------------------
INT8_MIN_ITEMS = 16_384  # below this the fp32 scan is cheap enough
INT8_MAX_USERS = 16  # above this a full GEMM is compute-bound and fp32 BLAS is as fast (bench: 16-24)


@dataclass
class ItemMatrix:
    """One item matrix prepared for scoring: fp32 columns for BLAS, int8 codes for the first pass.

    Item j is w_j ~ scales[j] * codes[j] (symmetric, one scale per item).
    """

    columns: np.ndarray  # [dim, N] float32, C-contiguous
    codes: torch.Tensor | None = None  # [N, dim] int8, or None (small catalog, not CPU fp32, no int8 GEMM)
    scales: torch.Tensor | None = None  # [N] float32
    max_norm: float = 0.0  # max_j |w_j|_2
    max_residual: float = 0.0  # max_j |w_j - scales[j] * codes[j]|_2


def _two_pass_top_k(matrix: ItemMatrix, weights: torch.Tensor, vectors: torch.Tensor, k: int,
                    allowed: np.ndarray | None, exclude: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top-k from int8 scores: every item that can be in the top k is re-scored in fp32.

    With e the bound on the int8 error (`_int8_scores`), the k items with the best int8 scores all
    score at least a_k - e exactly (a_k: the k-th best int8 score), so each item of the true top k
    has an int8 score of at least a_k - 2e. Those candidates (a few dozen per user; every item
    when everything ties) are scored in fp32 and ranked.
    """
    approx, error = _int8_scores(matrix, vectors)
    approx = _mask_(approx, allowed, exclude)
    kth = torch.topk(approx, k, dim=1, sorted=False).values.amin(1)
    # fewer than k allowed items: every allowed one is a candidate (-inf stays below the floor)
    floor = (kth - 2 * error).clamp_min(torch.finfo(approx.dtype).min)
    row_t, item_t = torch.nonzero(approx >= floor[:, None], as_tuple=True)
    exact = torch.einsum("cd,cd->c", weights[item_t], vectors[row_t]).numpy()
    rows, items = row_t.numpy(), item_t.numpy()
    order = np.lexsort((-exact, rows))  # by user, best first
    ends = np.searchsorted(rows[order], np.arange(len(vectors) + 1))
    out = []
    for start, end in zip(ends[:-1], ends[1:]):
        best = order[start:min(end, start + k)]
        out.append((items[best], exact[best]))
    return out


def _int8_scores(matrix: ItemMatrix, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 scores [U, N] and, per user, a bound on |int8 score - fp32 score| over every item.

    Each user vector gets its own symmetric int8 scale: v ~ v' = step * q. Then
    v.w - v'.w' = (v - v').w + v'.(w - w'), so by Cauchy-Schwarz the error is at most
    |v - v'|_2 max|w|_2 + |v'|_2 max|w - w'|_2, every term known exactly. The int32 products
    are exact; the margin covers the fp32 rounding of the scaling and of the fp32 re-scoring.
    """
    assert matrix.codes is not None and matrix.scales is not None  # callers check has_int8 first
    step = vectors.abs().amax(1, keepdim=True).clamp_min(1e-30) / 127
    codes = torch.round(vectors / step).clamp_(-127, 127)
    quantized = codes * step
    approx = torch._int_mm(codes.to(torch.int8), matrix.codes.T).float().mul_(matrix.scales).mul_(step)
    error = (vectors - quantized).norm(dim=1) * matrix.max_norm + quantized.norm(dim=1) * matrix.max_residual
    return approx, error * (1 + 1e-4) + 1e-5 * (1 + vectors.norm(dim=1) * matrix.max_norm)


_PREPARED: dict[int, tuple[weakref.ref, int, ItemMatrix]] = {}


def _prepared(weights: torch.Tensor) -> ItemMatrix:
    """The ItemMatrix of a weights tensor, made once (and again after an in-place change)."""
    entry = _PREPARED.get(id(weights))
    if entry is None or entry[0]() is not weights or entry[1] != weights._version:
        for key in [key for key, (ref, _, _) in _PREPARED.items() if ref() is None]:
            del _PREPARED[key]
        entry = (weakref.ref(weights), weights._version, _prepare(weights.detach()))
        _PREPARED[id(weights)] = entry
    return entry[2]


def _prepare(weights: torch.Tensor) -> ItemMatrix:
    if weights.device.type != "cpu" or weights.dtype != torch.float32:
        return ItemMatrix(np.empty((0, 0), np.float32))
    matrix = ItemMatrix(np.ascontiguousarray(weights.numpy().T))
    if weights.shape[0] < INT8_MIN_ITEMS:
        return matrix
    scales = weights.abs().amax(1).clamp_min(1e-30) / 127
    codes = torch.round(weights / scales[:, None]).clamp_(-127, 127)
    try:
        torch._int_mm(codes[:1].to(torch.int8), codes[:1].to(torch.int8).T)
    except (RuntimeError, AttributeError):  # no int8 GEMM in this build: fp32 only
        return matrix
    matrix.codes, matrix.scales = codes.to(torch.int8).contiguous(), scales.float()
    matrix.max_norm = float(weights.norm(dim=1).max())
    matrix.max_residual = float((weights - codes * scales[:, None]).norm(dim=1).max())
    return matrix


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
