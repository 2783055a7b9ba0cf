"""Check what the test suite needs beyond the Python packages, and say how to install what is missing.

    python scripts/check_prereqs.py [--strict]       # what `make test` runs first (STRICT=1: --strict)

Each missing component is one line naming it, what needs it and how to get it. Without --strict this
only warns (the tests that need the component are then skipped); with --strict (CI) it exits with
status 2, before any test runs. Components:

* Java 17 (11 at least): TorchServe's frontend, for tests/test_torchserve.py;
* Node.js 20 or later: builds the web page (`make web`) that tests/test_web.py loads;
* Chromium (Debian's package): the browser tests, tests/test_web.py;
* the MongoDB wire test server's venv (mongoeco, Python >= 3.13; `make test-deps`), or MONGO_TEST_URI;
* the MovieLens files at ../shared/data beside the repository, or $MOVIEREC_DATA.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from mongo_server import SERVER_PACKAGES, installed_python, venv_folder  # noqa: E402
from shared_data import DATA_ROOT  # noqa: E402

DATA_FOLDERS = ("ml-latest-small", "ml-1m-gsasrec", "ml-1m-original/movies.dat")
JAVA_MIN = 11
NODE_MIN = 20


def java_major() -> int | None:
    """The major version of `java` on PATH, or None without one."""
    java = shutil.which("java")
    if java is None:
        return None
    try:
        shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', shown)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def node_major() -> int | None:
    """The major version of `node` on PATH, or None without one."""
    node = shutil.which("node")
    if node is None:
        return None
    try:
        shown = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"v(\d+)", shown.strip())
    return int(match.group(1)) if match else None


def missing() -> list[str]:
    problems = []
    major = java_major()
    if major is None or major < JAVA_MIN:
        found = "no java on PATH" if major is None else f"java {major} on PATH"
        problems.append(
            f"Java 17 for TorchServe's frontend (tests/test_torchserve.py): {found}; "
            "Debian/Ubuntu: apt-get install openjdk-17-jre-headless, macOS: brew install openjdk@17"
        )
    node = node_major()
    if node is None or node < NODE_MIN:
        found = "no node on PATH" if node is None else f"node {node} on PATH"
        problems.append(f"Node.js {NODE_MIN} or later to build the web page (make web) for tests/test_web.py: {found}; "
                        "install Node.js 20 or later (its npm comes with it)")
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        problems.append("Chromium for the browser tests (tests/test_web.py): Debian/Ubuntu: apt-get install chromium")
    if not os.environ.get("MONGO_TEST_URI") and installed_python(venv_folder()) is None:
        problems.append(
            f"the MongoDB wire test server ({' '.join(SERVER_PACKAGES)}) at {venv_folder()}: install a Python >= 3.13 "
            "(pyenv install 3.13, or MONGOECO_PYTHON=/path/to/python3.13) and run make test-deps; "
            "or set MONGO_TEST_URI to a MongoDB"
        )
    for relative in DATA_FOLDERS:
        if not (DATA_ROOT / relative).exists():
            problems.append(
                f"MovieLens data {DATA_ROOT / relative}: put shared/data beside the repository "
                "(its README says what goes there) or set MOVIEREC_DATA"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strict", action="store_true", help="a missing component is an error (CI)")
    args = parser.parse_args(argv)
    problems = missing()
    for problem in problems:
        print(("error: missing " if args.strict else "warning: missing ") + problem, file=sys.stderr)
    if problems and args.strict:
        print(f"error: {len(problems)} test prerequisite(s) missing; strict mode (STRICT=1) stops here", file=sys.stderr)
        return 2
    if problems:
        print(f"warning: the tests that need them will be skipped ({len(problems)} missing); "
              "make test STRICT=1 makes that an error", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
