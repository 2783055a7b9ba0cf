"""serving.kernels: every first-pass kernel ranks exactly; the calibration picks a working kernel in its budget.

Exactness is checked against a float64 brute force, with filters, exclusions and planted near-ties
(items whose scores differ by far less than any quantizer's error, so only the fp32 re-score can
order them). The API shows the choice in /stats and /metrics, and SCORING_KERNEL forces one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import typing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from movierec.api.app import create_app
from movierec.data.prepared import load_prepared
from movierec.serving import kernels
from movierec.serving.inference import exact_top_k, scoring_plan
from movierec.serving.kernels import (
    KERNEL_TYPES,
    KERNELS,
    FaissScan,
    ItemMatrix,
    Plan,
    ScoringKernelError,
    TwoPass,
    calibrate,
    configure,
    plan_for,
)
from movierec.settings import Settings
from movierec.store import open_store

ITEMS, DIM = 20_000, 32


@pytest.fixture(autouse=True)
def auto_policy() -> Iterator[None]:
    """Each test starts and ends with the default policy (plans are per process)."""
    configure("auto")
    yield
    configure("auto")


def catalog(items: int = ITEMS, dim: int = DIM, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    norms = torch.rand(items + 1, 1, generator=generator) + 0.5  # items of different norms
    return torch.randn(items + 1, dim, generator=generator) * 0.05 * norms


def brute_force(vectors: torch.Tensor, weights: torch.Tensor, k: int, allowed=None, exclude=()) -> list[np.ndarray]:
    scores = (vectors.double() @ weights.double().T).numpy()
    out = []
    for row in range(len(vectors)):
        ok = np.ones(len(weights), bool) if allowed is None else allowed.copy()
        ok[0] = False
        if len(exclude):
            ok[exclude[row]] = False
        candidates = np.flatnonzero(ok)
        out.append(candidates[np.argsort(-scores[row, candidates], kind="stable")[:k]])
    return out


def assert_exact(kernel: kernels.Kernel, vectors, weights, k, allowed=None, exclude=()) -> None:
    ranked = kernel.top_k(vectors, k, allowed, exclude)
    expected = brute_force(vectors, weights, k, allowed, exclude)
    exact = (vectors.double() @ weights.double().T).numpy()
    assert len(ranked) == len(vectors)
    for row, (items, scores) in enumerate(ranked):
        assert items.tolist() == expected[row].tolist(), (kernel.name, row)
        np.testing.assert_allclose(scores, exact[row, items], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def weights() -> torch.Tensor:
    return catalog()


@pytest.fixture(scope="module")
def built(weights: torch.Tensor) -> dict[str, kernels.Kernel]:
    matrix = ItemMatrix.of(weights)
    return {name: KERNEL_TYPES[name](matrix) for name in KERNELS}


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("users", [1, 5, 20])
def test_every_kernel_ranks_like_float64_with_filters_and_exclusions(
    name: str, users: int, weights: torch.Tensor, built: dict[str, kernels.Kernel]
) -> None:
    rng = np.random.default_rng(users)
    vectors = torch.randn(users, DIM, generator=torch.Generator().manual_seed(users)) * 3
    allowed = rng.random(len(weights)) < 0.3
    exclude = [rng.integers(1, len(weights), 200) for _ in range(users)]
    assert_exact(built[name], vectors, weights, 10)
    assert_exact(built[name], vectors, weights, 10, allowed, exclude)
    assert_exact(built[name], vectors, weights, 1, None, exclude)


@pytest.mark.parametrize("name", KERNELS)
def test_planted_near_ties_are_decided_in_fp32(name: str) -> None:
    # around the top and around the 10th place, 40 items each whose scores differ by ~1e-5 relative:
    # far inside every quantizer's error, so the first pass cannot order them and fp32 must
    weights = catalog(seed=7)
    vector = torch.randn(1, DIM, generator=torch.Generator().manual_seed(8))
    unit = vector[0] / vector[0].norm() ** 2  # w + t * unit scores t higher
    order = torch.argsort(weights @ vector[0], descending=True)
    top, tenth = weights[order[0]].clone(), weights[order[9]].clone()
    shuffled = torch.randperm(80, generator=torch.Generator().manual_seed(9))
    for i, slot in enumerate(shuffled.tolist()):
        base = top if i < 40 else tenth
        weights[1000 + slot] = base + (i % 40 - 20) * 1e-5 * float(base @ vector[0]) * unit
    assert_exact(KERNEL_TYPES[name](ItemMatrix.of(weights)), vector, weights, 10)
    assert_exact(KERNEL_TYPES[name](ItemMatrix.of(weights)), vector, weights, 50)


@pytest.mark.parametrize("name", KERNELS)
def test_everything_tied_makes_everything_a_candidate(name: str) -> None:
    generator = torch.Generator().manual_seed(4)
    weights = torch.randn(1, DIM, generator=generator) + torch.randn(ITEMS + 1, DIM, generator=generator) * 1e-4
    vectors = torch.randn(3, DIM, generator=generator)
    assert_exact(KERNEL_TYPES[name](ItemMatrix.of(weights)), vectors, weights, 10)


@pytest.mark.parametrize("name", KERNELS)
def test_fewer_allowed_items_than_k_returns_all_of_them(name: str, built: dict[str, kernels.Kernel]) -> None:
    allowed = np.zeros(ITEMS + 1, bool)
    allowed[[5, 50, 500]] = True
    ranked = built[name].top_k(torch.randn(2, DIM), 10, allowed, [np.array([50]), np.array([], np.int64)])
    assert sorted(ranked[0][0].tolist()) == [5, 500]
    assert sorted(ranked[1][0].tolist()) == [5, 50, 500]


@pytest.mark.parametrize("name", [n for n in KERNELS if issubclass(KERNEL_TYPES[n], TwoPass)])
def test_score_matrix_kernels_stay_within_their_bound(name: str, weights: torch.Tensor,
                                                      built: dict[str, kernels.Kernel]) -> None:
    kernel = typing.cast(TwoPass, built[name])
    for scale in (0.01, 1.0, 100.0):
        vectors = torch.randn(8, DIM, generator=torch.Generator().manual_seed(int(scale * 100))) * scale
        vectors[0] = vectors[0].abs()
        approx, bound = kernel.approx(vectors)
        error = (approx.double() - vectors.double() @ weights.double().T).abs().amax(1)
        assert (error <= bound).all(), (error, bound)
        if name == "int8-torch":
            assert (bound < 20 * error).all(), "the bound should not be so loose that every item is a candidate"


@pytest.mark.parametrize("name", [n for n in KERNELS if issubclass(KERNEL_TYPES[n], FaissScan)])
def test_faiss_scan_scores_stay_within_their_bound(name: str, weights: torch.Tensor,
                                                   built: dict[str, kernels.Kernel]) -> None:
    kernel = typing.cast(FaissScan, built[name])
    for scale in (0.01, 1.0, 100.0):
        vectors = torch.randn(4, DIM, generator=torch.Generator().manual_seed(int(scale * 100))) * scale
        queries, unit, bound = kernel.queries(vectors)
        found, labels = kernel.index.search(queries, 1000)
        exact = (vectors.double() @ weights.double().T).numpy()
        for u in range(len(vectors)):
            error = np.abs(found[u] * unit[u] - exact[u, labels[u]]).max()
            assert error <= bound[u], (error, bound[u])
            assert bound[u] < 20 * error, "the bound should not be so loose that every item is a candidate"


# -- the choice -----------------------------------------------------------------------------------
class Broken(kernels.Fp32):
    name = "broken"

    def top_k(self, vectors, k, allowed, exclude):
        raise RuntimeError("no such instruction")


class Wrong(kernels.Fp32):
    name = "wrong"

    def top_k(self, vectors, k, allowed, exclude):
        return [(items[::-1], scores[::-1]) for items, scores in super().top_k(vectors, k, allowed, exclude)]


def test_calibration_picks_a_measured_kernel_per_bucket_never_a_failed_one(
    weights: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(KERNEL_TYPES, "broken", Broken)
    monkeypatch.setitem(KERNEL_TYPES, "wrong", Wrong)
    plan = calibrate(ItemMatrix.of(weights), ["wrong", "broken", "fp32", "faiss-sq8-direct", "int8-torch"],
                     budget_seconds=60)
    assert set(plan.failed) >= {"broken", "wrong"}
    assert "no such instruction" in plan.failed["broken"] and "unlike fp32" in plan.failed["wrong"]
    assert set(plan.by_bucket) == set(kernels.BUCKETS)
    for bucket, name in plan.by_bucket.items():
        assert name not in plan.failed
        timed = {n: row[bucket] for n, row in plan.ms.items() if bucket in row and n not in plan.failed}
        assert plan.ms[name][bucket] == min(timed.values()), (bucket, timed)
    assert plan.kernel_for(1).name == plan.by_bucket[1]
    assert plan.kernel_for(3).name == plan.by_bucket[4]
    assert plan.kernel_for(1000).name == plan.by_bucket[kernels.BUCKETS[-1]]


def test_calibration_stops_at_its_budget() -> None:
    matrix = ItemMatrix.of(catalog(60_000, 128, seed=2))
    plan = calibrate(matrix, KERNELS, budget_seconds=0.2)
    assert "budget reached" in plan.reason
    assert plan.seconds < 0.2 + 10, "one kernel run or build may overrun the budget, not many"
    assert set(plan.by_bucket.values()) <= set(plan.kernels) and not set(plan.by_bucket.values()) & set(plan.failed)


def test_forcing_a_kernel_is_honoured_and_a_bad_name_is_refused(weights: torch.Tensor) -> None:
    configure("faiss-sq8")
    plan = plan_for(weights)
    assert plan.forced and set(plan.by_bucket.values()) == {"faiss-sq8"} and plan.ms == {}
    assert scoring_plan(weights)["by_batch"] == {str(b): "faiss-sq8" for b in kernels.BUCKETS}
    vectors = torch.randn(3, DIM)
    ranked = exact_top_k(vectors, weights, 10)
    assert [i.tolist() for i, _ in ranked] == [e.tolist() for e in brute_force(vectors, weights, 10)]
    configure("auto", budget_seconds=0.3)
    assert not plan_for(weights).forced, "a new policy makes a new plan"
    with pytest.raises(ScoringKernelError, match="scoring_kernel 'avx9'"):
        configure("avx9")
    with pytest.raises(ValueError, match="scoring_kernel"):
        Settings(scoring_kernel="avx9")
    assert set(typing.get_args(Settings.model_fields["scoring_kernel"].annotation)) == {"auto", *KERNELS}


def test_calibration_users_look_like_the_real_ones_given(weights: torch.Tensor) -> None:
    matrix = ItemMatrix.of(weights)
    real = torch.randn(3, DIM, generator=torch.Generator().manual_seed(5)) * 7
    vectors, exclude = kernels.calibration_batch(matrix, 16, like=real)
    assert vectors.shape == (16, DIM) and len(exclude) == 16
    like = real[torch.arange(16) % 3]
    cosine = torch.nn.functional.cosine_similarity(vectors, like)
    assert (cosine > 0.9).all() and (vectors != like).any(dim=1).all(), "near the real ones, not copies"
    torch.testing.assert_close(vectors.norm(dim=1), like.norm(dim=1), rtol=0.2, atol=0)


def test_a_faiss_scan_runs_on_one_openmp_thread_in_any_calling_thread(built: dict[str, kernels.Kernel]) -> None:
    import faiss

    seen: list[int] = []

    def model_thread() -> None:  # OpenMP's thread count is per thread: a new one starts at one per core
        built["faiss-sq8-direct"].top_k(torch.randn(2, DIM), 10, None, ())
        seen.append(faiss.omp_get_max_threads())

    worker = threading.Thread(target=model_thread)
    worker.start()
    worker.join()
    assert seen == [1]


def test_small_catalogs_use_fp32_without_measuring() -> None:
    plan = plan_for(catalog(1000))
    assert set(plan.by_bucket.values()) == {"fp32"} and plan.ms == {} and "fewer than" in plan.reason


def test_the_plan_follows_in_place_updates() -> None:
    weights = catalog(1000)
    configure("int8-torch")
    vector = torch.randn(1, DIM)
    before = exact_top_k(vector, weights, 5)[0]
    with torch.no_grad():
        weights.neg_()
    after = exact_top_k(vector, weights, 5)[0]
    assert after[0].tolist() == brute_force(vector, weights, 5)[0].tolist() != before[0].tolist()


def test_describe_names_every_bucket() -> None:
    matrix = ItemMatrix.of(catalog(100))
    plan = Plan({"fp32": kernels.Fp32(matrix)}, dict.fromkeys(kernels.BUCKETS, "fp32"), ms={"fp32": {1: 0.5}})
    described = plan.describe()
    assert described["by_batch"] == {str(b): "fp32" for b in kernels.BUCKETS}
    assert described["ms"] == {"fp32": {"1": 0.5}} and described["cpu"]


# -- the API shows the choice ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def home(pattern_prepared: Path, pattern_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    shutil.copytree(pattern_model, home / "model")
    with open_store(None, home / "store.sqlite") as store:
        store.load_prepared(load_prepared(pattern_prepared), progress=False)
    return home


@pytest.mark.parametrize("kernel", ["faiss-sq8-direct", "auto"])
def test_the_api_shows_the_kernel_in_stats_and_metrics(home: Path, kernel: str) -> None:
    with TestClient(create_app(Settings(movierec_home=home, scoring_kernel=kernel))) as client:
        recommended = client.post("/recommend", json={"user_id": 1, "k": 10, "method": "torchserve"})
        assert recommended.status_code == 200, recommended.text
        scoring = client.get("/stats").json()["scoring"]
        metrics = client.get("/metrics").text
    expected = "faiss-sq8-direct" if kernel != "auto" else "fp32"  # the pattern catalog is small: fp32
    assert scoring["by_batch"] == {str(b): expected for b in kernels.BUCKETS}
    assert scoring["forced"] is (kernel != "auto")
    for bucket in kernels.BUCKETS:
        assert f'movierec_scoring_kernel_info{{batch="{bucket}",kernel="{expected}"}} 1.0' in metrics


SATURATION_CHECK = """
import json, sys
import numpy as np, torch
from movierec.serving import kernels
generator = torch.Generator().manual_seed(0)
weights = torch.randn(20_001, 128, generator=generator) * 0.05
matrix = kernels.ItemMatrix.of(weights)
try:
    kernels.Int8Torch(matrix)
    refused = None
except kernels.ScoringKernelError as exc:
    refused = str(exc)
plan = kernels.calibrate(matrix, kernels.KERNELS, budget_seconds=30)
vectors = torch.randn(64, 128, generator=generator) * 3
exact = (vectors.double() @ weights.double().T)
exact[:, 0] = -np.inf
expected = torch.topk(exact, 10, dim=1).indices.tolist()
got = [items.tolist() for items, _ in plan.kernel_for(64).top_k(vectors, 10, None, ())]
forced = kernels.make_plan(matrix, kernels.Policy("int8-torch", 30))
print(json.dumps({"refused": refused, "chosen": sorted(set(plan.by_bucket.values())), "exact": got == expected,
                  "capability": torch.backends.cpu.get_cpu_capability(), "forced": forced.forced,
                  "forced_failed": sorted(forced.failed), "forced_reason": forced.reason}))
"""


def test_under_forced_avx2_dispatch_a_saturating_int8_gemm_is_refused_and_ranking_stays_exact() -> None:
    # oneDNN's AVX2 int8 GEMM (no VNNI) multiplies in saturating int16: 127 * 127 * 128 comes out 16,320
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "FAISS_OPT_LEVEL": "avx2"}
    out = subprocess.run([sys.executable, "-c", SATURATION_CHECK], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["capability"] == "AVX2"
    assert result["exact"]
    if result["refused"] is not None:
        assert "not exact" in result["refused"] and "int8-torch" not in result["chosen"]
        # forcing it anyway serves with the measured choice and says why (the API keeps starting)
        assert not result["forced"] and "int8-torch" in result["forced_failed"]
        assert result["forced_reason"].startswith("SCORING_KERNEL=int8-torch refused")
