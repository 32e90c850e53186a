"""The validation metric tried on the first batch, before any run (no Hydra, no MLflow).

A metric is first called after a whole epoch of training (or in the range test's validation), so
one that cannot work (``print``: None; a function returning a string; a factory that takes no
arguments, bound as ``fn(outputs, targets)``) failed after the runs existed. :func:`metric_problem`
gives it the first batch's outputs and targets, as :func:`lrtrack.engine.train.evaluate` will,
and requires a finite real number (None from a metric object's ``compute``, or from lrtrack's
accuracy on float targets, means "nothing measured" and is allowed).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lrtrack.engine.tasks import Accuracy, BatchMean, StatefulMetric, metric_value_problem

#: How to write a metric, for the end of the line.
METRIC_FIX = ("a metric is fn(outputs, targets) -> a number (a float or a 0-d tensor) or an object with "
              "update/compute/reset; set metric=none for the validation loss alone")


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).replace('torch.', '')}"
    return type(value).__name__


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _first_outputs(model: nn.Module, batch: Any, criterion: Any, step: Any) -> tuple[Any, Any] | None:
    """(outputs, targets) as the metric will see them on ``batch``; None when it sees nothing (a
    step without ``with_outputs``) or the model fails (the first-batch check says so)."""
    seen: list[tuple[Any, Any]] = []
    was_training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()
            if step is None and criterion is not None:
                if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                    return None
                seen.append((model(batch[0]), batch[1]))
            else:
                with_outputs = getattr(step, "with_outputs", None)
                if not callable(with_outputs):
                    return None
                with_outputs(lambda outputs, targets: seen.append((outputs, targets)))(model, batch)
    except Exception:  # the model or the step: the first-batch check reported it
        return None
    finally:
        model.train(was_training)
    return seen[0] if seen else None


def _finite_problem(value: Any) -> str | None:
    number = float(torch.as_tensor(value).detach().double().mean())
    return None if math.isfinite(number) else f"returned {number}, not a finite number"


def _value(metric: Any, outputs: Any, targets: Any) -> tuple[Any, bool]:
    """The metric's value on one batch, unconverted, and whether several numbers are allowed (averaged)."""
    if isinstance(metric, BatchMean):
        return metric.fn(outputs, targets), False
    inner = metric.metric if isinstance(metric, StatefulMetric) else metric
    metric.reset()
    try:
        metric.update(outputs, targets)
        return inner.compute(), True
    finally:
        metric.reset()


def metric_problem(metric: Any, model: nn.Module, batch: Any, *, criterion: Any = None,
                   step: Any = None) -> str | None:
    """What keeps ``metric`` from measuring the validation data, seen on ``batch`` (on the model's
    device), as the rest of a line that starts with the metric's setting; None when it gives a
    finite number (or nothing, where it measures nothing)."""
    if metric is None or isinstance(metric, Accuracy):
        return None
    seen = _first_outputs(model, batch, criterion, step)
    if seen is None:
        return None
    outputs, targets = seen
    given = f"the first batch's outputs {_shape(outputs)} and targets {_shape(targets)}"
    try:
        with torch.no_grad():
            value, many = _value(metric, outputs, targets)
    except Exception as err:  # the user's metric: one line
        factory = " (a factory? set metric._partial_=false)" if "positional argument" in str(err) else ""
        return f"failed on {given}: {_error(err)}{factory}; {METRIC_FIX}"
    if value is None and not isinstance(metric, BatchMean):
        return None  # compute(): nothing measured
    problem = metric_value_problem(value, many=many) or _finite_problem(value)
    if problem is not None:
        return f"{problem} (given {given}); {METRIC_FIX}"
    return None


__all__ = ["METRIC_FIX", "metric_problem"]
