"""First-pass scoring kernels of the exact top-k, chosen by measurement on the CPU at hand.

Ranking every item for a user is a skinny product with the item matrix (87,585 x 128 fp32 is 45 MB
per pass): on one core it is bound by memory, so a first pass over a compact copy of the matrix
finds the few items that can be in the top k, and only those are re-scored in fp32. Which compact
pass is fastest depends on the CPU (torch's int8 GEMM is quick with AVX-512 VNNI, ~20x slower on an
AVX2-only CPU) and on the batch (FAISS scans one query at a time; a GEMM reads the matrix once for
the whole batch). So at load every kernel is timed on the real matrix for each batch-size bucket
(`BUCKETS`), checked against the fp32 ranking, and the fastest correct one serves that bucket.
The setting SCORING_KERNEL forces one kernel for every batch.

Kernels (`KERNELS`):
  fp32              BLAS over the fp32 matrix (OpenBLAS through NumPy): exact, no second pass
  int8-torch        torch._int_mm: int8 item codes (one scale per item) x int8 user codes
  faiss-sq8-direct  FAISS IndexScalarQuantizer QT_8bit_direct_signed: one scale for the whole
                    matrix, fp32 queries, one SIMD scan per user
  faiss-sq8         FAISS QT_8bit: a trained range per dimension, fp32 queries
  fp16-torch        torch fp16 matmul over fp16 copies (both sides scaled to norm <= 1)

Why the ranking stays exact. A kernel returns approximate scores a_j with a bound e proven for
that quantizer: |a_j - x_j| <= e for every item j (x_j the exact inner product); the fp32
re-score f_j has |f_j - x_j| <= rho. The k items with the best a have x >= a_k - e, so the k-th
best re-score is at least a_k - e - rho, and any item among the k best re-scores has
a_j >= a_k - 2(e + rho). Every such item is re-scored; near-ties only make more candidates (all
items, when everything ties). Each kernel's docstring derives its e.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from movierec.errors import MovierecError
from movierec.model.padding import PADDING_IDX

log = logging.getLogger(__name__)

Ranked = list[tuple[np.ndarray, np.ndarray]]  # per user (item_idx, fp32 score), best first

KERNELS = ("fp32", "faiss-sq8-direct", "int8-torch", "faiss-sq8", "fp16-torch")  # calibration order
BUCKETS = (1, 4, 16, 64)  # batch sizes timed; n users use the first bucket >= n (the last above it)
MIN_ITEMS = 16_384  # below this the fp32 scan is cheap: no calibration, fp32 for every batch
CALIBRATION_K = 10
CALIBRATION_EXCLUDED = 100  # items excluded per calibration user, like a history of that length
TIMED_RUNS = 5  # after one untimed run that also checks the ranking
PRUNE_FACTOR = 4.0  # a kernel this much slower than the best of a bucket is not timed again there
FP32_U = 2.0 ** -24  # unit roundoff of float32
FP16_U = 2.0 ** -11  # and of float16
FP16_TINY = 2.0 ** -25  # half the spacing of float16 subnormals: the absolute error of an underflow


class ScoringKernelError(MovierecError):
    """A forced scoring kernel cannot run here (e.g. no int8 GEMM or no FAISS in this build)."""


def gamma(n: int, u: float = FP32_U) -> float:
    """Higham's gamma_n: |fl(x.y) - x.y| <= gamma_n * sum_i |x_i y_i| for n terms, any order, with or without FMA."""
    return n * u / (1 - n * u)


# -- the item matrix ------------------------------------------------------------------------------
@dataclass
class ItemMatrix:
    """The fp32 item matrix as the kernels need it."""

    weights: torch.Tensor  # [N, d] float32 (row PADDING_IDX is no item)
    columns: np.ndarray  # [d, N] float32, C-contiguous: the fp32 BLAS operand
    max_norm: float  # M = max_j |w_j|_2 (rounded up)

    @classmethod
    def of(cls, weights: torch.Tensor) -> ItemMatrix:
        weights = weights.detach().contiguous()
        max_norm = float(weights.norm(dim=1).max()) * (1 + (weights.shape[1] + 2) * FP32_U)
        return cls(weights, np.ascontiguousarray(weights.numpy().T), max_norm)

    @property
    def num_items(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.weights.shape[1]

    def rescore_error(self, vectors: torch.Tensor) -> torch.Tensor:
        """rho per user: a bound on |f_j - x_j| of the fp32 re-score (2 gamma_d |v| M: twice the textbook bound)."""
        return 2 * gamma(self.dim) * vectors.double().norm(dim=1) * self.max_norm


# -- shared steps ---------------------------------------------------------------------------------
def mask_(scores: torch.Tensor, allowed: np.ndarray | None, exclude: Sequence[np.ndarray]) -> torch.Tensor:
    """Padding, disallowed items and exclude[u] set to -inf, in place."""
    scores[:, PADDING_IDX] = -torch.inf
    if allowed is not None:
        scores.masked_fill_(~torch.from_numpy(allowed).to(scores.device), -torch.inf)
    for row, items in enumerate(exclude):
        if len(items):
            scores[row].index_fill_(0, torch.as_tensor(np.array(items, dtype=np.int64), device=scores.device),
                                    -torch.inf)
    return scores


def top_k_of(scores: torch.Tensor, k: int) -> Ranked:
    """Per row the k best finite scores, best first (ties: the lower item_idx first)."""
    top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    values, indices = top.values.float().cpu().numpy(), top.indices.cpu().numpy()
    out = []
    for i, v in zip(indices, values):
        finite = np.isfinite(v)
        i, v = i[finite], v[finite]
        order = np.lexsort((i, -v))  # topk orders equal scores arbitrarily
        out.append((i[order], v[order]))
    return out


def rescore(matrix: ItemMatrix, vectors: torch.Tensor, rows: np.ndarray, items: np.ndarray, k: int) -> Ranked:
    """The k best candidates per user by fp32 score (ties: the lower item_idx first)."""
    exact = torch.einsum("cd,cd->c", matrix.weights[torch.from_numpy(items)],
                         vectors[torch.from_numpy(rows)]).numpy()
    order = np.lexsort((items, -exact, rows))  # by user, best first
    ends = np.searchsorted(rows[order], np.arange(len(vectors) + 1))
    return [(items[order[a:min(b, a + k)]], exact[order[a:min(b, a + k)]]) for a, b in zip(ends[:-1], ends[1:])]


def residual_bound(weights: torch.Tensor, approx: torch.Tensor, max_norm: float) -> float:
    """An upper bound of max_j |w_j - a_j|_2, where `approx` holds the a_j (or their fp32 roundings), in fp32.

    `approx` may differ from the exact a (codes times scale) by u |approx| per coordinate, each
    fp32 difference rounds by u relative and the norm by (d + 2) u relative: the computed maximum
    times 1 + (d + 4) u, plus 4 u (M + sqrt(d) max|approx|) (x 1.01), bounds it.
    """
    residual = float((weights - approx).norm(dim=1).max())
    return residual * (1 + (weights.shape[1] + 4) * FP32_U) + 4 * FP32_U * (max_norm + float(approx.abs().max()) *
                                                                             weights.shape[1] ** 0.5) * 1.01


class Kernel:
    """One way to rank: `top_k(vectors [U, d] fp32, k, allowed, exclude)` -> per user (item_idx, fp32 score)."""

    name: ClassVar[str]

    def __init__(self, matrix: ItemMatrix) -> None:
        self.matrix = matrix

    def top_k(self, vectors: torch.Tensor, k: int, allowed: np.ndarray | None,
              exclude: Sequence[np.ndarray]) -> Ranked:
        raise NotImplementedError


class Fp32(Kernel):
    """Every score in fp32: [U, d] @ [d, N] in OpenBLAS (2-3x faster than torch's MKL for this skinny shape on AMD)."""

    name = "fp32"

    def scores(self, vectors: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(vectors.detach().numpy() @ self.matrix.columns)

    def top_k(self, vectors, k, allowed, exclude):
        return top_k_of(mask_(self.scores(vectors), allowed, exclude), k)


class TwoPass(Kernel):
    """A first pass that scores every item approximately ([U, N] and a bound per user), then fp32 re-scoring."""

    def approx(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate scores [U, N] float32 and e [U] float64 with |approx - exact| <= e for every item."""
        raise NotImplementedError

    def top_k(self, vectors, k, allowed, exclude):
        approx, error = self.approx(vectors)
        approx = mask_(approx, allowed, exclude)
        kth = torch.topk(approx, k, dim=1, sorted=False).values.amin(1).double()
        # fewer than k allowed items: every allowed one is a candidate (-inf stays below the floor)
        floor = kth - 2 * (error + self.matrix.rescore_error(vectors))
        floor = floor - floor.abs() * 4 * FP32_U  # so that rounding it to fp32 cannot raise it
        floor = floor.clamp_min(torch.finfo(torch.float32).min).float()  # -inf approx scores stay below it
        rows, items = torch.nonzero(approx >= floor[:, None], as_tuple=True)
        return rescore(self.matrix, vectors, rows.numpy(), items.numpy(), k)


class Int8Torch(TwoPass):
    """torch._int_mm of int8 user codes and int8 item codes (w_j ~ scale_j * codes_j, symmetric, per item).

    Each user vector v gets its own scale: v ~ v' = step * q. The int32 products are exact (when
    the GEMM sums in int32: `check_exact` refuses a saturating one) and convert to fp32 exactly
    (|q.c| <= 127^2 d < 2^24 for d <= 1040); the two scalings round twice: 2.0001 u |v'.w'_j| <=
    2.0001 u |v'| W'. And v.w - v'.w' = (v - v').w + v'.(w - w'), so by Cauchy-Schwarz
    e = |v - v'| M + |v'| R + 2.0001 u |v'| W', with R = max_j |w_j - w'_j|, W' = max_j |w'_j|
    (`residual_bound`: fp32 norms, rounded up).
    """

    name = "int8-torch"

    def __init__(self, matrix: ItemMatrix) -> None:
        super().__init__(matrix)
        if matrix.dim > 1040:
            raise ScoringKernelError(f"int8-torch: dim {matrix.dim} > 1040, int32 products would not be exact in fp32")
        weights = matrix.weights
        scales = weights.abs().amax(1).clamp_min(1e-30) / 127
        codes = torch.round(weights / scales[:, None]).clamp_(-127, 127)
        self.exact_rows: set[int] = set()
        for rows in (1, 2, 4, 16, 17, 64, 65, 256):
            self.check_exact(rows)
        self.codes_t = codes.to(torch.int8).T  # [d, N] view of the [N, d] codes
        self.scales = scales
        dequantized = codes.mul_(scales[:, None])
        self.max_residual = residual_bound(weights, dequantized, matrix.max_norm)
        self.max_quantized = float(dequantized.norm(dim=1).max()) * (1 + 1e-5) + 8 * FP32_U * matrix.max_norm

    def check_exact(self, rows: int) -> None:
        """ScoringKernelError unless torch._int_mm sums exactly in int32 for `rows` users (checked once per count).

        The proof needs exact products. Without VNNI, int8 GEMMs may multiply in saturating int16
        (AVX2 vpmaddubsw): 127 * 127 * 128 comes out as 16,320. Extreme codes show it.
        """
        if rows in self.exact_rows:
            return
        users = torch.full((rows, self.matrix.dim), 127, dtype=torch.int8)
        users[1::2] = -127
        users[2::3, ::2] = -127
        items = torch.full((self.matrix.dim, 8), 127, dtype=torch.int8)
        items[:, 1::2] = -127
        items[::2, 2::4] = 127
        items[1::2, 2::4] = -127
        try:
            got = torch._int_mm(users, items)
        except (RuntimeError, AttributeError) as exc:
            raise ScoringKernelError(f"int8-torch: this torch build has no CPU int8 GEMM ({exc})") from None
        want = users.long() @ items.long()
        if not torch.equal(got.long(), want):
            row, col = (got.long() != want).nonzero()[0].tolist()
            cpu = torch.backends.cpu.get_cpu_capability()
            raise ScoringKernelError(f"int8-torch: torch._int_mm is not exact on this CPU ({cpu}, {rows} rows: "
                                     f"{int(got[row, col])} for {int(want[row, col])}; saturating int16 products?)")
        self.exact_rows.add(rows)

    def approx(self, vectors):
        self.check_exact(len(vectors))
        step = vectors.abs().amax(1, keepdim=True).clamp_min(1e-30) / 127
        codes = torch.round(vectors / step).clamp_(-127, 127)
        approx = torch._int_mm(codes.to(torch.int8), self.codes_t).float().mul_(self.scales).mul_(step)
        quantized = codes.double() * step.double()
        q_norm = quantized.norm(dim=1)
        error = ((vectors.double() - quantized).norm(dim=1) * self.matrix.max_norm + q_norm * self.max_residual
                 + 2.0001 * FP32_U * q_norm * self.max_quantized)
        return approx, error * (1 + 1e-6)


class Fp16Torch(TwoPass):
    """torch fp16 matmul of v/|v| and w/M, both rounded to fp16 (no overflow: every score is <= 1).

    torch does not promise how CPU fp16 products accumulate, so the bound assumes the worst: every
    operation in fp16. Rounding a unit vector to fp16 moves it by at most eta = 2^-11 + 2^-23 + sqrt(d) 2^-25
    (relative rounding after an fp32 division, plus subnormal underflow); the products then err by eta (1 + (1 + eta)) and
    the fp16 dot product by gamma_d(2^-11) (1 + eta)^2 + (d + 1) 2^-25; the result times |v| M
    (fp32, 2 roundings). Loose: it makes many candidates, and the measurement says what that costs.
    """

    name = "fp16-torch"

    def __init__(self, matrix: ItemMatrix) -> None:
        super().__init__(matrix)
        self.half_t = (matrix.weights / matrix.max_norm).half().T  # fp32 division, then fp16: eta has both
        d = matrix.dim
        eta = FP16_U + 2 * FP32_U + np.sqrt(d) * FP16_TINY
        self.unit_error = eta * (2 + eta) + gamma(d, FP16_U) * (1 + eta) ** 2 + (d + 1) * FP16_TINY

    def approx(self, vectors):
        norms = vectors.double().norm(dim=1).clamp_min(1e-30)
        unit = (vectors.double() / norms[:, None]).half()
        scale = (norms * self.matrix.max_norm).float()
        approx = (unit @ self.half_t).float().mul_(scale[:, None])
        error = norms * self.matrix.max_norm * (self.unit_error * (1 + 3 * FP32_U) + 3 * FP32_U)
        return approx, error


class FaissScan(Kernel):
    """A FAISS scalar-quantizer index scanned once per user, with a per-user selector (filters, exclusions).

    FAISS keeps the best `k + SLACK` approximate scores; with a_k the k-th of them and e the bound
    (`queries`), the candidates are those >= a_k - 2(e + rho). When the last kept score is still above
    that floor, more candidates may lie beyond it: the scan is redone keeping 8 times as many, and
    if that is not enough either (near-ties), the user is ranked in fp32.
    """

    SLACK = 64
    qtype: ClassVar[str]

    def __init__(self, matrix: ItemMatrix) -> None:
        super().__init__(matrix)
        try:
            import faiss
        except ImportError as exc:  # pragma: no cover - faiss is a dependency
            raise ScoringKernelError(f"{self.name}: FAISS is not installed ({exc})") from None
        self.faiss = faiss
        self.index = faiss.IndexScalarQuantizer(matrix.dim, getattr(faiss.ScalarQuantizer, self.qtype),
                                                faiss.METRIC_INNER_PRODUCT)
        keep = np.ones(matrix.num_items, bool)
        keep[PADDING_IDX] = False
        self.everything = np.packbits(keep, bitorder="little")
        self.fallback = Fp32(matrix)

    def queries(self, vectors: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The index's queries [U, d] float32, per user the factor from index scores to inner products, and e."""
        raise NotImplementedError

    def top_k(self, vectors, k, allowed, exclude):
        faiss = self.faiss
        if faiss.omp_get_max_threads() != 1:
            # one query per scan gains nothing from threads, and OpenMP's thread count is per calling
            # thread: the API's model thread would otherwise get one per core, spinning on the core
            # the event loop needs (measured through the API: p50 52 ms, 14 ms on one thread)
            faiss.omp_set_num_threads(1)
        queries, unit, error = self.queries(vectors)
        rho = self.matrix.rescore_error(vectors).numpy()
        base = self.everything if allowed is None else \
            np.packbits(allowed, bitorder="little") & self.everything
        rows: list[np.ndarray] = []
        items: list[np.ndarray] = []
        in_fp32: list[int] = []
        for u in range(len(queries)):
            bitmap = base
            if u < len(exclude) and len(exclude[u]):
                drop = np.asarray(exclude[u], dtype=np.int64)
                drop = drop[(drop >= 0) & (drop < self.matrix.num_items)]
                bitmap = base.copy()
                np.bitwise_and.at(bitmap, drop >> 3, ~np.left_shift(1, drop & 7).astype(np.uint8))
            params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(self.matrix.num_items,
                                                                       faiss.swig_ptr(bitmap)))
            for wanted in (k + self.SLACK, 8 * (k + self.SLACK)):
                found, labels = self.index.search(queries[u:u + 1], wanted, params=params)
                kept = labels[0] >= 0
                scores, labels_u = found[0][kept].astype(np.float64) * unit[u], labels[0][kept]
                kth = scores[min(k, len(scores)) - 1] if len(scores) else 0.0
                floor = kth - 2 * (error[u] + rho[u]) - abs(kth) * 4 * FP32_U
                complete = len(labels_u) < wanted or scores[-1] < floor  # no candidate past what FAISS kept
                if complete:
                    break
            if not complete:
                in_fp32.append(u)
                continue
            if len(labels_u) == 0:
                continue
            chosen = labels_u[scores >= floor] if len(labels_u) >= k else labels_u
            rows.append(np.full(len(chosen), u, np.int64))
            items.append(chosen.astype(np.int64))
        ranked = rescore(self.matrix, vectors, np.concatenate(rows) if rows else np.empty(0, np.int64),
                         np.concatenate(items) if items else np.empty(0, np.int64), k)
        if in_fp32:
            picked = torch.as_tensor(in_fp32)
            redo = self.fallback.top_k(vectors[picked], k, allowed, [exclude[u] for u in in_fp32]
                                       if len(exclude) else ())
            for u, hits in zip(in_fp32, redo):
                ranked[u] = hits
        return ranked


class FaissSq8Direct(FaissScan):
    """QT_8bit_direct_signed: item j stored as integers c_j = round(w_j / s), one scale s = max|w| / 127.

    FAISS casts the query to the same int8 codes (it scans with integer products), so each user
    vector gets its own scale: v ~ v' = step * q with integer q in [-127, 127]. The scan's q.c_j is
    then exact (|q.c_j| <= 127^2 d < 2^24 for d <= 1040, whether FAISS sums integers or floats), and
    v.w - v'.w' = (v - v').w + v'.(w - w') gives e = |v - v'| M + |v'| R, R = max_j |w_j - s c_j|.
    """

    name = "faiss-sq8-direct"
    qtype = "QT_8bit_direct_signed"

    def __init__(self, matrix: ItemMatrix) -> None:
        if matrix.dim > 1040:
            raise ScoringKernelError(f"{self.name}: dim {matrix.dim} > 1040, integer products would not be exact")
        super().__init__(matrix)
        weights = matrix.weights
        self.scale = float(weights.abs().max()) / 127 or 1.0
        self.check_exact()
        codes = torch.round(weights / self.scale).clamp_(-127, 127)
        self.index.add(codes.numpy())
        self.max_residual = residual_bound(weights, codes.mul_(self.scale), matrix.max_norm)

    def check_exact(self) -> None:
        """ScoringKernelError unless this FAISS build scans QT_8bit_direct_signed with exact integer sums."""
        d = self.matrix.dim
        codes = np.full((8, d), 127, np.float32)
        codes[1::2] = -127
        codes[2::4, ::2] = -127
        probe = self.faiss.IndexScalarQuantizer(d, self.index.sq.qtype, self.faiss.METRIC_INNER_PRODUCT)
        probe.add(codes)
        found, labels = probe.search(codes, len(codes))
        want = codes.astype(np.float64) @ codes.T.astype(np.float64)
        if not all(np.array_equal(found[u], want[u, labels[u]]) for u in range(len(codes))):
            raise ScoringKernelError(f"{self.name}: this FAISS build does not scan int8 codes exactly")

    def queries(self, vectors):
        v = vectors.detach().double().numpy()
        steps = np.maximum(np.abs(v).max(1), 1e-30) / 127
        codes = np.clip(np.round(v / steps[:, None]), -127, 127)
        error = (np.linalg.norm(v - codes * steps[:, None], axis=1) * self.matrix.max_norm
                 + np.linalg.norm(codes, axis=1) * steps * self.max_residual) * (1 + 1e-6)
        return np.ascontiguousarray(codes, dtype=np.float32), steps * self.scale, error


class FaissSq8(FaissScan):
    """QT_8bit: per dimension a trained range, x_jd = vmin_d + (c_jd + 0.5) / 255 vdiff_d, decoded in fp32.

    With x'_j the decoded rows (`reconstruct_n`), R = max_j |w_j - x'_j| and X = max_j |x'_j|. The
    scan decodes with SIMD code that may round differently, by at most
    D = 16 u |(|vmin| + |vdiff|)|_2 per row; then e = |v| (R + D) + gamma_d |v| (X + D).
    """

    name = "faiss-sq8"
    qtype = "QT_8bit"

    def __init__(self, matrix: ItemMatrix) -> None:
        super().__init__(matrix)
        weights = matrix.weights.numpy()
        self.index.train(weights)
        self.index.add(weights)
        decoded = torch.from_numpy(self.index.reconstruct_n(0, matrix.num_items))
        trained = self.faiss.vector_to_array(self.index.sq.trained).astype(np.float64)
        spread = np.abs(trained[:matrix.dim]) + np.abs(trained[matrix.dim:2 * matrix.dim])
        decode = 16 * FP32_U * float(np.linalg.norm(spread))
        self.max_decoded = float(decoded.norm(dim=1).max()) * (1 + 1e-5) + 8 * FP32_U * matrix.max_norm + decode
        self.max_residual = residual_bound(matrix.weights, decoded, matrix.max_norm) + decode

    def queries(self, vectors):
        norms = vectors.double().norm(dim=1).numpy()
        error = (norms * self.max_residual + gamma(self.matrix.dim) * norms * self.max_decoded) * (1 + 1e-6)
        return np.ascontiguousarray(vectors.detach().numpy(), dtype=np.float32), np.ones(len(norms)), error


KERNEL_TYPES: dict[str, type[Kernel]] = {
    k.name: k for k in (Fp32, Int8Torch, FaissSq8Direct, FaissSq8, Fp16Torch)
}


# -- the choice -----------------------------------------------------------------------------------
@dataclass
class Plan:
    """Which kernel ranks a batch of each size, and what the calibration measured."""

    kernels: dict[str, Kernel]
    by_bucket: dict[int, str]
    forced: bool = False
    reason: str = ""
    ms: dict[str, dict[int, float]] = field(default_factory=dict)  # kernel -> bucket -> best timed run
    failed: dict[str, str] = field(default_factory=dict)  # kernel -> why it was not used
    seconds: float = 0.0  # calibration time

    def kernel_for(self, users: int) -> Kernel:
        bucket = next((b for b in BUCKETS if users <= b), BUCKETS[-1])
        return self.kernels[self.by_bucket[bucket]]

    def describe(self) -> dict[str, Any]:
        """For /stats and logs: the kernel per batch-size bucket and the measurements behind it."""
        return {
            "by_batch": {str(b): name for b, name in self.by_bucket.items()},
            "forced": self.forced,
            "reason": self.reason,
            "ms": {name: {str(b): round(ms, 3) for b, ms in row.items()} for name, row in self.ms.items()},
            "failed": dict(self.failed),
            "calibration_s": round(self.seconds, 3),
            "cpu": torch.backends.cpu.get_cpu_capability(),
        }

    def summary(self) -> str:
        return ", ".join(f"{b} users: {name}" + (f" {self.ms[name][b]:.2f} ms" if b in self.ms.get(name, {}) else "")
                         for b, name in self.by_bucket.items())


def forced_plan(matrix: ItemMatrix, name: str) -> Plan:
    if name not in KERNEL_TYPES:
        raise ScoringKernelError(f"scoring_kernel {name!r}: expected auto or one of {', '.join(KERNELS)}")
    kernel = KERNEL_TYPES[name](matrix)
    return Plan({"fp32": Fp32(matrix), name: kernel}, dict.fromkeys(BUCKETS, name), forced=True,
                reason="forced by SCORING_KERNEL")


def calibration_batch(matrix: ItemMatrix, users: int, seed: int = 0, like: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, list[np.ndarray]]:
    """`users` query vectors, each excluding CALIBRATION_EXCLUDED random items, like a history of that length.

    `like`: real user vectors (the first ranking's); the batch cycles through them with 10 % noise,
    so the scores, and with them the candidates each kernel re-scores, are distributed like the
    model's. Without them, each vector is the sum of three item rows.
    """
    rng = np.random.default_rng(seed)
    n = matrix.num_items
    if like is not None and len(like):
        rows = like.detach().float()[torch.from_numpy(np.arange(users) % len(like))]
        noise = torch.from_numpy(rng.standard_normal(rows.shape).astype(np.float32))
        vectors = (rows + 0.1 * noise * rows.norm(dim=1, keepdim=True) / rows.shape[1] ** 0.5).contiguous()
    else:
        picks = torch.from_numpy(rng.integers(1, n, (users, 3)))
        vectors = matrix.weights[picks].sum(1).contiguous()
    exclude = [rng.integers(1, n, min(CALIBRATION_EXCLUDED, n - 1)) for _ in range(users)]
    return vectors, exclude


def same_ranking(got: Ranked, want: Ranked) -> bool:
    """Equal fp32 score lists (the items may differ only where scores tie within fp32 rounding)."""
    return len(got) == len(want) and all(
        len(g[1]) == len(w[1]) and np.allclose(g[1], w[1], rtol=1e-5, atol=1e-6) for g, w in zip(got, want))


def calibrate(matrix: ItemMatrix, names: Sequence[str] = KERNELS, budget_seconds: float = 4.0,
              like: torch.Tensor | None = None) -> Plan:
    """Time the kernels per bucket on this matrix and CPU; each bucket gets the fastest one that ranked correctly.

    Buckets from the smallest (batches of one user matter most), kernels in the order of `names`
    (fp32 first: its first run of a bucket is the reference ranking); a kernel is built when first
    needed. Its first run of a bucket checks the ranking against fp32 (one-time costs land there);
    up to TIMED_RUNS timed runs follow, interleaved across kernels (load from other processes hits
    them alike), the best one kept. A kernel PRUNE_FACTOR times slower than the best of a bucket is
    not timed there again, nor tried in the next bucket; one that fails or ranks wrongly never serves. Past `budget_seconds`
    nothing more is built or run: a bucket is served by the fastest kernel measured in it (by its
    checking run when no timed run fit), else by the choice of the bucket below.
    """
    start = time.perf_counter()
    names = ["fp32", *(n for n in names if n != "fp32")]
    kernels: dict[str, Kernel] = {}
    failed: dict[str, str] = {}
    ms: dict[str, dict[int, float]] = {}
    expected: dict[int, Ranked] = {}
    checked: set[tuple[str, int]] = set()
    pruned: set[tuple[str, int]] = set()
    untimed: dict[str, dict[int, float]] = {}
    timed_out = False
    for below, b in zip((None, *BUCKETS), BUCKETS):
        vectors, exclude = calibration_batch(matrix, b, like=like)
        pruned |= {(name, b) for name, bucket in pruned if bucket == below}  # far behind there: not tried here
        for _ in range(TIMED_RUNS + 1):
            for name in names:
                if name in failed or (name, b) in pruned or (name != "fp32" and b not in expected):
                    continue
                if time.perf_counter() - start > budget_seconds:
                    timed_out = True
                    break
                try:
                    kernel = kernels.get(name) or kernels.setdefault(name, KERNEL_TYPES[name](matrix))
                    t0 = time.perf_counter()
                    ranked = kernel.top_k(vectors, CALIBRATION_K, None, exclude)
                    elapsed = (time.perf_counter() - t0) * 1000
                except Exception as exc:  # noqa: BLE001 - a kernel that cannot be built or run here never serves
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    continue
                if (name, b) not in checked:
                    checked.add((name, b))
                    if name == "fp32":
                        expected[b] = ranked
                    elif not same_ranking(ranked, expected[b]):
                        failed[name] = f"ranked {b} calibration users unlike fp32"
                    untimed.setdefault(name, {})[b] = elapsed  # stands in if the budget allows no timed run
                    continue
                row = ms.setdefault(name, {})
                row[b] = min(row.get(b, np.inf), elapsed)
                if name != "fp32" and row[b] > PRUNE_FACTOR * min(r[b] for n, r in ms.items()
                                                                 if b in r and n not in failed):
                    pruned.add((name, b))  # fp32 always runs: it is every bucket's reference
    for name, row in untimed.items():
        for b, elapsed in row.items():
            ms.setdefault(name, {}).setdefault(b, elapsed)
    by_bucket: dict[int, str] = {}
    for b in BUCKETS:  # a bucket nothing was timed in (budget) takes the choice of the one below
        timed = {name: row[b] for name, row in ms.items() if b in row and name not in failed}
        by_bucket[b] = min(timed, key=lambda name: timed[name]) if timed else by_bucket.get(b // 4, "fp32")
    used = {name: kernels.get(name) or KERNEL_TYPES[name](matrix) for name in {"fp32", *by_bucket.values()}}
    return Plan(used, by_bucket, reason="measured" + (" (budget reached)" if timed_out else ""),
                ms={n: ms[n] for n in names if n in ms}, failed=failed, seconds=time.perf_counter() - start)


# -- one plan per item matrix ---------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    kernel: str = "auto"  # or one of KERNELS
    budget_seconds: float = 4.0


_POLICY = Policy()
_MATRICES: dict[int, tuple[weakref.ref, int, ItemMatrix]] = {}
_PLANS: dict[int, tuple[weakref.ref, int, Plan]] = {}
_LOCK = threading.RLock()


def configure(kernel: str = "auto", budget_seconds: float = 4.0) -> None:
    """How plans are made from now on (the settings SCORING_KERNEL, SCORING_CALIBRATION_SECONDS).

    Plans made under another policy are dropped; the next ranking makes a new one.
    """
    global _POLICY
    if kernel != "auto" and kernel not in KERNEL_TYPES:
        raise ScoringKernelError(f"scoring_kernel {kernel!r}: expected auto or one of {', '.join(KERNELS)}")
    policy = Policy(kernel, budget_seconds)
    with _LOCK:
        if policy != _POLICY:
            _POLICY = policy
            _PLANS.clear()


def _made_once(cache: dict[int, tuple[weakref.ref, int, Any]], weights: torch.Tensor, make: Any) -> Any:
    """make(weights), once per tensor (and again after an in-place change of it)."""
    with _LOCK:
        entry = cache.get(id(weights))
        if entry is None or entry[0]() is not weights or entry[1] != weights._version:
            for key in [key for key, (ref, _, _) in cache.items() if ref() is None]:
                del cache[key]
            entry = (weakref.ref(weights), weights._version, make(weights))
            cache[id(weights)] = entry
        return entry[2]


def matrix_for(weights: torch.Tensor) -> ItemMatrix:
    """The ItemMatrix of a CPU fp32 item matrix (its fp32 BLAS operand), made once."""
    return _made_once(_MATRICES, weights, ItemMatrix.of)


def plan_for(weights: torch.Tensor, like: torch.Tensor | None = None) -> Plan:
    """The plan of a CPU fp32 item matrix under the configured policy, made (and measured) once.

    `like`: user vectors to calibrate with (see `calibration_batch`), when the plan is made now.
    """
    return _made_once(_PLANS, weights, lambda w: make_plan(matrix_for(w), _POLICY, like))


def make_plan(matrix: ItemMatrix, policy: Policy, like: torch.Tensor | None = None) -> Plan:
    """The forced kernel, else (or when the forced one cannot run here: logged, in `failed`) the measured choice."""
    if policy.kernel != "auto":
        try:
            return logged(matrix, forced_plan(matrix, policy.kernel))
        except ScoringKernelError as exc:  # serve anyway, with the measured choice, and say why
            log.error("SCORING_KERNEL=%s cannot run here, choosing by measurement instead: %s", policy.kernel, exc)
            plan = make_plan(matrix, Policy("auto", policy.budget_seconds), like)
            plan.failed[policy.kernel] = str(exc)
            plan.reason = f"SCORING_KERNEL={policy.kernel} refused; {plan.reason}"
            return plan
    if matrix.num_items < MIN_ITEMS:
        return Plan({"fp32": Fp32(matrix)}, dict.fromkeys(BUCKETS, "fp32"),
                    reason=f"fewer than {MIN_ITEMS:,} items: fp32 is cheap")
    return logged(matrix, calibrate(matrix, KERNELS, policy.budget_seconds, like))


def logged(matrix: ItemMatrix, plan: Plan) -> Plan:
    log.info("scoring kernels for %d x %d items on %s (%s, %.2f s): %s%s", matrix.num_items, matrix.dim,
             torch.backends.cpu.get_cpu_capability(), plan.reason, plan.seconds, plan.summary(),
             "".join(f"; {name} not used: {why}" for name, why in plan.failed.items()))
    return plan
