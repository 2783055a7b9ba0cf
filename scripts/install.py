"""Install movierec into this Python (the venv `make install` makes) with the PyTorch build asked for.

    python scripts/install.py [--torch cpu|cuda|cu126|cu128|rocm6.4|...] [--extras dev]
    python scripts/install.py --plan plan.json [--isolated]     # resolve only: show what would be installed

The torch version is the one pinned in pyproject.toml. Which build of it:

* ``cpu`` (the default): ``torch==X+cpu`` from PyTorch's CPU wheel index, no CUDA libraries (about
  200 MB instead of about 3 GB). On macOS PyPI's torch is the CPU build and is taken as it is.
* ``cuda``: PyPI's default Linux wheel, built for CUDA 13, with its nvidia-* wheels.
* any other name (``cu126``, ``cu128``, ``rocm6.4``, ``xpu``): ``torch==X+NAME`` from PyTorch's index
  for that build.

PyTorch's index is probed first (one request, a few seconds at most): when it cannot be reached, pip
runs without it and looks for the build in the indexes and wheel folders pip is configured with; if the
build is in none of them, pip fails and this script says why.

``--plan FILE`` resolves the whole install without installing anything (``pip install --dry-run
--ignore-installed --report FILE``), prints the torch build and every CUDA package of the plan, and exits
with status 1 when a CPU install would bring a CUDA build or a CUDA package. ``--isolated`` makes pip
ignore its configuration files and PIP_* variables, as on a fresh laptop (PyPI and PyTorch's index only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH_INDEX = os.environ.get("TORCH_INDEX_URL", "https://download.pytorch.org/whl")
PYTHONS = ((3, 11), (3, 14))  # requires-python: >= 3.11, < 3.14
CUDA_PACKAGE = re.compile(r"^(nvidia-|cuda-|triton$|pytorch-triton)")
PROBE_TIMEOUT_S = 8


class InstallError(Exception):
    """A one-line reason to stop."""


def pinned_torch(pyproject: Path = REPO / "pyproject.toml") -> str:
    """The torch version pinned in pyproject.toml's dependencies ("2.13.0")."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    for dependency in dependencies:
        match = re.fullmatch(r"torch\s*==\s*([0-9][0-9a-z.]*)", dependency.strip())
        if match:
            return match.group(1)
    raise InstallError(f"{pyproject}: no 'torch==X' pin among the dependencies")


def torch_requirement(variant: str, version: str, system: str | None = None) -> tuple[str, str | None]:
    """(pip requirement, PyTorch index URL or None) for a build name: cpu, cuda, cu126, rocm6.4, ..."""
    system = system or platform.system()
    if not re.fullmatch(r"[a-z][a-z0-9.]*", variant):
        raise InstallError(f"TORCH={variant!r}: expected cpu, cuda, or a PyTorch build name such as cu126")
    if variant == "cuda":
        return f"torch=={version}", None
    if system == "Darwin":
        if variant != "cpu":
            raise InstallError(f"TORCH={variant}: PyTorch has no {variant} build for macOS; use TORCH=cpu")
        return f"torch=={version}", None  # PyPI's macOS wheels are the CPU (and MPS) build
    return f"torch=={version}+{variant}", f"{TORCH_INDEX}/{variant}"


def reachable(index: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the index answers for torch (one HEAD request)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{index}/torch/", method="HEAD"), timeout=timeout):
            return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pip_command(requirement: str, index: str | None, extras: str | None, plan: Path | None) -> list[str]:
    """The pip install command: the torch build, then the project (editable) with its extras (None: torch only)."""
    project = "" if extras is None else f".[{extras}]" if extras else "."
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-c", "constraints.txt"]
    if index:
        command += ["--extra-index-url", index]
    if plan is None:
        return [*command, "--quiet", requirement, *(["-e", project] if project else [])]
    plan_options = ["--quiet", "--dry-run", "--ignore-installed", "--report", str(plan)]
    return [*command, *plan_options, requirement, *([project] if project else [])]


def isolated_env() -> dict[str, str]:
    """This environment without pip's configuration: no config file, no PIP_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def summarize_plan(report: dict) -> tuple[str | None, list[str]]:
    """(torch version in the plan or None, the CUDA packages of the plan as 'name==version')."""
    torch, cuda = None, []
    for item in report.get("install", []):
        name, version = item["metadata"]["name"].lower(), item["metadata"]["version"]
        if name == "torch":
            torch = version
        elif CUDA_PACKAGE.match(name):
            cuda.append(f"{name}=={version}")
    return torch, sorted(cuda)


def check_python() -> None:
    low, high = PYTHONS
    if not low <= sys.version_info[:2] < high:
        raise InstallError(
            f"movierec needs Python {low[0]}.{low[1]} to {high[0]}.{high[1] - 1}, this is {platform.python_version()}"
            f" ({sys.executable}); choose another with: make install PY=python3.11"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch", default=os.environ.get("TORCH", "cpu"), help="cpu (default), cuda, cu126, ...")
    parser.add_argument("--extras", default="dev", help="the project's extras to install (default: dev)")
    parser.add_argument("--plan", type=Path, help="resolve only; write pip's JSON report here")
    parser.add_argument("--isolated", action="store_true", help="ignore pip's configuration (a fresh machine)")
    parser.add_argument("--torch-only", action="store_true", help="torch and what it needs, not the project")
    parser.add_argument("--check-python", action="store_true", help="only check this Python's version")
    args = parser.parse_args(argv)
    try:
        check_python()
        if args.check_python:
            return 0
        version = pinned_torch()
        requirement, index = torch_requirement(args.torch, version)
        if index and not reachable(index):
            print(f"note: {index} cannot be reached; looking for {requirement} where pip is configured to look",
                  file=sys.stderr)  # fmt: skip
            index = None
        env = isolated_env() if args.isolated else None
        command = pip_command(requirement, index, None if args.torch_only else args.extras, args.plan)
        print(f"installing {requirement}" + (f" (from {index})" if index else "") + (" [plan only]" if args.plan else ""))
        result = subprocess.run(command, cwd=REPO, env=env)
        if result.returncode:
            raise InstallError(
                f"pip could not install {requirement} (exit status {result.returncode})"
                + ("" if index or args.torch == "cuda" else f"; PyTorch's index {TORCH_INDEX}/{args.torch} was not reachable")
            )  # fmt: skip
        if args.plan:
            torch, cuda = summarize_plan(json.loads(args.plan.read_text()))
            print(f"plan: torch {torch}; CUDA packages: {', '.join(cuda) or 'none'}")
            wants_cpu = args.torch == "cpu"
            if wants_cpu and (cuda or torch is None or (platform.system() == "Linux" and not torch.endswith("+cpu"))):
                raise InstallError(f"the CPU install plan holds torch {torch} and {len(cuda)} CUDA packages")
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if "plan holds" not in str(exc) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
