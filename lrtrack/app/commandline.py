"""The command line before Hydra sees it, and Hydra's composition errors as one line.

Hydra's parser takes its flags (``-m``, ``--config-dir DIR``, ``--cfg job``) before the
overrides only: ``python -m lrtrack +model=mnist_cnn -m`` ends in argparse's usage block.
:func:`arranged` moves the flags first, keeping their order and the overrides' order, so the
command means what it says. :func:`override_problems` refuses what composition would turn into a
traceback: a config group set to ``null``.
"""

from __future__ import annotations

import re
from pathlib import Path


def arranged(argv: list[str]) -> list[str]:
    """``argv`` with Hydra's flags (and their values) before the overrides; unchanged when it
    already parses, or when it does not parse either way (Hydra then says why)."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        _, unknown = parser.parse_known_args(argv)
        if not unknown:
            return argv
        _, unknown = parser.parse_known_intermixed_args(argv)
    except Exception:  # argparse's own error (a flag missing its value): Hydra reports it
        return argv
    if unknown:
        return argv
    flags, overrides = _split(argv, parser)
    return flags + overrides


def _split(argv: list[str], parser: object) -> tuple[list[str], list[str]]:
    """The flags with their values, and the overrides, each in the order given."""
    takes_value = {}
    for action in parser._actions:  # type: ignore[attr-defined]
        for option in action.option_strings:
            takes_value[option] = action.nargs
    flags: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if arg.startswith("-") and name in takes_value:
            flags.append(arg)
            nargs = takes_value[name]
            has_value = "=" in arg
            if not has_value and nargs is None and i + 1 < len(argv):  # --config-dir DIR
                flags.append(argv[i + 1])
                i += 1
            elif not has_value and nargs == "?" and i + 1 < len(argv) and not argv[i + 1].startswith("-") \
                    and "=" not in argv[i + 1]:  # --info config
                flags.append(argv[i + 1])
                i += 1
        else:
            overrides.append(arg)
        i += 1
    return flags, overrides


_STOPS_AT_ONCE = {"-h", "--help", "--hydra-help", "--version", "-sc", "--shell-completion"}


class _FlagError(Exception):
    pass


def flag_problems(argv: list[str]) -> list[str]:
    """Hydra's flags as its parser reads them (``--cfg badvalue``, ``--info nope``, ``--config-dir`` with
    no folder): one line instead of argparse's usage block."""
    from hydra._internal.utils import get_args_parser

    if _STOPS_AT_ONCE.intersection(a.split("=", 1)[0] for a in argv):
        return []  # help and version print and exit: nothing to check

    def refuse(message: str) -> None:
        raise _FlagError(message)

    parser = get_args_parser()
    parser.error = refuse  # type: ignore[method-assign]
    try:
        parser.parse_args(argv)
    except _FlagError as err:
        return [f"{err}; see python -m lrtrack --help"]
    return []


def override_problems(argv: list[str], conf_dir: Path) -> list[str]:
    """One line per override composition would fail on, or take in a way not meant: a group set to null,
    a group's option written as its file name, an empty output folder."""
    problems = flag_problems(argv)
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()} if conf_dir.is_dir() else set()
    for arg in argv:
        key, sep, value = arg.partition("=")
        group = key.lstrip("+")
        if not sep or arg.startswith("-"):
            continue
        odd = _look_alikes(key) + _invisible(value)
        if odd:  # `stage=rаnge_test` (a Cyrillic а), a trailing zero-width space: Hydra's lexer shows what looks right
            problems.append(f"{arg!r} holds {', '.join(odd)}; retype it in plain ASCII")
            continue
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        foreign = [] if quoted else _look_alikes(value)  # Hydra's grammar takes other characters in quotes only
        if foreign:
            problems.append(f"{arg!r} holds {', '.join(foreign)}: outside quotes a value is plain "
                            f"ASCII; retype it, or quote it ({key}='{value}')")
            continue
        if group in groups and value.strip() == "null":  # (metric=none: an option)
            options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
            problems.append(f"{group}={value} is invalid: a config group takes one of its options "
                            f"({', '.join(options)}), not null; choose one, e.g. "
                            f"{group}={options[0] if options else '<name>'}")
        elif group in groups and value.strip().endswith((".yaml", ".yml")):  # the option's name becomes run names
            problems.append(f"{group}={value} is invalid: a config group takes an option's name, not its file; "
                            f"write {key}={value.strip().rsplit('.', 1)[0]}")
        elif group in ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir") and not value.strip():
            problems.append(f"{group}='' is invalid: an empty folder would put the job's outputs in the launch "
                            f"folder; give a folder, e.g. {group}=outputs/mine")
        elif group == "hydra.sweep.subdir" and "${" not in value:  # one folder for every job: each overwrites the last
            problems.append(f"hydra.sweep.subdir={value} is invalid: every job of the sweep would write into that "
                            "one folder; keep a per-job part in it, e.g. hydra.sweep.subdir=${hydra.job.num}")
    return problems


def _described(c: str) -> str:
    import unicodedata

    return f"U+{ord(c):04X} ({unicodedata.name(c, 'unnamed')})"


def _look_alikes(text: str) -> list[str]:
    """Characters outside ASCII in a key (a setting's name is ASCII: a Cyrillic а only looks like a)."""
    return [_described(c) for c in dict.fromkeys(text) if ord(c) > 127]


def _invisible(text: str) -> list[str]:
    """Characters that print as nothing or as a space: zero-width, no-break and other Unicode spaces."""
    import unicodedata

    return [_described(c) for c in dict.fromkeys(text) if unicodedata.category(c) in ("Cf", "Zl", "Zp")
            or (unicodedata.category(c) == "Zs" and c != " ")]


_MERGE = re.compile(r"^Error merging override (?P<override>.+?); (?P<why>.+?); full_key: (?P<key>\S+)$")
_KINDS = (("to Integer", "a whole number"), ("to Float", "a number"), ("valid bool", "true or false"),
          ("to string", "one value, not a list or a mapping"))


def _merge_line(line: str) -> str | None:
    """OmegaConf's "Error merging override seed=abc; Value 'abc' of type 'str' could not be converted to
    Integer; full_key: seed" as lrtrack's line: the setting, the value, what it must be and the rule."""
    found = _MERGE.match(line)
    if not found:
        return None
    kind = next((what for marker, what in _KINDS if marker in found["why"]), None)
    if kind is None:
        return None
    value = found["override"].split("=", 1)[1] if "=" in found["override"] else found["override"]
    from lrtrack.app.config import allowed_text

    rule = allowed_text(found["key"])
    fix = ""
    try:
        number = float(value)
        if kind == "a whole number" and number.is_integer():  # 1e3 is read as a float
            fix = f" ({value} is read as a float: write {int(number)})"
    except ValueError:
        pass
    return f"{found['key']}={value} is invalid: must be {kind}{fix}" + (f"; allowed: {rule}" if rule else "")


def condensed(error: BaseException) -> str:
    """Hydra's multi-line composition error (and its cause) as one line."""
    parts: list[str] = []
    text = str(error) + ("\n" + str(error.__cause__) if error.__cause__ is not None else "")
    skipping_paths = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Config search path"):
            skipping_paths = True
            continue
        if (skipping_paths and line.startswith("provider=")) or not line:
            continue
        skipping_paths = False
        if line.startswith(("reference_type=", "object_type=")) or "HYDRA_FULL_ERROR" in line:
            continue
        if parts and raw.startswith("\t") and ("Available options" in parts[-1]):
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
        else:
            parts.append(line.rstrip("."))
    joined = "; ".join(parts)
    return _merge_line(joined) or joined
