"""The shape of the code: layers import only downwards, no private reach-ins, short functions.

DESIGN.md's layering is the point of the module map; these checks keep it from eroding.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lrtrack"
LIBRARY = ["finder", "suggest", "schedules", "train", "steps", "data", "models", "plots", "compat",
           "smoothing", "observers", "seeds", "tasks", "probes", "repeats", "distributed"]
MAX_FUNCTION_LINES = 100


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """Every ``import x`` / ``from x import a, b`` anywhere in the module (lazy ones included)."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


@pytest.mark.parametrize("module", LIBRARY)
def test_the_library_imports_neither_hydra_nor_mlflow_nor_the_application(module: str) -> None:
    tree = _modules()[module]
    banned = ("hydra", "omegaconf", "mlflow", "lrtrack.cli", "lrtrack.recipe", "lrtrack.runlog",
              "lrtrack.tracking", "lrtrack.sweep", "lrtrack.report", "lrtrack.config")
    bad = [name for name, _ in _imports(tree) if name.startswith(banned)]
    assert bad == [], f"lrtrack/{module}.py imports {bad}"


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for module, tree in _modules().items():
        for name, names in _imports(tree):
            if name.startswith("lrtrack"):
                offenders += [f"{module}: from {name} import {n}" for n in names if n.startswith("_")]
        source = (PACKAGE / f"{module}.py").read_text()
        if re.search(r"sys\.modules(\.get)?[\[(]\s*['\"]lrtrack", source):
            offenders.append(f"{module}: reaches into another lrtrack module through sys.modules")
    assert offenders == []


def test_no_function_is_longer_than_100_lines() -> None:
    long = []
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []


def test_the_cli_stays_a_thin_entry() -> None:
    assert len((PACKAGE / "cli.py").read_text().splitlines()) <= 150


def test_importing_lrtrack_changes_neither_the_environment_nor_the_matplotlib_backend() -> None:
    code = (
        "import os, matplotlib; before = dict(os.environ); backend = matplotlib.get_backend()\n"
        "import lrtrack.cli, lrtrack.recipe, lrtrack.runlog, lrtrack.plots, lrtrack.report, lrtrack.sweep\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
        "assert matplotlib.get_backend() == backend, matplotlib.get_backend()\n"
        "print('ok')\n"
    )
    env = {"MPLBACKEND": "svg", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=PACKAGE.parent, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
