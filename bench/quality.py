"""Quality benchmark: gSASRec on the gSASRec paper's ML-1M split, validation NDCG@10 against minutes.

    python bench/quality.py                      # 60 minutes, the shipped defaults
    python bench/quality.py --minutes 180 --out /tmp/q180
    python bench/quality.py --resume --minutes 120   # continue a run (same clock)

Trains with the Trainer (the same code as `movierec train`) on ../shared/data/ml-1m-gsasrec,
evaluates the 512 validation users by full ranking every --eval-every steps, then prints a
Markdown table of the curve and writes a plot (NDCG@10 vs minutes, with the paper's figures).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import REPO, header  # noqa: E402

GSASREC_DATA = REPO.parent / "shared" / "data" / "ml-1m-gsasrec"
TITLES = REPO.parent / "shared" / "data" / "ml-1m-original"
REFERENCE = {"gSASRec reference, best (GPU, 86k steps)": 0.1974, "SASRec (paper)": 0.1428}
TARGET = 0.19


def plot(curve: list[dict], popularity: float, path: Path, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["minutes"] for r in curve], [r["ndcg@10"] for r in curve], marker=".", label="movierec gSASRec")
    for (label, value), style in zip(REFERENCE.items(), (":", "-.")):
        ax.axhline(value, color="tab:green", ls=style, lw=1, label=f"{label}: {value}")
    ax.axhline(popularity, color="grey", ls="--", lw=1, label=f"most popular: {popularity:.4f}")
    ax.axvline(60, color="tab:red", ls=":", lw=1)
    ax.axhline(TARGET, color="tab:red", ls=":", lw=1, label=f"target: {TARGET} within 60 min")
    ax.set_xlim(0, max(minutes, 60) * 1.02)
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("validation NDCG@10 (512 users, full ranking)")
    ax.set_title("gSASRec on ML-1M (gSASRec paper split)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/movierec-quality"))
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--plot", type=Path, help="also copy the plot here (e.g. docs/quality.png)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a TrainConfig field, e.g. --set lr=0.002 (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from movierec.data.prepare import prepare
    from movierec.data.prepared import load_prepared
    from movierec.train.trainer import Trainer, TrainConfig

    prepared = args.out / "prepared"
    if not (prepared / "manifest.json").is_file():
        prepare(GSASREC_DATA, prepared, progress=False, titles=TITLES if TITLES.is_dir() else None)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    cfg = TrainConfig.from_dict(
        {**TrainConfig().__dict__, "max_minutes": args.minutes, "eval_every_steps": args.eval_every,
         "patience": 10**6, **overrides}
    )
    trainer = Trainer(load_prepared(prepared), args.out / "model", cfg)
    if args.resume:
        trainer.resume()
    metrics = trainer.fit(show_progress=sys.stderr.isatty())
    curve, popularity = metrics["curve"], metrics["val_popularity"]["ndcg@10"]
    path = args.out / "quality.png"
    plot(curve, popularity, path, args.minutes)
    if args.plot:
        args.plot.write_bytes(path.read_bytes())

    print(header())
    print()
    print(f"config: {json.dumps({k: v for k, v in cfg.__dict__.items() if k not in ('device', 'threads')})}")
    print()
    print("| minutes | step | val NDCG@10 | val Recall@10 |")
    print("|---:|---:|---:|---:|")
    marks = sorted({0, *range(len(curve) - 1, -1, -max(1, len(curve) // 12))})
    for i in marks:
        r = curve[i]
        print(f"| {r['minutes']:.1f} | {r['step']:,} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} |")
    within = [r["ndcg@10"] for r in curve if r["minutes"] <= 60]
    print()
    print(f"best val NDCG@10 {metrics['best_val_ndcg@10']:.4f} at step {metrics['best_step']:,}; "
          f"best within 60 min: {max(within, default=0):.4f} (target {TARGET}); most popular {popularity:.4f}; "
          f"plot: {path}")


if __name__ == "__main__":
    main()
