"""A drop-in replacement for torch-lr-finder 0.2.2: ``from lrtrack import LRFinder``.

Code written against ``torch_lr_finder`` keeps working after a one-line import change::

    from lrtrack import LRFinder            # was: from torch_lr_finder import LRFinder

    lr_finder = LRFinder(model, optimizer, criterion, device="cuda")
    lr_finder.range_test(train_loader, end_lr=100, num_iter=100)
    ax, lr = lr_finder.plot()               # the curve and the steepest-gradient suggestion
    lr_finder.reset()

:class:`LRFinder` is a thin adapter over :func:`lrtrack.engine.finder.run_range_test` (there is one
engine). By default it runs lrtrack's corrected range test: bias-corrected smoothing, a stop at
the first NaN/inf loss, the model, optimizer and RNG restored after the test (also when it
fails), a fixed validation subset, and all four suggestion rules in ``finder.suggestions``.
``LRFinder(..., compat=True)`` behaves like torch-lr-finder 0.2.2 instead (it passes 0.2.2's own
test suite, tests/test_compat_upstream.py) and reproduces its numbers, so a ported notebook
draws the same curve; :data:`DIFFERENCES` lists every intentional difference.

The loader wrappers :class:`DataLoaderIter`, :class:`TrainDataLoaderIter` and
:class:`ValDataLoaderIter` behave like torch-lr-finder's: subclass one and override
``inputs_labels_from_batch`` for a custom batch format, or (new) pass
``step_fn(model, batch) -> loss`` to :class:`LRFinder` and skip the subclassing.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import numbers
import os
import random
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from lrtrack.engine.finder import (
    STEP_MODES,
    STOP_COMPLETED,
    RangeTestPolicy,
    RangeTestResult,
    StateSnapshot,
    run_range_test,
)
from lrtrack.engine.observers import StepObserver
from lrtrack.engine.steps import StepFn, autocast_factory, batch_size_of, mean_loss, supervised_step
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


# --------------------------------------------------------------------------- loader wrappers


class DataLoaderIter:
    """Iterates over a data loader and turns each batch into ``(inputs, labels)``.

    Override :meth:`inputs_labels_from_batch` in a subclass (of :class:`TrainDataLoaderIter`
    or :class:`ValDataLoaderIter`) when batches are not ``(inputs, labels, ...)`` sequences.

    Args:
        data_loader: usually a :class:`torch.utils.data.DataLoader`; any re-iterable works.
    """

    def __init__(self, data_loader: Iterable[Any]) -> None:
        self.data_loader = data_loader
        self._iterator: Iterator[Any] = iter(data_loader)

    @property
    def dataset(self) -> Any:
        """The wrapped loader's dataset."""
        return self.data_loader.dataset  # type: ignore[attr-defined]

    def inputs_labels_from_batch(self, batch_data: Any) -> tuple[Any, Any]:
        """Split one batch into ``(inputs, labels)``; extra items are ignored.

        Raises:
            ValueError: when the batch is not a list or tuple of at least two items.
        """
        if not isinstance(batch_data, (list, tuple)) or len(batch_data) < 2:
            raise ValueError(
                f"batch type {type(batch_data).__name__} is not supported: the default expects "
                "(inputs, labels, ...) lists or tuples. Subclass TrainDataLoaderIter / "
                "ValDataLoaderIter and override inputs_labels_from_batch(batch) to return "
                "(inputs, labels), or pass step_fn=lambda model, batch: loss to LRFinder."
            )
        return batch_data[0], batch_data[1]

    def __iter__(self) -> DataLoaderIter:
        return self

    def __next__(self) -> Any:
        return self.inputs_labels_from_batch(next(self._iterator))


class TrainDataLoaderIter(DataLoaderIter):
    """Training batches; starts a new pass over the loader when it runs out.

    Args:
        data_loader: the training loader.
        auto_reset: start a new pass when the loader is exhausted; when False, running out of
            batches raises (a ``RuntimeError`` inside :meth:`LRFinder.range_test`).
    """

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
    """Validation batches; behaves like a DataLoader, one full pass per ``for`` loop.

    The underlying iterator is restarted only when a new pass begins (``iter(it)`` or a new
    ``for`` loop) after the previous one went through all ``len(data_loader)`` batches.

    Args:
        data_loader: the validation loader; it must have a length.
    """

    def __init__(self, data_loader: Iterable[Any]) -> None:
        super().__init__(data_loader)
        self.run_limit = len(data_loader)  # type: ignore[arg-type]
        self.run_counter = 0

    def __iter__(self) -> ValDataLoaderIter:
        if self.run_counter >= self.run_limit:
            self._iterator = iter(self.data_loader)
            self.run_counter = 0
        return self

    def __next__(self) -> Any:
        self.run_counter += 1
        return super().__next__()


class _RawTrainIter(TrainDataLoaderIter):
    """Train wrapper that hands batches to ``step_fn`` unchanged."""

    def inputs_labels_from_batch(self, batch_data: Any) -> Any:
        return batch_data


class _RawValIter(ValDataLoaderIter):
    """Validation wrapper that hands batches to ``step_fn`` unchanged."""

    def inputs_labels_from_batch(self, batch_data: Any) -> Any:
        return batch_data


class _NoResetSource:
    """Feeds the engine from a non-resetting iterator; running dry is a clear error."""

    def __init__(self, iterator: Iterator[Any]) -> None:
        self.iterator = iterator
        self.taken = 0

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                batch = next(self.iterator)
            except StopIteration:
                raise RuntimeError(
                    f"train_loader ran out of batches after {self.taken} batches and its "
                    "auto_reset is False; use TrainDataLoaderIter(loader, auto_reset=True), a "
                    "longer loader, or a smaller num_iter * accumulation_steps"
                ) from None
            self.taken += 1
            yield batch


# --------------------------------------------------------------------------- 0.2.2 numerics


class TorchLrFinderSmoother:
    """torch-lr-finder 0.2.2's smoothing: ``s_0 = x_0``, ``s_t = f*x_t + (1-f)*s_{t-1}``.

    The average starts from the first loss and is never bias-corrected; ``smooth_f=0``
    returns the raw losses.

    Args:
        smooth_f: weight of the newest loss, in [0, 1).
    """

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
    """torch-lr-finder 0.2.2's stopping rule: ``smoothed > diverge_th * best``.

    ``best`` is the first smoothed loss, then the lowest one seen; NaN compares false, so a
    NaN loss never stops the test (the engine is run with ``stop_on_non_finite=False``).

    Args:
        diverge_th: the threshold factor.
    """

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


# --------------------------------------------------------------------------- state caching


class _StateCache:
    """Model/optimizer state dicts kept in memory (deep copies) or in files under a folder."""

    def __init__(self, in_memory: bool, cache_dir: str | os.PathLike[str] | None) -> None:
        self.in_memory = in_memory
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else tempfile.gettempdir()
        self._memory: dict[str, Any] = {}
        self._files: dict[str, str] = {}
        # Files are removed when the cache goes away, even without an explicit clear().
        self._finalizer = weakref.finalize(self, _remove_files, self._files)

    def store(self, key: str, state_dict: Mapping[str, Any]) -> None:
        if self.in_memory:
            self._memory[key] = copy.deepcopy(state_dict)
            return
        path = self._files.get(key)
        if path is None:
            fd, path = tempfile.mkstemp(prefix=f"lrtrack_{key}_", suffix=".pt", dir=self.cache_dir)
            os.close(fd)
            self._files[key] = path
        torch.save(state_dict, path)

    def retrieve(self, key: str) -> Any:
        if self.in_memory:
            if key not in self._memory:
                raise KeyError(f"no cached state named {key!r}")
            return self._memory[key]
        path = self._files.get(key)
        if path is None:
            raise KeyError(f"no cached state named {key!r}")
        if not os.path.exists(path):
            raise RuntimeError(
                f"the cached {key} state file {path} no longer exists (was cache_dir cleaned?); "
                "the state cannot be restored"
            )
        return torch.load(path, map_location="cpu", weights_only=True)

    @property
    def files(self) -> list[str]:
        return list(self._files.values())

    def clear(self) -> None:
        self._memory.clear()
        _remove_files(self._files)


def _remove_files(files: dict[str, str]) -> None:
    for path in files.values():
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
    files.clear()


class _DiskSnapshot:
    """:class:`~lrtrack.engine.finder.StateSnapshot` for ``memory_cache=False``.

    The model and optimizer states go to files under ``cache_dir`` (never a second copy in
    memory, which is why a user picks ``memory_cache=False``); the training flag and the RNG
    states are kept as :class:`StateSnapshot` keeps them. The files are removed by
    :meth:`restore`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        cache_dir: str | os.PathLike[str] | None,
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.cache = _StateCache(False, cache_dir)
        self.cache.store("model", model.state_dict())
        self.cache.store("optimizer", optimizer.state_dict())
        self.training = model.training
        self.torch_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.python_rng = random.getstate()
        self.numpy_rng = np.random.get_state()

    def restore(self) -> None:
        """Load the saved states back, then delete the files."""
        try:
            self.model.load_state_dict(self.cache.retrieve("model"))
            self.optimizer.load_state_dict(self.cache.retrieve("optimizer"))
        finally:
            self.cache.clear()
        self.model.train(self.training)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)


# --------------------------------------------------------------------------- argument checks


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_scheduler(optimizer: torch.optim.Optimizer) -> None:
    for i, group in enumerate(optimizer.param_groups):
        if "initial_lr" in group:
            raise RuntimeError(
                f"optimizer already has a learning-rate scheduler attached (param_groups[{i}] "
                "has an 'initial_lr' entry), and the range test must set the LR itself. Create "
                "the LRFinder with an optimizer that has no scheduler yet and attach the "
                "scheduler after the range test (or build a fresh optimizer for it)."
            )


def _check_range_args(
    step_mode: Any, num_iter: Any, smooth_f: Any, diverge_th: Any, non_blocking: Any
) -> str:
    """Validate range_test's settings in torch-lr-finder's order; return the step mode."""
    mode = step_mode.lower() if isinstance(step_mode, str) else step_mode
    if mode not in STEP_MODES:
        raise ValueError(
            f"step_mode must be one of {', '.join(repr(m) for m in STEP_MODES)} "
            f"(case-insensitive); got {step_mode!r}. Use 'exp' for the usual exponential sweep "
            "or 'linear' for an evenly spaced one."
        )
    if isinstance(num_iter, bool) or not isinstance(num_iter, numbers.Integral):
        raise TypeError(
            f"num_iter must be an integer larger than 1; got {num_iter!r}. "
            "Pass a whole number of steps such as num_iter=100."
        )
    if num_iter <= 1:
        raise ValueError(
            f"num_iter must be larger than 1 (a curve needs at least two steps); got {num_iter}. "
            "Use e.g. num_iter=100."
        )
    if not _is_number(smooth_f):
        raise TypeError(f"smooth_f must be a number in [0, 1); got {smooth_f!r}")
    if not 0 <= smooth_f < 1:
        raise ValueError(
            f"smooth_f must be in [0, 1) (the weight of the newest loss in the moving average; "
            f"0 turns smoothing off); got {smooth_f!r}. The default is 0.05."
        )
    if not _is_number(diverge_th) or not math.isfinite(diverge_th):
        raise TypeError(f"diverge_th must be a finite number such as 5; got {diverge_th!r}")
    if not isinstance(non_blocking, bool):
        raise TypeError(f"non_blocking_transfer must be True or False; got {non_blocking!r}")
    return str(mode)


# --------------------------------------------------------------------------- the finder


class LRFinder:
    """Learning-rate range test with torch-lr-finder 0.2.2's interface, on lrtrack's engine.

    The test raises the LR after every optimizer step, from ``start_lr`` (default: the
    optimizer's LR) to ``end_lr``, and records the (smoothed) loss in ``history``; ``plot()``
    draws the curve and suggests an LR.

    Two modes share :func:`lrtrack.engine.finder.run_range_test`:

    * ``compat=False`` (default): lrtrack's corrected test. Bias-corrected smoothing (decay
      ``1 - smooth_f``), a stop at the first NaN/inf loss, the model, optimizer and RNG state
      restored after the test even when it raises, ``val_batches`` fixed validation batches
      per step, group LR ratios kept, and all four suggestions in :attr:`suggestions`.
    * ``compat=True``: torch-lr-finder 0.2.2's numbers, so a ported notebook draws the same
      curve: its smoothing formula (no bias correction), NaN never stopping the test, its
      ``loss > diverge_th * best`` rule, the whole validation loader averaged every step, a
      scalar ``start_lr``/``end_lr`` applied to every group, its LR grid, its two loader
      types each, and ``plot()``'s steepest-gradient suggestion on the trimmed curve. The
      state is still restored after each test.

    In both modes ``history["lr"][i]`` is the LR that step ``i`` trained with (what 0.2.2
    records too), and ``history["loss"][i]`` the smoothed loss after that step. The full list
    of differences is :data:`lrtrack.compat.DIFFERENCES`.

    Args:
        model: the model to test.
        optimizer: an optimizer over the model's parameters, without a scheduler attached.
        criterion: ``criterion(model(inputs), labels)`` gives the loss; or use ``step_fn``.
        device: where to run (e.g. ``"cuda"``); None keeps the model's device.
        memory_cache: keep the initial state (for :meth:`reset`) and the per-test restore
            state in memory; when False they are saved to files under ``cache_dir``.
        cache_dir: folder for those files (default: the system temp folder); must exist.
        amp_backend: None, or ``"torch"`` for ``torch.amp`` mixed precision (``"apex"`` is
            not supported).
        amp_config: keyword arguments for ``torch.autocast`` around the forward pass, e.g.
            ``{"device_type": "cuda", "dtype": torch.float16}``; None picks the device's.
        grad_scaler: the ``torch.amp.GradScaler`` required with ``amp_backend="torch"``
            (scale/step/update once per optimizer step).
        step_fn: ``step_fn(model, batch) -> loss`` instead of ``criterion``, for dict batches,
            several inputs or outputs, or a custom loss; batches reach it unchanged.
        compat: reproduce torch-lr-finder 0.2.2's numbers (see above).
        observer: receives ``on_step(step, metrics)`` every step, e.g. an MLflow observer
            from :mod:`lrtrack.tracking.runs`.

    Attributes:
        history: ``{"lr": [...], "loss": [...]}`` of the last range test.
        best_loss: the lowest smoothed loss of the last range test.
        result: the last :class:`~lrtrack.engine.finder.RangeTestResult` (raw and smoothed losses,
            per-group LRs, why it stopped), or None before the first test.
        suggestions: every suggestion rule's answer for the last test.

    Example:
        >>> lr_finder = LRFinder(net, optimizer, criterion, device="cuda")
        >>> lr_finder.range_test(train_loader, end_lr=100, num_iter=100)
        >>> ax, lr = lr_finder.plot()
        >>> lr_finder.suggestions["valley"].lr
        >>> lr_finder.reset()
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Callable[..., torch.Tensor] | None = None,
        device: str | torch.device | None = None,
        memory_cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        amp_backend: str | None = None,
        amp_config: Mapping[str, Any] | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        *,
        step_fn: StepFn | None = None,
        compat: bool = False,
        observer: StepObserver | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        _check_scheduler(optimizer)
        if (criterion is None) == (step_fn is None):
            raise ValueError(
                "give exactly one of criterion (for (inputs, labels) batches: "
                "criterion(model(inputs), labels)) or step_fn(model, batch) -> loss; got "
                f"{'both' if criterion is not None else 'neither'}"
            )
        if amp_backend == "apex":
            raise ValueError(
                "amp_backend='apex' is not supported by lrtrack (NVIDIA apex amp is "
                "deprecated); use amp_backend='torch' with grad_scaler=torch.amp.GradScaler()"
            )
        if amp_backend not in (None, "torch"):
            raise ValueError(
                f"Unknown amp backend: amp_backend must be None or 'torch'; got {amp_backend!r}"
            )
        if amp_backend == "torch" and grad_scaler is None:
            raise ValueError(
                "grad_scaler is required when amp_backend='torch'; pass "
                "grad_scaler=torch.amp.GradScaler(device_type)"
            )
        if amp_config is not None and not isinstance(amp_config, Mapping):
            raise TypeError(
                "amp_config must be a dict of torch.autocast keyword arguments such as "
                f"{{'device_type': 'cuda', 'dtype': torch.float16}}; got {amp_config!r}"
            )
        if cache_dir is not None and not os.path.isdir(cache_dir):
            raise ValueError(
                f"cache_dir must be an existing directory; got {os.fspath(cache_dir)!r}. "
                "Create it first, or leave cache_dir=None for the system temp folder."
            )

        self.model = model
        self.criterion = criterion
        self.step_fn = step_fn
        self.compat = bool(compat)
        self.observer = observer
        self.memory_cache = memory_cache
        self.cache_dir = cache_dir
        self.amp_backend = amp_backend
        self.amp_config = dict(amp_config) if amp_config is not None else None
        self.grad_scaler = grad_scaler
        self.history: dict[str, list[float]] = {"lr": [], "loss": []}
        self.best_loss: float | None = None
        self.result: RangeTestResult | None = None
        self.suggestions: dict[str, Suggestion] = {}

        first = next(iter(model.parameters()), None)
        self.model_device = first.device if first is not None else torch.device("cpu")
        self.device = device if device else self.model_device

        self._cache = _StateCache(memory_cache, cache_dir)
        self._cache.store("model", model.state_dict())
        self._cache.store("optimizer", optimizer.state_dict())

    # ----------------------------------------------------------------------- public API

    def reset(self) -> None:
        """Restore the model and optimizer to their state when this LRFinder was created."""
        self.model.load_state_dict(self._cache.retrieve("model"))
        self.optimizer.load_state_dict(self._cache.retrieve("optimizer"))
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
            train_loader: a DataLoader of ``(inputs, labels, ...)`` batches or a
                :class:`TrainDataLoaderIter` (subclass) for other formats; in the default
                mode also any iterable of batches (with ``step_fn``, batches of any format).
            val_loader: when given, the recorded loss is the validation loss after each step
                (a DataLoader or a :class:`ValDataLoaderIter`; in the default mode also any
                re-iterable of batches).
            start_lr: first LR (default: the optimizer's); a list gives one per group.
            end_lr: last LR; a list gives one per group.
            num_iter: number of optimizer steps (> 1).
            step_mode: ``"exp"`` or ``"linear"`` spacing of the LRs.
            smooth_f: weight of the newest loss in the moving average, in [0, 1); 0 = none.
            diverge_th: stop when the smoothed loss exceeds ``diverge_th`` times the best.
            accumulation_steps: batches per optimizer step (gradient accumulation).
            non_blocking_transfer: asynchronous host-to-device copies where possible.
            val_batches: validation batches per step: ``"auto"`` (5, or the whole loader in
                compat mode), an int, or None for the whole loader.
            progress: show a progress bar (on a terminal).

        Raises:
            ValueError: bad step_mode, num_iter <= 1, smooth_f outside [0, 1), a loader of
                another type with ``compat=True`` ("has unsupported type", as in 0.2.2), and
                the engine's checks on the LRs and accumulation_steps.
            TypeError: arguments of the wrong type (e.g. in the default mode a train_loader
                that is not iterable).
            RuntimeError: the optimizer has a scheduler attached, or a non-resetting
                train_loader ran out of batches.
        """
        _check_scheduler(self.optimizer)
        mode = _check_range_args(step_mode, num_iter, smooth_f, diverge_th, non_blocking_transfer)
        val_batches = self._val_batches(val_batches)
        starts, ends = self._lr_bounds(start_lr, end_lr)
        self._check_loaders(train_loader, val_loader)
        device = torch.device(self.device)
        step = self._step(device)

        self.history = {"lr": [], "loss": []}
        self.best_loss = None
        self.result = None
        self.suggestions = {}
        # The snapshot comes before the loaders' iterators, whose creation may draw from the
        # RNG (train first, then val, in 0.2.2's order): the test leaves the RNG untouched.
        snapshot: StateSnapshot | _DiskSnapshot
        if self.memory_cache:
            snapshot = StateSnapshot(self.model, self.optimizer)
        else:
            snapshot = _DiskSnapshot(self.model, self.optimizer, self.cache_dir)
        try:
            train_source = self._train_source(train_loader)
            val_source = self._val_source(val_loader)
            options = self._mode_options(
                val_source, val_batches, step, device, non_blocking_transfer, smooth_f, diverge_th
            )
            result = run_range_test(
                self.model,
                self.optimizer,
                train_source,
                step_fn=step,
                start_lr=starts,
                end_lr=ends,
                num_iter=int(num_iter),
                step_mode=mode,
                accumulation_steps=accumulation_steps,
                grad_scaler=self.grad_scaler if self.amp_backend == "torch" else None,
                device=device,
                non_blocking=non_blocking_transfer,
                observer=self.observer,
                progress=progress,
                restore=False,
                **options,
            )
        finally:
            snapshot.restore()
        self._keep(result, options.get("policy"))

    def plot(
        self,
        skip_start: int = 10,
        skip_end: int = 5,
        log_lr: bool = True,
        show_lr: float | None = None,
        ax: Any = None,
        suggest_lr: bool | str = True,
    ) -> Any:
        """Plot the smoothed loss against the LR and, optionally, mark a suggested LR.

        Args:
            skip_start: points to leave out at the start.
            skip_end: points to leave out at the end.
            log_lr: logarithmic LR axis.
            show_lr: draw a vertical line at this LR.
            ax: matplotlib axes to draw into; when None a figure is made and shown.
            suggest_lr: True marks the steepest-gradient point (torch-lr-finder's rule in
                compat mode, lrtrack's ``steepest`` rule otherwise); a rule name (one of
                ``steepest``, ``valley``, ``minimum``, ``slide``) marks that rule's LR.

        Returns:
            The axes, or ``(axes, lr)`` when ``suggest_lr`` is set (``lr`` is None in lrtrack
            mode when the rule cannot answer; the reason is logged).

        Raises:
            ValueError: a negative skip, a non-numeric show_lr or an unknown rule.
            RuntimeError: in compat mode, too few points to suggest with these skips.
        """
        for name, value in (("skip_start", skip_start), ("skip_end", skip_end)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0; got {value!r}")
        if show_lr is not None and not _is_number(show_lr):
            raise ValueError(f"show_lr must be a float (an LR to mark) or None; got {show_lr!r}")
        rule: str | None = None
        if isinstance(suggest_lr, str):
            check_rule(suggest_lr)
            rule = suggest_lr
        elif suggest_lr:
            rule = "steepest"

        lrs, losses = self.history["lr"], self.history["loss"]
        n = len(lrs)
        tlf_rule = self.compat and suggest_lr is True
        if tlf_rule and n < skip_start + skip_end + 2:
            raise RuntimeError(
                f"Need at least skip_start + skip_end + 2 = {skip_start + skip_end + 2} "
                f"recorded steps to suggest an LR; the last range test recorded {n}. Lower "
                "skip_start/skip_end, run range_test with a larger num_iter, or pass "
                "suggest_lr=False."
            )
        stop = n - skip_end
        shown_lrs, shown_losses = lrs[skip_start:stop], losses[skip_start:stop]

        import matplotlib.pyplot as plt

        fig = None
        if ax is None:
            fig, ax = plt.subplots()
        ax.plot(shown_lrs, shown_losses)

        lr: float | None = None
        if rule is not None:
            if tlf_rule:
                idx = int(np.gradient(np.asarray(shown_losses, dtype=float)).argmin())
                lr, marked_loss, label = shown_lrs[idx], shown_losses[idx], "steepest gradient"
            else:
                lr, marked_loss, label = self._rule_suggestion(rule, skip_start, skip_end)
            if lr is not None:
                log.info("Suggested LR (%s): %.2E", label, lr)
                ax.scatter(lr, marked_loss, s=75, marker="o", color="red", zorder=3, label=label)
                ax.legend()

        if log_lr:
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if show_lr is not None:
            ax.axvline(x=show_lr, color="red")
        if fig is not None:
            plt.show()
        return (ax, lr) if rule is not None else ax

    # ----------------------------------------------------------------------- helpers

    def _lr_bounds(
        self, start_lr: float | Sequence[float] | None, end_lr: float | Sequence[float]
    ) -> tuple[float | list[float] | None, float | list[float]]:
        """Per-group start and end LRs for the engine (0.2.2's broadcasting in compat mode)."""
        n_groups = len(self.optimizer.param_groups)
        for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
            if value is None and name == "start_lr":
                continue
            if isinstance(value, (list, tuple)):
                if len(value) != n_groups:
                    raise ValueError(
                        f"{name} has {len(value)} values but the optimizer has {n_groups} "
                        "parameter groups; give one LR per group or a single number"
                    )
                if not all(_is_number(v) for v in value):
                    raise TypeError(f"{name} must contain numbers only; got {value!r}")
            elif not _is_number(value):
                raise TypeError(
                    f"{name} must be a number or a list with one per group; got {value!r}"
                )
        if not self.compat:
            starts = list(start_lr) if isinstance(start_lr, (list, tuple)) else start_lr
            ends = list(end_lr) if isinstance(end_lr, (list, tuple)) else end_lr
            return starts, ends
        # 0.2.2: a falsy start_lr means "the optimizer's LRs"; scalars go to every group as is.
        if isinstance(start_lr, (list, tuple)):
            starts_c: list[float] | None = list(start_lr)
        elif start_lr:
            starts_c = [start_lr] * n_groups
        else:
            starts_c = None
        ends_c = list(end_lr) if isinstance(end_lr, (list, tuple)) else [end_lr] * n_groups
        return starts_c, ends_c

    def _val_batches(self, val_batches: int | None | str) -> int | None:
        """``"auto"`` means 5 batches, or the whole loader (None) in compat mode."""
        if val_batches == "auto":
            return None if self.compat else DEFAULT_VAL_BATCHES
        if val_batches is not None and (
            isinstance(val_batches, bool) or not isinstance(val_batches, int) or val_batches < 1
        ):
            raise ValueError(
                f"val_batches must be 'auto', None (the whole loader) or an integer >= 1; "
                f"got {val_batches!r}"
            )
        return val_batches

    def _check_loaders(self, train_loader: Any, val_loader: Any) -> None:
        """The loader types each mode takes (0.2.2's two types each with compat=True)."""
        if self.compat:
            if not isinstance(train_loader, (DataLoader, TrainDataLoaderIter)):
                raise ValueError(_unsupported_loader("train_loader", train_loader))
            if val_loader is not None and not isinstance(
                val_loader, (DataLoader, ValDataLoaderIter)
            ):
                raise ValueError(_unsupported_loader("val_loader", val_loader))
            return
        if not isinstance(train_loader, Iterable):
            raise TypeError(
                f"train_loader must be a DataLoader, a TrainDataLoaderIter or another iterable "
                f"of batches; got {type(train_loader).__name__}"
            )
        if val_loader is not None and not isinstance(val_loader, Iterable):
            raise TypeError(
                f"val_loader must be None, a DataLoader, a ValDataLoaderIter or another "
                f"re-iterable of batches; got {type(val_loader).__name__}"
            )

    def _step(self, device: torch.device) -> StepFn:
        """The loss of one batch: ``step_fn`` or the supervised step, under autocast with
        ``amp_backend="torch"`` (``amp_config``, or the device's default dtype)."""
        step = self.step_fn if self.step_fn is not None else supervised_step(self.criterion)
        if self.amp_backend != "torch":
            return step
        autocast: Callable[[], AbstractContextManager[Any]]
        if self.amp_config is not None:
            autocast = functools.partial(torch.autocast, **self.amp_config)
        else:
            autocast = autocast_factory(device, True)

        def autocast_step(model: torch.nn.Module, batch: Any) -> torch.Tensor:
            with autocast():
                return step(model, batch)

        return autocast_step

    def _mode_options(
        self,
        val_source: Iterable[Any] | None,
        val_batches: int | None,
        step: StepFn,
        device: torch.device,
        non_blocking: bool,
        smooth_f: float,
        diverge_th: float,
    ) -> dict[str, Any]:
        """run_range_test's keywords that differ by mode: lrtrack's settings or 0.2.2's policy."""
        if not self.compat:
            return {
                "smoothing": 1.0 - smooth_f if smooth_f > 0 else 0.0,
                "diverge_th": diverge_th,
                "val_loader": val_source,
                "val_batches": val_batches,
            }
        options: dict[str, Any] = {}
        validate_fn = None
        if val_source is not None and val_batches is None:
            validate_fn = self._compat_validator(val_source, step, device, non_blocking)
        elif val_source is not None:
            options.update(val_loader=val_source, val_batches=val_batches)
        options["policy"] = RangeTestPolicy(
            smoother=TorchLrFinderSmoother(smooth_f),
            divergence_check=TorchLrFinderDivergence(diverge_th),
            stop_on_non_finite=False,
            exact_ends=False,
            validate_fn=validate_fn,
        )
        return options

    def _keep(self, result: RangeTestResult, policy: RangeTestPolicy | None) -> None:
        """Expose a finished test as history, best_loss, result and suggestions."""
        self.result = result
        self.suggestions = dict(result.suggestions)
        self.history = {"lr": list(result.lrs), "loss": list(result.smoothed_losses)}
        divergence = policy.divergence_check if policy is not None else None
        if isinstance(divergence, TorchLrFinderDivergence):
            self.best_loss = divergence.best
        else:
            self.best_loss = result.min_loss
        if result.stop_reason != STOP_COMPLETED:
            log.info("Stopping early (%s): %s", result.stop_reason, result.stop_detail)
        log.info(
            "Learning rate search finished after %d steps; see the curve with plot() and all "
            "suggestions in .suggestions",
            result.steps,
        )

    def _train_source(self, train_loader: Any) -> Iterable[Any]:
        if isinstance(train_loader, DataLoader):
            wrapper = _RawTrainIter if self.step_fn is not None else TrainDataLoaderIter
            return wrapper(train_loader)
        if getattr(train_loader, "auto_reset", True) is False and isinstance(
            train_loader, Iterator
        ):
            return _NoResetSource(train_loader)
        return train_loader

    def _val_source(self, val_loader: Any) -> Iterable[Any] | None:
        if val_loader is None:
            return None
        if isinstance(val_loader, DataLoader):
            wrapper = _RawValIter if self.step_fn is not None else ValDataLoaderIter
            return wrapper(val_loader)
        if (
            isinstance(val_loader, ValDataLoaderIter)
            and 0 < val_loader.run_counter < val_loader.run_limit
        ):
            # Left mid-pass (e.g. by an earlier test that read a subset): start a full pass.
            val_loader._iterator = iter(val_loader.data_loader)
            val_loader.run_counter = 0
        return val_loader

    def _compat_validator(
        self,
        val_source: Iterable[Any],
        step: StepFn,
        device: torch.device,
        non_blocking: bool,
    ) -> Callable[[torch.nn.Module], torch.Tensor]:
        """0.2.2's validation: the whole loader after every step, each batch's loss weighted
        by its number of labels (by :func:`~lrtrack.engine.steps.batch_size_of` with ``step_fn``),
        the sum divided by ``len(dataset)``."""
        by_labels = self.step_fn is None
        seen = [0]

        def weighted() -> Iterator[Any]:
            # mean_loss weighs a batch by its first item's size: put the labels first.
            seen[0] = 0
            for batch in val_source:
                item = (batch[1], batch[0]) if by_labels else batch
                seen[0] += len(item[0]) if by_labels else batch_size_of(item)
                yield item

        def item_step(model: torch.nn.Module, item: Any) -> torch.Tensor:
            return step(model, (item[1], item[0])) if by_labels else step(model, item)

        def validate(model: torch.nn.Module) -> torch.Tensor:
            loss = mean_loss(model, weighted(), item_step, device=device, non_blocking=non_blocking)
            total = _dataset_length(val_source, seen[0])
            return loss if total == seen[0] else loss * seen[0] / total

        return validate

    def _rule_suggestion(
        self, rule: str, skip_start: int, skip_end: int
    ) -> tuple[float | None, float | None, str]:
        lrs, losses = self.history["lr"], self.history["loss"]
        label = "steepest gradient" if rule == "steepest" else rule
        if not lrs:
            log.warning("no suggestion: no range test has been run yet")
            return None, None, label
        found = suggest(rule, lrs, losses, skip_start=skip_start, skip_end=skip_end)
        if found.lr is None:
            log.warning("no %s suggestion: %s", rule, found.reason)
            return None, None, label
        # The minimum and slide rules may land between grid points: mark the nearest point.
        nearest = int(np.argmin(np.abs(np.log10(lrs) - math.log10(found.lr))))
        return found.lr, losses[nearest], label


def _unsupported_loader(name: str, loader: Any) -> str:
    """The compat-mode message for a loader torch-lr-finder 0.2.2 would not take."""
    kind = "TrainDataLoaderIter" if name == "train_loader" else "ValDataLoaderIter"
    return (
        f"`{name}` has unsupported type {type(loader).__name__}: with compat=True it must be a "
        f"torch DataLoader or a {kind} (subclass), as in torch-lr-finder 0.2.2. Wrap it in a "
        f"{kind} subclass that overrides inputs_labels_from_batch, or use compat=False, which "
        "accepts any iterable of batches."
    )


def _dataset_length(source: Any, default: int) -> int:
    """``len(source.dataset)`` when there is one (0.2.2 divides by it), else ``default``."""
    try:
        return len(source.dataset)
    except (AttributeError, TypeError):
        return default
