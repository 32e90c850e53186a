"""A user's config files (``--config-dir``, ``--config-path``, ``hydra.searchpath``), checked
before Hydra reads them.

Hydra parses YAML in its own code: a syntax error surfaces as a 30-line traceback, and a file of
nested anchors and aliases (a "billion laughs" file: ten lines that expand to 10^9 values) keeps
OmegaConf copying for many minutes. :func:`config_file_problems` reads each YAML file of those
folders with PyYAML's composer, which keeps an alias as a reference to its anchor's node, so the
size a file *would* expand to is counted in a moment, and returns one line per bad file: the
file, the line and column, what is wrong and how to fix it. lrtrack's own ``conf/`` is not checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: The values a config file may expand to (lrtrack's whole conf/ holds about 600); past it a file
#: is refused before composition, whatever its anchors and aliases multiply.
MAX_VALUES = 100_000
MAX_BYTES = 10 * 2**20  # a config file larger than this is not a config file
MAX_FILES = 2000  # files checked per folder (a folder that holds a whole project is not walked to the end)
MAX_DEPTH = 4  # config groups nest (hydra/launcher): folders checked below the config folder
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "outputs", "multirun", "mlruns"}


def config_folders(argv: list[str]) -> list[Path]:
    """The folders a command line adds to Hydra's search path (``file://`` entries only)."""
    folders: list[str] = []
    for i, arg in enumerate(argv):
        for flag in ("--config-dir", "-cd", "--config-path", "-cp"):
            if arg == flag and i + 1 < len(argv):
                folders.append(argv[i + 1])
            elif arg.startswith(flag + "="):
                folders.append(arg.split("=", 1)[1])
        if arg.lstrip("+").startswith("hydra.searchpath="):
            entries = arg.split("=", 1)[1].strip("[]")
            folders += [e.strip().strip("'\"")[len("file://"):] for e in entries.split(",")
                        if e.strip().strip("'\"").startswith("file://")]
    return [Path(f).expanduser() for f in folders if f and not f.startswith("pkg://")]


MAX_KEY = 250  # MLflow's longest param name (mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH); each setting is one


def config_file_problems(argv: list[str]) -> list[str]:
    """One line per YAML file of the user's config folders that Hydra should not be given, and per
    override whose key no config can hold (Hydra would look for a file of that name: OSError)."""
    problems = []
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~") if "=" in arg and not arg.startswith("-") else ""
        if len(key) > MAX_KEY:
            problems.append(f"override {key[:50]}...={arg.split('=', 1)[1][:20]!r}: the key has {len(key)} "
                            f"characters, more than the {MAX_KEY} MLflow allows in a param name (each setting is "
                            "logged as one): use a shorter key")
    for arg in argv:  # a search path entry that is not there: Hydra only warns, and the user's configs are not read
        if arg.lstrip("+").startswith("hydra.searchpath="):
            problems += [f"hydra.searchpath: no folder {folder} (an entry is file://<folder> or pkg://<package>); "
                         "fix the path or drop the entry" for folder in config_folders([arg]) if not folder.is_dir()]
    for folder in config_folders(argv):
        if folder.is_dir():
            problems += [p for p in (yaml_problem(path) for path in _yaml_files(folder)) if p]
    return problems


def _yaml_files(folder: Path) -> Iterator[Path]:
    count = 0
    for root, dirs, files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".") and depth < MAX_DEPTH)
        for name in sorted(files):
            if name.endswith((".yaml", ".yml")):
                count += 1
                if count > MAX_FILES:
                    return
                yield Path(root) / name


def yaml_problem(path: Path) -> str | None:
    """What is wrong with one YAML file (syntax, size, alias expansion); None when Hydra may read it."""
    import yaml

    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            return (f"config file {path} is {size / 2**20:.0f} MiB, larger than a config file can be "
                    f"({MAX_BYTES // 2**20} MiB): move data out of the config folder")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return f"config file {path} cannot be read ({getattr(err, 'strerror', None) or err}): fix or remove it"
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(x) for x in (err.context, err.problem) if x)
        return f"config file {path}{where}: invalid YAML ({what}): fix that line (indentation, a missing ':' or quote)"
    except yaml.YAMLError as err:
        return f"config file {path}: invalid YAML ({' '.join(str(err).split())}): fix the file"
    except RecursionError:
        return f"config file {path}: nested too deeply to be a config: flatten it"
    if node is None:
        return None
    values = _expanded_size(node)
    if values > MAX_VALUES:
        shown = f"{values:.3g}" if values < float("inf") else "infinitely many (an alias refers to itself)"
        return (f"config file {path}: its YAML anchors and aliases expand to {shown} values, more than the "
                f"{MAX_VALUES} a config may hold (a 'billion laughs' file): write the values out instead "
                "of nesting aliases")
    return None


def _expanded_size(root: Any) -> float:
    """The values ``root`` expands to once every alias is copied (a node reached twice counts twice),
    computed once per node; a node that contains itself is infinite."""
    import yaml

    sizes: dict[int, float] = {}
    in_progress: set[int] = set()
    # Iterative post-order walk (nesting deeper than Python's recursion limit is still a YAML file).
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
        if done:
            in_progress.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            continue
        if key in sizes:
            continue
        if key in in_progress:
            return float("inf")
        in_progress.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in in_progress:
                return float("inf")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]
