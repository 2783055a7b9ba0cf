"""Strict mode (CI): a skipped test fails, and `make test` names every missing prerequisite first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = '''
import pytest

def test_skipped_at_run_time():
    pytest.skip("missing component: something")

@pytest.mark.skipif(True, reason="missing component: a mark")
def test_skipped_by_a_mark():
    pass

def test_allowed():
    pytest.skip("a GPU is present")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False

def test_passes():
    pass
'''


def run_probe(tmp_path: Path, strict: bool) -> str:
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "MOVIEREC_STRICT_TESTS"}
    if strict:
        env["MOVIEREC_STRICT_TESTS"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return result.stdout.strip().splitlines()[-1] + f" (exit {result.returncode})"


def test_strict_mode_turns_skips_into_failures(tmp_path: Path) -> None:
    summary = run_probe(tmp_path, strict=True)
    # the run-time skip fails, the skipif fails at setup (an error), the allowed skip and the xfail stay
    assert summary.startswith("1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error in"), summary
    assert summary.endswith("(exit 1)")


def test_without_strict_mode_skips_are_skips(tmp_path: Path) -> None:
    summary = run_probe(tmp_path, strict=False)
    assert summary.startswith("1 passed, 3 skipped, 1 xfailed in"), summary
    assert summary.endswith("(exit 0)")


def check_prereqs(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    bare = tmp_path / "bin"  # a PATH without java
    bare.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MONGO_TEST_URI", "JAVA_HOME")}
    env.update(PATH=str(bare), MOVIEREC_DATA=str(tmp_path / "no-data"), MONGOECO_VENV=str(tmp_path / "no-venv"))
    return subprocess.run([sys.executable, str(REPO / "scripts" / "check_prereqs.py"), *options], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_prerequisites_are_named_with_how_to_install_them(tmp_path: Path) -> None:
    loose = check_prereqs(tmp_path)
    assert loose.returncode == 0
    lines = loose.stderr.splitlines()
    assert len([line for line in lines if line.startswith("warning: missing ")]) == 7, loose.stderr
    assert any("Node.js 20" in line and "make web" in line for line in lines)
    assert any("Chromium" in line and "apt-get install chromium" in line for line in lines)
    assert any("Java 17" in line and "openjdk-17-jre-headless" in line for line in lines)
    assert any("MongoDB wire test server" in line and "make test-deps" in line for line in lines)
    assert any(str(tmp_path / "no-data" / "ml-latest-small") in line for line in lines)
    strict = check_prereqs(tmp_path, "--strict")
    assert strict.returncode == 2
    assert strict.stderr.splitlines()[-1] == "error: 7 test prerequisite(s) missing; strict mode (STRICT=1) stops here"


def test_a_real_mongodb_replaces_the_test_server(tmp_path: Path) -> None:
    env_uri = {"MONGO_TEST_URI": "mongodb://127.0.0.1:27017"}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_prereqs.py")],
        env={**os.environ, **env_uri, "MONGOECO_VENV": str(tmp_path / "no-venv")}, capture_output=True, text=True,
    )  # fmt: skip
    assert "MongoDB wire test server" not in result.stderr
