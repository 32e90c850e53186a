"""One range test, repeated: the median curve, its band and the median suggestion (no Hydra, no MLflow).

A single range test sees one data order (and one set of dropout masks), so its curve, its edge
and its suggestions carry that noise. :func:`run_repeated_range_test` runs the test ``repeats``
times from the same start state, each with a different data order, and returns one
:class:`~lrtrack.engine.finder.RangeTestResult`: per step the median of the repeats' losses, each
rule's median suggestion, the median divergence edge; ``result.repeats`` holds every repeat
and ``result.band()`` their spread (drawn by :func:`lrtrack.engine.plots.range_test_figure`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lrtrack.engine.distributed import broadcast_object
from lrtrack.engine.finder import STOP_INTERRUPTED, RangeTestResult, StateSnapshot, run_range_test
from lrtrack.engine.observers import NullObserver, StepObserver
from lrtrack.engine.suggest import Edge, Suggestion

log = logging.getLogger(__name__)

#: ``repeats=None`` (auto) runs this many tests for an optimizer with per-parameter adaptive steps.
ADAPTIVE_REPEATS = 3
#: Optimizers that scale each parameter's step by running gradient statistics, besides any whose
#: param groups carry Adam's ``betas`` (Adam, AdamW, NAdam, RAdam, Adamax and most third-party kin).
_ADAPTIVE_TYPES = ("RMSprop", "Adagrad", "Adadelta", "Adafactor")


def auto_repeats(optimizer: torch.optim.Optimizer) -> int:
    """How many range tests ``repeats=None`` runs: :data:`ADAPTIVE_REPEATS` for an optimizer with
    per-parameter adaptive steps, else 1.

    Why: an adaptive optimizer's first steps are about ``lr`` times the sign of the gradient,
    whatever its size, so fixed-LR probes near the divergence edge are chaotic (a loss spike,
    then recovery or not, depending on the batches): measured on a GRU with Adam, one test's
    answer moved 1.7x between seeds, the median of three 1.4x (docs/suggestions.md). SGD's
    answers moved at most 1.45x with one test, so it pays for one.
    """
    if any("betas" in group for group in optimizer.param_groups):
        return ADAPTIVE_REPEATS
    return ADAPTIVE_REPEATS if type(optimizer).__name__ in _ADAPTIVE_TYPES else 1


#: Per-repeat metrics go to the observer under this prefix (``repeat_0/loss`` ...); the plain
#: names (``lr``, ``loss``, ``loss_smoothed``) carry the median curve.
REPEAT_PREFIX = "repeat_{}/"


class _Prefixed:
    """An observer that files every metric under a prefix."""

    def __init__(self, observer: StepObserver, prefix: str) -> None:
        self.observer, self.prefix = observer, prefix

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self.observer.on_step(step, {self.prefix + k: v for k, v in metrics.items()})


def run_repeated_range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Iterable[Any],
    *,
    repeats: int | None = None,
    observer: StepObserver | None = None,
    **settings: Any,
) -> RangeTestResult:
    """Run :func:`lrtrack.engine.finder.run_range_test` ``repeats`` times and combine the results.

    Every repeat starts from the same model and optimizer state (each one is restored) and
    reseeds torch's RNG from a seed drawn once, so each sees a different data order (a new
    shuffle of the loader) and different dropout masks, reproducibly for a given seed. The
    RNG state is put back at the end, as after a single test. In a torchrun job the seeds are
    rank 0's on every rank (each repeat reshuffles the same global order everywhere).

    Args:
        model, optimizer, train_loader: as for ``run_range_test``.
        repeats: how many tests (>= 1; 1 is a plain ``run_range_test``); ``None`` (the default):
            :func:`auto_repeats` (3 for Adam-like optimizers, else 1).
        observer: gets each repeat's steps under ``repeat_<i>/`` and then the median curve
            (``lr``, ``loss``, ``loss_smoothed``, ``loss_smoothed_q25``/``_q75``) at steps 0..n-1.
        **settings: ``run_range_test``'s other arguments (``restore`` must stay True).

    Returns:
        The median :class:`~lrtrack.engine.finder.RangeTestResult` with ``repeats`` set; its
        ``probe_steps`` count every repeat's probes.

    Raises:
        ValueError: ``repeats`` is not an integer >= 1, or ``restore=False`` with repeats.
    """
    if repeats is None:
        repeats = auto_repeats(optimizer)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1 or None (auto) (finder.repeats); got {repeats!r}")
    if repeats == 1:
        return run_range_test(model, optimizer, train_loader, observer=observer, **settings)
    if settings.get("restore", True) is not True:
        raise ValueError("repeats > 1 needs restore=True: every repeat starts from the same state")
    observer = observer if observer is not None else NullObserver()
    snapshot = StateSnapshot(model, optimizer)
    seeds = broadcast_object(torch.randint(0, 2**31 - 1, (repeats,)).tolist())  # torchrun: rank 0's, everywhere
    results: list[RangeTestResult] = []
    try:
        for i, seed in enumerate(seeds):
            torch.manual_seed(seed)
            result = run_range_test(model, optimizer, train_loader, observer=_Prefixed(observer, REPEAT_PREFIX.format(i)),
                                    **settings)
            results.append(result)
            log.info("repeat %d/%d: %d steps, %s", i + 1, repeats, result.steps, result.stop_reason)
            if result.stop_reason == STOP_INTERRUPTED:
                break
    finally:
        snapshot.restore()
    combined = combine(results)
    _report(observer, combined)
    return combined


def _median_rows(values: Sequence[Sequence[float]], length: int) -> list[float]:
    """Per step, the median over the rows that reached it (non-finite values left out)."""
    grid = np.full((len(values), length), np.nan)
    for i, row in enumerate(values):
        arr = np.asarray(row[:length], dtype=float)
        grid[i, : arr.size] = np.where(np.isfinite(arr), arr, np.nan)
    out = []
    for column in grid.T:
        finite = column[np.isfinite(column)]
        out.append(float(np.median(finite)) if finite.size else math.nan)
    return out


def _geo_median(values: Sequence[float]) -> float:
    return float(10 ** np.median(np.log10(values)))


def _nearest(lrs: Sequence[float], lr: float) -> int:
    return int(np.argmin(np.abs(np.log10(np.asarray(lrs)) - math.log10(lr))))


def _median_suggestion(rule: str, results: Sequence[RangeTestResult], lrs: Sequence[float],
                       edge: Edge) -> Suggestion:
    """The median of the repeats' suggestions for ``rule`` (those that have one), capped at ``edge``."""
    found = [r.suggestions[rule].lr for r in results if r.suggestions[rule].lr is not None]
    if not found:
        return Suggestion(rule, None, None, f"no repeat has a suggestion: {results[0].suggestions[rule].reason}")
    lr = _geo_median(found)  # type: ignore[arg-type]
    listed = ", ".join(f"{v:.3g}" for v in found)  # type: ignore[str-format]
    reason = f"median of {len(found)} of {len(results)} repeats ({listed}); first: {results[0].suggestions[rule].reason}"
    if edge.lr is not None and lr > edge.lr:
        return Suggestion(rule, edge.lr, edge.index, f"{reason}; capped at the median divergence edge {edge.lr:.3g}")
    return Suggestion(rule, lr, _nearest(lrs, lr), reason)


def combine(results: Sequence[RangeTestResult]) -> RangeTestResult:
    """The median of several range tests on one LR grid (see :func:`run_repeated_range_test`)."""
    if not results:
        raise ValueError("no range test to combine")
    longest = max(results, key=lambda r: r.steps)
    n = longest.steps
    edges = [r.edge.lr for r in results if r.edge.lr is not None]
    if edges and len(edges) * 2 > len(results):
        lr = _geo_median(edges)
        edge = Edge(lr, _nearest(longest.lrs, lr), f"median of {len(edges)} of {len(results)} repeats' edges "
                    f"({', '.join(f'{e:.3g}' for e in edges)})")
    else:
        edge = Edge(None, None, f"most repeats have no edge: {results[0].edge.reason}")
    reasons = sorted({r.stop_reason for r in results})
    losses = _median_rows([r.losses for r in results], n)
    validated = any(r.train_losses is not r.losses for r in results)
    return RangeTestResult(
        lrs=list(longest.lrs), group_lrs=[list(g) for g in longest.group_lrs], losses=losses,
        smoothed_losses=_median_rows([r.smoothed_losses for r in results], n),
        train_losses=_median_rows([r.train_losses for r in results], n) if validated else losses,
        stop_reason=longest.stop_reason,
        stop_detail=f"{len(results)} repeats ({', '.join(reasons)}); longest: {longest.stop_detail}",
        suggestions={rule: _median_suggestion(rule, results, longest.lrs, edge) for rule in longest.suggestions},
        num_iter=longest.num_iter, step_mode=longest.step_mode, start_lr=longest.start_lr, end_lr=longest.end_lr,
        metadata={**longest.metadata, "repeats": len(results)},
        edge=edge, probes=tuple(p for r in results for p in r.probes), repeats=tuple(results),
    )


def _report(observer: StepObserver, result: RangeTestResult) -> None:
    band = result.band()
    for i, lr in enumerate(result.lrs):
        metrics = {"lr": lr, "loss": result.losses[i], "loss_smoothed": result.smoothed_losses[i]}
        for name in ("q25", "q75"):
            if math.isfinite(band[name][i]):
                metrics[f"loss_smoothed_{name}"] = band[name][i]
        observer.on_step(i, metrics)
