"""Ingest benchmark: synthetic ML-32M → prepared folder, against a plain pandas pipeline.

    python bench/ingest.py                    # full scale: 32,000,204 ratings (synthesised once, reused)
    python bench/ingest.py --ratings 1000000  # smaller; users and movies scale with it
    python bench/ingest.py --dir /data/synth32m --skip-pandas

Each variant runs in its own child process; its wall time is measured inside the child and its
peak RSS is the child's ru_maxrss (from os.wait4), so variants do not inflate each other. Prints a
Markdown table headed by machine, library versions, date and git sha.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ML32M = {"users": 200_948, "movies": 87_585, "ratings": 32_000_204}
PARAMS_FILE = "bench-synth.json"


# --------------------------------------------------------------------------------------------
# Children: each prints one JSON line {"rows": ..., "seconds": ...}
# --------------------------------------------------------------------------------------------


def child_synth(args: argparse.Namespace) -> dict:
    from movierec.data.synth import synthesize

    start = time.perf_counter()
    synthesize(args.source, users=args.users, movies=args.movies, ratings=args.ratings, seed=args.seed)
    return {"rows": args.ratings, "seconds": time.perf_counter() - start}


def child_prepare(args: argparse.Namespace) -> dict:
    from movierec.data.prepare import prepare
    from movierec.data.prepared import load_prepared

    start = time.perf_counter()
    prepare(args.source, args.out, progress=False)
    seconds = time.perf_counter() - start
    return {"rows": load_prepared(args.out).manifest["counts"]["interactions"], "seconds": seconds}


def child_pandas(args: argparse.Namespace) -> dict:
    """The straightforward pandas version: read_csv, sort by user/time/movie, group into lists."""
    import pandas as pd

    start = time.perf_counter()
    df = pd.read_csv(Path(args.source) / "ratings.csv")
    df = df.sort_values(["userId", "timestamp", "movieId"])
    sequences = df.groupby("userId", sort=True)["movieId"].agg(list)
    seconds = time.perf_counter() - start
    assert sum(len(s) for s in sequences) == len(df)
    return {"rows": len(df), "seconds": seconds}


CHILDREN = {"synth": child_synth, "prepare": child_prepare, "pandas": child_pandas}


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------


def run_child(kind: str, args: argparse.Namespace, **extra: object) -> dict:
    """Run one variant in a child process; add its peak RSS (GB) from wait4."""
    argv = [sys.executable, __file__, "--child", kind, "--source", str(args.source), "--seed", str(args.seed)]
    argv += ["--users", str(args.users), "--movies", str(args.movies), "--ratings", str(args.ratings)]
    for key, value in extra.items():
        argv += [f"--{key}", str(value)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    stdout = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed with exit code {proc.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["rss_gb"] = usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    return result


def scaled_sizes(ratings: int) -> tuple[int, int]:
    """Users and movies for a smaller run, keeping ML-32M's ratings per user."""
    if ratings >= ML32M["ratings"]:
        return ML32M["users"], ML32M["movies"]
    share = ratings / ML32M["ratings"]
    users = max(1, min(int(ML32M["users"] * share), ratings // 20))
    movies = max(200, int(ML32M["movies"] * share**0.5))
    return users, movies


def header() -> str:
    import numpy
    import pandas
    import pyarrow

    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):  # machines of one kind differ: say which vector units this one has
                flags = set(line.split(":", 1)[1].split())
                units = [u for u in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16") if u in flags]
                cpu += f" ({', '.join(units) or 'no AVX2'})"
                break
    except OSError:
        pass
    sha = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--untracked-files=no", "--", "services", "bench"):
        sha += "-dirty"
    return (
        f"# {os.cpu_count()} vCPU {cpu}, numpy {numpy.__version__}, pyarrow {pyarrow.__version__}, "
        f"pandas {pandas.__version__}, {date.today().isoformat()}, {sha}"
    )


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def synth_is_reusable(folder: Path, params: dict) -> bool:
    marker = folder / PARAMS_FILE
    if not (marker.is_file() and (folder / "ratings.csv").is_file()):
        return False
    try:
        return json.loads(marker.read_text()) == params
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=ML32M["ratings"], help="ratings to synthesise")
    parser.add_argument("--dir", type=Path, help="synthetic data folder (reused when it holds the same parameters)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-pandas", action="store_true", help="do not run the pandas baseline")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--movies", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return

    args.users, args.movies = scaled_sizes(args.ratings)
    params = {"users": args.users, "movies": args.movies, "ratings": args.ratings, "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="movierec-ingest-") as tmp:
        args.source = args.dir or Path(tmp) / "synth"
        rows: list[tuple[str, int, str, str]] = []
        if synth_is_reusable(args.source, params):
            print(f"reusing {args.source}", file=sys.stderr)
            rows.append(("synth (reused, not timed)", args.ratings, "–", "–"))
        else:
            print(f"synthesising {args.ratings:,} ratings into {args.source}", file=sys.stderr)
            r = run_child("synth", args)
            (args.source / PARAMS_FILE).write_text(json.dumps(params))
            rows.append(("synth: movierec.data.synth", r["rows"], f"{r['seconds']:.1f}", f"{r['rss_gb']:.2f}"))
        print("prepare ...", file=sys.stderr)
        r = run_child("prepare", args, out=Path(tmp) / "prepared")
        rows.append(("prepare: movierec.data.prepare", r["rows"], f"{r['seconds']:.1f}", f"{r['rss_gb']:.2f}"))
        if not args.skip_pandas:
            print("pandas baseline ...", file=sys.stderr)
            r = run_child("pandas", args)
            rows.append(
                (
                    "baseline: pandas read_csv + sort_values + groupby",
                    r["rows"],
                    f"{r['seconds']:.1f}",
                    f"{r['rss_gb']:.2f}",
                )
            )
    print(header())
    print()
    print("| variant | rows | seconds | peak RSS GB |")
    print("|---|---:|---:|---:|")
    for variant, n, seconds, rss in rows:
        print(f"| {variant} | {n:,} | {seconds} | {rss} |")


if __name__ == "__main__":
    main()
