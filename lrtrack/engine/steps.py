"""The shared training building blocks (no Hydra, no MLflow).

One copy of each, used by the range test (:mod:`lrtrack.engine.finder`), the training loop
(:mod:`lrtrack.engine.train`) and the torch-lr-finder adapter (:mod:`lrtrack.compat`):

- batches: :func:`move_to_device`, :func:`batch_size_of`, :func:`resolve_device`;
- the loss of a batch: a ``StepFn`` (``step_fn(model, batch) -> loss``), by default
  :func:`supervised_step` for ``(inputs, targets)`` batches;
- mixed precision: :func:`autocast_factory` and :func:`make_grad_scaler`;
- one optimizer step with accumulation, autocast, GradScaler and clipping: :func:`train_step`;
- the validation loop: :func:`mean_loss`;
- seeding: :func:`seed_everything`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from lrtrack.engine.stopping import check_stop

StepFn = Callable[[nn.Module, Any], torch.Tensor]
"""``step_fn(model, batch) -> loss``: the loss of one batch (a scalar tensor)."""

log = logging.getLogger(__name__)

__all__ = [
    "StepFn",
    "autocast_factory",
    "batch_size_of",
    "check_flags",
    "check_model_and_optimizer",
    "device_problem",
    "make_grad_scaler",
    "mean_loss",
    "move_to_device",
    "resolve_device",
    "seed_everything",
    "supervised_step",
    "train_step",
]


# --------------------------------------------------------------------------- batches


def move_to_device(obj: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Move every tensor inside ``obj`` (tensors, tuples, lists, dicts) to ``device``."""
    if isinstance(obj, torch.Tensor):
        if obj.device == device:
            return obj
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return type(obj)({k: move_to_device(v, device, non_blocking) for k, v in obj.items()})
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(move_to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(v, device, non_blocking) for v in obj)
    return obj


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch: the first dimension of its first tensor (1 if none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        return 1
    for value in values:
        size = batch_size_of(value)
        if size:
            return size
    return 1


def check_flags(**flags: Any) -> None:
    """Each of ``flags`` True or False: ``amp='no'`` is a non-empty string, which Python takes as true."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False; got {value!r}")


def check_model_and_optimizer(model: nn.Module, optimizer: Any, criterion: Any = None) -> None:
    """The optimizer steps the model's own parameters, and the criterion is a loss, not its class: with
    another model's optimizer the curve is recorded while the model never moves; ``nn.NLLLoss`` (the
    class) fails deep in torch on the first batch."""
    if isinstance(criterion, type):
        raise TypeError(f"criterion must be a loss instance, e.g. {criterion.__name__}(), not the class "
                        f"{criterion.__name__}")
    owned = {id(p) for p in model.parameters()}
    stepped = [p for group in getattr(optimizer, "param_groups", []) for p in group["params"]]
    if stepped and not any(id(p) in owned for p in stepped):
        raise ValueError("the optimizer holds none of the model's parameters (built for another model?): build it "
                         "from this model, e.g. torch.optim.SGD(model.parameters(), lr=1e-3)")


def device_problem(device: str | torch.device) -> str | None:
    """Why this machine cannot train on ``device`` (one sentence naming what it can), None when it can.
    torch parses more than it can run on: ``cpu:1``, ``meta``, ``cuda:3`` with one GPU or none."""
    try:
        parsed = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        return "not a torch device; use auto, cpu, cuda or cuda:<index>"
    usable = ["cpu", "cuda"] + (["mps"] if torch.backends.mps.is_available() else [])
    if parsed.type not in usable:
        return (f"lrtrack trains on {', '.join(usable)} ({parsed.type!r} is not available to this torch build, or "
                "holds no data); use device=auto, cpu or cuda[:<index>]")
    if parsed.type == "cpu" and parsed.index not in (None, 0):
        return "the CPU has no index (torch runs on all its cores as one device); use device=cpu"
    if parsed.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine; use device=auto or cpu"
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} CUDA device(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}"
    return None


def resolve_device(device: str | torch.device | None, model: nn.Module | None = None) -> torch.device:
    """``None``/"auto" picks CUDA when present, else the model's device, else CPU.

    Raises:
        ValueError: a device this machine cannot train on (:func:`device_problem`).
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if model is not None:
            for p in model.parameters():
                return p.device
        return torch.device("cpu")
    problem = device_problem(device)
    if problem is not None:
        raise ValueError(f"device={str(device)!r} is invalid: {problem}")
    return torch.device(device)


# --------------------------------------------------------------------------- the loss of a batch


def supervised_step(
    criterion: Callable[..., torch.Tensor],
    *,
    on_outputs: Callable[[Any, Any], None] | None = None,
) -> StepFn:
    """The default step: ``criterion(model(inputs), targets)`` for ``(inputs, targets)`` batches.

    Extra items after the first two are ignored. ``on_outputs(outputs, targets)``, when given,
    sees every forward pass (e.g. to count correct predictions). Any other batch format raises
    ``TypeError``: pass ``step_fn=lambda model, batch: loss`` instead.
    """

    def step(model: nn.Module, batch: Any) -> torch.Tensor:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise TypeError(
                "the default step expects (inputs, targets) batches; got "
                f"{type(batch).__name__}. Pass step_fn=lambda model, batch: loss for other "
                "batch formats."
            )
        inputs, targets = batch[0], batch[1]
        outputs = model(inputs)
        if on_outputs is not None:
            on_outputs(outputs, targets)
        return criterion(outputs, targets)

    return step


# --------------------------------------------------------------------------- mixed precision


def autocast_factory(device: torch.device, amp: bool) -> Callable[[], AbstractContextManager[Any]]:
    """A factory of mixed-precision contexts: float16 on CUDA, bfloat16 on CPU, none elsewhere.

    float16 needs a GradScaler (:func:`make_grad_scaler`); CPU autocast supports bfloat16 only.
    Built once per run, so the per-step cost is one context object.
    """
    if not amp:
        return nullcontext
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    log.warning("amp=True is not supported on device %s; running in full precision", device)
    return nullcontext


def make_grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler | None:
    """A GradScaler for float16 autocast on CUDA; ``None`` everywhere else (none is needed)."""
    if amp and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


# --------------------------------------------------------------------------- one optimizer step


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], Any],
    step_fn: StepFn,
    *,
    device: torch.device,
    accumulation_steps: int = 1,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    non_blocking: bool = True,
    grad_clip_norm: float | None = None,
    before_step: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """One optimizer step over ``accumulation_steps`` batches; returns their mean loss.

    Zeroes the gradients, then for each of ``accumulation_steps`` batches from
    ``next_batch()``: moves it to ``device``, computes ``step_fn(model, batch)`` under
    ``autocast()`` and back-propagates ``loss / accumulation_steps`` (scaled by ``scaler``
    when given). When ``next_batch`` raises ``StopIteration`` after some batches, the step
    goes ahead with the gradient rescaled to the mean over the batches it had; before the
    first batch, ``StopIteration`` propagates and nothing is stepped. Then, with
    ``grad_clip_norm``, the gradients are unscaled and their total norm clipped, and the
    optimizer steps (``scaler.step`` + ``scaler.update`` with a scaler).

    Args:
        before_step: called with the mean loss after the backward passes and before the
            optimizer step; raising there leaves the parameters untouched (the training loop
            uses it to stop on a NaN loss).

    Returns:
        The mean unscaled loss over the step's batches: a detached float32 scalar on
        ``device``. Nothing here waits for the device (no host synchronization).
    """
    check_stop()  # a stop whose KeyboardInterrupt was swallowed (engine.stopping) is seen here
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=device)
    passes = 0
    for _ in range(accumulation_steps):
        try:
            batch = next_batch()
        except StopIteration:
            if passes == 0:
                raise
            break
        batch = move_to_device(batch, device, non_blocking)
        with autocast():
            loss = step_fn(model, batch)
        scaled = loss / accumulation_steps
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += loss.detach().float()
        passes += 1
    if passes != accumulation_steps:
        _scale_gradients(optimizer, accumulation_steps / passes)
    mean = loss_sum / passes
    if before_step is not None:
        before_step(mean)
    _apply_gradients(optimizer, scaler, grad_clip_norm)
    return mean


def _scale_gradients(optimizer: torch.optim.Optimizer, factor: float) -> None:
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, factor)


def _apply_gradients(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    grad_clip_norm: float | None,
) -> None:
    if grad_clip_norm is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        nn.utils.clip_grad_norm_(params, grad_clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


# --------------------------------------------------------------------------- validation


def mean_loss(
    model: nn.Module,
    batches: Iterable[Any],
    step_fn: StepFn,
    *,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    non_blocking: bool = True,
    across_ranks: bool = True,
) -> torch.Tensor:
    """The mean loss per sample over ``batches``, in eval mode without gradients.

    Each batch's loss (``step_fn(model, batch)``, a batch mean) is weighted by its size
    (:func:`batch_size_of`) and summed in float64 (float32 on MPS). The model's
    ``training`` flag is restored afterwards, also on an exception. To measure more than
    the loss (accuracy), give a ``step_fn`` that records it, e.g. ``supervised_step(criterion,
    on_outputs=...)``.

    In a torchrun job (:mod:`lrtrack.engine.distributed`) each rank evaluates its own shard and, with
    ``across_ranks``, the sums and sample counts are added over the ranks, so every rank gets
    the mean over all of them (every rank must then call it). The batches run through the model
    inside a ``DistributedDataParallel`` wrapper, so no rank waits on another per batch.

    Returns:
        A scalar tensor on ``device``; nothing here waits for the device (except the reduction
        over ranks).

    Raises:
        ValueError: ``batches`` yielded nothing.
    """
    check_stop()
    from lrtrack.engine.distributed import is_distributed, sum_over_ranks, unwrap

    model = unwrap(model) if is_distributed() else model
    was_training = model.training
    model.eval()
    dtype = torch.float32 if device.type == "mps" else torch.float64
    total = torch.zeros((), dtype=dtype, device=device)
    samples = 0
    try:
        with torch.no_grad():
            for batch in batches:
                batch = move_to_device(batch, device, non_blocking)
                with autocast():
                    loss = step_fn(model, batch)
                size = batch_size_of(batch)
                total += loss.detach().to(dtype) * size
                samples += size
    finally:
        model.train(was_training)
    if across_ranks and is_distributed():
        total, count = sum_over_ranks(torch.stack((total, torch.tensor(float(samples), dtype=dtype, device=device))))
        samples = int(count.item())
    if samples == 0:
        raise ValueError("the validation loader yielded no batches; pass a non-empty one or None")
    return total / samples


# --------------------------------------------------------------------------- seeding


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, torch (every device) and numpy's global RNG (when installed)."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy as np
    except ImportError:  # numpy is optional for the loops themselves
        return
    np.random.seed(seed % 2**32)
