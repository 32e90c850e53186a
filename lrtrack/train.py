"""The follow-up training loop: epochs, a per-step schedule, validation, a checkpoint.

Pure library (no Hydra, no MLflow): progress goes to a :class:`~lrtrack.observers.StepObserver`.

Per optimizer step the observer gets ``lr`` (group 0; ``lr/group_<i>`` for the others),
``momentum`` (SGD momentum or Adam beta1 of group 0, when the optimizer has one), ``loss`` (the
mean over the step's micro-batches) and ``loss_smoothed`` (bias-corrected EMA). The LR reported
is the one the step *used*: it is read before ``schedule.step()``. Each epoch end adds one call
with ``epoch``, ``train_loss_epoch`` and, with a validation loader, ``val_loss`` and
``val_accuracy``, at the global step of the epoch's last optimizer step.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lrtrack.batches import batch_size_of, make_supervised_step, move_to_device, resolve_device
from lrtrack.observers import NullObserver, StepObserver
from lrtrack.schedules import BatchSchedule, current_momentum, optimizer_steps_per_epoch
from lrtrack.smoothing import EmaSmoother, check_smoothing

logger = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], torch.Tensor]


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
            f"schedule must be a lrtrack.schedules.BatchSchedule or None, got "
            f"{type(schedule).__name__}; build one with a factory such as "
            "lrtrack.schedules.onecycle(optimizer, ...)."
        )
    if schedule is not None and schedule.optimizer is not optimizer:
        raise ValueError(
            "schedule was built for a different optimizer than the one passed to train(); "
            "build the schedule with the same optimizer."
        )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy as np
    except ImportError:  # numpy is optional for the loop itself
        return
    np.random.seed(seed % 2**32)


def _autocast(device: torch.device, amp: bool) -> Callable[[], AbstractContextManager[Any]]:
    """A factory of autocast contexts: float16 on CUDA, bfloat16 on CPU, nothing elsewhere."""
    if not amp:
        return nullcontext
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    logger.warning(
        "amp=True is not supported on device %s here; training in full precision.", device
    )
    return nullcontext


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


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    # replace in one move so an interrupted save never leaves a truncated last.pt
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device,
    criterion: Callable[..., torch.Tensor] | None,
    step_fn: StepFn | None,
    amp: bool = False,
) -> dict[str, float]:
    """Mean loss per sample (and accuracy where it is defined) over ``loader``.

    With ``criterion`` the batches are ``(inputs, targets)``: the loss is
    ``criterion(model(inputs), targets)`` (which must average over the batch) and the accuracy
    is the share of ``argmax(outputs, dim=1) == targets``, measured when the targets are class
    indices. Without ``criterion``, ``step_fn(model, batch)`` gives the loss and no accuracy is
    measured. Batch means are weighted by batch size; one synchronization at the end.
    """
    was_training = model.training
    model.eval()
    autocast = _autocast(device, amp)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    samples = 0
    accuracy_samples = 0
    try:
        for batch in loader:
            batch = move_to_device(batch, device)
            size = batch_size_of(batch)
            with autocast():
                if criterion is not None:
                    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                        raise TypeError(
                            "validation with a criterion expects (inputs, targets) batches, got "
                            f"{type(batch).__name__}; pass step_fn and criterion=None for other "
                            "batch formats."
                        )
                    inputs, targets = batch[0], batch[1]
                    outputs = model(inputs)
                    loss = criterion(outputs, targets)
                elif step_fn is not None:
                    outputs = targets = None
                    loss = step_fn(model, batch)
                else:
                    raise TypeError("evaluate() needs a criterion or a step_fn, got neither.")
            loss_sum += loss.detach().double() * size
            samples += size
            if (
                isinstance(outputs, torch.Tensor)
                and isinstance(targets, torch.Tensor)
                and outputs.dim() >= 2
                and not targets.is_floating_point()
                and targets.shape == outputs.shape[:1] + outputs.shape[2:]
            ):
                correct += (outputs.argmax(dim=1) == targets).sum()
                accuracy_samples += targets.numel()
    finally:
        model.train(was_training)
    if samples == 0:
        raise ValueError("val_loader yielded no batches; pass a non-empty loader or None.")
    totals = torch.stack([loss_sum, correct.double()]).tolist()  # the one sync
    metrics = {"val_loss": totals[0] / samples}
    if accuracy_samples:
        metrics["val_accuracy"] = totals[1] / accuracy_samples
    return metrics


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
) -> TrainResult:
    """Train ``model`` for ``epochs`` epochs, stepping ``schedule`` after every optimizer step.

    One optimizer step per ``accumulation_steps`` batches: each micro-batch's loss is divided
    by ``accumulation_steps`` before ``backward``; a last partial accumulation at the epoch end
    still steps, with its gradients rescaled to the mean over the micro-batches it had. Build
    the schedule with ``steps_per_epoch = ceil(batches / accumulation_steps)``
    (:func:`lrtrack.schedules.optimizer_steps_per_epoch`); a mismatch is logged.

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
        checkpoint_dir: where ``last.pt`` is written after each epoch
            (``model``, ``optimizer``, ``scheduler``, ``epoch``, ``global_step``; loads with
            ``torch.load(path, weights_only=True)``).
        seed: seeds Python, torch and numpy first (shuffling, dropout). On CPU two runs with the
            same seed and the same initial model give identical losses; on CUDA some kernels
            are nondeterministic unless ``torch.use_deterministic_algorithms(True)`` is set.
        progress: a tqdm bar (only when stderr is a terminal).
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
    if step_fn is None and criterion is None:
        criterion = nn.CrossEntropyLoss()
    train_step: StepFn = step_fn if step_fn is not None else make_supervised_step(criterion)  # type: ignore[arg-type]
    observer = observer if observer is not None else NullObserver()
    if seed is not None:
        _seed_everything(seed)
    device = resolve_device(device, model)
    model.to(device)
    autocast = _autocast(device, amp)
    scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None
    checkpoint_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
    params = [p for group in optimizer.param_groups for p in group["params"]]

    steps_per_epoch: int | None = None
    try:
        steps_per_epoch = optimizer_steps_per_epoch(len(train_loader), accumulation_steps)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        steps_per_epoch = None  # no len() (iterable datasets) or an empty loader, found below
    if schedule is not None and steps_per_epoch is not None:
        planned = steps_per_epoch * epochs
        if schedule.total_steps - schedule.steps_done != planned:
            logger.warning(
                "the %s schedule plans %d more optimizer steps but this run takes %d "
                "(%d epochs x ceil(%d batches / accumulation_steps=%d)); build it with "
                "steps_per_epoch=%d so the schedule ends with the run.",
                schedule.name,
                schedule.total_steps - schedule.steps_done,
                planned,
                epochs,
                len(train_loader),  # type: ignore[arg-type]
                accumulation_steps,
                steps_per_epoch,
            )

    result = TrainResult(checkpoint_path=None)
    smoother = EmaSmoother(smoothing)
    global_step = 0
    bar = tqdm(
        total=steps_per_epoch * epochs if steps_per_epoch is not None else None,
        disable=not progress or not sys.stderr.isatty(),
        unit="step",
        dynamic_ncols=True,
    )

    def optimizer_step(loss_sum: torch.Tensor, micro: int) -> float:
        """Apply one optimizer step for ``micro`` accumulated micro-batches; return its loss."""
        nonlocal global_step
        metrics, lr, momentum = _step_metrics(optimizer)  # the LR this step uses
        loss_value = float((loss_sum / micro).item())  # the one sync of the step
        if not math.isfinite(loss_value):
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"training loss became {loss_value} at step {global_step} (lr={lr:.4g}); "
                "stopped before applying it. Lower the LR (schedule.max_lr or a more cautious "
                "schedule.max_lr_rule), add grad_clip_norm, or check the data.",
                step=global_step,
                lr=lr,
                result=result,
            )
        if micro != accumulation_steps:
            # a partial accumulation at the epoch end: make its gradient the mean over the
            # micro-batches it really had, not a sum scaled by 1/accumulation_steps
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, accumulation_steps / micro)
        if scaler is not None:
            if grad_clip_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            if grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(params, grad_clip_norm)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if schedule is not None:
            schedule.step()

        smoothed = smoother.update(loss_value)
        metrics["loss"] = loss_value
        metrics["loss_smoothed"] = smoothed
        observer.on_step(global_step, metrics)
        result.lrs.append(lr)
        result.momentums.append(momentum)
        result.losses.append(loss_value)
        result.smoothed_losses.append(smoothed)
        bar.update(1)
        bar.set_postfix(lr=f"{lr:.3g}", smoothed_loss=f"{smoothed:.4f}", refresh=False)
        global_step += 1
        return loss_value

    try:
        optimizer.zero_grad(set_to_none=True)
        for epoch in range(epochs):
            model.train()
            bar.set_description(f"epoch {epoch + 1}/{epochs}")
            epoch_loss_sum = 0.0
            epoch_batches = 0
            loss_sum = torch.zeros((), device=device)
            micro = 0
            for batch in train_loader:
                batch = move_to_device(batch, device)
                with autocast():
                    loss = train_step(model, batch)
                scaled = loss / accumulation_steps
                if scaler is not None:
                    scaler.scale(scaled).backward()
                else:
                    scaled.backward()
                loss_sum = loss_sum + loss.detach().float()
                micro += 1
                if micro == accumulation_steps:
                    epoch_loss_sum += optimizer_step(loss_sum, micro) * micro
                    epoch_batches += micro
                    loss_sum = torch.zeros((), device=device)
                    micro = 0
            if micro:
                epoch_loss_sum += optimizer_step(loss_sum, micro) * micro
                epoch_batches += micro
            if epoch_batches == 0:
                raise ValueError(
                    "train_loader yielded no batches; check the dataset size, batch_size and "
                    "drop_last."
                )

            epoch_metrics: dict[str, float] = {
                "epoch": float(epoch),
                "train_loss_epoch": epoch_loss_sum / epoch_batches,
            }
            if val_loader is not None:
                epoch_metrics.update(
                    evaluate(
                        model,
                        val_loader,
                        device=device,
                        criterion=criterion,
                        step_fn=step_fn,
                        amp=amp,
                    )
                )
            observer.on_step(global_step - 1, epoch_metrics)
            result.epochs.append(epoch_metrics)
            logger.info(
                "epoch %d/%d: %s",
                epoch + 1,
                epochs,
                ", ".join(f"{k}={v:.4g}" for k, v in epoch_metrics.items() if k != "epoch"),
            )
            if checkpoint_path is not None:
                _save_checkpoint(
                    checkpoint_path,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": schedule.state_dict() if schedule is not None else None,
                        "epoch": epoch,
                        "global_step": global_step,
                    },
                )
                result.checkpoint_path = checkpoint_path
    finally:
        bar.close()
        result.steps = global_step

    if result.epochs:
        last = result.epochs[-1]
        result.final_val_loss = last.get("val_loss")
        result.final_val_accuracy = last.get("val_accuracy")
    return result


__all__ = ["NonFiniteLossError", "TrainResult", "evaluate", "train"]
