"""First-pass scoring kernels of the exact top-k: ms per batch of users, per kernel, per CPU dispatch.

    python bench/kernels.py                          # native dispatch, then forced AVX2
    python bench/kernels.py --dispatch native --runs 20 --model artifacts/model

Each kernel of serving/kernels.py ranks batches of 1, 4, 16 and 64 users (each user excluding 100
items, k = 10) over an ML-32M-sized item matrix (87,585 x 128: the bench/serve.py model when it
exists, with user vectors the model makes from random histories; else random weights; --model for
a trained one) on one thread, like the API's model thread.
A cell is the median of --runs runs after one warm-up, or `wrong` if the ranking differed from
fp32's. The last row is what the calibration at load (`auto`) picks per batch size, run in the same
process. `--dispatch avx2` runs a child process with torch, oneDNN and FAISS forced to AVX2
(ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, FAISS_OPT_LEVEL=avx2): the paths an AVX2-only
CPU takes, though on this CPU's cache and memory, so only an approximation of such a machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import header  # noqa: E402

ITEMS, DIM = 87_585, 128
BATCHES = (1, 4, 16, 64)
DISPATCH = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "FAISS_OPT_LEVEL": "avx2"},
    "generic": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "FAISS_OPT_LEVEL": "generic"},
}


def item_weights(model: Path | None):
    """(item matrix, user vectors like the model's or None, what they are)."""
    import torch

    if model is not None and (model / "model.pt").is_file():
        from movierec.model.artifact import load_artifact
        from movierec.serving.inference import encode

        gsasrec = load_artifact(model).model.eval()
        weights = gsasrec.output_embeddings.detach().contiguous()
        rng = np.random.default_rng(0)  # 64 users with 20-200 random items, encoded by the model
        histories = [rng.integers(1, len(weights), int(n)) for n in rng.integers(20, 201, 64)]
        with torch.inference_mode():
            users = encode(gsasrec, histories).vectors
        return weights, users, f"{model}, user vectors of 64 random histories"
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(ITEMS + 1, DIM, generator=generator) * 0.05, None,
            "random N(0, 0.05) weights, users = sums of 3 items")


def measure(model: Path | None, runs: int, budget: float) -> dict:
    """In this process (its dispatch): ms per kernel and batch, and the calibration's choice."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    from movierec.serving import kernels

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    threadpool_limits(1, user_api="blas")
    weights, users, source = item_weights(model)
    matrix = kernels.ItemMatrix.of(weights)
    fp32 = kernels.Fp32(matrix)
    batches = {b: kernels.calibration_batch(matrix, b, seed=1, like=users) for b in BATCHES}
    expected = {b: fp32.top_k(v, kernels.CALIBRATION_K, None, e) for b, (v, e) in batches.items()}
    cells: dict[str, dict[str, str | float]] = {}
    refused: dict[str, str] = {}
    for name in kernels.KERNELS:
        try:
            kernel = kernels.KERNEL_TYPES[name](matrix)
        except Exception as exc:  # noqa: BLE001 - the table says why a kernel is missing
            cells[name] = dict.fromkeys(map(str, BATCHES), "refused")
            refused[name] = str(exc)
            continue
        row: dict[str, str | float] = {}
        for b, (vectors, exclude) in batches.items():
            if not kernels.same_ranking(kernel.top_k(vectors, kernels.CALIBRATION_K, None, exclude), expected[b]):
                row[str(b)] = "wrong"
                continue
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                kernel.top_k(vectors, kernels.CALIBRATION_K, None, exclude)
                times.append((time.perf_counter() - start) * 1000)
            row[str(b)] = float(np.median(times))
        cells[name] = row
    plan = kernels.calibrate(matrix, kernels.KERNELS, budget, like=users)
    return {"cells": cells, "refused": refused, "auto": {str(b): plan.by_bucket[b] for b in BATCHES},
            "calibration_s": plan.seconds, "source": source, "torch": torch.__version__,
            "faiss": faiss.__version__, "capability": torch.backends.cpu.get_cpu_capability()}


def run_child(dispatch: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, **DISPATCH[dispatch]}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--child", out.name, "--runs", str(args.runs), "--budget", str(args.budget)]
        if args.model:
            cmd += ["--model", str(args.model)]
        subprocess.run(cmd, env=env, check=True)
        return json.loads(Path(out.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dispatch", default="native,avx2", help=f"comma-separated: {', '.join(DISPATCH)}")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per cell (the median is shown)")
    parser.add_argument("--budget", type=float, default=4.0, help="calibration budget (s), as SCORING_CALIBRATION_SECONDS")
    parser.add_argument("--model", type=Path, help="a model artifact folder (default: bench/serve.py's, else random)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        default = Path(tempfile.gettempdir()) / "movierec-bench-serve" / "model"
        args.model = default if (default / "model.pt").is_file() else None
    if args.child:
        Path(args.child).write_text(json.dumps(measure(args.model, args.runs, args.budget)))
        return
    dispatches = [d for d in args.dispatch.split(",") if d]
    unknown = [d for d in dispatches if d not in DISPATCH]
    if unknown:
        raise SystemExit(f"--dispatch: unknown {', '.join(unknown)} (known: {', '.join(DISPATCH)})")
    results = {d: run_child(d, args) for d in dispatches}
    first = next(iter(results.values()))
    print(header())
    print(f"# torch {first['torch']}, faiss {first['faiss']}; one thread; item matrix {ITEMS + 1:,} x {DIM} "
          f"({first['source']}); k = 10, 100 items excluded per user; median of {args.runs} runs, ms per batch")
    print()
    print("| kernel | dispatch (torch) | " + " | ".join(f"{b} user{'s' if b > 1 else ''}" for b in BATCHES) + " |")
    print("|---|---|" + "---:|" * len(BATCHES))
    for dispatch, result in results.items():
        cells = result["cells"]
        best = {str(b): min((row[str(b)] for row in cells.values() if isinstance(row[str(b)], float)),
                            default=None) for b in BATCHES}
        for name, row in cells.items():
            shown = []
            for b in BATCHES:
                value = row[str(b)]
                text = f"{value:.2f}" if isinstance(value, float) else str(value)
                shown.append(f"**{text}**" if value == best[str(b)] else text)
            print(f"| {name} | {dispatch} ({result['capability']}) | " + " | ".join(shown) + " |")
        print(f"| *auto picks* (calibrated in {result['calibration_s']:.1f} s) | {dispatch} | "
              + " | ".join(result["auto"][str(b)] for b in BATCHES) + " |")
    print()
    for dispatch, result in results.items():
        for name, why in result["refused"].items():
            print(f"- {name} refused under {dispatch} dispatch: {why}")


if __name__ == "__main__":
    main()
