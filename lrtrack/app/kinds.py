"""What a component's ``_target_`` built, checked against what lrtrack needs of it (no Hydra).

``hydra.utils.instantiate`` returns whatever the target returns: ``_target_: builtins.int`` builds
``0``, a user's factory may return a string, and ``_partial_: true`` on a model class defers the
call (a ``functools.partial``, not a module). Used as built, each of them was an
``AttributeError`` deep in the range test. Each check here returns one line,
``<group>._target_=<target> built <what>, not <what is needed>: <how to fix it>``, or None when
the object is what the group needs.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

#: What each group needs, and how to give it.
NEEDS: dict[str, tuple[str, str]] = {
    "model": ("a torch.nn.Module", "give a Module class, or a factory function that returns a module"),
    "optimizer": ("a torch.optim.Optimizer", "give an Optimizer class with optimizer._partial_=true (lrtrack "
                  "passes the model's parameters), or a factory params -> Optimizer"),
    "criterion": ("a loss function", "give a loss module (e.g. torch.nn.CrossEntropyLoss) or a callable "
                  "fn(outputs, targets) -> loss"),
    "step": ("a step function", "give a callable step(model, batch) -> loss (a function, or a class whose "
             "instances are called so)"),
    "metric": ("a metric", "give a callable fn(outputs, targets) -> number, or a class with update/compute/reset "
               "(torchmetrics)"),
}


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
    return f"{module}.{name}" if module and module != "builtins" else str(name)


def describe(obj: Any) -> str:
    """``obj`` in a few words: ``an int``, ``a str``, ``None``, ``the class X``, ``a functools.partial of X``."""
    if obj is None:
        return "None"
    if isinstance(obj, functools.partial):
        return f"a functools.partial of {_qualname(obj.func)}"
    if inspect.isclass(obj):
        return f"the class {_qualname(obj)} (not an instance)"
    name = type(obj).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _setting(group: str, target: str) -> str:
    return f"{group}._target_={target}"


def _deferred_or_class(group: str, target: str, built: Any, wanted: str) -> str | None:
    """A partial (``_partial_: true``) or a class where the group needs an instance."""
    if isinstance(built, functools.partial):
        return (f"{_setting(group, target)} built {describe(built)}, not {wanted} ({group}._partial_=true defers "
                f"the call): drop {group}._partial_ (lrtrack calls the {group}'s _target_ itself)")
    if inspect.isclass(built):
        return (f"{_setting(group, target)} built {describe(built)}, not {wanted}: a factory must return an "
                "instance, not its class")
    return None


def model_problem(target: str, built: Any) -> str | None:
    """None when ``built`` is a ``torch.nn.Module``, else the one line that says what it is."""
    from torch import nn

    if isinstance(built, nn.Module):
        return None
    wanted, fix = NEEDS["model"]
    return _deferred_or_class("model", target, built, wanted) or f"{_setting('model', target)} built " \
        f"{describe(built)}, not {wanted}: {fix}"


def optimizer_factory_problem(target: str, built: Any) -> str | None:
    """None when the built ``optimizer`` node can be given the model's parameters (a callable)."""
    if callable(built) and not inspect.isclass(built):
        return None
    wanted, fix = NEEDS["optimizer"]
    return f"{_setting('optimizer', target)} built {describe(built)}, not a factory of {wanted}: {fix}"


def optimizer_problem(target: str, built: Any) -> str | None:
    """None when the optimizer factory, given the parameters, returned a ``torch.optim.Optimizer``."""
    import torch

    if isinstance(built, torch.optim.Optimizer):
        return None
    wanted, fix = NEEDS["optimizer"]
    return (f"{_setting('optimizer', target)} built {describe(built)} from the model's parameters, not {wanted}: "
            f"{fix}")


def callable_problem(group: str, target: str, built: Any) -> str | None:
    """For ``criterion`` and ``step``: None when ``built`` is a callable instance or function."""
    wanted, fix = NEEDS[group]
    if isinstance(built, functools.partial) and inspect.isclass(built.func):  # the class called per batch
        return _deferred_or_class(group, target, built, wanted)
    if inspect.isclass(built):
        return _deferred_or_class(group, target, built, wanted)
    if callable(built):
        return None
    return f"{_setting(group, target)} built {describe(built)}, not {wanted}: {fix}"


def metric_problem(target: str, built: Any) -> str | None:
    """None when ``built`` can be a validation metric: update/compute/reset, or a callable."""
    if all(hasattr(built, a) for a in ("update", "compute", "reset")) and not inspect.isclass(built):
        return None
    return callable_problem("metric", target, built)


__all__ = ["NEEDS", "callable_problem", "describe", "metric_problem", "model_problem", "optimizer_factory_problem",
           "optimizer_problem"]
