"""Quality benchmark: the gSASRec paper's ML-1M split, validation NDCG@10 and Recall@10 against minutes.

    python bench/quality.py                                   # the default config (TrainConfig), 60 minutes
    python bench/quality.py --rows default,gsasrec,sasrec --minutes 20 --plot docs/quality.png
    python bench/quality.py --rows gsasrec --set dropout=0.2  # a row with TrainConfig overrides
    python bench/quality.py --resume --minutes 120            # continue the runs (same clock)
    python bench/quality.py --rows sasrec --run ce=/tmp/q/ce/model  # add a finished run as a row

Every row is trained by the Trainer (the same code as `movierec train`) on ../shared/data/ml-1m-gsasrec
into OUT/<row>/model (a row whose metrics.json is already there is reused unless --retrain):
  default  TrainConfig as shipped (what `movierec train` does without options)
  ce       softmax over the whole catalog (SASRec+)
  gsasrec  gBCE, 256 negatives per sequence, t = 0.75 (the gSASRec paper)
  sasrec   plain SASRec: BCE with one negative per position (gBCE with t = 0)
  popular  most popular items (no training)
The 512 validation users are ranked against all items; each metric comes with a 95 % bootstrap interval
over users. Prints a Markdown table and writes a plot of every row's curve (NDCG@10 vs minutes).
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
ROWS = {
    "default": {},
    "ce": {"loss": "ce"},
    "gsasrec": {"loss": "gbce", "negatives": 256, "negative_sharing": "sequence", "gbce_t": 0.75},
    "sasrec": {"loss": "gbce", "negatives": 1, "negative_sharing": "position", "gbce_t": 0.0},
}


def plot(curves: dict[str, list[dict]], popularity: float, path: Path, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, curve in curves.items():
        ax.plot([r["minutes"] for r in curve], [r["ndcg@10"] for r in curve], marker=".", label=f"movierec {name}")
    for (label, value), style in zip(REFERENCE.items(), (":", "-.")):
        ax.axhline(value, color="tab:green", ls=style, lw=1, label=f"{label}: {value}")
    ax.axhline(popularity, color="grey", ls="--", lw=1, label=f"most popular: {popularity:.4f}")
    ax.axvline(60, color="tab:red", ls=":", lw=1)
    ax.axhline(TARGET, color="tab:red", ls=":", lw=1, label=f"target: {TARGET} within 60 min")
    ax.set_xlim(0, max(minutes, 60) * 1.02)
    ax.set_xlabel("training minutes (2-core CPU, shared)")
    ax.set_ylabel("validation NDCG@10 (512 users, full ranking)")
    ax.set_title("movierec on ML-1M (gSASRec paper split)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def interval(m: dict, metric: str) -> str:
    low, high = m[f"{metric}_ci"]
    return f"{m[metric]:.4f} [{low:.4f}, {high:.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="default", help=f"comma-separated, of {', '.join(ROWS)} (popular is always shown)")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/movierec-quality"))
    parser.add_argument("--eval-every", type=int, help="validate every N steps (default: the config's)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--retrain", action="store_true", help="train rows whose metrics.json already exists")
    parser.add_argument("--plot", type=Path, help="also copy the plot here (e.g. docs/quality.png)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a TrainConfig field in every trained row, e.g. --set lr=0.002 (repeatable)")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=MODEL_DIR",
                        help="add a model folder trained elsewhere (movierec train) as a row")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from dataclasses import asdict

    from movierec.data.prepare import prepare
    from movierec.data.prepared import load_prepared
    from movierec.model.artifact import load_artifact
    from movierec.train.evaluate import evaluate_model, evaluate_popularity
    from movierec.train.trainer import TrainConfig, Trainer

    prepared = args.out / "prepared"
    if not (prepared / "manifest.json").is_file():
        prepare(GSASREC_DATA, prepared, progress=False, titles=TITLES if TITLES.is_dir() else None)
    data = load_prepared(prepared)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    models: dict[str, Path] = {}
    configs: dict[str, dict] = {}
    for name in [r.strip() for r in args.rows.split(",") if r.strip() and r.strip() != "popular"]:
        if name not in ROWS:
            raise SystemExit(f"--rows: unknown row {name!r}; expected {', '.join(ROWS)}")
        cfg = TrainConfig.from_dict({**asdict(TrainConfig()), **ROWS[name], "max_minutes": args.minutes,
                                     "patience": 10**6, **overrides,
                                     **({"eval_every_steps": args.eval_every} if args.eval_every else {})})
        model_dir = args.out / name / "model"
        configs[name] = asdict(cfg)
        if args.retrain or args.resume or not (model_dir / "metrics.json").is_file():
            trainer = Trainer(data, model_dir, cfg)
            if args.resume:
                trainer.resume()
            trainer.fit(show_progress=sys.stderr.isatty())
        models[name] = model_dir
    for item in args.run:
        name, _, folder = item.partition("=")
        models[name] = Path(folder)

    results, curves = {}, {}
    for name, folder in models.items():
        metrics = json.loads((folder / "metrics.json").read_text())
        artifact = load_artifact(folder)  # the best weights of the run
        configs.setdefault(name, artifact.manifest.get("train_config", {}))
        results[name] = {**evaluate_model(artifact.model, data, "val", intervals=True),
                         "minutes": metrics["minutes"], "steps": metrics["steps"], "best_step": metrics["best_step"],
                         "best_minutes": next((r["minutes"] for r in metrics["curve"] if r["step"] == metrics["best_step"]), 0.0),
                         "within60": max((r["ndcg@10"] for r in metrics["curve"] if r["minutes"] <= 60), default=0.0)}
        curves[name] = metrics["curve"]
    popular = evaluate_popularity(data, "val", intervals=True)
    path = args.out / "quality.png"
    plot(curves, popular["ndcg@10"], path, max([args.minutes, *(r["minutes"] for r in results.values())]))
    if args.plot:
        args.plot.write_bytes(path.read_bytes())

    print(header())
    print()
    print("| row | loss | minutes | steps | best at (min, step) | val NDCG@10 [95 % CI] | val Recall@10 [95 % CI] |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        loss = configs.get(name, {}).get("loss", "?")
        print(f"| {name} | {loss} | {r['minutes']:.1f} | {r['steps']:,} | {r['best_minutes']:.1f}, {r['best_step']:,} | "
              f"{interval(r, 'ndcg@10')} | {interval(r, 'recall@10')} |")
    print(f"| most popular | – | – | – | – | {interval(popular, 'ndcg@10')} | {interval(popular, 'recall@10')} |")
    print()
    for name, cfg in configs.items():
        print(f"{name}: {json.dumps({k: v for k, v in cfg.items() if k not in ('device', 'threads')})}")
    print()
    for name, curve in curves.items():
        print(f"{name} curve: " + ", ".join(f"{r['minutes']:.0f} min {r['ndcg@10']:.4f}" for r in curve[:: max(1, len(curve) // 10)]))
    print(f"\nplot: {path}; target NDCG@10 ≥ {TARGET} within 60 minutes")


if __name__ == "__main__":
    main()
