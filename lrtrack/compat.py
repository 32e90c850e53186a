"""torch-lr-finder 0.2.2's ``LRFinder`` over lrtrack's engine, as a drop-in replacement::

    from lrtrack import LRFinder            # was: from torch_lr_finder import LRFinder

    lr_finder = LRFinder(model, optimizer, criterion, device="cuda")
    lr_finder.range_test(train_loader, end_lr=100, num_iter=100)
    ax, lr = lr_finder.plot()               # the curve and the steepest-gradient suggestion
    lr_finder.reset()

By default :class:`LRFinder` runs lrtrack's corrected range test
(:func:`lrtrack.engine.finder.run_range_test`); ``LRFinder(..., compat=True)`` reproduces 0.2.2's
numbers and passes 0.2.2's own test suite (tests/test_compat_upstream.py), so a ported notebook
draws the same curve. :data:`DIFFERENCES` lists every intentional difference.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import numbers
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from lrtrack.engine import finder as engine
from lrtrack.engine.observers import StepObserver
from lrtrack.engine.steps import (
    StepFn,
    autocast_factory,
    batch_size_of,
    device_problem,
    mean_loss,
    supervised_step,
)
from lrtrack.engine.suggest import Suggestion, check_rule, suggest

log = logging.getLogger(__name__)

__all__ = [
    "DIFFERENCES",
    "DataLoaderIter",
    "LRFinder",
    "TorchLrFinderDivergence",
    "TorchLrFinderSmoother",
    "TrainDataLoaderIter",
    "ValDataLoaderIter",
]

#: Validation batches evaluated per step in lrtrack mode (the engine's default).
DEFAULT_VAL_BATCHES = 5

_Dir = str | os.PathLike[str] | None

#: Every intentional difference between the default mode and torch-lr-finder 0.2.2, and what
#: ``compat=True`` keeps. The README's "Coming from pytorch-lr-finder" section lists exactly
#: these lines (tests/test_compat.py checks that), so this tuple is the one place to change.
DIFFERENCES: tuple[str, ...] = (
    "Smoothing: a bias-corrected EMA with decay `1 - smooth_f` (`smooth_f=0` turns it off); "
    "0.2.2 seeds the average with the first loss and never corrects it, and `compat=True` does "
    "the same.",
    "NaN/inf loss: the test stops at the first non-finite loss (the step is recorded and "
    "`result.stop_reason` is `'non_finite_loss'`); 0.2.2 runs on to `num_iter` and fills the "
    "history with NaN, and so does `compat=True`.",
    "Divergence: the test stops when `smoothed - best > (diverge_th - 1) * |best|` (the same as "
    "`smoothed > diverge_th * best` for positive losses, and sane for negative ones) and needs "
    "`diverge_th > 1`; `compat=True` uses 0.2.2's `smoothed > diverge_th * best`.",
    "Restore, in both modes: the model, optimizer and RNG state are put back after every "
    "`range_test`, also when it raises or is interrupted; 0.2.2 restores only on `reset()`, "
    "which still restores the state from when the `LRFinder` was created.",
    "Validation: `val_batches=5` fixed validation batches are evaluated after each step; 0.2.2 "
    "evaluates the whole validation loader every step, as `val_batches=None` or `compat=True` "
    "does. A `ValDataLoaderIter` left mid-pass by an earlier test starts a full pass.",
    "Parameter groups: a scalar `start_lr`/`end_lr` keeps the ratios between the groups' LRs; "
    "0.2.2 gives every group the same `start_lr` (when set) and the same `end_lr`, and so does "
    "`compat=True`. A list with one LR per group works in both modes.",
    "LR grid: the last LR is exactly `end_lr`; 0.2.2's formula can be one float rounding away "
    "from it, and `compat=True` keeps that. In both modes `history['lr'][i]` is the LR that "
    "step `i` trained with.",
    "Suggestions: `finder.suggestions` holds all four rules (steepest, valley, minimum, slide) "
    "and `finder.result` the whole `RangeTestResult`; `plot(suggest_lr=True)` marks lrtrack's "
    "`steepest` rule (the slope against log10 LR, so every LR must be > 0) and returns `None` "
    "for the LR, with a logged reason, when the curve is too short. With `compat=True` it is "
    "0.2.2's argmin of `np.gradient` on the trimmed curve, and a too-short curve raises 0.2.2's "
    "'Need at least' `RuntimeError`. `suggest_lr` may also name a rule.",
    "`start_lr=0` is a real 0 (valid with `step_mode='linear'`); 0.2.2, and `compat=True`, "
    "read a falsy `start_lr` as 'use the optimizer's LR'.",
    "Scheduler check, in both modes: no scheduler is attached to the optimizer, so `range_test` "
    "can run again without `reset()`; 0.2.2 raises `RuntimeError` on the second call.",
    "Argument errors, in both modes: raised before anything changes, with messages that name "
    "the parameter, the bad value and the fix; the exception types are 0.2.2's.",
    "Loaders: `train_loader`/`val_loader` may be any iterable of batches; 0.2.2, and "
    "`compat=True`, take only a `DataLoader` or a `TrainDataLoaderIter`/`ValDataLoaderIter` and "
    "raise a 'has unsupported type' `ValueError` for anything else.",
    "New in both modes: `step_fn(model, batch) -> loss` replaces `criterion` for dict batches, "
    "several inputs or outputs and custom losses; `observer=` receives every step (for example "
    "an MLflow run from `lrtrack.tracking.runs`).",
    "Mixed precision, in both modes: `amp_backend='apex'` raises a 'not supported' "
    "`ValueError`; with `amp_backend='torch'` and `amp_config=None` the forward pass autocasts "
    "on the model's device (float16 on CUDA, bfloat16 on CPU), where 0.2.2 fails.",
    "`memory_cache=False`, in both modes, keeps the `reset()` state and the per-test restore "
    "state in files under `cache_dir` (the system temp folder by default), never a second copy "
    "in memory.",
    "Messages, in both modes, go through `logging` (logger `lrtrack.compat`), never `print`; "
    "the progress bar shows only on a terminal.",
)


class DataLoaderIter:
    """Iterates over a data loader, turning each batch into ``(inputs, labels)``; for other
    batch formats subclass :class:`TrainDataLoaderIter` or :class:`ValDataLoaderIter` and
    override :meth:`inputs_labels_from_batch`."""

    def __init__(self, data_loader: Iterable[Any]) -> None:
        self.data_loader = data_loader
        self._iterator: Iterator[Any] = iter(data_loader)

    @property
    def dataset(self) -> Any:
        """The wrapped loader's dataset."""
        return self.data_loader.dataset  # type: ignore[attr-defined]

    def inputs_labels_from_batch(self, batch_data: Any) -> tuple[Any, Any]:
        """Split one batch into ``(inputs, labels)``; extra items are ignored."""
        if not isinstance(batch_data, (list, tuple)) or len(batch_data) < 2:
            raise ValueError(
                f"batch type {type(batch_data).__name__} is not supported: the default takes "
                "(inputs, labels, ...) lists or tuples. Subclass Train/ValDataLoaderIter and "
                "override inputs_labels_from_batch, or pass step_fn to LRFinder."
            )
        return batch_data[0], batch_data[1]

    def __iter__(self) -> DataLoaderIter:
        return self

    def __next__(self) -> Any:
        return self.inputs_labels_from_batch(next(self._iterator))


class TrainDataLoaderIter(DataLoaderIter):
    """Training batches; with ``auto_reset`` a new pass starts when the loader runs out
    (without, :meth:`LRFinder.range_test` raises ``RuntimeError`` then)."""

    def __init__(self, data_loader: Iterable[Any], auto_reset: bool = True) -> None:
        super().__init__(data_loader)
        self.auto_reset = auto_reset

    def __next__(self) -> Any:
        try:
            batch = next(self._iterator)
        except StopIteration:
            if not self.auto_reset:
                raise
            self._iterator = iter(self.data_loader)
            batch = next(self._iterator)
        return self.inputs_labels_from_batch(batch)


class ValDataLoaderIter(DataLoaderIter):
    """Validation batches, one full pass per ``for`` loop like a DataLoader: a new pass
    (``iter(it)``) restarts the loader once the last one read all ``len(data_loader)``."""

    def __init__(self, data_loader: Iterable[Any]) -> None:
        super().__init__(data_loader)
        self.run_limit = len(data_loader)  # type: ignore[arg-type]
        self.run_counter = 0

    def __iter__(self) -> ValDataLoaderIter:
        if self.run_counter >= self.run_limit:
            self._iterator, self.run_counter = iter(self.data_loader), 0
        return self

    def __next__(self) -> Any:
        self.run_counter += 1
        return super().__next__()


def _sources(train_loader: Any, val_loader: Any, raw: bool) -> tuple[Iterable[Any], Any]:
    """The engine's training and validation batches, wrapped in 0.2.2's order (``raw``: the
    batches go to ``step_fn`` unchanged)."""

    def wrap(wrapper: DataLoaderIter) -> DataLoaderIter:
        if raw:
            wrapper.inputs_labels_from_batch = lambda batch: batch  # type: ignore[method-assign]
        return wrapper

    if isinstance(train_loader, DataLoader):
        train_loader = wrap(TrainDataLoaderIter(train_loader))
    elif getattr(train_loader, "auto_reset", True) is False and isinstance(train_loader, Iterator):
        train_loader = _no_reset(train_loader)
    if isinstance(val_loader, DataLoader):
        val_loader = wrap(ValDataLoaderIter(val_loader))
    elif (
        isinstance(val_loader, ValDataLoaderIter)
        and 0 < val_loader.run_counter < val_loader.run_limit
    ):  # left mid-pass (e.g. by an earlier test that read a subset): start a full pass
        val_loader._iterator, val_loader.run_counter = iter(val_loader.data_loader), 0
    return train_loader, val_loader


def _no_reset(iterator: Iterator[Any]) -> Iterator[Any]:
    """Feeds the engine from a non-resetting iterator; running dry is a clear error."""
    for taken in itertools.count():
        try:
            batch = next(iterator)
        except StopIteration:
            raise RuntimeError(
                f"train_loader ran out after {taken} batches and its auto_reset is False; use "
                "auto_reset=True, a longer loader, or a smaller num_iter * accumulation_steps"
            ) from None
        yield batch


class TorchLrFinderSmoother:
    """torch-lr-finder 0.2.2's smoothing: ``s_0 = x_0``, ``s_t = f*x_t + (1-f)*s_{t-1}``, never
    bias-corrected; ``smooth_f`` (f) in [0, 1), 0 returns the raw losses."""

    def __init__(self, smooth_f: float) -> None:
        self.smooth_f = smooth_f
        self._previous: float | None = None

    def update(self, value: float) -> float:
        """Add one loss; return the smoothed loss."""
        if self._previous is not None and self.smooth_f > 0:
            value = self.smooth_f * value + (1 - self.smooth_f) * self._previous
        self._previous = value
        return value


class TorchLrFinderDivergence:
    """torch-lr-finder 0.2.2's stopping rule, ``smoothed > diverge_th * best`` (``best``: the
    lowest smoothed loss so far); NaN compares false, so a NaN loss never stops the test."""

    def __init__(self, diverge_th: float) -> None:
        self.diverge_th = diverge_th
        self.best: float | None = None

    def __call__(self, step: int, smoothed: float) -> str | None:
        """Return why the test stops at ``step``, or None to go on."""
        if self.best is None or smoothed < self.best:
            self.best = smoothed
        if smoothed > self.diverge_th * self.best:
            return (
                f"smoothed loss {smoothed:.4g} exceeded diverge_th={self.diverge_th:g} x best "
                f"{self.best:.4g} at step {step}"
            )
        return None


def _whole_loader_validator(
    source: Iterable[Any], step: StepFn, by_labels: bool, device: torch.device, non_blocking: bool
) -> Callable[[torch.nn.Module], torch.Tensor]:
    """0.2.2's validation: the whole loader after every step, each batch's loss weighted by its
    number of labels (``by_labels``; else by :func:`~lrtrack.engine.steps.batch_size_of`), the
    sum divided by ``len(dataset)``."""
    seen = [0]

    def weighted() -> Iterator[Any]:
        seen[0] = 0
        for batch in source:  # mean_loss weighs a batch by its first item's size: labels first
            item = (batch[1], batch[0]) if by_labels else batch
            seen[0] += len(item[0]) if by_labels else batch_size_of(item)
            yield item

    def item_step(model: torch.nn.Module, item: Any) -> torch.Tensor:
        return step(model, (item[1], item[0]) if by_labels else item)

    def validate(model: torch.nn.Module) -> torch.Tensor:
        loss = mean_loss(model, weighted(), item_step, device=device, non_blocking=non_blocking)
        try:
            total = len(source.dataset)  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            total = seen[0]
        return loss if total == seen[0] else loss * seen[0] / total

    return validate


class _DiskSnapshot(engine.StateSnapshot):
    """A :class:`~lrtrack.engine.finder.StateSnapshot` with the model and optimizer states in
    temporary files under ``cache_dir``, never in memory (so the base ``__init__``, which copies
    them, is not called); the files go after :meth:`restore` or with the snapshot."""

    def __init__(self, model: torch.nn.Module, optimizer: Any, cache_dir: _Dir) -> None:
        self.model, self.optimizer, self.training = model, optimizer, model.training
        self.files: dict[str, Any] = {}
        for key, target in (("model", model), ("optimizer", optimizer)):
            file = tempfile.NamedTemporaryFile(prefix=f"lrtrack_{key}_", dir=cache_dir)
            torch.save(target.state_dict(), file)
            self.files[key] = file
        self.torch_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.python_rng, self.numpy_rng = random.getstate(), np.random.get_state()

    @property
    def model_state(self) -> Any:
        return self._load("model")

    @property
    def optimizer_state(self) -> Any:
        return self._load("optimizer")

    def _load(self, key: str) -> Any:
        self.files[key].seek(0)
        return torch.load(self.files[key], map_location="cpu", weights_only=True)

    def restore(self) -> None:
        """Put everything back as :meth:`StateSnapshot.restore` does, then delete the files."""
        try:
            super().restore()
        finally:
            for file in self.files.values():
                with contextlib.suppress(FileNotFoundError):  # removed by someone else
                    file.close()


def _snapshot(model: Any, optimizer: Any, in_memory: bool, cache_dir: _Dir) -> engine.StateSnapshot:
    """The model, optimizer and RNG state: in memory, or with ``memory_cache=False`` in files."""
    if in_memory:
        return engine.StateSnapshot(model, optimizer)
    return _DiskSnapshot(model, optimizer, cache_dir)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_finder_args(finder: LRFinder, amp_config: Any) -> None:
    """Validate LRFinder's arguments (with 0.2.2's exception types)."""
    for name, kind in (("model", torch.nn.Module), ("optimizer", torch.optim.Optimizer)):
        if not isinstance(getattr(finder, name), kind):
            got = type(getattr(finder, name)).__name__
            raise TypeError(f"{name} must be a torch {kind.__name__}; got {got}")
    _check_scheduler(finder.optimizer)
    if (finder.criterion is None) == (finder.step_fn is None):
        raise ValueError(
            "give exactly one of criterion (for (inputs, labels) batches) or step_fn(model, "
            f"batch) -> loss; got {'both' if finder.criterion is not None else 'neither'}"
        )
    if finder.amp_backend == "apex":
        raise ValueError(
            "amp_backend='apex' is not supported by lrtrack (NVIDIA apex amp is deprecated); use "
            "amp_backend='torch' with grad_scaler=torch.amp.GradScaler()"
        )
    if finder.amp_backend not in (None, "torch"):
        raise ValueError(f"amp_backend must be None or 'torch'; got {finder.amp_backend!r}")
    if finder.amp_backend == "torch" and finder.grad_scaler is None:
        raise ValueError("grad_scaler is required when amp_backend='torch': torch.amp.GradScaler()")
    if amp_config is not None and not isinstance(amp_config, Mapping):
        raise TypeError(f"amp_config must be a dict of torch.autocast kwargs; got {amp_config!r}")
    if finder.cache_dir is not None and not os.path.isdir(finder.cache_dir):
        raise ValueError(
            f"cache_dir must be an existing directory (None: the system temp folder); got "
            f"{os.fspath(finder.cache_dir)!r}"
        )


def _check_scheduler(optimizer: torch.optim.Optimizer) -> None:
    for i, group in enumerate(optimizer.param_groups):
        if "initial_lr" in group:
            raise RuntimeError(
                f"optimizer already has an LR scheduler attached (param_groups[{i}] has an "
                "'initial_lr'): attach the scheduler after the range test, which sets the LR"
            )


def _check_range_args(
    step_mode: Any, num_iter: Any, smooth_f: Any, diverge_th: Any, non_blocking: Any
) -> str:
    """Validate range_test's settings in torch-lr-finder's order; return the step mode."""
    mode = step_mode.lower() if isinstance(step_mode, str) else step_mode
    if mode not in engine.STEP_MODES:
        raise ValueError(f"step_mode must be 'exp' or 'linear' (any case); got {step_mode!r}")
    if not _is_int(num_iter):
        raise TypeError(f"num_iter must be an integer larger than 1, e.g. 100; got {num_iter!r}")
    if num_iter <= 1:
        raise ValueError(f"num_iter must be larger than 1 (two steps or more); got {num_iter}")
    if not _is_number(smooth_f):
        raise TypeError(f"smooth_f must be a number in [0, 1); got {smooth_f!r}")
    if not 0 <= smooth_f < 1:
        raise ValueError(f"smooth_f must be in [0, 1), e.g. 0.05 (0: no smoothing); got {smooth_f}")
    if not _is_number(diverge_th) or not math.isfinite(diverge_th):
        raise TypeError(f"diverge_th must be a finite number such as 5; got {diverge_th!r}")
    if not isinstance(non_blocking, bool):
        raise TypeError(f"non_blocking_transfer must be True or False; got {non_blocking!r}")
    return str(mode)


def _check_loaders(compat: bool, train_loader: Any, val_loader: Any) -> None:
    """The loader types each mode takes (0.2.2's two types each with ``compat=True``)."""
    for name, loader, kind in (
        ("train_loader", train_loader, TrainDataLoaderIter),
        ("val_loader", val_loader, ValDataLoaderIter),
    ):
        if loader is None and name == "val_loader":
            continue
        if compat and not isinstance(loader, (DataLoader, kind)):
            raise ValueError(
                f"`{name}` has unsupported type {type(loader).__name__}: with compat=True it "
                f"must be a DataLoader or a {kind.__name__} (as in torch-lr-finder 0.2.2); "
                "use compat=False for any iterable of batches"
            )
        if not isinstance(loader, Iterable):
            raise TypeError(
                f"{name} must be a DataLoader, a {kind.__name__} or another iterable of "
                f"batches; got {type(loader).__name__}"
            )


def _lr_bounds(compat: bool, n_groups: int, start_lr: Any, end_lr: Any) -> tuple[Any, Any]:
    """Per-group start and end LRs for the engine (0.2.2's broadcasting with ``compat=True``);
    the engine checks a list's length."""
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        values = value if isinstance(value, (list, tuple)) else [value]
        if not all(map(_is_number, values)) and not (value is None and name == "start_lr"):
            raise TypeError(f"{name} must be a number or a list with one per group; got {value!r}")

    def per_group(value: Any) -> Any:  # 0.2.2 gives a scalar to every group as is
        if isinstance(value, (list, tuple)):
            return list(value)
        return [value] * n_groups if compat and value is not None else value

    if compat and not isinstance(start_lr, (list, tuple)) and not start_lr:
        start_lr = None  # 0.2.2: a falsy start_lr means "the optimizer's LRs"
    return per_group(start_lr), per_group(end_lr)


def _val_batches(compat: bool, val_batches: Any) -> int | None:
    """``"auto"`` means 5 batches, or the whole loader (None) with ``compat=True``."""
    if val_batches == "auto":
        return None if compat else DEFAULT_VAL_BATCHES
    if val_batches is not None and not (_is_int(val_batches) and val_batches >= 1):
        raise ValueError(f"val_batches must be 'auto', None or an int >= 1; got {val_batches!r}")
    return val_batches  # type: ignore[no-any-return]


def _autocast_step(step: StepFn, amp_config: dict[str, Any] | None, device: torch.device) -> StepFn:
    """``step`` under ``torch.autocast(**amp_config)``, or the device's default autocast
    (:func:`~lrtrack.engine.steps.autocast_factory`: float16 on CUDA, bfloat16 on CPU)."""
    if amp_config is not None:
        autocast = functools.partial(torch.autocast, **amp_config)
    else:
        autocast = autocast_factory(device, True)

    def autocast_step(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        with autocast():
            return step(model, batch)

    return autocast_step


class LRFinder:
    """Learning-rate range test with torch-lr-finder 0.2.2's interface, on lrtrack's engine.

    The test raises the LR after every optimizer step, from ``start_lr`` (default: the
    optimizer's LR) to ``end_lr``, and records the smoothed loss; :meth:`plot` draws the curve
    and suggests an LR. The model, optimizer and RNG state are restored after every test.

    Args:
        model, optimizer, criterion: as in 0.2.2 (an optimizer without a scheduler attached).
        device: where to run (e.g. ``"cuda"``); None keeps the model's device.
        memory_cache, cache_dir: keep the saved states in memory, or in files under
            ``cache_dir`` (an existing folder; None: the system temp folder).
        amp_backend, amp_config, grad_scaler: ``"torch"`` autocasts the forward pass with the
            ``torch.autocast`` kwargs ``amp_config`` (None: the device's) and scales with the
            required ``torch.amp.GradScaler``; ``"apex"`` is not supported.
        step_fn: ``step_fn(model, batch) -> loss`` instead of ``criterion`` (dict batches,
            several inputs or outputs, custom losses); batches reach it unchanged.
        compat: reproduce torch-lr-finder 0.2.2's numbers (see :data:`DIFFERENCES`).
        observer: receives ``on_step(step, metrics)`` every step.

    Attributes:
        history: ``{"lr": [...], "loss": [...]}`` of the last test: ``lr[i]`` is the LR step
            ``i`` trained with, ``loss[i]`` the smoothed loss after it.
        best_loss: the lowest smoothed loss of the last test.
        result: the last :class:`~lrtrack.engine.finder.RangeTestResult`, or None.
        suggestions: every suggestion rule's answer for the last test.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Callable[..., torch.Tensor] | None = None,
        device: str | torch.device | None = None,
        memory_cache: bool = True,
        cache_dir: _Dir = None,
        amp_backend: str | None = None,
        amp_config: Mapping[str, Any] | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        *,
        step_fn: StepFn | None = None,
        compat: bool = False,
        observer: StepObserver | None = None,
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.criterion, self.step_fn = criterion, step_fn
        self.amp_backend, self.grad_scaler, self.cache_dir = amp_backend, grad_scaler, cache_dir
        _check_finder_args(self, amp_config)
        if not isinstance(memory_cache, bool):  # 'no' would be taken as true
            raise TypeError(f"memory_cache must be True or False; got {memory_cache!r}")
        if device and device_problem(device) is not None:
            raise ValueError(f"device={str(device)!r} is invalid: {device_problem(device)}")
        self.amp_config = dict(amp_config) if amp_config is not None else None
        self.memory_cache, self.compat, self.observer = memory_cache, bool(compat), observer
        self.history: dict[str, list[float]] = {"lr": [], "loss": []}
        self.best_loss: float | None = None
        self.result: engine.RangeTestResult | None = None
        self.suggestions: dict[str, Suggestion] = {}
        first = next(iter(model.parameters()), None)
        self.model_device = first.device if first is not None else torch.device("cpu")
        self.device = device if device else self.model_device
        self._initial = _snapshot(model, optimizer, memory_cache, cache_dir)  # for reset()

    def reset(self) -> None:
        """Restore the model and optimizer to their state when this LRFinder was created."""
        self.model.load_state_dict(self._initial.model_state)
        self.optimizer.load_state_dict(self._initial.optimizer_state)
        self.model.to(self.model_device)

    def range_test(
        self,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None = None,
        start_lr: float | Sequence[float] | None = None,
        end_lr: float | Sequence[float] = 10,
        num_iter: int = 100,
        step_mode: str = "exp",
        smooth_f: float = 0.05,
        diverge_th: float = 5,
        accumulation_steps: int = 1,
        non_blocking_transfer: bool = True,
        *,
        val_batches: int | None | Literal["auto"] = "auto",
        progress: bool = True,
    ) -> None:
        """Run the range test; the curve lands in ``history``, ``result`` and ``suggestions``.

        Args:
            train_loader, val_loader: DataLoaders or :class:`TrainDataLoaderIter` /
                :class:`ValDataLoaderIter` (in the default mode any iterables of batches); with
                ``val_loader`` the recorded loss is the validation loss after each step.
            start_lr, end_lr: the first (default: the optimizer's) and the last LR; a list
                gives one per parameter group.
            num_iter, step_mode: optimizer steps (> 1); ``"exp"`` or ``"linear"`` LR spacing.
            smooth_f: weight of the newest loss in the moving average, in [0, 1); 0 = none.
            diverge_th: stop when the smoothed loss exceeds ``diverge_th`` times the best.
            accumulation_steps, non_blocking_transfer: batches per optimizer step; asynchronous
                host-to-device copies where possible.
            val_batches: validation batches per step: ``"auto"`` (5, or the whole loader in
                compat mode), an int, or None for the whole loader.
            progress: show a progress bar (on a terminal).

        Raises:
            ValueError, TypeError: bad arguments (0.2.2's types), before anything changes.
            RuntimeError: a scheduler is attached, or a non-resetting train_loader ran out.
        """
        _check_scheduler(self.optimizer)
        mode = _check_range_args(step_mode, num_iter, smooth_f, diverge_th, non_blocking_transfer)
        val_batches = _val_batches(self.compat, val_batches)
        starts, ends = _lr_bounds(self.compat, len(self.optimizer.param_groups), start_lr, end_lr)
        _check_loaders(self.compat, train_loader, val_loader)
        device = torch.device(self.device)
        step = self.step_fn if self.step_fn is not None else supervised_step(self.criterion)
        if self.amp_backend == "torch":
            step = _autocast_step(step, self.amp_config, device)
        self.history = {"lr": [], "loss": []}
        self.best_loss, self.result, self.suggestions = None, None, {}
        # The snapshot comes before the loaders' iterators, whose creation may draw from the
        # RNG (train first, then val, in 0.2.2's order): the test leaves the RNG untouched.
        snapshot = _snapshot(self.model, self.optimizer, self.memory_cache, self.cache_dir)
        try:
            train_source, val_source = _sources(train_loader, val_loader, self.step_fn is not None)
            policy = None
            if self.compat:  # 0.2.2's smoothing, stop rule, LR grid and whole-loader validation
                validate = None
                if val_source is not None and val_batches is None:
                    validate = _whole_loader_validator(
                        val_source, step, self.step_fn is None, device, non_blocking_transfer
                    )
                policy = engine.RangeTestPolicy(
                    smoother=TorchLrFinderSmoother(smooth_f),
                    divergence_check=TorchLrFinderDivergence(diverge_th),
                    stop_on_non_finite=False,
                    exact_ends=False,
                    validate_fn=validate,
                )
            result = engine.run_range_test(
                self.model,
                self.optimizer,
                train_source,
                step_fn=step,
                val_loader=val_source,
                val_batches=val_batches,
                start_lr=starts,
                end_lr=ends,
                num_iter=int(num_iter),
                step_mode=mode,
                smoothing=1.0 - smooth_f if smooth_f > 0 else 0.0,  # the EMA's decay
                diverge_th=diverge_th,
                accumulation_steps=accumulation_steps,
                grad_scaler=self.grad_scaler if self.amp_backend == "torch" else None,
                device=device,
                non_blocking=non_blocking_transfer,
                observer=self.observer,
                progress=progress,
                restore=False,
                policy=policy,
            )
        finally:
            snapshot.restore()
        self.result, self.suggestions = result, dict(result.suggestions)
        self.history = {"lr": list(result.lrs), "loss": list(result.smoothed_losses)}
        self.best_loss = result.min_loss
        if policy is not None and isinstance(policy.divergence_check, TorchLrFinderDivergence):
            self.best_loss = policy.divergence_check.best  # 0.2.2's best: the first loss or lower
        log.info("Learning rate search finished (%s); see plot()", result.stop_detail)

    def plot(
        self,
        skip_start: int = 10,
        skip_end: int = 5,
        log_lr: bool = True,
        show_lr: float | None = None,
        ax: Any = None,
        suggest_lr: bool | str = True,
    ) -> Any:
        """Plot the smoothed loss against the LR (0.2.2's arguments); return the axes, or
        ``(axes, lr)`` with ``suggest_lr``.

        ``suggest_lr=True`` marks the steepest-gradient point (0.2.2's rule in compat mode, where
        too few points raise ``RuntimeError``; lrtrack's ``steepest`` rule otherwise, where
        ``lr`` is None, with a logged reason, when the rule cannot answer); a rule name marks
        that rule's LR.
        """
        for name, value in (("skip_start", skip_start), ("skip_end", skip_end)):
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0; got {value!r}")
        if show_lr is not None and not _is_number(show_lr):
            raise ValueError(f"show_lr must be a float (an LR to mark) or None; got {show_lr!r}")
        if isinstance(suggest_lr, str):
            check_rule(suggest_lr)
        rule = suggest_lr if isinstance(suggest_lr, str) else "steepest" if suggest_lr else None
        lrs, losses, n = self.history["lr"], self.history["loss"], len(self.history["lr"])
        tlf_rule = self.compat and suggest_lr is True
        if tlf_rule and n < skip_start + skip_end + 2:
            raise RuntimeError(
                f"Need at least skip_start + skip_end + 2 = {skip_start + skip_end + 2} steps to "
                f"suggest an LR; the last test recorded {n}. Lower the skips, or suggest_lr=False."
            )
        import matplotlib.pyplot as plt

        from lrtrack.engine.plots import loss_at

        shown_lrs, shown_losses = lrs[skip_start : n - skip_end], losses[skip_start : n - skip_end]
        mark = None
        if tlf_rule:  # 0.2.2's rule: the steepest np.gradient point of the trimmed curve
            idx = int(np.gradient(np.asarray(shown_losses, dtype=float)).argmin())
            mark = shown_lrs[idx], shown_losses[idx]
        elif rule is not None:
            found = suggest(rule, lrs, losses, skip_start=skip_start, skip_end=skip_end)
            if found.lr is None:
                log.warning("no %s suggestion: %s", rule, found.reason)
            else:  # minimum and slide may land between grid points: mark the nearest point
                mark = found.lr, loss_at(lrs, losses, found.lr)
        fig = None
        if ax is None:
            fig, ax = plt.subplots()
        ax.plot(shown_lrs, shown_losses)
        if mark is not None:
            label = "steepest gradient" if rule == "steepest" else rule
            log.info("Suggested LR (%s): %.2E", label, mark[0])
            ax.scatter(*mark, s=75, marker="o", color="red", zorder=3, label=label)
            ax.legend()
        if log_lr:
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if show_lr is not None:
            ax.axvline(x=show_lr, color="red")
        if fig is not None:
            plt.show()
        if rule is None:
            return ax
        return ax, mark[0] if mark is not None else None
