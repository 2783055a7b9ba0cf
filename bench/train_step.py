"""Training-step benchmark: seconds per gSASRec step at the paper's ML-1M config, and ML-32M-shaped training.

    python bench/train_step.py                         # every row (ML-32M synthetic set made once in --ml32m-dir)
    python bench/train_step.py --rows gemm,full,ml1m   # a subset
    python bench/train_step.py --ml32m-dir /data/synth32m
    python bench/train_step.py --rows full,ml1m --objectives gbce,ce,ssm   # one row per objective

Config: B=128, L=200, d=128, 2 blocks, 1 head, dropout 0.5, k=256 uniform negatives, gBCE t=0.75, Adam.
Rows:
  gemm   fp32 GEMM throughput of this machine (4096x4096x1024, all threads): sets the floor
  full   every sequence 200 long (the reference's shape: it always pads to L), median of steps
  ml1m   one epoch of real ML-1M batches through the Trainer (length-bucketed), mean per step
  ml32m  synthetic ML-32M (200,948 users, 87,585 movies, 32M ratings) through the Trainer: seq/s
The full and ml1m rows run once per objective (--objectives): gbce (k=256 per sequence, the default
above), gbce-pos (k=256 per position, as the reference), ce (softmax over the catalog), ssm (sampled
softmax, one pool of 4,096 negatives per batch), sasrec (BCE, 1 negative per position); ml32m uses ssm
when asked for ce (the full softmax over 87,585 items is what ssm is for).
Each row runs in its own child process: its peak RSS is the child's ru_maxrss.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import ML32M, REPO, header, synth_is_reusable  # noqa: E402

B, L, D, BLOCKS, K = 128, 200, 128, 2, 256
ML1M_ITEMS = 3416
GSASREC_DATA = REPO.parent / "shared" / "data" / "ml-1m-gsasrec"
OBJECTIVES = {
    "gbce": {"loss": "gbce", "negatives": K, "negative_sharing": "sequence", "gbce_t": 0.75},
    "gbce-pos": {"loss": "gbce", "negatives": K, "negative_sharing": "position", "gbce_t": 0.75},
    "ce": {"loss": "ce"},
    "ssm": {"loss": "sampled-softmax", "negatives": 4096, "negative_sharing": "batch"},
    "sasrec": {"loss": "gbce", "negatives": 1, "negative_sharing": "position", "gbce_t": 0.0},
}


def step_gflop(n: int = L, batch: int = B, d: int = D, blocks: int = BLOCKS, k: int = K) -> float:
    """Forward + backward GEMM work of one step (backward = 2x forward)."""
    tokens = batch * n
    linear = blocks * 6 * d * d * tokens  # qkv 3d², proj d², feed-forward 2d²
    attention = blocks * 2 * batch * n * n * d  # q·kᵀ and weights·v
    scoring = tokens * d * (k + 1)  # positives + shared negatives
    return 3 * 2 * (linear + attention + scoring) / 1e9


def child_gemm(args: argparse.Namespace) -> dict:
    import torch

    a, b = torch.randn(4096, 4096), torch.randn(4096, 1024)
    a @ b
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    seconds = (time.perf_counter() - start) / 10
    return {"gflops": 2 * 4096 * 4096 * 1024 / seconds / 1e9}


def child_full(args: argparse.Namespace) -> dict:
    import torch

    from movierec.model.gsasrec import GSASRec, ModelConfig
    from movierec.train.objective import Objective

    torch.manual_seed(0)
    model = GSASRec(ModelConfig(num_items=ML1M_ITEMS, seq_len=L, dim=D, blocks=BLOCKS, dropout=0.5))
    spec = OBJECTIVES[args.objective]
    objective = Objective(model, spec["loss"], spec.get("negatives", K), spec.get("negative_sharing", "sequence"),
                          spec.get("gbce_t", 0.75))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = torch.randint(1, ML1M_ITEMS + 1, (B, L + 1))
    times = []
    for _ in range(args.steps + 2):
        start = time.perf_counter()
        loss = objective(batch, float(B * L))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    times = sorted(times[2:])
    return {"seconds": times[len(times) // 2], "width": L}


def _trainer_steps(prepared: Path, steps: int, out: Path, objective: str = "gbce") -> dict:
    import numpy as np

    from movierec.data.prepared import load_prepared
    from movierec.train.trainer import TrainConfig, Trainer

    data = load_prepared(prepared)
    cfg = TrainConfig(max_steps=steps, eval_every_steps=10**9, checkpoint_minutes=10**6, lr_decay="none",
                      dropout=0.5, batch_size=B, **OBJECTIVES[objective])
    trainer = Trainer(data, out, cfg)
    widths = [b.shape[1] - 1 for _, b in zip(range(steps), trainer.batches.epoch(0))]
    trainer.fit(show_progress=False)
    seconds = trainer.state.elapsed / trainer.state.step
    return {"seconds": seconds, "seq_per_s": B / seconds, "width": float(np.mean(widths)), "steps": trainer.state.step}


def child_ml1m(args: argparse.Namespace) -> dict:
    from movierec.data.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare(GSASREC_DATA, Path(tmp) / "prepared", progress=False)
        return _trainer_steps(prepared, args.steps_ml1m, Path(tmp) / "model", args.objective)


def child_ml32m(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        objective = "ssm" if args.objective == "ce" else args.objective
        return _trainer_steps(args.prepared, args.steps, Path(tmp) / "model", objective)


CHILDREN = {"gemm": child_gemm, "full": child_full, "ml1m": child_ml1m, "ml32m": child_ml32m}


def run_child(kind: str, args: argparse.Namespace) -> dict:
    argv = [sys.executable, __file__, "--child", kind, "--steps", str(args.steps), "--steps-ml1m", str(args.steps_ml1m),
            "--objective", args.objective]
    if args.prepared:
        argv += ["--prepared", str(args.prepared)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    stdout = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{kind} child failed")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["rss_gb"] = usage.ru_maxrss * 1024 / 1e9
    return result


def ml32m_prepared(folder: Path) -> Path:
    """Synthesise and prepare ML-32M-sized data once; later runs reuse it."""
    from movierec.data.prepare import prepare
    from movierec.data.synth import synthesize

    params = {**ML32M, "seed": 0}
    source, prepared = folder / "synth", folder / "prepared"
    if not synth_is_reusable(source, params):
        print(f"synthesising ML-32M into {source} ...", file=sys.stderr)
        synthesize(source, seed=0)
        (source / "bench-synth.json").write_text(json.dumps(params))
    if not (prepared / "manifest.json").is_file():
        print(f"preparing {prepared} ...", file=sys.stderr)
        prepare(source, prepared, progress=False)
    return prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="gemm,full,ml1m,ml32m", help="comma-separated rows to run")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed row (full, ml32m)")
    parser.add_argument("--steps-ml1m", type=int, default=48, help="ML-1M steps (48 = one epoch)")
    parser.add_argument("--ml32m-dir", type=Path, default=Path(tempfile.gettempdir()) / "movierec-bench-ml32m")
    parser.add_argument("--objectives", default="gbce", help=f"comma-separated, of {', '.join(OBJECTIVES)}")
    parser.add_argument("--objective", default="gbce", choices=sorted(OBJECTIVES), help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--prepared", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    results: dict[tuple[str, str], dict] = {}
    for row in rows:
        if row == "ml32m":
            args.prepared = ml32m_prepared(args.ml32m_dir)
        if row == "ml1m" and not (GSASREC_DATA / "train").is_dir():
            print(f"skipping ml1m: {GSASREC_DATA} not found", file=sys.stderr)
            continue
        for objective in objectives if row != "gemm" else ["-"]:
            print(f"{row} {objective} ...", file=sys.stderr)
            args.objective = objective if objective != "-" else "gbce"
            results[row, objective] = run_child(row, args)

    full_gflop = step_gflop()
    gflops = results.get(("gemm", "-"), {}).get("gflops")
    print(header())
    print()
    if gflops:
        print(f"fp32 GEMM here: {gflops:.0f} GFLOP/s; one full-length step is {full_gflop:.0f} GFLOP of GEMM work, "
              f"so the floor is {full_gflop / gflops:.2f} s/step on this machine")
        print()
    print("| what | objective | batch shape | s/step | seq/s | peak RSS GB |")
    print("|---|---|---|---:|---:|---:|")
    print("| reference gSASRec-pytorch (quoted in issue #2) | gbce-pos | 128x200, gather [B,L,k+1,d] | 6.9 | 19 | – |")
    print("| plain PyTorch, shared negatives (quoted) | gbce | 128x200 | 0.63 | 203 | – |")
    print("| arithmetic floor at 174 GFLOP/s (quoted) | gbce | 128x200 | 0.30 | – | – |")
    labels = {
        "full": "movierec, every sequence 200 long",
        "ml1m": "movierec, real ML-1M epoch (bucketed)",
        "ml32m": "movierec, synthetic ML-32M, 87,585 items",
    }
    for (row, objective), r in results.items():
        if row in labels:
            if row == "ml32m" and objective == "ce":
                objective = "ssm"
            print(f"| {labels[row]} | {objective} | 128x{r['width']:.0f} (mean) | {r['seconds']:.2f} | "
                  f"{B / r['seconds']:.0f} | {r['rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
