"""The shape of the code: layers as folders, each importing only the layers below it, no import
cycle, no private reach-ins, short functions and classes.

DESIGN.md's layering is the point of the module map; these checks keep it from eroding.

    app/       the application (Hydra, the recipe, sweep, report, notebook)   -> tracking, engine, data
    integrations/  Lightning and Hugging Face (optional extras)               -> tracking, engine, data
    tracking/  the only package that imports MLflow                            -> engine, data
    engine/    the library: no Hydra, no MLflow                                -> data
    data/      data sets and loaders                                           -> nothing of lrtrack
    compat.py  torch-lr-finder's surface over the engine                       -> engine
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lrtrack"
MAX_FUNCTION_LINES = 100
MAX_CLASS_LINES = 300
# Which lrtrack packages each package may import (itself always).
ALLOWED = {
    "data": set(),
    "engine": {"data"},
    "tracking": {"engine", "data"},
    "app": {"tracking", "engine", "data"},
    "integrations": {"tracking", "engine", "data"},  # not app: a framework's script is the application
    "compat": {"engine"},
}
THIRD_PARTY_BANNED = {
    "data": ("hydra", "omegaconf", "mlflow"),
    "engine": ("hydra", "omegaconf", "mlflow"),
    "compat": ("hydra", "omegaconf", "mlflow"),
    "tracking": ("hydra", "omegaconf"),
    "app": ("mlflow",),  # the application reaches MLflow only through lrtrack.tracking
    # The frameworks' own MLflow loggers hold the final run; lrtrack.tracking.link tags it.
    "integrations": ("hydra", "omegaconf", "mlflow"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str | None:
    """``lrtrack.engine.finder`` -> ``engine``; the package's own top-level modules -> None."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ALLOWED:
        return parts[1]
    return None


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """Every ``import x`` / ``from x import a, b`` anywhere in the module (lazy ones included), but
    those under ``if TYPE_CHECKING:`` (annotations only: nothing is imported when the code runs)."""
    found: list[tuple[str, list[str]]] = []
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                 for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _lrtrack_targets(name: str, names: list[str], modules: set[str]) -> list[str]:
    """The lrtrack modules an import statement loads (``from lrtrack.engine import finder`` -> the submodule)."""
    if not name.startswith("lrtrack"):
        return []
    subs = [f"{name}.{n}" for n in names if f"{name}.{n}" in modules]
    return subs or [name]


def test_the_layers_are_folders() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {"app", "tracking", "engine", "data"} <= folders
    flat = sorted(p.stem for p in PACKAGE.glob("*.py"))
    # Only the entry points and the compatibility surface stay at the top.
    assert flat == ["__init__", "__main__", "compat", "deliver", "report"], flat


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    modules = _modules()
    bad = []
    for module, tree in modules.items():
        if _layer(module) != layer:
            continue
        for name, names in _imports(tree):
            if name.startswith(THIRD_PARTY_BANNED[layer]):
                bad.append(f"{module} imports {name}")
            for target in _lrtrack_targets(name, names, set(modules)):
                other = _layer(target)
                if other is not None and other != layer and other not in ALLOWED[layer]:
                    bad.append(f"{module} imports {target}")
    assert bad == []


def test_only_tracking_imports_mlflow() -> None:
    modules = _modules()
    users = sorted(m for m, tree in modules.items() for name, _ in _imports(tree)
                   if name.startswith("mlflow") and _layer(m) != "tracking")
    assert users == []


def test_there_is_no_import_cycle() -> None:
    """Module-level and lazy imports alike: a cycle is a design knot even when Python tolerates it."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, tree in modules.items():
        for name, names in _imports(tree):
            for target in _lrtrack_targets(name, names, set(modules)):
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # A package's __init__ is not an edge to its own submodules' importers.
                if target and target != module and not module.startswith(f"{target}.") and target != "lrtrack":
                    graph[module].add(target)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for module, tree in _modules().items():
        for name, names in _imports(tree):
            if name.startswith("lrtrack"):
                offenders += [f"{module}: from {name} import {n}" for n in names if n.startswith("_")]
    for path in PACKAGE.rglob("*.py"):
        if re.search(r"sys\.modules(\.get)?[\[(]\s*['\"]lrtrack", path.read_text()):
            offenders.append(f"{path}: reaches into another lrtrack module through sys.modules")
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


def test_no_class_is_longer_than_300_lines() -> None:
    long = []
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_CLASS_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []


def test_the_cli_stays_a_thin_entry() -> None:
    assert len((PACKAGE / "app" / "cli.py").read_text().splitlines()) <= 150


def test_importing_lrtrack_changes_neither_the_environment_nor_the_matplotlib_backend() -> None:
    code = (
        "import os, matplotlib; before = dict(os.environ); backend = matplotlib.get_backend()\n"
        "import lrtrack.app.cli, lrtrack.app.recipe, lrtrack.tracking.layout, lrtrack.tracking.records, "
        "lrtrack.engine.plots, lrtrack.app.report, lrtrack.app.sweep\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
        "assert matplotlib.get_backend() == backend, matplotlib.get_backend()\n"
        "print('ok')\n"
    )
    env = {"MPLBACKEND": "svg", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=PACKAGE.parent, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_public_commands_and_imports_keep_their_names() -> None:
    code = ("from lrtrack import LRFinder, run_range_test, RangeTestResult, tracked_range_test, Bounds\n"
            "import lrtrack.report, lrtrack.deliver, lrtrack.__main__\n"
            "assert callable(lrtrack.report.main) and callable(lrtrack.deliver.main)\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
