"""Follow-up schedules built from a range-test result, stepped once per optimizer step.

The range test gives an LR range; this module turns it into :class:`Bounds` (``max_lr`` and
``base_lr``) and then into a :class:`BatchSchedule`: a thin wrapper over one of torch's
``torch.optim.lr_scheduler`` classes that is stepped after **every optimizer step** (not every
epoch) and that takes care of the well-known traps:

* **1cycle stepped too often** (gradient accumulation, ``drop_last``, a resumed run that trains
  longer): torch's ``OneCycleLR`` raises ``ValueError`` one step past ``total_steps``. Here the
  schedule is planned in *optimizer* steps (the caller passes ``steps_per_epoch`` already
  divided by the accumulation, see :func:`optimizer_steps_per_epoch`), and past the planned end
  it **holds the final LR** and logs one warning instead of crashing. ``cosine`` does the same
  (torch's ``CosineAnnealingLR`` would otherwise climb back up past ``T_max``).
* **SGDR stepped per batch**: ``CosineAnnealingWarmRestarts`` counts ``T_0`` in the units it is
  stepped in, so calling ``step()`` per batch with ``T_0`` in epochs restarts every ``T_0``
  batches. The documented cure is ``scheduler.step(epoch + i / steps_per_epoch)``; this module
  gives the scheduler ``T_0`` in iterations (``T_0 * steps_per_epoch``) and steps it by one
  instead. That is the same schedule in integer arithmetic: torch's fractional-epoch path finds
  the current cycle with a floating-point ``log`` that can land one cycle short exactly at a
  restart (``T_0=1, T_mult=3``: the restart at epoch 121 gives ``eta_min`` instead of the peak).
* **``T_0``/``T_mult`` not integers** (``1.5``): refused with a message that says so.
* **momentum cycling without momentum**: ``CyclicLR``/``OneCycleLR`` with
  ``cycle_momentum=True`` would silently switch momentum *on* for ``SGD(momentum=0)`` (every torch
  SGD has a ``momentum`` key); that is refused with a message that says to set
  ``cycle_momentum=false`` or give the optimizer momentum. Adam-family optimizers (a ``betas``
  default) get ``beta1`` cycled by torch itself.
* **several parameter groups**: every factory keeps the ratios of the groups' LRs as the
  optimizer has them (group ``i`` gets ``max_lr * lr_i / lr_0``), and writes ``initial_lr`` too,
  so an optimizer that went through an earlier scheduler does not keep a stale base LR.

Factories share the signature ``(optimizer, *, max_lr, base_lr, steps_per_epoch, epochs,
**settings) -> BatchSchedule`` so the Hydra config can build them with ``_partial_: true``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer
from torch.optim import lr_scheduler as torch_sched

from lrtrack.engine.suggest import DEFAULT_RULE, RULES, Suggestion

logger = logging.getLogger(__name__)

SCHEDULES: tuple[str, ...] = (
    "triangular",
    "triangular2",
    "exp_range",
    "onecycle",
    "cosine",
    "cosine_restarts",
    "step",
    "constant",
)

#: ``max_lr_rule`` values: the suggestion rules plus Smith's 1cycle rule (LR at min loss / 10).
MAX_LR_RULES: tuple[str, ...] = (*RULES, "min_loss_div10")


# --------------------------------------------------------------------------------------------
# Bounds
# --------------------------------------------------------------------------------------------


def _check_positive(name: str, value: Any, fix: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {value!r}.{fix}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.{fix}")
    return float(value)


@dataclass(frozen=True)
class Bounds:
    """The LR range a follow-up schedule runs in.

    Attributes:
        max_lr: the top of the range (the peak of a cycle, the start of an annealing).
        base_lr: the bottom of the range (the start/trough of a cycle).
        rule: how the two were produced, for people reading a run,
            e.g. ``"max_lr = valley suggestion; base_lr = max_lr / 4"``.
    """

    max_lr: float
    base_lr: float
    rule: str

    def __post_init__(self) -> None:
        _check_positive("max_lr", self.max_lr)
        _check_positive("base_lr", self.base_lr)
        if self.base_lr > self.max_lr:
            raise ValueError(
                f"base_lr must not exceed max_lr, got base_lr={self.base_lr!r} > "
                f"max_lr={self.max_lr!r}. Use base_divisor >= 1."
            )


def _check_divisor(base_divisor: Any) -> float:
    if isinstance(base_divisor, bool) or not isinstance(base_divisor, (int, float)):
        raise TypeError(
            f"bounds.base_divisor must be a number >= 1, got {base_divisor!r} "
            "(base_lr = max_lr / base_divisor; Smith suggests 3-4)."
        )
    if not math.isfinite(base_divisor) or base_divisor < 1:
        raise ValueError(
            f"bounds.base_divisor must be a finite number >= 1, got {base_divisor!r} "
            "(base_lr = max_lr / base_divisor; Smith suggests 3-4). Set e.g. "
            "bounds.base_divisor=4."
        )
    return float(base_divisor)


def bounds_from_config(max_lr: float, base_divisor: float = 4.0) -> Bounds:
    """Bounds from an explicit ``bounds.max_lr``: ``base_lr = max_lr / base_divisor``.

    Error messages name the config keys (``bounds.max_lr``, ``bounds.base_divisor``).
    """
    max_lr = _check_positive(
        "bounds.max_lr", max_lr, " Set a positive LR, or null to take it from the range test."
    )
    divisor = _check_divisor(base_divisor)
    return Bounds(
        max_lr=max_lr,
        base_lr=max_lr / divisor,
        rule=f"max_lr from config; base_lr = max_lr / {divisor:g}",
    )


def bounds_from_suggestions(
    suggestions: Mapping[str, Suggestion],
    *,
    max_lr_rule: str = DEFAULT_RULE,
    base_divisor: float = 4.0,
    min_loss_lr: float | None = None,
) -> Bounds:
    """Bounds from a range test: ``max_lr`` by one rule, ``base_lr = max_lr / base_divisor``.

    Args:
        suggestions: the range test's suggestions, keyed by rule name.
        max_lr_rule: one of the suggestion rules (``confirmed``, the default, ``steepest``,
            ``valley``, ``minimum``, ``slide``) or ``min_loss_div10``: the LR at the minimum loss divided by 10
            (Smith's rule for the 1cycle peak), which needs ``min_loss_lr``.
        base_divisor: ``>= 1``; Smith suggests 3-4.
        min_loss_lr: the LR at which the (smoothed) loss was lowest; only for ``min_loss_div10``.

    Raises:
        ValueError: an unknown rule, a rule with no suggestion (its reason is quoted), a missing
            ``min_loss_lr``, or a bad ``base_divisor``. The messages name the config keys
            (``bounds.max_lr_rule``, ``bounds.max_lr``, ``bounds.base_divisor``).
    """
    divisor = _check_divisor(base_divisor)
    if max_lr_rule not in MAX_LR_RULES:
        raise ValueError(
            f"bounds.max_lr_rule must be one of {', '.join(MAX_LR_RULES)}, got {max_lr_rule!r}."
        )
    if max_lr_rule == "min_loss_div10":
        if min_loss_lr is None:
            raise ValueError(
                "bounds.max_lr_rule=min_loss_div10 needs the LR at the minimum loss "
                "(min_loss_lr), which was not given. Pass min_loss_lr, choose another rule "
                f"({', '.join(RULES)}), or set bounds.max_lr explicitly."
            )
        lr = _check_positive("min_loss_lr", min_loss_lr) / 10.0
        rule = "max_lr = LR at minimum loss / 10"
    else:
        suggestion = suggestions.get(max_lr_rule)
        if suggestion is None or not suggestion.ok:
            reason = (
                suggestion.reason
                if suggestion is not None and suggestion.reason
                else "the range test returned no suggestion for it"
            )
            others = [
                name
                for name, s in suggestions.items()
                if s is not None and s.ok and name != max_lr_rule
            ]
            fix = (
                f"Set bounds.max_lr_rule to a rule that has one ({', '.join(others)}), or set "
                "bounds.max_lr to an explicit LR."
                if others
                else "No other rule has a suggestion either: set bounds.max_lr to an explicit LR."
            )
            raise ValueError(
                f"bounds.max_lr_rule={max_lr_rule!r} has no suggestion: {reason}. {fix}"
            )
        lr = suggestion.lr
        if (
            isinstance(lr, bool)
            or not isinstance(lr, (int, float))
            or not math.isfinite(lr)
            or lr <= 0
        ):
            raise ValueError(
                f"the {max_lr_rule!r} suggestion is not a positive finite LR ({lr!r}); "
                "set bounds.max_lr explicitly or choose another bounds.max_lr_rule."
            )
        lr = float(lr)
        rule = f"max_lr = {max_lr_rule} suggestion"
    return Bounds(max_lr=lr, base_lr=lr / divisor, rule=f"{rule}; base_lr = max_lr / {divisor:g}")


def optimizer_steps_per_epoch(num_batches: int, accumulation_steps: int = 1) -> int:
    """Optimizer steps in one epoch: ``ceil(num_batches / accumulation_steps)``.

    A last partial accumulation at the epoch end still steps (as :func:`lrtrack.engine.train.train`
    does), hence the ceiling. Pass the result as ``steps_per_epoch`` to a factory.
    """
    _check_int("num_batches", num_batches, minimum=1)
    _check_int("accumulation_steps", accumulation_steps, minimum=1)
    return -(-num_batches // accumulation_steps)


# --------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------


class BatchSchedule:
    """A torch LR scheduler stepped once per optimizer step, with the traps handled.

    Call :meth:`step` after every ``optimizer.step()``. ``steps_done`` counts those calls;
    ``total_steps`` is the planned number of optimizer steps (``steps_per_epoch * epochs``).

    Past the end: schedules built with ``hold_after`` (``onecycle``, ``cosine``) stop stepping
    the torch scheduler once it reaches its last planned LR and keep that LR for any further
    steps; when more optimizer steps than ``total_steps`` are taken, one warning is logged.
    Cyclical schedules, SGDR and step decay simply continue their pattern.

    Args:
        name: the schedule's name (one of :data:`SCHEDULES`).
        optimizer: the optimizer whose LRs are scheduled.
        scheduler: the torch scheduler, or ``None`` for a constant LR.
        steps_per_epoch: optimizer steps per epoch.
        total_steps: planned optimizer steps for the whole run.
        hold_after: the last scheduler index (its ``last_epoch``) to step to; ``None`` steps
            without end.
    """

    def __init__(
        self,
        name: str,
        optimizer: Optimizer,
        scheduler: torch_sched.LRScheduler | None,
        *,
        steps_per_epoch: int,
        total_steps: int,
        hold_after: int | None = None,
    ) -> None:
        self.name = name
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.hold_after = hold_after
        self.steps_done = 0
        self._warned = False

    def step(self) -> None:
        """Advance by one optimizer step (call after ``optimizer.step()``)."""
        self.steps_done += 1
        if self.steps_done > self.total_steps and not self._warned and self.hold_after is not None:
            self._warned = True
            logger.warning(
                "%s schedule stepped past its planned total_steps=%d (optimizer step %d): "
                "holding the final LR %.4g. The plan usually counts batches instead of optimizer "
                "steps (gradient accumulation: pass steps_per_epoch=ceil(batches / "
                "accumulation_steps)) or a resumed run trains longer than planned.",
                self.name,
                self.total_steps,
                self.steps_done,
                self.get_last_lr()[0],
            )
        if self.scheduler is None:
            return
        if self.hold_after is not None and self.scheduler.last_epoch >= self.hold_after:
            return  # hold: the next index is past the schedule's end
        self.scheduler.step()

    def get_last_lr(self) -> list[float]:
        """The LR of every parameter group for the next optimizer step."""
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """The wrapper's and the torch scheduler's state (tensors and primitives only)."""
        return {
            "name": self.name,
            "steps_done": self.steps_done,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "warned": self._warned,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`.

        To resume: build the schedule with its factory first (construction writes the
        optimizer's LRs), then load the optimizer's state, then this.
        """
        if state_dict.get("name") != self.name:
            raise ValueError(
                f"cannot load a {state_dict.get('name')!r} schedule state into a {self.name!r} "
                "schedule; build the schedule that wrote the checkpoint (same schedule=...)."
            )
        self.steps_done = int(state_dict["steps_done"])
        self._warned = bool(state_dict.get("warned", False))
        inner = state_dict.get("scheduler")
        if self.scheduler is not None and inner is not None:
            self.scheduler.load_state_dict(dict(inner))

    def __repr__(self) -> str:
        return (
            f"BatchSchedule(name={self.name!r}, steps_done={self.steps_done}, "
            f"total_steps={self.total_steps}, lr={self.get_last_lr()})"
        )


# --------------------------------------------------------------------------------------------
# Shared checks and helpers
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def _check_common(
    name: str, optimizer: Any, max_lr: Any, base_lr: Any, steps_per_epoch: Any, epochs: Any
) -> tuple[float, float, int, int]:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"schedule {name!r} needs a torch.optim.Optimizer, got {type(optimizer).__name__}."
        )
    max_lr = _check_positive("max_lr", max_lr)
    base_lr = _check_positive("base_lr", base_lr)
    if base_lr > max_lr:
        raise ValueError(
            f"base_lr must not exceed max_lr, got base_lr={base_lr!r} > max_lr={max_lr!r}. "
            "Use bounds.base_divisor >= 1."
        )
    steps_per_epoch = _check_int("steps_per_epoch", steps_per_epoch, minimum=1)
    epochs = _check_int("epochs", epochs, minimum=1)
    return max_lr, base_lr, steps_per_epoch, epochs


def _group_ratios(optimizer: Optimizer) -> list[float]:
    """Each group's LR relative to group 0's, as the optimizer was configured."""
    lrs = [float(group["lr"]) for group in optimizer.param_groups]
    if lrs[0] <= 0 or not math.isfinite(lrs[0]):
        raise ValueError(
            f"parameter group 0 has lr={lrs[0]!r}; the schedule keeps the groups' LR ratios "
            "relative to group 0, so it needs a positive LR there. Give the optimizer a "
            "positive lr."
        )
    return [lr / lrs[0] for lr in lrs]


def _set_start_lr(optimizer: Optimizer, lrs: list[float]) -> None:
    # initial_lr is what torch schedulers read as the base; an optimizer that already went
    # through a scheduler (e.g. the range test) keeps its old one unless it is overwritten.
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
        group["initial_lr"] = lr


def _iterations(name: str, epochs_value: Any, steps_per_epoch: int) -> int:
    """Epochs (int or float) to optimizer steps, at least one."""
    if isinstance(epochs_value, bool) or not isinstance(epochs_value, (int, float)):
        raise TypeError(f"{name} must be a positive number of epochs, got {epochs_value!r}.")
    if not math.isfinite(epochs_value) or epochs_value <= 0:
        raise ValueError(f"{name} must be a positive number of epochs, got {epochs_value!r}.")
    return max(1, round(epochs_value * steps_per_epoch))


def _check_momentum(
    name: str, optimizer: Optimizer, cycle_momentum: bool, base_momentum: float, max_momentum: float
) -> None:
    if not isinstance(cycle_momentum, bool):
        raise TypeError(f"cycle_momentum must be true or false, got {cycle_momentum!r}.")
    if not cycle_momentum:
        return
    for label, value in (("base_momentum", base_momentum), ("max_momentum", max_momentum)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{label} must be a number in [0, 1), got {value!r}.")
    if base_momentum > max_momentum:
        raise ValueError(
            f"base_momentum must not exceed max_momentum, got {base_momentum!r} > "
            f"{max_momentum!r} (momentum is high when the LR is low)."
        )
    fix = (
        "Set schedule.cycle_momentum=false to leave momentum as the optimizer has "
        "it, or use an optimizer with momentum (SGD with momentum > 0, or an Adam-family "
        "optimizer whose beta1 is cycled)."
    )
    kind = type(optimizer).__name__
    if "betas" in optimizer.defaults:
        return
    if "momentum" not in optimizer.defaults:
        raise ValueError(
            f"schedule {name!r} has cycle_momentum=true, but {kind} has neither momentum nor "
            f"betas to cycle. {fix}"
        )
    for i, group in enumerate(optimizer.param_groups):
        if not group.get("momentum"):
            # torch would set momentum to max_momentum here, silently turning plain SGD into
            # momentum SGD: refuse instead of changing the optimizer behind the user's back.
            raise ValueError(
                f"schedule {name!r} has cycle_momentum=true, but {kind} has momentum="
                f"{group.get('momentum')!r} in parameter group {i} (no momentum), and cycling "
                f"would switch it on. {fix}"
            )


# --------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------


_WARNED: set[tuple[str, float, int]] = set()  # (the dry run builds the schedule too)


def _cyclic(
    mode: str,
    optimizer: Optimizer,
    *,
    max_lr: float,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    step_size_epochs: float,
    gamma: float,
    cycle_momentum: bool,
    base_momentum: float,
    max_momentum: float,
) -> BatchSchedule:
    max_lr, base_lr, steps_per_epoch, epochs = _check_common(
        mode, optimizer, max_lr, base_lr, steps_per_epoch, epochs
    )
    step_size_up = _iterations("step_size_epochs", step_size_epochs, steps_per_epoch)
    if step_size_up > steps_per_epoch * epochs and (mode, step_size_epochs, epochs) not in _WARNED:
        _WARNED.add((mode, step_size_epochs, epochs))  # valid, but likely not meant: said (once), not refused
        logger.warning("%s: step_size_epochs=%s is longer than the run (%d epochs): the LR rises for the whole run "
                       "and never reaches max_lr; a cycle takes 2 x step_size_epochs", mode, step_size_epochs, epochs)
    _check_momentum(mode, optimizer, cycle_momentum, base_momentum, max_momentum)
    ratios = _group_ratios(optimizer)
    _set_start_lr(optimizer, [base_lr * r for r in ratios])
    scheduler = torch_sched.CyclicLR(
        optimizer,
        base_lr=[base_lr * r for r in ratios],
        max_lr=[max_lr * r for r in ratios],
        step_size_up=step_size_up,
        mode=mode,
        gamma=gamma,
        cycle_momentum=cycle_momentum,
        base_momentum=base_momentum,
        max_momentum=max_momentum,
    )
    return BatchSchedule(
        mode,
        optimizer,
        scheduler,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * epochs,
    )


def triangular(
    optimizer: Optimizer,
    *,
    max_lr: float,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    step_size_epochs: float = 2.0,
    cycle_momentum: bool = True,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> BatchSchedule:
    """Smith's triangular cycle between ``base_lr`` and ``max_lr`` (``CyclicLR``).

    Args:
        step_size_epochs: half a cycle, in epochs (floats allowed; at least one step).
            Smith suggests 2-10 epochs.
        cycle_momentum: cycle momentum (SGD) or beta1 (Adam family) inversely to the LR,
            between ``base_momentum`` and ``max_momentum``; ``False`` leaves it as it is.
    """
    return _cyclic(
        "triangular",
        optimizer,
        max_lr=max_lr,
        base_lr=base_lr,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        step_size_epochs=step_size_epochs,
        gamma=1.0,
        cycle_momentum=cycle_momentum,
        base_momentum=base_momentum,
        max_momentum=max_momentum,
    )


def triangular2(
    optimizer: Optimizer,
    *,
    max_lr: float,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    step_size_epochs: float = 2.0,
    cycle_momentum: bool = True,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> BatchSchedule:
    """Triangular cycles whose amplitude halves every cycle (``CyclicLR`` mode triangular2).

    Settings as in :func:`triangular`.
    """
    return _cyclic(
        "triangular2",
        optimizer,
        max_lr=max_lr,
        base_lr=base_lr,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        step_size_epochs=step_size_epochs,
        gamma=1.0,
        cycle_momentum=cycle_momentum,
        base_momentum=base_momentum,
        max_momentum=max_momentum,
    )


def exp_range(
    optimizer: Optimizer,
    *,
    max_lr: float,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    gamma: float = 0.99994,
    step_size_epochs: float = 2.0,
    cycle_momentum: bool = True,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> BatchSchedule:
    """Triangular cycles whose amplitude decays by ``gamma ** iteration`` (``CyclicLR``).

    Args:
        gamma: per-iteration decay of the amplitude, in (0, 1]; torch's example uses 0.99994.
        Other settings as in :func:`triangular`.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
        raise ValueError(
            f"exp_range gamma must be in (0, 1] (the amplitude decays by gamma**iteration), "
            f"got {gamma!r}. Try schedule.gamma=0.99994."
        )
    return _cyclic(
        "exp_range",
        optimizer,
        max_lr=max_lr,
        base_lr=base_lr,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        step_size_epochs=step_size_epochs,
        gamma=float(gamma),
        cycle_momentum=cycle_momentum,
        base_momentum=base_momentum,
        max_momentum=max_momentum,
    )


def onecycle(
    optimizer: Optimizer,
    *,
    max_lr: float,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    cycle_momentum: bool = True,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    div_factor: float | None = None,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> BatchSchedule:
    """Smith's 1cycle policy (``OneCycleLR``) over ``steps_per_epoch * epochs`` optimizer steps.

    The LR rises from ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of the
    run, then anneals to ``max_lr / div_factor / final_div_factor``. With ``div_factor=None``
    it is ``max_lr / base_lr``, so the run starts at ``base_lr``.

    Past ``total_steps`` the final LR is held (one warning logged) instead of torch's
    ``ValueError``; pass ``steps_per_epoch`` in optimizer steps (divided by the gradient
    accumulation, see :func:`optimizer_steps_per_epoch`) so that does not happen.

    Args:
        pct_start: fraction of the run spent rising, in (0, 1).
        anneal_strategy: ``"cos"`` or ``"linear"``.
        cycle_momentum: cycle momentum/beta1 inversely to the LR; ``False`` leaves it.
        div_factor: start LR = ``max_lr / div_factor``; ``None`` derives it from ``base_lr``.
        final_div_factor: end LR = start LR / ``final_div_factor``.
        three_phase: torch's three-phase variant (rise, symmetric fall, final annihilation).
    """
    max_lr, base_lr, steps_per_epoch, epochs = _check_common(
        "onecycle", optimizer, max_lr, base_lr, steps_per_epoch, epochs
    )
    if (
        isinstance(pct_start, bool)
        or not isinstance(pct_start, (int, float))
        or not 0 < pct_start < 1
    ):
        raise ValueError(f"onecycle pct_start must be in (0, 1), got {pct_start!r}; e.g. 0.3.")
    if three_phase and pct_start >= 0.5:  # the symmetric fall would end after the run's end: phases out of order
        raise ValueError(f"onecycle pct_start must be below 0.5 with three_phase=true (the rise and the equal fall "
                         f"take 2 x pct_start of the run), got {pct_start!r}; e.g. 0.3.")
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(
            f"onecycle anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}."
        )
    if div_factor is None:
        div_factor = max_lr / base_lr
    div_factor = _check_positive("onecycle div_factor", div_factor, " Use null to derive it.")
    final_div_factor = _check_positive("onecycle final_div_factor", final_div_factor)
    # Below 1 the run would start above its peak (div_factor) or end above its start (final_div_factor).
    for label, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
        if value < 1:
            raise ValueError(f"onecycle {label} must be >= 1 (start LR = max_lr / div_factor, end LR = start LR / "
                             f"final_div_factor), got {value!r}; e.g. {'null' if label == 'div_factor' else '1e4'}.")
    _check_momentum("onecycle", optimizer, cycle_momentum, base_momentum, max_momentum)
    total_steps = steps_per_epoch * epochs
    ratios = _group_ratios(optimizer)
    scheduler = torch_sched.OneCycleLR(
        optimizer,
        max_lr=[max_lr * r for r in ratios],
        total_steps=total_steps,
        pct_start=float(pct_start),
        anneal_strategy=anneal_strategy,  # type: ignore[arg-type]
        cycle_momentum=cycle_momentum,
        base_momentum=base_momentum,
        max_momentum=max_momentum,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        three_phase=three_phase,
    )
    # Index total_steps - 1 is the final LR; torch allows one more index, which lies past the
    # cosine's end and bumps the LR back up, so the hold starts right after the last index.
    return BatchSchedule(
        "onecycle",
        optimizer,
        scheduler,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        hold_after=total_steps - 1,
    )


def cosine(
    optimizer: Optimizer,
    *,
    max_lr: float,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    eta_min: float = 0.0,
) -> BatchSchedule:
    """Cosine annealing from ``max_lr`` to ``eta_min`` over the whole run (``CosineAnnealingLR``).

    ``base_lr`` is not used. ``eta_min`` is one absolute LR shared by all parameter groups
    (torch's scheduler takes a single value), so with ``eta_min > 0`` the groups' LR ratios hold
    exactly only with ``eta_min = 0``. Past the run's end the LR stays at ``eta_min``.
    """
    max_lr, base_lr, steps_per_epoch, epochs = _check_common(
        "cosine", optimizer, max_lr, base_lr, steps_per_epoch, epochs
    )
    eta_min = _check_eta_min(eta_min, max_lr)
    ratios = _group_ratios(optimizer)
    _set_start_lr(optimizer, [max_lr * r for r in ratios])
    total_steps = steps_per_epoch * epochs
    scheduler = torch_sched.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=eta_min)
    return BatchSchedule(
        "cosine",
        optimizer,
        scheduler,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        hold_after=total_steps,
    )


def _check_eta_min(eta_min: Any, max_lr: float) -> float:
    if isinstance(eta_min, bool) or not isinstance(eta_min, (int, float)):
        raise TypeError(f"eta_min must be a number in [0, max_lr), got {eta_min!r}.")
    if not 0 <= eta_min < max_lr:
        raise ValueError(
            f"eta_min must be in [0, max_lr={max_lr:g}), got {eta_min!r}; it is the lowest LR "
            "the annealing reaches."
        )
    return float(eta_min)


def cosine_restarts(
    optimizer: Optimizer,
    *,
    max_lr: float,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    T_0: int = 1,  # noqa: N803 - torch's and the SGDR paper's name
    T_mult: int = 2,  # noqa: N803
    eta_min: float = 0.0,
) -> BatchSchedule:
    """SGDR: cosine annealing from ``max_lr`` with warm restarts (``CosineAnnealingWarmRestarts``).

    The first cycle lasts ``T_0`` epochs, each next one ``T_mult`` times longer
    (``T_0=1, T_mult=2`` restarts at epochs 1, 3, 7, 15, ...). Restarts fall exactly on epoch
    boundaries. ``base_lr`` is not used.

    The torch scheduler is given ``T_0 * steps_per_epoch`` iterations and stepped once per
    optimizer step: the same LRs as the documented ``step(epoch + i / steps_per_epoch)``, in
    integer arithmetic (torch's fractional path misplaces some restarts by float rounding).

    Args:
        T_0: epochs until the first restart, an integer >= 1.
        T_mult: growth factor of the cycle length, an integer >= 1.
        eta_min: the LR at the end of each cycle, shared by all groups.
    """
    max_lr, base_lr, steps_per_epoch, epochs = _check_common(
        "cosine_restarts", optimizer, max_lr, base_lr, steps_per_epoch, epochs
    )
    for label, value in (("T_0", T_0), ("T_mult", T_mult)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"cosine_restarts {label} must be an integer >= 1 (in epochs for T_0, a factor "
                f"for T_mult), got {value!r}. SGDR restarts on epoch boundaries; set "
                f"schedule.{label} to a whole number such as "
                f"{max(1, math.floor(value)) if isinstance(value, (int, float)) else 1}."
            )
    if T_0 > epochs:  # the first cycle outlasts the run: no restart, an unfinished cosine
        raise ValueError(f"cosine_restarts T_0={T_0} epochs is longer than the run ({epochs} epochs), so no restart "
                         f"happens; give a T_0 of at most {epochs}, or use schedule=cosine.")
    eta_min = _check_eta_min(eta_min, max_lr)
    ratios = _group_ratios(optimizer)
    _set_start_lr(optimizer, [max_lr * r for r in ratios])
    scheduler = torch_sched.CosineAnnealingWarmRestarts(
        optimizer, T_0=T_0 * steps_per_epoch, T_mult=T_mult, eta_min=eta_min
    )
    return BatchSchedule(
        "cosine_restarts",
        optimizer,
        scheduler,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * epochs,
    )


def step(
    optimizer: Optimizer,
    *,
    max_lr: float,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    step_size: float = 1,
    gamma: float = 0.1,
) -> BatchSchedule:
    """Step decay (``StepLR``): start at ``max_lr``, multiply by ``gamma`` every ``step_size`` epochs.

    ``step_size`` is in epochs (floats allowed; converted to optimizer steps, at least one).
    ``base_lr`` is not used.
    """
    max_lr, base_lr, steps_per_epoch, epochs = _check_common(
        "step", optimizer, max_lr, base_lr, steps_per_epoch, epochs
    )
    step_iterations = _iterations("step step_size", step_size, steps_per_epoch)
    if step_iterations > steps_per_epoch * epochs:  # StepLR would hold max_lr for the whole run
        raise ValueError(f"step step_size={step_size!r} epochs is longer than the run ({epochs} epochs), so "
                         f"the LR never decays; give a step_size of at most {epochs}, or use schedule=constant.")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
        raise ValueError(f"step gamma must be in (0, 1], got {gamma!r}; e.g. 0.1.")
    ratios = _group_ratios(optimizer)
    _set_start_lr(optimizer, [max_lr * r for r in ratios])
    scheduler = torch_sched.StepLR(optimizer, step_size=step_iterations, gamma=float(gamma))
    return BatchSchedule(
        "step",
        optimizer,
        scheduler,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * epochs,
    )


def constant(
    optimizer: Optimizer,
    *,
    max_lr: float,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
) -> BatchSchedule:
    """A fixed LR at ``max_lr`` (group ratios kept); no torch scheduler. ``base_lr`` is not used."""
    max_lr, base_lr, steps_per_epoch, epochs = _check_common(
        "constant", optimizer, max_lr, base_lr, steps_per_epoch, epochs
    )
    ratios = _group_ratios(optimizer)
    _set_start_lr(optimizer, [max_lr * r for r in ratios])
    return BatchSchedule(
        "constant",
        optimizer,
        None,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * epochs,
    )


FACTORIES: dict[str, Callable[..., BatchSchedule]] = {
    "triangular": triangular,
    "triangular2": triangular2,
    "exp_range": exp_range,
    "onecycle": onecycle,
    "cosine": cosine,
    "cosine_restarts": cosine_restarts,
    "step": step,
    "constant": constant,
}


def make_schedule(name: str, optimizer: Optimizer, **kwargs: Any) -> BatchSchedule:
    """Build a schedule by name (for library users who do not go through Hydra)."""
    factory = FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {name!r}.")
    return factory(optimizer, **kwargs)


def current_momentum(group: Mapping[str, Any]) -> float | None:
    """A parameter group's momentum: SGD-style ``momentum`` or Adam-style ``betas[0]``."""
    if "betas" in group:
        return float(group["betas"][0])
    if "momentum" in group:
        return float(group["momentum"])
    return None


__all__ = [
    "FACTORIES",
    "MAX_LR_RULES",
    "SCHEDULES",
    "BatchSchedule",
    "Bounds",
    "bounds_from_config",
    "bounds_from_suggestions",
    "constant",
    "cosine",
    "cosine_restarts",
    "current_momentum",
    "exp_range",
    "make_schedule",
    "onecycle",
    "optimizer_steps_per_epoch",
    "step",
    "triangular",
    "triangular2",
]
