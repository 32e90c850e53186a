"""One job on several processes: torchrun's process group, ranks, reductions (no Hydra, no MLflow).

``torchrun --nproc_per_node=N -m lrtrack ...`` starts N copies of the program with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`init_from_env` turns that into a process group (``nccl`` on CUDA, ``gloo`` on CPU); the
rest of lrtrack asks this module, never ``torch.distributed`` directly:

- who am I: :func:`is_distributed`, :func:`rank`, :func:`world_size`, :func:`is_main`;
- the same number on every rank: :func:`mean_over_ranks`, :func:`sum_over_ranks`,
  :func:`broadcast_object` (rank 0 decides, the others follow);
- the model: :func:`wrap_model` (``DistributedDataParallel``) and :func:`unwrap`;
- side effects once: :func:`rank_zero_only`.

Outside torchrun every helper is a no-op (rank 0 of a world of 1), so library code calls them
unconditionally. The range test records the mean loss over ranks at every step, so every rank
sees the same curve and takes the same stop decision, probes and suggestion.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import nn

from lrtrack.engine.launcher_env import launched_by_torchrun

log = logging.getLogger(__name__)

#: The variables torchrun sets for every process it starts.
TORCHRUN_ENV: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")


def is_distributed() -> bool:
    """True once a process group is initialised (by :func:`init_from_env` or the user)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's rank in the group (0 outside one)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Processes in the group (1 outside one)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (and outside a group): the process that logs, tracks and writes files."""
    return rank() == 0


def backend_for(device: str | torch.device | None) -> str:
    """``nccl`` when the job runs on CUDA (``None``/"auto" with a GPU present), else ``gloo``."""
    if device is None or str(device) == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: str | torch.device | None = None, timeout_s: float = 1800.0) -> bool:
    """Initialise the process group from torchrun's environment, once.

    On CUDA each process takes the GPU of its ``LOCAL_RANK`` (``torch.cuda.set_device``), so
    ``device="cuda"`` means that GPU from then on.

    Args:
        device: the job's device setting (``None``/"auto", "cpu", "cuda", ...): picks the backend.
        timeout_s: how long a collective waits for the other ranks before failing.

    Returns:
        True when this call initialised the group (destroy it with :func:`destroy`); False when
        the process was not started by torchrun or a group already exists.

    Raises:
        RuntimeError: CUDA is asked for but this machine has fewer GPUs than processes.
    """
    if is_distributed() or not launched_by_torchrun():
        return False
    problem = launch_problem(device)
    if problem is not None:
        raise RuntimeError(problem)
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    torch.distributed.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    log.info("process group: rank %d of %d (%s)", rank(), world_size(), backend)
    return True


def launch_problem(device: str | torch.device | None = None) -> str | None:
    """Why this torchrun process cannot join a group on ``device`` (one line), or None.

    On CUDA every process needs a GPU of its own: a machine with fewer GPUs than
    ``--nproc_per_node`` cannot run the job there (nccl refuses two ranks on one GPU).
    """
    if not launched_by_torchrun() or backend_for(device) != "nccl":
        return None
    count = torch.cuda.device_count()
    if local_rank() < count:
        return None
    return (f"torchrun started local rank {local_rank()} but this machine has {count} GPU(s): start at most "
            f"{count} process(es) per node (--nproc_per_node={count}), or run on CPU with device=cpu (gloo)")


def destroy() -> None:
    """Leave the process group (no-op outside one)."""
    if is_distributed():
        torch.distributed.destroy_process_group()


@contextmanager
def process_group(device: str | torch.device | None = None) -> Iterator[bool]:
    """:func:`init_from_env` on entry; on exit, destroy the group when this context created it.

    Yields:
        True when the process runs in a group of several ranks (or one, under torchrun).
    """
    created = init_from_env(device)
    try:
        yield is_distributed()
    finally:
        if created:
            destroy()


def barrier() -> None:
    """Wait until every rank gets here (no-op outside a group)."""
    if is_distributed():
        torch.distributed.barrier()


def _collective_device(tensor: torch.Tensor) -> torch.device:
    """Where a tensor must be for the backend: CUDA for nccl, CPU for gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over every rank (a new tensor on ``value``'s device and dtype).

    Outside a group, ``value`` itself. Every rank must call it, in the same order.
    """
    if not is_distributed():
        return value
    work = value.detach().to(_collective_device(value), copy=True)
    torch.distributed.all_reduce(work, op=torch.distributed.ReduceOp.SUM)
    return work.to(value.device)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over every rank (equal weights); ``value`` itself outside a group.

    Used for the range test's loss: each rank's loss is the mean over its shard of the global
    batch, and the shards are equal, so this is the loss of the whole global batch. Every rank
    gets the same result, so every rank takes the same decisions from it.
    """
    if not is_distributed():
        return value
    return sum_over_ranks(value.float() if not value.is_floating_point() else value) / world_size()


def weighted_mean_over_ranks(value: float, weight: float) -> float:
    """``sum(value * weight) / sum(weight)`` over the ranks (e.g. a metric weighted by samples).

    Returns ``value`` outside a group, and NaN when every weight is 0.
    """
    if not is_distributed():
        return value
    both = sum_over_ranks(torch.tensor([value * weight, weight], dtype=torch.float64))
    total, weights = both.tolist()
    return total / weights if weights else float("nan")


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` as rank ``src`` has it, on every rank (any picklable object); ``obj`` outside a group."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[return-value]


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` on ``device`` (unchanged outside a group).

    The model is moved to ``device`` first; DDP then broadcasts rank 0's weights to the others,
    so every rank starts from the same model, and averages the gradients in every backward pass.
    """
    if not is_distributed() or isinstance(model, nn.parallel.DistributedDataParallel):
        return model
    from torch.nn.parallel import DistributedDataParallel

    model.to(device)
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper; else ``model``."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def rank_zero_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorate a function to run on rank 0 only; the other ranks get ``None`` back."""

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main() else None

    return guarded


__all__ = [
    "TORCHRUN_ENV",
    "backend_for",
    "barrier",
    "broadcast_object",
    "destroy",
    "init_from_env",
    "is_distributed",
    "is_main",
    "launch_problem",
    "launched_by_torchrun",
    "local_rank",
    "mean_over_ranks",
    "process_group",
    "rank",
    "rank_zero_only",
    "sum_over_ranks",
    "unwrap",
    "wrap_model",
    "weighted_mean_over_ranks",
    "world_size",
]
