"""The follow-up training loop: epochs, a per-step schedule, validation, a checkpoint.

Pure library (no Hydra, no MLflow): progress goes to a :class:`~lrtrack.engine.observers.StepObserver`.

Per optimizer step the observer gets ``lr`` (group 0; ``lr/group_<i>`` for the others),
``momentum`` (SGD momentum or Adam beta1 of group 0, when the optimizer has one), ``loss`` (the
mean over the step's micro-batches) and ``loss_smoothed`` (bias-corrected EMA). The LR reported
is the one the step *used*: it is read before ``schedule.step()``. Each epoch end adds one call
with ``epoch``, ``train_loss_epoch`` and, with a validation loader, ``val_loss`` and the
validation metric (``val_accuracy`` by default, where the targets are class indices; see
:func:`evaluate`), at the global step of the epoch's last optimizer step.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrtrack.engine.distributed import (
    is_distributed,
    is_main,
    mean_over_ranks,
    unwrap,
    weighted_mean_over_ranks,
)
from lrtrack.engine.observers import NullObserver, StepObserver
from lrtrack.engine.progress import progress_bar
from lrtrack.engine.schedules import BatchSchedule, current_momentum, optimizer_steps_per_epoch
from lrtrack.engine.smoothing import EmaSmoother, check_smoothing
from lrtrack.engine.steps import (
    StepFn,
    autocast_factory,
    batch_size_of,
    check_flags,
    check_model_and_optimizer,
    make_grad_scaler,
    mean_loss,
    resolve_device,
    seed_everything,
    supervised_step,
    train_step,
)
from lrtrack.engine.stopping import stop_requested
from lrtrack.engine.tasks import as_metric

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        lrs: group 0's LR used by each optimizer step.
        momentums: group 0's momentum/beta1 at each step (``None`` where the optimizer has none).
        losses: each step's loss (mean over its micro-batches).
        smoothed_losses: the bias-corrected EMA of ``losses``.
        epochs: one dict per finished epoch (``epoch``, ``train_loss_epoch``, and with a
            validation loader ``val_loss``/``val_accuracy``).
        final_val_loss: the last epoch's validation loss, ``None`` without validation.
        final_val_accuracy: the last epoch's validation accuracy, ``None`` where not measured.
        steps: optimizer steps taken.
        checkpoint_path: the last checkpoint written, ``None`` without ``checkpoint_dir``.
    """

    lrs: list[float] = field(default_factory=list)
    momentums: list[float | None] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed_losses: list[float] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    final_val_loss: float | None = None
    final_val_accuracy: float | None = None
    steps: int = 0
    checkpoint_path: Path | None = None


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stopped before applying that step.

    Attributes:
        step: the global step whose loss was not finite.
        lr: group 0's LR at that step.
        result: everything recorded up to the step before.
    """

    def __init__(self, message: str, *, step: int, lr: float, result: TrainResult) -> None:
        super().__init__(message)
        self.step = step
        self.lr = lr
        self.result = result


def _check_args(
    epochs: Any,
    accumulation_steps: Any,
    grad_clip_norm: Any,
    smoothing: Any,
    optimizer: Any,
    schedule: Any,
) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}.")
    if (
        isinstance(accumulation_steps, bool)
        or not isinstance(accumulation_steps, int)
        or accumulation_steps < 1
    ):
        raise ValueError(
            f"accumulation_steps must be an integer >= 1 (batches per optimizer step; "
            f"1 = no accumulation), got {accumulation_steps!r}."
        )
    if grad_clip_norm is not None and (
        isinstance(grad_clip_norm, bool)
        or not isinstance(grad_clip_norm, (int, float))
        or not math.isfinite(grad_clip_norm)
        or grad_clip_norm <= 0
    ):
        raise ValueError(
            f"grad_clip_norm must be a positive number or None (no clipping), "
            f"got {grad_clip_norm!r}."
        )
    check_smoothing(smoothing)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}."
        )
    if schedule is not None and not isinstance(schedule, BatchSchedule):
        raise TypeError(
            f"schedule must be a lrtrack.engine.schedules.BatchSchedule or None, got "
            f"{type(schedule).__name__}; build one with a factory such as "
            "lrtrack.engine.schedules.onecycle(optimizer, ...)."
        )
    if schedule is not None and schedule.optimizer is not optimizer:
        raise ValueError(
            "schedule was built for a different optimizer than the one passed to train(); "
            "build the schedule with the same optimizer."
        )


def _step_metrics(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, float], float, float | None]:
    groups = optimizer.param_groups
    lr = float(groups[0]["lr"])
    metrics: dict[str, float] = {"lr": lr}
    for i, group in enumerate(groups[1:], start=1):
        metrics[f"lr/group_{i}"] = float(group["lr"])
    momentum = current_momentum(groups[0])
    if momentum is not None:
        metrics["momentum"] = momentum
    return metrics, lr, momentum


def set_optimizer_mode(optimizer: torch.optim.Optimizer, *, training: bool) -> None:
    """Call ``optimizer.train()`` / ``optimizer.eval()`` when it has them (schedule-free optimizers).

    Schedule-free optimizers (``schedulefree.AdamWScheduleFree``, ``SGDScheduleFree``) keep two
    weight sequences: the one gradients are taken at (train mode) and the averaged one to
    evaluate and save (eval mode). They must be switched alongside the model; other optimizers
    have no such methods and are left alone.
    """
    switch = getattr(optimizer, "train" if training else "eval", None)
    if callable(switch):
        switch()


class CheckpointWriteError(RuntimeError):
    """A file of the run could not be written into its folder (the message names the folder, the
    reason and the fix): a full disk (:class:`DiskFullError`), a read-only file system, a file
    where the folder should be..."""


class DiskFullError(CheckpointWriteError):
    """A file of the run could not be written: the disk holding its folder is full (the message names it)."""


#: Less free space than this under a folder whose write failed: the failure is a full disk (torch's
#: zip writer reports ENOSPC as "unexpected pos" or "file write failed", not as an OSError).
FULL_BELOW_BYTES = 16 * 2**20


def _disk_full(err: BaseException, folder: Path) -> bool:
    import errno
    import shutil

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(err, OSError):  # another reason, which the error names (read-only, not a folder...)
        return False
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW_BYTES
    except OSError:
        return False


def _why_unwritable(err: OSError, folder: Path) -> str:
    """The reason a write into ``folder`` failed, in words: ``"Read-only file system"``, ``"it is a
    file, not a folder"``..."""
    if folder.exists() and not folder.is_dir():
        return "it is a file, not a folder"
    return err.strerror or type(err).__name__


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created readable by this user only (the model and optimizer state are the user's work).
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
            torch.save(payload, fh)
        # replace in one move so an interrupted save never leaves a truncated last.pt
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if stop_requested():  # a signal inside torch.save's writer comes out as its RuntimeError: it is the stop
            tmp.unlink(missing_ok=True)
            raise KeyboardInterrupt("stop requested while the checkpoint was written") from err
        full = _disk_full(err, path.parent)
        if not full and not isinstance(err, OSError):
            raise  # torch failing for another reason than the disk: a bug, with its traceback
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if full:
            raise DiskFullError(f"the disk holding the output folder {path.parent} is full: the checkpoint could "
                                "not be written; free some space, or run with hydra.run.dir=<a folder on another "
                                "disk>") from err
        raise CheckpointWriteError(f"cannot write the checkpoint to {path.parent} ({_why_unwritable(err, path.parent)})"
                                   ": make it a writable folder, or run with hydra.run.dir=<a writable folder> "
                                   "(or train.checkpoint=false: no checkpoint, no resume)") from err


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device,
    criterion: Callable[..., torch.Tensor] | None,
    step_fn: StepFn | None,
    amp: bool = False,
    metric: Any = "accuracy",
) -> dict[str, float]:
    """Mean loss per sample (``val_loss``) and the validation metric (``val_<name>``) over ``loader``.

    With ``criterion`` the batches are ``(inputs, targets)``: the loss is
    ``criterion(model(inputs), targets)`` (which must average over the batch) and the metric sees
    ``(outputs, targets)``. Without ``criterion``, ``step_fn(model, batch)`` gives the loss; the
    metric then sees outputs only when the step offers ``with_outputs(on_outputs)`` (as
    :class:`lrtrack.engine.tasks.ModelLoss` does). Batch means are weighted by batch size
    (:func:`lrtrack.engine.steps.mean_loss`).

    Args:
        metric: ``"accuracy"`` (measured where the targets are class indices, so a regression
            run reports ``val_loss`` alone), ``None`` (loss only), a callable
            ``fn(outputs, targets)`` or an object with ``update``/``compute``/``reset``
            (:func:`lrtrack.engine.tasks.as_metric`).

    In a torchrun job each rank evaluates its shard; the loss is reduced over the ranks by
    :func:`lrtrack.engine.steps.mean_loss` and the metric is the ranks' values weighted by their samples.
    """
    measure = as_metric(metric)
    if measure is not None:
        measure.reset()
    on_outputs = measure.update if measure is not None else None
    if criterion is not None:
        step = supervised_step(criterion, on_outputs=on_outputs)
    elif step_fn is not None:
        with_outputs = getattr(step_fn, "with_outputs", None)
        step = with_outputs(on_outputs) if on_outputs is not None and callable(with_outputs) else step_fn
    else:
        raise TypeError("evaluate() needs a criterion or a step_fn, got neither.")
    seen = [0]
    loss = mean_loss(model, _counted(loader, seen), step, device=device, autocast=autocast_factory(device, amp))
    metrics = {"val_loss": float(loss)}
    value = measure.compute() if measure is not None else None
    if value is not None and is_distributed():
        value = weighted_mean_over_ranks(float(value), float(seen[0]))
    if value is not None:
        metrics[f"val_{measure.name}"] = value  # type: ignore[union-attr]
    return metrics


def _counted(loader: Iterable[Any], seen: list[int]) -> Iterator[Any]:
    """The batches of ``loader``, adding their samples to ``seen[0]`` on the way."""
    for batch in loader:
        seen[0] += batch_size_of(batch)
        yield batch


def set_data_epoch(loader: Any, epoch: int) -> None:
    """Tell a ``DistributedSampler`` (or any sampler with ``set_epoch``) which epoch starts.

    A user's DataLoader with ``DistributedSampler`` shuffles by ``seed + epoch`` and repeats its
    order unless told; lrtrack's own sharded loaders draw a new order every pass by themselves.
    """
    for part in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        set_epoch = getattr(part, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
            return


class _EpochBatches:
    """``next_batch`` for :func:`lrtrack.engine.steps.train_step` over one pass of a loader."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self._iterator = iter(loader)
        self.count = 0
        self.exhausted = False

    def __call__(self) -> Any:
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.exhausted = True
            raise
        self.count += 1
        return batch


def _planned_steps(
    train_loader: Iterable[Any],
    accumulation_steps: int,
    epochs: int,
    schedule: BatchSchedule | None,
) -> int | None:
    """Optimizer steps per epoch (None without ``len``); warn when the schedule plans others."""
    try:
        steps_per_epoch = optimizer_steps_per_epoch(len(train_loader), accumulation_steps)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None  # no len() (iterable datasets) or an empty loader, found later
    if schedule is not None and schedule.total_steps - schedule.steps_done != steps_per_epoch * epochs:
        logger.warning(
            "the %s schedule plans %d more optimizer steps but this run takes %d "
            "(%d epochs x ceil(%d batches / accumulation_steps=%d)); build it with "
            "steps_per_epoch=%d so the schedule ends with the run.",
            schedule.name,
            schedule.total_steps - schedule.steps_done,
            steps_per_epoch * epochs,
            epochs,
            len(train_loader),  # type: ignore[arg-type]
            accumulation_steps,
            steps_per_epoch,
        )
    return steps_per_epoch


def _progress_bar(total: int | None, progress: bool) -> Any:
    """A tqdm bar on a terminal, else a log line every 10% or 30 s (:mod:`lrtrack.engine.progress`)."""
    return progress_bar(total, "training", progress)


class _Trainer:
    """The state of one training run: its set-up, then :meth:`run_epoch` per epoch."""

    metric: Any = "accuracy"  # the validation metric (see evaluate)

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        schedule: BatchSchedule | None,
        step: StepFn,
        device: torch.device,
        accumulation_steps: int,
        grad_clip_norm: float | None,
        smoothing: float,
        observer: StepObserver,
        amp: bool,
        bar: Any,
    ) -> None:
        self.model, self.optimizer, self.schedule, self.step = model, optimizer, schedule, step
        self.device, self.amp = device, amp
        self.autocast = autocast_factory(device, amp)
        self.scaler = make_grad_scaler(device, amp)
        self.accumulation_steps, self.grad_clip_norm = accumulation_steps, grad_clip_norm
        self.smoother = EmaSmoother(smoothing)
        self.observer, self.bar = observer, bar
        self.result = TrainResult(checkpoint_path=None)
        self.global_step = 0
        self._pending: tuple[dict[str, float], float, float | None, float] | None = None

    def fit(
        self,
        train_loader: Iterable[Any],
        epochs: int,
        val_loader: Iterable[Any] | None,
        criterion: Callable[..., torch.Tensor] | None,
        step_fn: StepFn | None,
        checkpoint: Path | None,
        start_epoch: int = 0,
    ) -> TrainResult:
        """All epochs from ``start_epoch``: train, validate, report, checkpoint; returns the result."""
        try:
            for epoch in range(start_epoch, epochs):
                self.bar.set_description(f"epoch {epoch + 1}/{epochs}")
                set_data_epoch(train_loader, epoch)
                metrics = {"epoch": float(epoch), "train_loss_epoch": self.run_epoch(train_loader)}
                set_optimizer_mode(self.optimizer, training=False)  # schedule-free: evaluate/save x
                if val_loader is not None:
                    metrics.update(evaluate(self.model, val_loader, device=self.device,
                                            criterion=criterion, step_fn=step_fn, amp=self.amp,
                                            metric=self.metric))
                self.end_epoch(epoch, epochs, metrics)
                if checkpoint is not None:
                    self.save_checkpoint(checkpoint, epoch, train_loader)
            self.optimizer.zero_grad(set_to_none=True)
        finally:
            self.bar.close()
            self.result.steps = self.global_step
        if self.result.epochs:
            self.result.final_val_loss = self.result.epochs[-1].get("val_loss")
            self.result.final_val_accuracy = self.result.epochs[-1].get("val_accuracy")
        return self.result

    def run_epoch(self, train_loader: Iterable[Any]) -> float:
        """One pass over ``train_loader``; returns the mean loss per batch."""
        self.model.train()
        set_optimizer_mode(self.optimizer, training=True)
        batches = _EpochBatches(train_loader)
        loss_sum = 0.0
        while not batches.exhausted:
            before = batches.count
            try:
                train_step(
                    self.model, self.optimizer, batches, self.step, device=self.device,
                    accumulation_steps=self.accumulation_steps, autocast=self.autocast,
                    scaler=self.scaler, grad_clip_norm=self.grad_clip_norm,
                    before_step=self._check_loss,
                )
            except StopIteration:
                break
            loss_sum += self._record_step() * (batches.count - before)
        if batches.count == 0:
            raise ValueError(
                "train_loader yielded no batches; check the dataset size, batch_size and drop_last."
            )
        return loss_sum / batches.count

    def _check_loss(self, loss: torch.Tensor) -> None:
        """Read the step's loss (the one sync of the step); stop before applying a NaN/inf."""
        metrics, lr, momentum = _step_metrics(self.optimizer)  # the LR this step uses
        value = float(mean_over_ranks(loss).item())  # torchrun: every rank records (and stops on) the same loss
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"training loss became {value} at step {self.global_step} (lr={lr:.4g}); "
                "stopped before applying it. Lower the LR (bounds.max_lr or a more cautious "
                "bounds.max_lr_rule), add train.grad_clip_norm, or check the data.",
                step=self.global_step,
                lr=lr,
                result=self.result,
            )
        self._pending = (metrics, lr, momentum, value)

    def _record_step(self) -> float:
        """Step the schedule, record the step that was just applied; return its loss."""
        assert self._pending is not None  # set by _check_loss for every applied step
        metrics, lr, momentum, value = self._pending
        self._pending = None
        if self.schedule is not None:
            self.schedule.step()
        smoothed = self.smoother.update(value)
        metrics["loss"] = value
        metrics["loss_smoothed"] = smoothed
        self.observer.on_step(self.global_step, metrics)
        self.result.lrs.append(lr)
        self.result.momentums.append(momentum)
        self.result.losses.append(value)
        self.result.smoothed_losses.append(smoothed)
        self.bar.update(1)
        self.bar.set_postfix(lr=f"{lr:.3g}", smoothed_loss=f"{smoothed:.4f}", refresh=False)
        self.global_step += 1
        return value

    def end_epoch(self, epoch: int, epochs: int, epoch_metrics: dict[str, float]) -> None:
        """Report the epoch's metrics at the global step of its last optimizer step."""
        self.observer.on_step(self.global_step - 1, epoch_metrics)
        self.result.epochs.append(epoch_metrics)
        logger.info(
            "epoch %d/%d: %s",
            epoch + 1,
            epochs,
            ", ".join(f"{k}={v:.4g}" for k, v in epoch_metrics.items() if k != "epoch"),
        )

    def save_checkpoint(self, path: Path, epoch: int, data_order: Any) -> None:
        """Everything needed to continue exactly: weights, optimizer, schedule, RNG, data order,
        the step count and the history so far (see :func:`load_checkpoint`).

        In a torchrun job only rank 0 writes (the ranks hold the same weights and optimizer
        state); the weights are saved without the ``DistributedDataParallel`` wrapper, so a
        checkpoint continues in one process or several alike.
        """
        if not is_main():
            return
        schedule = self.schedule
        generator = getattr(data_order, "generator", None)
        _save_checkpoint(
            path,
            {
                "model": unwrap(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": schedule.state_dict() if schedule is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "epoch": epoch,
                "global_step": self.global_step,
                "rng": _rng_state(),
                "data_order": generator.get_state() if isinstance(generator, torch.Generator) else None,
                "smoother": dict(vars(self.smoother)),
                "history": {"lrs": self.result.lrs, "momentums": self.result.momentums,
                            "losses": self.result.losses, "smoothed_losses": self.result.smoothed_losses,
                            "epochs": self.result.epochs},
            },
        )
        self.result.checkpoint_path = path
        on_checkpoint = getattr(self.observer, "on_checkpoint", None)
        if on_checkpoint is not None:  # e.g. the MLflow run: flush the metrics, upload the file
            on_checkpoint(path, self.global_step - 1)

    def resume(self, checkpoint: dict[str, Any], data_order: Any) -> int:
        """Put the state of :meth:`save_checkpoint` back; returns the first epoch still to run."""
        unwrap(self.model).load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.schedule is not None and checkpoint.get("scheduler") is not None:
            self.schedule.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler") is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng"])
        generator = getattr(data_order, "generator", None)
        if isinstance(generator, torch.Generator) and checkpoint.get("data_order") is not None:
            generator.set_state(checkpoint["data_order"])
        vars(self.smoother).update(checkpoint["smoother"])
        history = checkpoint["history"]
        self.result.lrs, self.result.momentums = list(history["lrs"]), list(history["momentums"])
        self.result.losses, self.result.smoothed_losses = list(history["losses"]), list(history["smoothed_losses"])
        self.result.epochs = [dict(e) for e in history["epochs"]]
        self.global_step = int(checkpoint["global_step"])
        self.bar.update(self.global_step)
        return int(checkpoint["epoch"]) + 1


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (state[0], torch.from_numpy(state[1].copy()), int(state[2]), int(state[3]), float(state[4])),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants the nested tuples that a checkpoint round trip turns into lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`train` (``weights_only``: plain tensors and Python values)."""
    return torch.load(path, map_location="cpu", weights_only=True)


CHECKPOINT_KEYS = ("model", "optimizer", "rng", "smoother", "history", "global_step", "epoch")


def checkpoint_problem(state: Any, model: nn.Module) -> str | None:
    """Why ``state`` (a loaded checkpoint) cannot continue training ``model``, or None when it can:
    not a checkpoint of :func:`train`, or parameters of other names or shapes."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a checkpoint of lrtrack's training"
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        return f"it lacks {', '.join(missing)} (not a checkpoint of lrtrack's training)"
    own = {k: tuple(v.shape) for k, v in unwrap(model).state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state["model"].items() if isinstance(v, torch.Tensor)}
    if own != saved:
        other = sorted(set(own) ^ set(saved)) or [k for k in own if own[k] != saved.get(k)]
        return f"its model does not fit this one ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''})"
    return None


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Iterable[Any],
    *,
    epochs: int,
    schedule: BatchSchedule | None = None,
    criterion: Callable[..., torch.Tensor] | None = None,
    step_fn: StepFn | None = None,
    val_loader: Iterable[Any] | None = None,
    device: str | torch.device | None = None,
    accumulation_steps: int = 1,
    grad_clip_norm: float | None = None,
    smoothing: float = 0.95,
    observer: StepObserver | None = None,
    checkpoint_dir: str | Path | None = None,
    seed: int | None = None,
    progress: bool = True,
    amp: bool = False,
    resume_from: str | Path | dict[str, Any] | None = None,
    metric: Any = "accuracy",
) -> TrainResult:
    """Train ``model`` for ``epochs`` epochs, stepping ``schedule`` after every optimizer step.

    One optimizer step per ``accumulation_steps`` batches (:func:`lrtrack.engine.steps.train_step`):
    each micro-batch's loss is divided by ``accumulation_steps`` before ``backward``; a last
    partial accumulation at the epoch end still steps, with its gradients rescaled to the mean
    over the micro-batches it had. Build the schedule with
    ``steps_per_epoch = ceil(batches / accumulation_steps)``
    (:func:`lrtrack.engine.schedules.optimizer_steps_per_epoch`); a mismatch is logged.

    Args:
        model: the model; moved to ``device``.
        optimizer: its optimizer (and the one ``schedule`` was built with).
        train_loader: yields batches; ``(inputs, targets)`` for the default step.
        epochs: number of epochs, >= 1.
        schedule: the per-step LR schedule; ``None`` keeps the optimizer's LR.
        criterion: the loss for the default step and for validation (must average over the
            batch). Defaults to ``nn.CrossEntropyLoss()`` when ``step_fn`` is not given (it also
            suits models ending in ``log_softmax``).
        step_fn: ``step_fn(model, batch) -> loss`` for other batch formats. Validation then uses
            it too, without accuracy, unless ``criterion`` is also given.
        val_loader: evaluated at each epoch end (eval mode, no grad).
        device: ``None``/"auto": CUDA when present, else the model's device.
        accumulation_steps: batches per optimizer step, >= 1.
        grad_clip_norm: clip the total gradient norm to this (``clip_grad_norm_``).
        smoothing: EMA decay for ``loss_smoothed``, in [0, 1).
        observer: receives the per-step and per-epoch metrics.
        checkpoint_dir: where ``last.pt`` is written after each epoch (``model``,
            ``optimizer``, ``scheduler``, ``epoch``, ``global_step``, RNG and data-order state,
            the history so far; :func:`load_checkpoint` reads it). An observer with
            ``on_checkpoint(path, step)`` is told after each write.
        resume_from: a checkpoint (path or loaded dict) of an earlier run of the same set-up:
            training continues after its epoch exactly as if never interrupted (same LRs, data
            order and losses on CPU); the returned result holds the whole history. The data
            order continues when the loader shuffles with a ``generator`` attribute (lrtrack's
            in-memory loader, or a ``DataLoader(generator=...)``).
        metric: logged per epoch as ``val_<name>`` (:func:`lrtrack.engine.tasks.as_metric`): ``"accuracy"``
            (class-index targets only), None, ``fn(outputs, targets)`` or a torchmetrics-style object.
        seed: seeds Python, torch and numpy first (shuffling, dropout). On CPU two runs with the
            same seed and the same initial model give identical losses; on CUDA some kernels
            are nondeterministic unless ``torch.use_deterministic_algorithms(True)`` is set.
        progress: a tqdm bar when stderr is a terminal, else a log line every 10% or 30 s.
        amp: mixed precision: float16 with a GradScaler on CUDA, bfloat16 autocast on CPU.
            The loop itself synchronizes once per optimizer step (reading the loss); on CUDA
            the GradScaler adds its own inf check when it steps.

    Returns:
        A :class:`TrainResult`.

    Raises:
        NonFiniteLossError: (a ``RuntimeError``) the loss became NaN/inf; the step is not
            applied, the observer has every step before it, and the error names the step and LR.
        ValueError: bad settings or an empty ``train_loader``.
    """
    _check_args(epochs, accumulation_steps, grad_clip_norm, smoothing, optimizer, schedule)
    check_flags(progress=progress, amp=amp)
    check_model_and_optimizer(model, optimizer, criterion)
    if step_fn is None and criterion is None:
        criterion = nn.CrossEntropyLoss()
    if seed is not None:
        seed_everything(seed)
    device = resolve_device(device, model)
    model.to(device)
    steps_per_epoch = _planned_steps(train_loader, accumulation_steps, epochs, schedule)
    trainer = _Trainer(
        model, optimizer, schedule=schedule,
        step=step_fn if step_fn is not None else supervised_step(criterion),  # type: ignore[arg-type]
        device=device, accumulation_steps=accumulation_steps, grad_clip_norm=grad_clip_norm,
        smoothing=smoothing, observer=observer if observer is not None else NullObserver(),
        amp=amp, bar=_progress_bar(None if steps_per_epoch is None else steps_per_epoch * epochs, progress),
    )
    trainer.metric = as_metric(metric)
    checkpoint = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
    start_epoch = 0
    if resume_from is not None:
        state = resume_from if isinstance(resume_from, dict) else load_checkpoint(resume_from)
        start_epoch = trainer.resume(state, train_loader)
        logger.info("resuming after epoch %d (global step %d)", start_epoch, trainer.global_step)
    return trainer.fit(train_loader, epochs, val_loader, criterion, step_fn, checkpoint, start_epoch)

__all__ = ["CheckpointWriteError", "DiskFullError", "NonFiniteLossError", "TrainResult", "checkpoint_problem", "evaluate", "load_checkpoint", "train"]
