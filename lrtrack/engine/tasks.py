"""What a batch means: built-in steps and the validation metrics (no Hydra, no MLflow).

- Steps (``step(model, batch) -> loss``, see :mod:`lrtrack.engine.steps`): :class:`ModelLoss` for
  models that compute their own loss from a dict batch (Hugging Face style:
  ``model(**batch).loss``), chosen with ``step=model_loss`` (``conf/step/model_loss.yaml``).
- Validation metrics: a metric sees ``(outputs, targets)`` of every validation batch and gives
  one number per evaluation, logged as ``val_<name>``. :class:`Accuracy` (the default) measures
  only where the targets are class indices, so a regression or language-model run logs its
  validation loss alone. Any callable ``fn(outputs, targets) -> scalar`` (averaged over samples,
  e.g. ``torch.nn.functional.l1_loss``) or any object with ``update``/``compute``/``reset``
  (torchmetrics' protocol) works too: :func:`as_metric` adapts them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

OnOutputs = Callable[[Any, Any], None]


class ValMetric(Protocol):
    """What :func:`lrtrack.engine.train.evaluate` needs of a metric."""

    name: str

    def reset(self) -> None: ...

    def update(self, outputs: Any, targets: Any) -> None: ...

    def compute(self) -> float | None:
        """The value over every update since ``reset``; None when nothing was measured."""


class Accuracy:
    """The share of ``argmax(outputs, dim=1) == targets``, counted where targets are class indices.

    Batches whose targets are floats (regression, soft labels) or whose shapes do not fit are
    skipped, so on such a task :meth:`compute` returns None and no accuracy is logged. Counts
    stay on the device (no synchronization per batch).
    """

    name = "accuracy"

    def __init__(self) -> None:
        self.correct: torch.Tensor | None = None
        self.samples = 0

    def reset(self) -> None:
        self.correct, self.samples = None, 0

    def update(self, outputs: Any, targets: Any) -> None:
        outputs = getattr(outputs, "logits", outputs)
        if (
            isinstance(outputs, torch.Tensor)
            and isinstance(targets, torch.Tensor)
            and outputs.dim() >= 2
            and not targets.is_floating_point()
            and targets.shape == outputs.shape[:1] + outputs.shape[2:]
        ):
            hits = (outputs.argmax(dim=1) == targets).sum()
            self.correct = hits if self.correct is None else self.correct + hits
            self.samples += targets.numel()

    def compute(self) -> float | None:
        if not self.samples or self.correct is None:
            return None
        return float(self.correct) / self.samples


class BatchMean:
    """A per-batch function ``fn(outputs, targets) -> scalar`` averaged over samples.

    Args:
        fn: e.g. ``torch.nn.functional.l1_loss`` (a batch mean).
        name: the logged key is ``val_<name>`` (default: the function's name).
    """

    def __init__(self, fn: Callable[[Any, Any], Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or _name_of(fn)
        self.reset()

    def reset(self) -> None:
        self.total: torch.Tensor | None = None
        self.samples = 0

    def update(self, outputs: Any, targets: Any) -> None:
        value = self.fn(outputs, targets)
        problem = metric_value_problem(value)
        if problem is not None:
            raise TypeError(f"the metric {self.name} {problem}")
        value = torch.as_tensor(value).detach().double().reshape(())
        size = int(targets.shape[0]) if isinstance(targets, torch.Tensor) and targets.dim() else 1
        self.total = value * size if self.total is None else self.total + value * size
        self.samples += size

    def compute(self) -> float | None:
        return None if self.total is None or not self.samples else float(self.total) / self.samples


def metric_value_problem(value: Any, *, many: bool = False) -> str | None:
    """What is wrong with a metric's value for one batch (``returned None, not a number ...``), or None
    when it is a real number: a Python or numpy number, or a real tensor of one element (``many``:
    of any number of elements, averaged, as :class:`StatefulMetric` does). Finiteness is not checked (it
    would wait for the device every batch); the first-batch check does (:mod:`lrtrack.engine.metric_check`)."""
    import numbers

    if isinstance(value, numbers.Real):  # bools too: 0 or 1 (a share once averaged)
        return None
    if hasattr(value, "dtype") and hasattr(value, "shape") and not isinstance(value, torch.Tensor):  # numpy
        try:
            value = torch.as_tensor(value)
        except (TypeError, RuntimeError, ValueError):
            return f"returned an array of {value.dtype}, not a number"
    if not isinstance(value, torch.Tensor):
        kind = type(value).__name__
        shown = "None" if value is None else f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"
        return f"returned {shown}, not a number"
    what = f"a tensor {tuple(value.shape)} {str(value.dtype).replace('torch.', '')}"
    if value.is_complex():
        return f"returned {what}, not a real number"
    if value.numel() == 0 or (value.numel() != 1 and not many):
        return f"returned {what}, not one number: average over the batch (e.g. reduction='mean')"
    return None


class StatefulMetric:
    """An object with ``update``/``compute``/``reset`` (torchmetrics) under a ``name``."""

    def __init__(self, metric: Any, name: str | None) -> None:
        self.metric = metric
        self.name = name or type(metric).__name__.lower()

    def reset(self) -> None:
        self.metric.reset()

    def update(self, outputs: Any, targets: Any) -> None:
        if hasattr(self.metric, "to") and isinstance(outputs, torch.Tensor):
            self.metric.to(outputs.device)
        self.metric.update(outputs, targets)

    def compute(self) -> float | None:
        value = self.metric.compute()
        return None if value is None else float(torch.as_tensor(value).float().mean())


def _name_of(fn: Any) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return str(getattr(inner, "__name__", type(inner).__name__)).lower()


def as_metric(metric: Any, name: str | None = None) -> ValMetric | None:
    """A validation metric from what a user gives.

    Args:
        metric: ``"accuracy"`` (the default metric), ``None`` (none: validation loss only), an
            object with ``update``/``compute``/``reset``, or a callable ``fn(outputs, targets)``.
        name: the logged key is ``val_<name>``; default: the metric's own name.

    Raises:
        TypeError: anything else, with what to pass instead.
    """
    if metric is None:
        return None
    if isinstance(metric, str):
        if metric != "accuracy":
            raise TypeError(f"metric={metric!r} is not known: pass 'accuracy', None, or a callable/metric object")
        return Accuracy()
    if isinstance(metric, Accuracy | BatchMean | StatefulMetric):
        if name:
            metric.name = name
        return metric
    if all(hasattr(metric, a) for a in ("update", "compute", "reset")):
        return StatefulMetric(metric, name)
    if callable(metric):
        return BatchMean(metric, name)
    raise TypeError(f"metric must be 'accuracy', None, a callable fn(outputs, targets) or an object with "
                    f"update/compute/reset; got {type(metric).__name__}")


class ModelLoss:
    """The step of a model that returns its own loss from a dict batch: ``model(**batch).loss``.

    Hugging Face models (and any model that takes the batch's keys as keyword arguments and
    returns an object or dict with ``loss``) train with this step (``step=model_loss``). With
    ``labels_key`` in the batch, the outputs' ``logits`` and those labels reach the validation
    metric, so a classifier still reports accuracy.

    Args:
        labels_key: the batch key holding the targets, for the metric.
    """

    def __init__(self, labels_key: str = "labels", on_outputs: OnOutputs | None = None) -> None:
        self.labels_key = labels_key
        self.on_outputs = on_outputs

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if not isinstance(batch, Mapping):
            raise TypeError(f"step=model_loss expects dict batches (model(**batch)); got {type(batch).__name__}. "
                            "For (inputs, targets) batches set step=null and choose a criterion")
        out = model(**batch)
        loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"step=model_loss: the model returned {type(out).__name__} without a loss tensor; "
                            "return an object or dict with .loss (e.g. compute it when labels are given), or "
                            "write your own step(model, batch) -> loss")
        if self.on_outputs is not None and self.labels_key in batch:
            logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
            if logits is not None:
                self.on_outputs(logits, batch[self.labels_key])
        return loss

    def with_outputs(self, on_outputs: OnOutputs) -> ModelLoss:
        """The same step, reporting ``(logits, labels)`` to ``on_outputs`` (for a metric)."""
        return ModelLoss(self.labels_key, on_outputs)


# --------------------------------------------------------------------------- the first-batch check

_CLASSIFICATION = (nn.NLLLoss, nn.CrossEntropyLoss)
_ELEMENTWISE = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss, nn.BCEWithLogitsLoss, nn.BCELoss)
_OPTION = {nn.NLLLoss: "nll", nn.CrossEntropyLoss: "cross_entropy", nn.MSELoss: "mse",
           nn.BCEWithLogitsLoss: "bce_with_logits"}


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).replace('torch.', '')}"
    return type(value).__name__


def _criterion_name(criterion: Any) -> str:
    option = _OPTION.get(type(criterion))
    return f"criterion={option}" if option else f"the criterion {type(criterion).__name__}"


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def first_batch_problem(model: nn.Module, batch: Any, *, criterion: Any = None, step: Any = None,
                        num_classes: int | None = None) -> str | None:
    """What makes the model, the loss and the data unable to train together, seen on one batch.

    Runs the model once on ``batch`` (already on the model's device) in eval mode without
    gradients, then checks what the loss will get: (inputs, targets) batches for a criterion,
    log-probabilities for ``NLLLoss``, no probabilities for ``CrossEntropyLoss``, class indices
    within the model's outputs, equal shapes for element-wise losses (``MSELoss`` would broadcast
    (N, 1) against (N,) into an (N, N) loss), a finite scalar loss.

    Returns:
        One line naming the problem and the setting to change, or None when the batch trains.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if step is not None:
                return _check_step(model, batch, step)
            return _check_supervised(model, batch, criterion, num_classes)
    finally:
        model.train(was_training)


def _check_step(model: nn.Module, batch: Any, step: Any) -> str | None:
    try:
        loss = step(model, batch)
    except Exception as err:  # the user's step or model: report it on one line
        return f"step {getattr(step, '__name__', type(step).__name__)} failed on the first batch: {_error(err)}"
    return _check_loss(loss, "the step")


def _check_loss(loss: Any, what: str) -> str | None:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return (f"{what} returned {_shape(loss)}, not a scalar loss tensor; average over the batch "
                "(e.g. criterion.reduction=mean)")
    if not torch.isfinite(loss).all():
        return (f"the loss of the first batch is {float(loss)} before any training: check the data for NaN or "
                "inf values and the model's initialisation")
    return None


def _check_supervised(model: nn.Module, batch: Any, criterion: Any, num_classes: int | None) -> str | None:
    if isinstance(batch, Mapping):
        return (f"the batches are dicts (keys: {', '.join(map(str, batch))}), not (inputs, targets): set "
                "step=model_loss when the model returns its own loss from them, or step=<your (model, batch) -> loss>")
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        return (f"the batches are {type(batch).__name__}, not (inputs, targets) pairs: make the data yield pairs, "
                "or set step=<your (model, batch) -> loss>")
    inputs, targets = batch[0], batch[1]
    try:
        outputs = model(inputs)
    except Exception as err:  # the user's model: one line
        fix = _dtype_fix(model, inputs, err) or (
            "make the model.* settings fit the data (input size, channels)" if _SHAPE_ERROR.search(str(err)) else
            f"the model's own code raised it ({_where(err)}): fix the model, or the data it expects")
        return f"the model cannot take the data's inputs {_shape(inputs)}: {_error(err)}; {fix}"
    if not isinstance(outputs, torch.Tensor):
        extra = " (it has .loss: set step=model_loss)" if hasattr(outputs, "loss") else ""
        return f"the model returns {type(outputs).__name__}, not a tensor the criterion can take{extra}"
    problem = _check_outputs(outputs, targets, criterion, num_classes)
    if problem is not None:
        return problem
    try:
        loss = criterion(outputs, targets)
    except Exception as err:  # shapes or dtypes the criterion refuses, or one of its own settings
        setting = next((f"criterion.{key}={value!r}" for key, value in vars(criterion).items()
                        if not key.startswith("_") and isinstance(value, str) and value and value in str(err)), None)
        if setting is not None:  # `avg is not a valid value for reduction`: the setting, not the task
            return f"{setting} is invalid: {_error(err)}"
        return (f"{_criterion_name(criterion)} cannot take the model's outputs {_shape(outputs)} and the targets "
                f"{_shape(targets)}: {_error(err)}; choose the criterion that fits the task")
    return _check_loss(loss, _criterion_name(criterion))


_DTYPE_ERROR = re.compile(r"dtype|scalar type|Long|Int|Float|Double|Half|Byte|unsigned char|indices")
_SHAPE_ERROR = re.compile(r"shape|size|mat1|mat2|dimension|channels|expected input|must match", re.IGNORECASE)


def _where(err: BaseException) -> str:
    """``file.py:12`` of the innermost frame that raised ``err``."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "its forward"


def _dtype_fix(model: nn.Module, inputs: Any, err: BaseException) -> str | None:
    """What to change when the model's error is about the inputs' dtype (token ids stored as
    floats, images stored as integers), else None."""
    if not isinstance(inputs, torch.Tensor) or not _DTYPE_ERROR.search(str(err)):
        return None
    dtype = str(inputs.dtype).replace("torch.", "")
    if inputs.is_floating_point() and any(isinstance(m, nn.Embedding) for m in model.modules()):
        return (f"the inputs are {dtype} but the model's nn.Embedding takes integer ids: store the ids as "
                "integers (int64) in the data (data=tensors keeps integer inputs as they are)")
    param = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if param is None:
        return None
    wanted = str(param).replace("torch.", "")
    if not inputs.is_floating_point():
        return (f"the inputs are {dtype} (integers) but the model computes in {wanted}: store the inputs as "
                f"floats (images: x.float() / 255), or start the model with nn.Embedding for token ids")
    if inputs.dtype != param:
        return f"the inputs are {dtype} but the model's parameters are {wanted}: store the inputs as {wanted}"
    return None


def _check_outputs(outputs: torch.Tensor, targets: Any, criterion: Any, num_classes: int | None) -> str | None:
    name = _criterion_name(criterion)
    if not isinstance(targets, torch.Tensor):
        return None
    if isinstance(criterion, _CLASSIFICATION) and not targets.is_floating_point():
        return _check_classes(outputs, targets, criterion, num_classes)
    if isinstance(criterion, _CLASSIFICATION) and (isinstance(criterion, nn.NLLLoss) or outputs.shape != targets.shape):
        return (f"{name} takes class indices but the targets are {_shape(targets)} numbers: for regression set "
                "criterion=mse; for classes store the targets as integers")
    if isinstance(criterion, _ELEMENTWISE):
        if not targets.is_floating_point():
            return (f"{name} compares numbers but the targets are {_shape(targets)} class indices: use "
                    "criterion=cross_entropy for classes, or float targets for regression")
        if outputs.shape != targets.shape:
            return (f"the model returns {_shape(outputs)} but the targets are {_shape(targets)}: {name} needs equal "
                    "shapes (it would broadcast them); make them match, e.g. squeeze the model's last dimension "
                    "or store the targets as (N, 1)")
        if isinstance(criterion, nn.BCELoss) and ((outputs < 0) | (outputs > 1)).any():
            return ("criterion BCELoss expects probabilities but the model returns values outside [0, 1]: "
                    "set criterion=bce_with_logits (it takes logits)")
    return None


def _check_classes(outputs: torch.Tensor, targets: torch.Tensor, criterion: Any,
                   num_classes: int | None) -> str | None:
    name = _criterion_name(criterion)
    if outputs.dim() < 2 or targets.shape != outputs.shape[:1] + outputs.shape[2:]:
        return (f"the model returns {_shape(outputs)} but the targets are {_shape(targets)}: {name} needs outputs "
                "(batch, classes) for class-index targets (batch,)")
    classes = outputs.shape[1]
    top = int(targets.max()) if targets.numel() else 0
    needed = max(num_classes or 0, top + 1)
    if needed > classes:
        return (f"the data has {needed} classes but the model returns {classes} scores per sample: set the model's "
                f"number of classes to {needed} (e.g. model.num_classes={needed})")
    scores = outputs.float().flatten(2) if outputs.dim() > 2 else outputs.float()
    sums = scores.exp().sum(dim=1) if isinstance(criterion, nn.NLLLoss) else scores.sum(dim=1)
    if isinstance(criterion, nn.NLLLoss) and ((scores > 1e-4).any() or (sums - 1).abs().max() > 1e-3):
        return ("criterion=nll expects log-probabilities but the model returns raw scores (logits: exp(outputs) "
                "does not sum to 1): set criterion=cross_entropy, or end the model with log_softmax")
    if isinstance(criterion, nn.CrossEntropyLoss) and classes > 1 and (scores >= 0).all() and (sums - 1).abs().max() < 1e-3:
        return ("criterion=cross_entropy expects logits but the model returns probabilities (each row sums to 1): "
                "remove the softmax at the end of the model, or return log_softmax")
    return None


__all__ = ["Accuracy", "BatchMean", "ModelLoss", "StatefulMetric", "ValMetric", "as_metric", "first_batch_problem",
           "metric_value_problem"]
