"""The learning-rate range test engine (no Hydra, no MLflow).

Raise the learning rate every optimizer step along a fixed grid, record the loss, and stop
when the loss diverges. The model, optimizer and RNG state are restored afterwards, whatever
happens, so the test can be run right before real training.

After the sweep the engine locates the divergence edge (:func:`lrtrack.engine.suggest.find_edge`) and,
from the restored start state, runs a few short fixed-LR probes below it
(:mod:`lrtrack.engine.probes`): the confirmation stage behind the default ``confirmed`` suggestion.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from lrtrack.engine.confidence import HIGH, Verdict, curve_reasons, probe_reasons
from lrtrack.engine.distributed import mean_over_ranks
from lrtrack.engine.observers import NullObserver, StepObserver
from lrtrack.engine.probes import Probe, ProbeSearch
from lrtrack.engine.smoothing import EmaSmoother, check_smoothing
from lrtrack.engine.steps import (
    StepFn,
    autocast_factory,
    check_flags,
    check_model_and_optimizer,
    make_grad_scaler,
    mean_loss,
    move_to_device,
    resolve_device,
    supervised_step,
    train_step,
)
from lrtrack.engine.suggest import DEFAULT_RULE, Edge, Suggestion, find_edge, suggest_all

log = logging.getLogger(__name__)

#: Each probe's steps at most (``probe_steps=None``: ``min(PROBE_STEPS, max(4, 3 * num_iter // 10))``).
#: 30 since issue 19's second round: on the benchmark's calibration half (num_iter 100, the probes
#: within num_iter steps) 30-step probes kept 8 of 8 tasks within target (worst regret 0.68
#: tolerances), 25 and 20 steps 7 of 8 (1.39 and 2.16), 10 and 15 steps with half the budget 7 of 8
#: (5.84 and 2.58).
PROBE_STEPS = 30
#: The probes' step budget, as a share of ``num_iter`` (``probe_budget=None``).
PROBE_BUDGET = 1.0

STEP_MODES: tuple[str, ...] = ("exp", "linear")

STOP_COMPLETED = "completed"
STOP_DIVERGED = "diverged"
STOP_NON_FINITE = "non_finite_loss"
STOP_INTERRUPTED = "interrupted"


class Smoother(Protocol):
    """Turns the raw loss series into the smoothed one, one value at a time."""

    def update(self, value: float) -> float:
        """Add one raw loss and return the smoothed loss so far."""


# --------------------------------------------------------------------------- the LR grid


def lr_grid(
    start_lr: float,
    end_lr: float,
    num_iter: int,
    step_mode: str = "exp",
    *,
    exact_ends: bool = True,
) -> list[float]:
    """The LR used at each of ``num_iter`` steps; the first is ``start_lr``, the last ``end_lr``.

    ``exp`` spaces the LRs evenly in log space (``start * (end/start) ** (i / (n-1))``),
    ``linear`` evenly in LR. With ``exact_ends=False`` the last LR is left as the formula
    gives it (possibly one float rounding away from ``end_lr``), as torch-lr-finder does.
    """
    check_grid(start_lr, end_lr, num_iter, step_mode)
    last = num_iter - 1
    if step_mode == "exp":
        ratio = end_lr / start_lr
        grid = [start_lr * ratio ** (i / last) for i in range(num_iter)]
    else:
        grid = [start_lr + (end_lr - start_lr) * (i / last) for i in range(num_iter)]
    if exact_ends:
        grid[0], grid[-1] = start_lr, end_lr  # exact ends, whatever the float rounding
    return grid


def check_grid(start_lr: float, end_lr: float, num_iter: int, step_mode: str) -> None:
    """Validate the grid settings; every message names the setting, the value and the fix."""
    if step_mode not in STEP_MODES:
        raise ValueError(
            f"step_mode must be one of {', '.join(STEP_MODES)}; got {step_mode!r}"
        )
    if isinstance(num_iter, bool) or not isinstance(num_iter, int):
        raise TypeError(f"num_iter must be an integer >= 2; got {num_iter!r}")
    if num_iter < 2:
        raise ValueError(f"num_iter must be >= 2 (a curve needs two points); got {num_iter}")
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise TypeError(f"{name} must be a finite number; got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must not be negative; got {value!r}")
    if step_mode == "exp" and start_lr <= 0:
        raise ValueError(
            f"start_lr must be > 0 for step_mode='exp' (a log-spaced grid cannot start at 0); "
            f"got {start_lr!r}. Use a small positive start_lr such as 1e-7, or step_mode='linear'."
        )
    if start_lr >= end_lr:
        raise ValueError(
            f"start_lr must be smaller than end_lr; got start_lr={start_lr!r}, end_lr={end_lr!r}"
        )


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class RangeTestResult:
    """What a range test measured. Index ``i`` of every list is optimizer step ``i``.

    Attributes:
        lrs: LR of the first parameter group at each step (the LR the step used).
        group_lrs: LR of every parameter group at each step.
        losses: raw loss per step (the validation loss in validation mode).
        smoothed_losses: bias-corrected EMA of ``losses``.
        train_losses: training loss per step (equal to ``losses`` without validation).
        stop_reason: ``completed``, ``diverged``, ``non_finite_loss`` or ``interrupted``.
        stop_detail: a sentence saying why it stopped where it did.
        suggestions: every suggestion rule's answer (:data:`lrtrack.engine.suggest.RULES`, the default
            ``confirmed`` first); no curve rule past the divergence edge.
        num_iter, step_mode, start_lr, end_lr: the requested grid.
        edge: where the loss starts rising for good (:func:`lrtrack.engine.suggest.find_edge`).
        probes: the fixed-LR probes of the confirmation stage, in the order they ran.
        repeats: for a repeated test (:func:`lrtrack.engine.repeats.run_repeated_range_test`), each
            repeat's own result; this result is then their median (see :meth:`band`).
        confidence: the verdict on the default suggestion, ``high`` or ``low``
            (:mod:`lrtrack.engine.confidence`).
        confidence_reasons: why it is ``low`` (short phrases, each starting with one of
            :data:`lrtrack.engine.confidence.REASONS`); empty for ``high``.
        extra_steps: optimizer steps spent on top of the planned tests because the verdict was
            ``low`` (more range tests; 0 when none were needed).
        extra_actions: what that extra budget did, one sentence each.
    """

    lrs: list[float]
    group_lrs: list[list[float]]
    losses: list[float]
    smoothed_losses: list[float]
    train_losses: list[float]
    stop_reason: str
    stop_detail: str
    suggestions: dict[str, Suggestion]
    num_iter: int
    step_mode: str
    start_lr: float
    end_lr: float
    metadata: dict[str, Any] = field(default_factory=dict)
    edge: Edge = field(default_factory=lambda: Edge(None, None, "not located"))
    probes: tuple[Probe, ...] = ()
    repeats: tuple[RangeTestResult, ...] = ()
    confidence: str = HIGH
    confidence_reasons: list[str] = field(default_factory=list)
    extra_steps: int = 0
    extra_actions: list[str] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.lrs)

    @property
    def edge_lr(self) -> float | None:
        """The LR where the loss starts rising for good (None when the sweep did not reach it)."""
        return self.edge.lr

    @property
    def probe_steps(self) -> int:
        """Optimizer steps the confirmation probes took (on top of :attr:`steps`)."""
        return sum(p.steps for p in self.probes)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole test: every sweep (each repeat's) and every probe."""
        sweeps = sum(r.steps for r in self.repeats) if self.repeats else self.steps
        return sweeps + self.probe_steps

    @property
    def best_index(self) -> int | None:
        """Index of the lowest finite smoothed loss (None when there is none)."""
        finite = [(v, i) for i, v in enumerate(self.smoothed_losses) if math.isfinite(v)]
        return min(finite)[1] if finite else None

    @property
    def min_loss(self) -> float | None:
        i = self.best_index
        return None if i is None else self.smoothed_losses[i]

    @property
    def min_loss_lr(self) -> float | None:
        i = self.best_index
        return None if i is None else self.lrs[i]

    def suggested_lr(self, rule: str = DEFAULT_RULE) -> float | None:
        """The LR suggested by ``rule`` (None when that rule has no suggestion)."""
        if rule not in self.suggestions:
            raise ValueError(
                f"unknown suggestion rule {rule!r}; allowed: {', '.join(self.suggestions)}"
            )
        return self.suggestions[rule].lr

    def band(self) -> dict[str, list[float]]:
        """Per step, the spread of the repeats' smoothed losses: ``q25``, ``q75``, ``min``, ``max``
        (NaN where no repeat reached the step); empty for a single test."""
        if not self.repeats:
            return {}
        import numpy as np

        grid = np.full((len(self.repeats), self.steps), np.nan)
        for i, r in enumerate(self.repeats):
            row = np.asarray(r.smoothed_losses[: self.steps], dtype=float)
            grid[i, : row.size] = np.where(np.isfinite(row), row, np.nan)
        out: dict[str, list[float]] = {}
        for name, q in (("q25", 25), ("q75", 75), ("min", 0), ("max", 100)):
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a step no repeat reached
                out[name] = np.nanpercentile(grid, q, axis=0).tolist()
        return out

    def history_rows(self) -> list[dict[str, float]]:
        """One dict per step (step, lr, per-group LRs, losses; the repeats' band): the CSV history."""
        rows = []
        band = self.band()
        for i, lr in enumerate(self.lrs):
            row: dict[str, float] = {"step": i, "lr": lr}
            for g, glr in enumerate(self.group_lrs[i][1:], start=1):
                row[f"lr/group_{g}"] = glr
            row["loss"] = self.losses[i]
            row["loss_smoothed"] = self.smoothed_losses[i]
            if self.train_losses is not self.losses:
                row["train_loss"] = self.train_losses[i]
            for name, values in band.items():
                row[f"loss_smoothed_{name}"] = values[i]
            rows.append(row)
        return rows


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class RangeTestPolicy:
    """Engine behaviours other than lrtrack's: torch-lr-finder 0.2.2's, for :mod:`lrtrack.compat`.

    Library users leave ``run_range_test(policy=None)``; every field's default is lrtrack's
    behaviour.

    Attributes:
        smoother: an object with ``update(loss) -> smoothed`` used instead of the
            bias-corrected EMA of ``smoothing`` (which is then only validated).
        divergence_check: ``check(step, smoothed) -> reason or None`` used instead of the
            ``diverge_th`` rule (then not checked); a reason stops the test as ``diverged``.
        stop_on_non_finite: stop at the first NaN/inf loss (torch-lr-finder never does).
        exact_ends: pin each grid's last LR to ``end_lr`` exactly (see :func:`lr_grid`).
        validate_fn: ``validate_fn(model) -> loss`` called after every step instead of the
            built-in validation on ``val_loader``; its value is the recorded loss.
    """

    smoother: Smoother | None = None
    divergence_check: Callable[[int, float], str | None] | None = None
    stop_on_non_finite: bool = True
    exact_ends: bool = True
    validate_fn: Callable[[nn.Module], float | torch.Tensor] | None = None


# --------------------------------------------------------------------------- state restore


class StateSnapshot:
    """Model, optimizer and RNG state, taken on creation and put back by :meth:`restore`.

    Covers the model's parameters and buffers and its ``training`` flag, the optimizer's
    state dict (LRs, momentum buffers) and the torch, CUDA, Python and numpy RNGs.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self.model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.training = model.training
        self.torch_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.python_rng = random.getstate()
        self.numpy_rng = _numpy_rng_state()

    def restore(self) -> None:
        """Put everything back as it was when the snapshot was taken (may be called again)."""
        self.model.load_state_dict(self.model_state)
        self.optimizer.load_state_dict(self.optimizer_state)
        self.model.train(self.training)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        random.setstate(self.python_rng)
        if self.numpy_rng is not None:
            import numpy as np

            np.random.set_state(self.numpy_rng)


def _numpy_rng_state() -> Any:
    if "numpy" not in sys.modules:
        return None
    import numpy as np

    return np.random.get_state()


# --------------------------------------------------------------------------- set-up helpers


def _check_settings(
    criterion: Any, step_fn: Any, smoothing: Any, diverge_th: Any, accumulation_steps: Any,
    policy: RangeTestPolicy, model_and_optimizer: tuple[Any, Any] | None = None, **flags: Any,
) -> None:
    check_flags(**flags)
    if model_and_optimizer is not None:
        check_model_and_optimizer(*model_and_optimizer, criterion)
    if not isinstance(policy, RangeTestPolicy):
        raise TypeError(f"policy must be a RangeTestPolicy or None; got {type(policy).__name__}")
    if (criterion is None) == (step_fn is None):
        raise ValueError("give exactly one of criterion (for (inputs, targets) batches) or step_fn")
    check_smoothing(smoothing)
    if policy.divergence_check is None and (
        isinstance(diverge_th, bool) or not isinstance(diverge_th, (int, float)) or not diverge_th > 1
    ):  # (NaN is not > 1: a NaN threshold would never stop the test)
        raise ValueError(f"diverge_th must be a number > 1; got {diverge_th!r}")
    if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be an integer >= 1; got {accumulation_steps!r}")


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    """Iterate over ``loader`` forever, starting a new pass (a new shuffle) when it runs out."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training loader yielded no batches; check the data set and batch size")


def _per_group(value: float | Sequence[float], base_lrs: list[float], name: str) -> list[float]:
    """Expand a scalar LR to every group, keeping the groups' LR ratios; check a per-group list."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(base_lrs):
            raise ValueError(
                f"{name} has {len(value)} values but the optimizer has {len(base_lrs)} parameter "
                f"groups; give one value per group or a single number"
            )
        return [float(v) for v in value]
    if len(base_lrs) == 1:
        return [float(value)]
    if base_lrs[0] <= 0:
        raise ValueError(
            "the first parameter group's LR is 0, so the ratios between groups are undefined; "
            f"give {name} as a list with one LR per group"
        )
    return [float(value) * lr / base_lrs[0] for lr in base_lrs]


def _fixed_batches(
    loader: Iterable[Any], max_batches: int, device: torch.device, non_blocking: bool
) -> list[Any]:
    """The first ``max_batches`` batches of ``loader``, read once and kept on ``device``."""
    if max_batches < 1:
        raise ValueError(f"val_batches must be >= 1 or None (all); got {max_batches}")
    batches: list[Any] = []
    for batch in loader:
        batches.append(move_to_device(batch, device, non_blocking))
        if len(batches) >= max_batches:
            break
    if not batches:
        raise ValueError("the validation loader yielded no batches")
    return batches


def _progress_bar(total: int, enabled: bool, desc: str = "range test") -> Any:
    """A tqdm bar on a terminal, else a log line every 10% or 30 s (:mod:`lrtrack.engine.progress`)."""
    from lrtrack.engine.progress import progress_bar

    return progress_bar(total, desc, enabled, leave=False)


# --------------------------------------------------------------------------- the engine


class _RangeTest:
    """One range test: its set-up, one optimizer step per grid LR, the curve, the stop rule."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        step_fn: StepFn,
        grids: list[list[float]],
        *,
        device: torch.device,
        amp: bool,
        grad_scaler: torch.amp.GradScaler | None,
        accumulation_steps: int,
        non_blocking: bool,
        policy: RangeTestPolicy,
        diverge_th: float,
        smoother: Smoother,
        observer: StepObserver,
    ) -> None:
        self.model, self.optimizer, self.step_fn, self.grids = model, optimizer, step_fn, grids
        self.device, self.amp, self.non_blocking = device, amp, non_blocking
        self.autocast = autocast_factory(device, amp)
        # a scaler given explicitly is always used (any device)
        self.scaler = grad_scaler if grad_scaler is not None else make_grad_scaler(device, amp)
        self.accumulation_steps = accumulation_steps
        self.policy, self.diverge_th = policy, diverge_th
        self.smoother, self.observer = smoother, observer
        self.validate: Callable[[nn.Module], float | torch.Tensor] | None = None
        self.lrs: list[float] = []
        self.group_lrs: list[list[float]] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.train_losses: list[float] = []
        self.best = math.inf
        self.stop_reason = STOP_COMPLETED
        self.stop_detail = f"reached end_lr after {len(grids[0])} steps"

    def set_validation(self, val_loader: Iterable[Any] | None, val_batches: int | None) -> None:
        """Validate with ``policy.validate_fn``, else on ``val_batches`` fixed batches."""
        if self.policy.validate_fn is not None:
            self.validate = self.policy.validate_fn
            return
        if val_loader is None:
            return
        batches = val_loader
        if val_batches is not None:
            batches = _fixed_batches(val_loader, val_batches, self.device, self.non_blocking)
        self.validate = lambda model: mean_loss(
            model, batches, self.step_fn, device=self.device, autocast=self.autocast,
            non_blocking=self.non_blocking,
        )

    def run(self, batches: Iterator[Any], progress: bool) -> None:
        """Step through the grid until it ends, the stop rule fires or Ctrl-C."""
        num_iter = len(self.grids[0])
        self.progress = progress  # the confirmation probes show theirs too
        bar = _progress_bar(num_iter, progress)
        self.model.train()
        _optimizer_train_mode(self.optimizer)
        try:
            for i in range(num_iter):
                step_lrs, value, train_value = self.step(i, batches.__next__)
                smoothed = self.record(i, step_lrs, value, train_value)
                bar.update(1)
                bar.set_postfix(lr=f"{step_lrs[0]:.2e}", smoothed_loss=f"{smoothed:.4f}", refresh=False)
                stop = self.stop_rule(i, step_lrs[0], value, smoothed)
                if stop is not None:
                    self.stop_reason, self.stop_detail = stop
                    break
        except KeyboardInterrupt:
            self.stop_reason = STOP_INTERRUPTED
            self.stop_detail = f"interrupted after {len(self.lrs)} steps"
            log.warning("range test interrupted after %d steps; returning the partial curve", len(self.lrs))
        finally:
            bar.close()

    def step(self, i: int, next_batch: Callable[[], Any]) -> tuple[list[float], float, float]:
        """Set the step's LRs, take one optimizer step; return the LRs and the measured losses."""
        step_lrs = [grid[i] for grid in self.grids]
        for group, lr in zip(self.optimizer.param_groups, step_lrs):
            group["lr"] = lr
        train_loss = train_step(
            self.model, self.optimizer, next_batch, self.step_fn, device=self.device,
            accumulation_steps=self.accumulation_steps, autocast=self.autocast,
            scaler=self.scaler, non_blocking=self.non_blocking,
        )
        # One host sync per step: the stopping rule needs the value now. In a torchrun job the
        # loss is the mean over the ranks, so every rank records the same curve and stops alike.
        train_loss = mean_over_ranks(train_loss)
        if self.validate is None:
            value = train_value = train_loss.item()
            return step_lrs, value, train_value
        recorded = self.validate(self.model)
        if not isinstance(recorded, torch.Tensor):
            return step_lrs, float(recorded), train_loss.item()
        value, train_value = torch.stack((recorded, train_loss.to(recorded.device, recorded.dtype))).tolist()
        return step_lrs, value, train_value

    def record(self, i: int, step_lrs: list[float], value: float, train_value: float) -> float:
        """Append one step to the curve and tell the observer; return the smoothed loss."""
        smoothed = self.smoother.update(value)
        self.lrs.append(step_lrs[0])
        self.group_lrs.append(step_lrs)
        self.losses.append(value)
        self.smoothed.append(smoothed)
        self.train_losses.append(train_value)
        metrics = {"lr": step_lrs[0]}
        for g, lr in enumerate(step_lrs[1:], start=1):
            metrics[f"lr/group_{g}"] = lr
        metrics["loss"] = value
        metrics["loss_smoothed"] = smoothed
        if self.validate is not None:
            metrics["train_loss"] = train_value
        self.observer.on_step(i, metrics)
        return smoothed

    def stop_rule(self, i: int, lr: float, value: float, smoothed: float) -> tuple[str, str] | None:
        """``(stop_reason, detail)`` when the test must stop after step ``i``, else None."""
        if self.policy.stop_on_non_finite and not math.isfinite(value):
            return STOP_NON_FINITE, f"loss was {value} at step {i} (lr={lr:.3g})"
        self.best = min(self.best, smoothed)
        if self.policy.divergence_check is not None:
            reason = self.policy.divergence_check(i, smoothed)
            return (STOP_DIVERGED, reason) if reason else None
        if smoothed - self.best > (self.diverge_th - 1) * abs(self.best):
            return STOP_DIVERGED, (
                f"smoothed loss {smoothed:.4g} exceeded diverge_th={self.diverge_th:g} x "
                f"best {self.best:.4g} at step {i} (lr={lr:.3g})"
            )
        return None

    def edge(self) -> Edge:
        """The divergence edge of the curve recorded so far."""
        return find_edge(self.lrs, self.smoothed, raw_losses=self.losses)

    def probe(self, lr: float, batches: Sequence[Any], steps: int) -> Probe:
        """``steps`` optimizer steps at the fixed LR ``lr`` (group ratios kept) on ``batches``.

        Stops early when the loss is not finite, or stays above the divergence threshold for
        three steps in a row (Adam's first steps at a large LR often spike and recover).
        """
        ratios = [grid[0] / self.grids[0][0] for grid in self.grids]
        for group, ratio in zip(self.optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        self.model.train()
        _optimizer_train_mode(self.optimizer)
        source = iter(batches)
        losses: list[float] = []
        over = 0
        for _ in range(steps):
            value = mean_over_ranks(train_step(
                self.model, self.optimizer, source.__next__, self.step_fn, device=self.device,
                accumulation_steps=self.accumulation_steps, autocast=self.autocast,
                scaler=self.scaler, non_blocking=self.non_blocking,
            )).item()
            losses.append(value)
            over = over + 1 if value - losses[0] > (self.diverge_th - 1) * abs(losses[0]) else 0
            if not math.isfinite(value) or over >= 3:
                break
        return Probe(lr, tuple(losses), steps)

    def result(self, step_mode: str, start_lr: float, end_lr: float,
               probes: Sequence[Probe] = (), probe_notes: Sequence[str] | None = None) -> RangeTestResult:
        """The result; ``probe_notes``: the probes' confidence reasons (None: no probes were run)."""
        if self.stop_reason != STOP_COMPLETED:
            log.info("range test stopped: %s", self.stop_detail)
        edge = self.edge()
        verdict = Verdict.of([*curve_reasons(self.lrs, self.losses), *(probe_notes or ())])
        return RangeTestResult(
            lrs=self.lrs,
            group_lrs=self.group_lrs,
            losses=self.losses,
            smoothed_losses=self.smoothed,
            train_losses=self.train_losses if self.validate is not None else self.losses,
            stop_reason=self.stop_reason,
            stop_detail=self.stop_detail,
            suggestions=suggest_all(self.lrs, self.smoothed, raw_losses=self.losses, probes=probes),
            num_iter=len(self.grids[0]),
            step_mode=step_mode,
            start_lr=start_lr,
            end_lr=end_lr,
            metadata={"device": str(self.device), "amp": self.amp, "groups": len(self.grids)},
            edge=edge,
            probes=tuple(probes),
            confidence=verdict.level,
            confidence_reasons=list(verdict.reasons),
        )


def run_range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Iterable[Any],
    *,
    criterion: Callable[..., torch.Tensor] | None = None,
    step_fn: StepFn | None = None,
    val_loader: Iterable[Any] | None = None,
    val_batches: int | None = 5,
    start_lr: float | Sequence[float] | None = None,
    end_lr: float | Sequence[float] = 10.0,
    num_iter: int = 100,
    step_mode: str = "exp",
    smoothing: float = 0.95,
    diverge_th: float = 5.0,
    accumulation_steps: int = 1,
    amp: bool = False,
    grad_scaler: torch.amp.GradScaler | None = None,
    device: str | torch.device | None = None,
    non_blocking: bool = True,
    observer: StepObserver | None = None,
    progress: bool = True,
    restore: bool = True,
    probe_steps: int | None = None,
    probe_budget: float | None = None,
    policy: RangeTestPolicy | None = None,
) -> RangeTestResult:
    """Run the learning-rate range test and return what it measured.

    Each optimizer step uses the next LR of the grid (see :func:`lr_grid`), after
    ``accumulation_steps`` forward/backward passes. Every parameter group moves by the same
    factor, so the ratios between groups are kept (or give ``start_lr``/``end_lr`` per group).

    Stopping: the test stops when the smoothed loss rises more than ``diverge_th - 1`` times
    the magnitude of the best smoothed loss above it, i.e. ``smoothed > diverge_th * best``
    for positive losses. Measuring the rise against ``|best|`` keeps the rule meaningful for
    losses that can be negative (a negative best is never "exceeded" by a constant factor);
    when the best loss is exactly 0 any rise above it stops the test. A NaN or infinite loss
    stops the test at once; the step is recorded and ``stop_reason`` says so.

    In a torchrun job (a process group initialised, see :mod:`lrtrack.engine.distributed`; the model in
    ``DistributedDataParallel``, each rank on its shard, e.g. :func:`lrtrack.data.shard`) every
    rank calls this; the recorded loss (training, validation and the probes') is the mean over
    the ranks at every step, so every rank gets the same curve, stop, probes and suggestions.

    Args:
        model: the model; put on ``device`` (CUDA when present, by default).
        optimizer: an optimizer over the model's parameters; its LRs are the default start.
        train_loader: any iterable of batches; restarted when exhausted.
        criterion: ``criterion(model(inputs), targets)`` for ``(inputs, targets)`` batches.
        step_fn: ``step_fn(model, batch) -> loss`` for any other batch format.
        val_loader: when given, the recorded loss is the validation loss on a fixed set of
            ``val_batches`` batches (all batches, re-read every step, when None).
        start_lr: first LR (default: the optimizer's LR); a list gives one per group.
        end_lr: last LR; a list gives one per group.
        num_iter: number of optimizer steps (the grid's length).
        step_mode: ``exp`` or ``linear`` spacing. smoothing: EMA decay in [0, 1) (bias-corrected).
        diverge_th: divergence threshold (> 1).
        accumulation_steps: batches per optimizer step.
        amp: mixed precision through ``torch.amp`` (float16 + GradScaler on CUDA, bfloat16 on CPU).
        grad_scaler: a GradScaler to use with ``amp`` on CUDA (one is made when omitted).
        device: where to run; None picks CUDA when present.
        non_blocking: non-blocking host-to-device copies.
        observer: receives ``on_step(step, metrics)`` every step.
        progress: show a tqdm bar on a terminal, else a log line every 10% or 30 s.
        restore: put the model, optimizer and RNG state back afterwards (:class:`StateSnapshot`).
        probe_steps: steps of each fixed-LR probe of the confirmation stage (the ``confirmed``
            suggestion); None: ``min(PROBE_STEPS, max(4, 3 * num_iter // 10))``; 0: no probes. The
            probes start from the restored state (so they need ``restore=True``), run on the same
            batches, and take at most ``probe_budget * num_iter`` steps in all (``result.probe_steps``).
        probe_budget: the probes' step budget as a share of ``num_iter``; None: :data:`PROBE_BUDGET`.
        policy: torch-lr-finder 0.2.2's behaviour for lrtrack.compat; leave None.

    Returns:
        A :class:`RangeTestResult`; ``stop_reason`` is ``interrupted`` after Ctrl-C (or SIGTERM, in
        the sweep or the probes: the caller decides whether to stop, as the recipe does). Its
        ``suggestions`` hold every rule (the default ``confirmed`` included) and ``edge`` the
        divergence edge.
    """
    policy = policy if policy is not None else RangeTestPolicy()
    _check_settings(criterion, step_fn, smoothing, diverge_th, accumulation_steps, policy, (model, optimizer),
                    amp=amp, non_blocking=non_blocking, progress=progress, restore=restore)
    steps = _probe_steps(probe_steps, num_iter)
    base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
    starts = base_lrs if start_lr is None else _per_group(start_lr, base_lrs, "start_lr")
    ends = _per_group(end_lr, base_lrs, "end_lr")
    grids = [lr_grid(s, e, num_iter, step_mode, exact_ends=policy.exact_ends) for s, e in zip(starts, ends)]
    device = resolve_device(device, model)
    model.to(device)
    test = _RangeTest(
        model, optimizer, step_fn if step_fn is not None else supervised_step(criterion), grids,
        device=device, amp=bool(amp) and device.type in ("cuda", "cpu"), grad_scaler=grad_scaler,
        accumulation_steps=accumulation_steps, non_blocking=non_blocking, policy=policy, diverge_th=diverge_th,
        smoother=policy.smoother if policy.smoother is not None else EmaSmoother(smoothing),
        observer=observer if observer is not None else NullObserver(),
    )
    with _first_step_diagnosed(test, train_loader, criterion, step_fn):
        probes, notes = _execute(test, StateSnapshot(model, optimizer) if restore else None, train_loader,
                                 val_loader, val_batches, progress, steps, _probe_budget(probe_budget, steps, num_iter))
    return test.result(step_mode, starts[0], ends[0], probes, notes)


@contextlib.contextmanager
def _first_step_diagnosed(test: _RangeTest, train_loader: Iterable[Any], criterion: Any,
                          step_fn: Any) -> Iterator[None]:
    """An error of the very first step (most often a model, a loss and batches that do not fit) gains the
    first-batch check's line (:func:`lrtrack.engine.tasks.first_batch_problem`), as the CLI says it, as a
    note; its traceback is kept. A loader that is its own iterator is not read again."""
    from lrtrack.engine.tasks import first_batch_problem

    try:
        yield
    except Exception as err:
        if not test.lrs and iter(train_loader) is not train_loader:
            _note_first_batch(err, test.model, train_loader, criterion, step_fn, test.device, first_batch_problem)
        raise


def _note_first_batch(err: BaseException, model: nn.Module, train_loader: Iterable[Any], criterion: Any,
                      step_fn: Any, device: torch.device, first_batch_problem: Any) -> None:
    try:
        batch = move_to_device(next(iter(train_loader)), device, False)
        problem = first_batch_problem(model, batch, criterion=criterion, step=step_fn)
    except Exception:  # the check itself cannot run: the traceback says what it can
        return
    if problem is not None:
        err.add_note(f"lrtrack: the range test's first step failed: {problem}")


def _execute(test: _RangeTest, snapshot: StateSnapshot | None, train_loader: Iterable[Any],
             val_loader: Iterable[Any] | None, val_batches: int | None, progress: bool,
             probe_steps: int, budget: int) -> tuple[list[Probe], list[str] | None]:
    """The sweep, then the confirmation probes (with a snapshot); the state restored whatever happens.

    Returns the probes and their confidence reasons (None when no probes were run)."""
    probes: tuple[list[Probe], list[str] | None] = ([], None)
    try:
        test.set_validation(val_loader, val_batches)
        batches = _cycle(train_loader)
        test.run(batches, progress)
        if snapshot is not None and probe_steps and test.stop_reason != STOP_INTERRUPTED:
            probes = _confirm(test, snapshot, batches, probe_steps, budget=budget)
    finally:
        if snapshot is not None:
            snapshot.restore()
    return probes


def check_range_test_settings(*, num_iter: int = 100, smoothing: float = 0.95, diverge_th: float = 5.0,
                              probe_steps: int | None = None, probe_budget: float | None = None) -> None:
    """What :func:`run_range_test` checks of these settings, without running it (an integration checks a
    user's settings on entry, before the framework's fit starts); ValueError/TypeError naming the setting."""
    _check_settings(None, _no_step, smoothing, diverge_th, 1, RangeTestPolicy())
    steps = _probe_steps(probe_steps, num_iter)
    _probe_budget(probe_budget, steps, num_iter)


def _no_step(model: nn.Module, batch: Any) -> torch.Tensor:  # (stands in for a step in the checks above)
    raise NotImplementedError


def _probe_budget(probe_budget: float | None, steps: int, num_iter: int) -> int:
    """The probes' steps in all: ``probe_budget`` (a share of ``num_iter``; None: :data:`PROBE_BUDGET`)."""
    if probe_budget is not None and (isinstance(probe_budget, bool) or not isinstance(probe_budget, (int, float))):
        raise TypeError(f"probe_budget must be a share of num_iter > 0 or None (auto); got {probe_budget!r}")
    share = PROBE_BUDGET if probe_budget is None else float(probe_budget)
    if not (math.isfinite(share) and share > 0):
        raise ValueError(f"probe_budget must be a share of num_iter > 0 or None (auto); got {probe_budget!r}")
    return max(steps, round(share * num_iter))


def _probe_steps(probe_steps: int | None, num_iter: int) -> int:
    if probe_steps is None:
        return min(PROBE_STEPS, max(4, 3 * num_iter // 10))
    if isinstance(probe_steps, bool) or not isinstance(probe_steps, int) or probe_steps < 0:
        raise ValueError(f"probe_steps must be an integer >= 0 (0: no probes) or None (auto); got {probe_steps!r}")
    return probe_steps


MIN_PROBE_SWEEP = 5  # the fewest sweep points probes are placed from (find_edge's minimum)


def _confirm(test: _RangeTest, snapshot: StateSnapshot, batches: Iterator[Any], steps: int,
             budget: int) -> tuple[list[Probe], list[str]]:
    """The confirmation stage: fixed-LR probes from the start state, from the divergence edge.

    Every probe starts from ``snapshot`` and runs on the same batches (the next ones after the
    sweep), so the probes differ only in their LR; :class:`~lrtrack.engine.probes.ProbeSearch` picks
    the LRs (up from the edge while they stay good, then down). Stops when the search ends, the
    next probe would exceed ``budget`` steps in all, or on Ctrl-C (keeping the probes done).

    Returns the probes and their confidence reasons (:func:`lrtrack.engine.confidence.probe_reasons`).
    """
    if len(test.lrs) < MIN_PROBE_SWEEP:  # nothing to confirm: the edge needs that many points
        return [], probe_reasons([], None)
    edge = test.edge()
    search = ProbeSearch(edge.lr if edge.lr is not None else test.lrs[-1], lowest_lr=test.grids[0][0])
    fixed = [move_to_device(next(batches), test.device, test.non_blocking)
             for _ in range(steps * test.accumulation_steps)]
    used, cut = 0, False
    log.info("confirmation probes: %d steps each, at most %d steps in all", steps, budget)
    bar = _progress_bar(budget, getattr(test, "progress", False), "confirmation probes")
    try:
        while (lr := search.next_lr()) is not None:
            if used + steps > budget:
                cut = search.cut_matters()
                break
            snapshot.restore()
            probe = test.probe(lr, fixed, steps)
            used += probe.steps
            search.add(probe)
            bar.update(probe.steps)
            bar.set_postfix(probe=len(search.probes), lr=f"{lr:.2e}", loss=f"{probe.losses[-1]:.4f}", refresh=False)
    except KeyboardInterrupt:  # the test is interrupted: the caller sees it in stop_reason, as for the sweep
        log.warning("confirmation probes interrupted after %d probes", len(search.probes))
        test.stop_reason = STOP_INTERRUPTED
        test.stop_detail = f"interrupted during the confirmation probes after {len(search.probes)} probes"
    finally:
        bar.close()
    log.info("confirmation: %d fixed-LR probes, %d steps", len(search.probes), used)
    return search.probes, probe_reasons(search.probes, edge.lr, climbed_out=search.climbed_out, cut=cut)


def _optimizer_train_mode(optimizer: torch.optim.Optimizer) -> None:
    """Schedule-free optimizers take their steps in train mode (``optimizer.train()``)."""
    switch = getattr(optimizer, "train", None)
    if callable(switch):
        switch()


def summary(result: RangeTestResult) -> Mapping[str, float]:
    """Summary metrics of a result: the suggestions, the edge, the minimum and the steps taken."""
    out: dict[str, float] = {}
    for rule, s in result.suggestions.items():
        if s.lr is not None:
            out[f"suggested_lr/{rule}"] = s.lr
    if result.edge_lr is not None:
        out["edge_lr"] = result.edge_lr
    if result.min_loss is not None:
        out["min_loss"] = result.min_loss
        out["min_loss_lr"] = result.min_loss_lr
    out["steps"] = float(result.steps)
    out["probe_steps"] = float(result.probe_steps)
    return out
