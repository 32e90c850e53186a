"""Batches: moving them to a device and turning them into a loss.

The default understands ``(inputs, targets)`` pairs; anything else (dict batches, several
inputs, a custom loss) is handled by passing ``step_fn(model, batch) -> loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

StepFn = Callable[[torch.nn.Module, Any], torch.Tensor]


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


def make_supervised_step(criterion: Callable[..., torch.Tensor]) -> StepFn:
    """The default step: ``criterion(model(inputs), targets)`` for ``(inputs, targets)`` batches."""

    def supervised_step(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise TypeError(
                "the default step expects batches of (inputs, targets); got "
                f"{type(batch).__name__}. Pass step_fn=lambda model, batch: loss for other formats."
            )
        inputs, targets = batch[0], batch[1]
        return criterion(model(inputs), targets)

    return supervised_step


def resolve_device(device: str | torch.device | None, model: torch.nn.Module | None = None) -> torch.device:
    """``None``/"auto" picks CUDA when present, else the model's device, else CPU."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if model is not None:
            for p in model.parameters():
                return p.device
        return torch.device("cpu")
    return torch.device(device)
