"""`make install` takes CPU PyTorch by default and a CUDA build one switch away: pip's real install plans.

The plans are pip's own resolution (`pip install --dry-run --ignore-installed --report`), made by
scripts/install.py exactly as `make install` runs it:

* as this machine is configured (what `make install` installs here): torch `+cpu`, no CUDA package;
* isolated from pip's configuration, as on a fresh laptop (PyPI and PyTorch's index only): the CPU
  install either resolves to `+cpu` without CUDA packages (PyTorch's index reachable) or cannot be
  resolved at all (index unreachable): it never falls back to PyPI's CUDA build; and TORCH=cuda does
  resolve PyPI's CUDA build with its nvidia-* wheels, the multi-GB plan the default avoids.

They need pip to reach PyPI (a missing component otherwise).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import install  # noqa: E402


def _pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request("https://pypi.org/simple/pip/", method="HEAD"), timeout=10):
            return True
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def pypi() -> None:
    if not _pypi_reachable():
        pytest.skip("missing component: network to PyPI (the install plans are resolved by pip)")


def plan(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    report = tmp_path / "plan.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "install.py"), "--plan", str(report), "--torch-only", *options],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return result, json.loads(report.read_text()) if report.is_file() else None


def test_the_torch_pin_and_builds() -> None:
    version = install.pinned_torch()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert install.torch_requirement("cpu", version, "Linux") == (
        f"torch=={version}+cpu", "https://download.pytorch.org/whl/cpu")
    assert install.torch_requirement("cu126", version, "Linux") == (
        f"torch=={version}+cu126", "https://download.pytorch.org/whl/cu126")
    assert install.torch_requirement("cuda", version, "Linux") == (f"torch=={version}", None)
    assert install.torch_requirement("cpu", version, "Darwin") == (f"torch=={version}", None)
    for bad in ("", "CPU", "cu126; rm -rf /", "../x"):
        with pytest.raises(install.InstallError, match="expected cpu, cuda"):
            install.torch_requirement(bad, version, "Linux")
    with pytest.raises(install.InstallError, match="no cu126 build for macOS"):
        install.torch_requirement("cu126", version, "Darwin")


def test_plan_summary_names_cuda_packages() -> None:
    report = {"install": [
        {"metadata": {"name": "torch", "version": "2.13.0"}},
        {"metadata": {"name": "nvidia-cublas", "version": "13.1.1.3"}},
        {"metadata": {"name": "triton", "version": "3.7.1"}},
        {"metadata": {"name": "cuda-bindings", "version": "13.5.0"}},
        {"metadata": {"name": "numpy", "version": "2.4.6"}},
    ]}  # fmt: skip
    assert install.summarize_plan(report) == (
        "2.13.0", ["cuda-bindings==13.5.0", "nvidia-cublas==13.1.1.3", "triton==3.7.1"])


def test_make_install_defaults_to_cpu_and_switches_with_torch() -> None:
    def recipe(*variables: str) -> str:
        return subprocess.run(["make", "-n", "-B", "install", *variables], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout  # fmt: skip

    assert "scripts/install.py --torch cpu" in recipe()
    assert "scripts/install.py --torch cu126" in recipe("TORCH=cu126")


def test_cpu_plan_as_configured_here(pypi: None, tmp_path: Path) -> None:
    result, report = plan(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    torch, cuda = install.summarize_plan(report)
    assert torch and torch.endswith("+cpu") and cuda == []
    assert "CUDA packages: none" in result.stdout


def test_cpu_plan_on_a_fresh_machine_never_falls_back_to_cuda(pypi: None, tmp_path: Path) -> None:
    result, report = plan(tmp_path, "--isolated")
    if result.returncode == 0:  # PyTorch's CPU index was reachable
        torch, cuda = install.summarize_plan(report)
        assert torch.endswith("+cpu") and cuda == []
    else:  # it was not: the +cpu build is nowhere else, so there is no plan rather than a CUDA one
        assert report is None
        assert "could not install torch==" in result.stderr and "+cpu" in result.stderr
        assert "was not reachable" in result.stderr


@pytest.mark.slow
def test_cuda_switch_plans_the_cuda_build(pypi: None, tmp_path: Path) -> None:
    result, report = plan(tmp_path, "--isolated", "--torch", "cuda")
    assert result.returncode == 0, result.stderr[-2000:]
    torch, cuda = install.summarize_plan(report)
    assert torch == install.pinned_torch()
    assert any(name.startswith("nvidia-") for name in cuda), cuda
