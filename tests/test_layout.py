"""The package's shape: imports point inward only, and no file names a path of one machine.

Layers, outermost first: entry points (api, cli, worker) → serving → index, store, train → model, data →
the core modules (errors, breaker, settings). A module may import its own layer and the ones listed
for it below, never an outer one: serving never imports the trainer, the model never reads prepared
data, nothing under the library imports the API or the CLI.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "services" / "movierec"
CORE = {"errors", "breaker", "settings", "jsonlog"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "breaker": {"errors"},
    "settings": {"errors"},
    "jsonlog": set(),
    "model": CORE,
    "data": CORE,
    "train": CORE | {"data", "model"},
    "index": CORE | {"model"},
    "store": CORE | {"data"},
    "serving": CORE | {"model", "data", "index", "store"},
    "worker": CORE | {"serving", "index", "store", "model", "data", "train"},
    "api": CORE | {"serving", "index", "store", "model", "data", "worker"},
    "cli": CORE | {"api", "worker", "serving", "index", "store", "model", "data", "train"},
}


def imported_layers(path: Path) -> dict[str, int]:
    """movierec layers a module imports (function-level imports included) → the first line importing each."""
    layers: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom):  # a relative import would hide the layer it reaches
            raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno}: use absolute movierec imports")
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "movierec" and len(parts) > 1:
                layers.setdefault(parts[1], node.lineno)
    return layers


def layer_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if layer_of(p) != "__init__")


def test_every_layer_is_known() -> None:
    assert {layer_of(p) for p in MODULES} <= set(ALLOWED), "a new top-level module: give it a layer in ALLOWED"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_inward(path: Path) -> None:
    layer = layer_of(path)
    outward = {
        target: line
        for target, line in imported_layers(path).items()
        if target != layer and target not in ALLOWED[layer]
    }
    assert not outward, "".join(
        f"\n{path.relative_to(REPO)}:{line} ({layer}) imports movierec.{target}" for target, line in outward.items()
    )


def test_the_checker_sees_a_backward_import(tmp_path: Path) -> None:
    """The rule above is only worth something if the parser finds imports inside functions too."""
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from movierec.train.batches import x\n    import movierec.api.app\n")
    assert imported_layers(module) == {"train": 4, "api": 5}


def test_no_file_names_a_path_of_this_machine() -> None:
    """Data is found relative to the repository (../shared/data) or from a variable, never at an absolute path."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    here = str(REPO.parent).rstrip("/") + "/"  # the folder holding the clone, as a path prefix
    offenders = [
        name
        for name in tracked
        if (REPO / name).is_file() and here != "/" and here in (REPO / name).read_text(errors="ignore")
    ]
    assert not offenders, f"files naming {here}: {offenders}"
