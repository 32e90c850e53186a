"""A component's settings checked against its target's signature, before it is built.

``optimizer.momentum=true`` or ``optimizer.nesterov=maybe`` build without a word: Python takes
``True`` as 1 and any non-empty string as true, so a run trains with a setting the user never
meant. The target's own signature says what each argument is: its type hints where they can be
read, else its default's type. A flag (``bool``) takes true or false only; a number takes a number,
never a boolean, a string or a list. Arguments the signature leaves open (no hint, a ``None``
default, ``**kwargs``) are the target's own business.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig

FLAG, NUMBER, INTEGER = "flag", "number", "integer"


def argument_problems(group: str, node: DictConfig) -> list[str]:
    """One line per setting of ``node`` (a ``_target_`` node of ``group``) its target cannot mean."""
    target = node.get("_target_")
    kinds = _argument_kinds(target) if isinstance(target, str) else {}
    lines = _unknown_settings(group, node, target) if isinstance(target, str) else []
    numeric_defaults = _numeric_defaults(target) if isinstance(target, str) else {}
    for key in node:
        if key in numeric_defaults and node[key] is None:  # ${bounds.max_lr} left null: torch would compare None
            raw = node._get_node(key)._value()
            lines.append(f"{group}.{key}={raw if isinstance(raw, str) else 'null'} is invalid: must be a number "
                         f"({key} of {target}), not null" + (" (what it refers to is null)" if isinstance(raw, str)
                                                             else "") + f"; e.g. {group}.{key}={numeric_defaults[key]!r}")
    for key, kind in kinds.items():
        if key not in node or str(key).startswith("_"):
            continue
        value = node[key]
        if kind == FLAG and not (value is None or isinstance(value, bool)):
            lines.append(f"{group}.{key}={_shown(value)} is invalid: must be true or false (a flag of {target}); "
                         f"set {group}.{key}=true or {group}.{key}=false")
        elif kind in (NUMBER, INTEGER) and (isinstance(value, (bool, str, DictConfig, ListConfig))):
            lines.append(f"{group}.{key}={_shown(value)} is invalid: must be a number ({key} of {target}), not "
                         f"{_kind_of(value)}; e.g. {group}.{key}={_example(target, key)}")
        elif kind == INTEGER and isinstance(value, float):  # 1e1 and 10.0 are floats: torch wants an int
            whole = f"write {int(value)}" if value.is_integer() else f"e.g. {group}.{key}={_example(target, key)}"
            lines.append(f"{group}.{key}={value!r} is invalid: must be a whole number ({key} of {target}); {whole}")
    return lines


def _numeric_defaults(target: str) -> dict[str, Any]:
    """The arguments whose default is a number (not a flag) and whose hint, if any, leaves out None:
    None is not among what they take (``clip: float | None = 1.0`` takes it)."""
    try:
        from hydra.utils import get_object

        obj = get_object(target)
        parameters = inspect.signature(obj).parameters
    except (Exception, SystemExit):
        return {}
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # hints this Python cannot resolve: the defaults decide
        hints = {}
    return {name: p.default for name, p in parameters.items()
            if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)
            and type(None) not in typing.get_args(hints.get(name))}


def _unknown_settings(group: str, node: DictConfig, target: str) -> list[str]:
    """Settings the target takes no argument for (it has no ``**kwargs``): building it would fail
    after the runs were created, or in every job of a sweep."""
    import difflib

    try:
        from hydra.utils import get_object

        parameters = inspect.signature(get_object(target)).parameters
    except (Exception, SystemExit):  # not importable, no signature: building it reports the problem
        return []
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return []
    known = [name for name, p in parameters.items() if p.kind != p.VAR_POSITIONAL]
    lines = []
    for key in node:
        if str(key).startswith("_") or key in parameters:
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {group}.{close[0]}?" if close else f"its settings: {', '.join(known) or 'none'}"
        lines.append(f"{group}.{key}={_shown(node[key], key)} is invalid: {target} takes no setting {key!r}; {hint}")
    return lines


def _argument_kinds(target: str) -> dict[str, str]:
    """``{"nesterov": FLAG, "momentum": NUMBER, ...}`` for the arguments whose kind is certain."""
    try:
        from hydra.utils import get_object

        obj = get_object(target)
        signature = inspect.signature(obj)
    except (Exception, SystemExit):  # not importable, no signature: building it reports the problem
        return {}
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # hints naming what this Python cannot resolve: the defaults decide
        hints = {}
    kinds = {}
    for name, parameter in signature.parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        kind = _kind_of_hint(hints.get(name)) or _kind_of_default(parameter.default)
        if kind:
            kinds[name] = kind
    return kinds


def _kind_of_hint(hint: Any) -> str | None:
    import types

    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    if options == [bool]:
        return FLAG
    if options == [int]:
        return INTEGER
    if options and all(o in (int, float) for o in options):
        return NUMBER
    return None  # a union with tensors, strings, callables: more than one kind is meant


def _kind_of_default(default: Any) -> str | None:
    if isinstance(default, bool):
        return FLAG
    if isinstance(default, (int, float)):
        return NUMBER
    return None


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, ListConfig) else "a mapping"


def _example(target: str, key: str) -> str:
    try:
        from hydra.utils import get_object

        default = inspect.signature(get_object(target)).parameters[key].default
    except Exception:
        return "0.1"
    return repr(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else "0.1"


def _shown(value: Any, key: str = "") -> str:
    from lrtrack.tracking.redact import MASK, is_secret_name

    if key and is_secret_name(key):
        return repr(MASK)  # the value of a secret-named setting is never shown
    if isinstance(value, bool):
        return "true" if value else "false"  # as the user wrote it
    if isinstance(value, (DictConfig, ListConfig)):
        from omegaconf import OmegaConf

        value = OmegaConf.to_container(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + "..."
