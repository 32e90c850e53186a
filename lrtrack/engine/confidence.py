"""The confidence verdict of a suggestion: ``high`` or ``low``, with its reasons (no torch here).

A suggestion comes from a sweep and a few probes. Where they tell one consistent story the
verdict is ``high``; where they do not, it is ``low`` and says why, in short phrases that start
with one of these names (a tag, a printed line and the figure's caption carry them):

* ``flat loss``: the sweep (or the best probe) lowered the loss by less than
  :data:`FLAT_SHARE` of its start: there is little to read.
* ``non-monotone sweep``: the loss bumped up by more than :data:`BUMP_SHARE` of its descent and
  came back down (before the minimum, or past it before it reached the start level again); the
  edge of such a curve is no safe starting point.
* ``probes disagree with the curve``: the largest good probe lies :data:`DISAGREE_ABOVE` x or
  more above the divergence edge (the sweep's edge was misleading). Probes that fail far below the
  edge are no reason: on least squares the sweep's loss keeps falling 4-5x past the stability
  edge, and the probes are right (calibration half: every such test's answer was in range).
* ``slow probes``: the best probe lowered the loss by less than :data:`SLOW_SHARE` of its start
  (the probes barely tell the LRs apart; on the calibration half these tests carried the largest
  regret).
* ``no probe failed above the answer``: the upward search stopped at its bound with the top
  probe still good; the real limit lies higher.
* ``repeats disagree``: the repeated tests' answers spread more than :data:`REPEAT_SPREAD` x
  (from five tests on: the middle ones). :func:`repeat_reasons` says so, but it is no longer part
  of the verdict (issue 19, round 2): on the calibration half the tests with this reason had no
  regret (GRU: 0.00-0.02 tolerances).
* ``too few steps``: the sweep stopped after fewer than :data:`MIN_SWEEP_POINTS` steps, or the
  probe budget ended the search.
* ``no confirmed answer``: the probes gave no LR.

:func:`lrtrack.engine.repeats.run_repeated_range_test` spends a bounded extra budget (more range
tests) on a ``low`` verdict whose reasons more tests can resolve (:data:`FIXABLE`) and records what it did (``result.extra_steps``,
``result.extra_actions``). The thresholds are set on the benchmark's calibration half
(``scripts/bench_suggestions.py``, docs/suggestions.md).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from lrtrack.engine.probes import Probe, good_probes
from lrtrack.engine.smoothing import zero_lag

HIGH, LOW = "high", "low"
FLAT_SHARE = 0.03
#: ``slow probes`` below this share of the start loss: set on the calibration half (issue 19, round 2),
#: where the digits CNN's probes made 36-42% progress and carried the largest regret (0.13-1.81
#: tolerances), every other task's 55% or more.
SLOW_SHARE = 0.5
BUMP_SHARE = 0.2
DISAGREE_ABOVE = 2.0
REPEAT_SPREAD = 1.5
MIN_SWEEP_POINTS = 25
#: The centred smoothing of the raw loss (lighter than the edge's 0.8, which hides a short bump).
_SMOOTHING = 0.6

FLAT, NON_MONOTONE, DISAGREES, NO_FAILURE = ("flat loss", "non-monotone sweep", "probes disagree with the curve",
                                             "no probe failed above the answer")
REPEATS_DISAGREE, TOO_FEW, NO_ANSWER, SLOW = "repeats disagree", "too few steps", "no confirmed answer", "slow probes"
REASONS = (FLAT, SLOW, NON_MONOTONE, DISAGREES, NO_FAILURE, REPEATS_DISAGREE, TOO_FEW, NO_ANSWER)
#: The reasons more range tests resolve: only these spend the extra budget. Measured on the
#: benchmark's calibration half (issue 19, round 2): the extra tests that a non-monotone sweep,
#: probes far above the edge or repeats that disagree ran left every answer's regret where it was
#: (digits ResNet 0.61 -> 0.61 and 0.56 -> 0.51 tolerances, GRU 0.02 -> 0.01) at 3x the steps, so
#: only a test without an answer gets more tests (they give it one).
FIXABLE = (NO_ANSWER,)


@dataclass(frozen=True)
class Verdict:
    """``level`` (``high``/``low``) and the reasons for ``low`` (empty for ``high``)."""

    level: str
    reasons: tuple[str, ...] = ()

    @property
    def fixable(self) -> bool:
        """Whether more range tests may resolve a reason (:data:`FIXABLE`)."""
        return fixable(self.reasons)

    @classmethod
    def of(cls, reasons: Sequence[str]) -> Verdict:
        unique = tuple(dict.fromkeys(reasons))
        return cls(LOW if unique else HIGH, unique)


def fixable(reasons: Sequence[str]) -> bool:
    """Whether any of ``reasons`` is one more range tests may resolve (:data:`FIXABLE`)."""
    return any(r.split(":")[0] in FIXABLE for r in reasons)


def _finite_prefix(values: Sequence[float]) -> int:
    for i, v in enumerate(values):
        if not math.isfinite(v):
            return i
    return len(values)


def curve_reasons(lrs: Sequence[float], raw_losses: Sequence[float]) -> list[str]:
    """``flat loss``, ``non-monotone sweep`` and ``too few steps`` read from the sweep's raw loss."""
    n = _finite_prefix(raw_losses)
    if n < MIN_SWEEP_POINTS:
        where = f" (stopped at lr {lrs[n - 1]:.3g})" if 0 < n <= len(lrs) else ""  # a test stopped before its first step
        return [f"{TOO_FEW}: the sweep has {n} finite points{where}"]
    start = statistics.median(raw_losses[: max(3, n // 10)])
    curve = zero_lag([min(v, start) for v in raw_losses[:n]], _SMOOTHING)
    low = min(range(n), key=curve.__getitem__)
    depth = start - curve[low]
    if depth <= FLAT_SHARE * max(abs(start), 1e-12):
        return [f"{FLAT}: the sweep lowered the loss by {depth / max(abs(start), 1e-12):.1%} of its start"]
    bump, where = _largest_bump(curve, low, start, depth)
    if bump > BUMP_SHARE * depth:
        return [f"{NON_MONOTONE}: the loss rose by {bump / depth:.0%} of its descent near lr {lrs[where]:.3g} "
                "and came back down"]
    return []


def _largest_bump(curve: Sequence[float], low: int, start: float, depth: float) -> tuple[float, int]:
    """The largest rise that recovers: above the running minimum before ``low``; past ``low``, a fall
    from the running maximum before the curve reaches the start level again."""
    best, where = 0.0, low
    run_min = math.inf
    for j in range(low):
        run_min = min(run_min, curve[j])
        if curve[j] - run_min > best:
            best, where = curve[j] - run_min, j
    peak, peak_at = curve[low], low
    for j in range(low, len(curve)):
        if curve[j] >= start - 0.1 * depth:
            break
        if curve[j] > peak:
            peak, peak_at = curve[j], j
        if peak - curve[j] > best:
            best, where = peak - curve[j], peak_at
    return best, where


def probe_reasons(probes: Sequence[Probe], edge_lr: float | None, *, climbed_out: bool = False,
                  cut: bool = False, tol: float | None = None) -> list[str]:
    """``no confirmed answer``, ``flat loss``, ``slow probes``, ``probes disagree with the curve``, ``no probe failed
    above the answer`` and ``too few steps`` (``cut``: the probe budget ended the search)."""
    if not probes:
        return [f"{NO_ANSWER}: no probe was run"]
    good, best, _ = good_probes(probes) if tol is None else good_probes(probes, tol)
    reasons = []
    if cut:
        reasons.append(f"{TOO_FEW}: the probe budget ended the search after {len(probes)} probes")
    if not good:
        return [*reasons, f"{NO_ANSWER}: no probe lowered the loss"]
    start = probes[0].losses[0]
    progress = (start - best) / max(abs(start), 1e-12)
    if progress <= FLAT_SHARE:
        reasons.append(f"{FLAT}: the best probe lowered the loss by {progress:.1%}")
    elif progress < SLOW_SHARE:
        reasons.append(f"{SLOW}: the best probe lowered the loss by {progress:.0%} of its start in "
                       f"{probes[0].planned} steps (under {SLOW_SHARE:.0%})")
    top = max(p.lr for p in good)
    if edge_lr is not None and top >= DISAGREE_ABOVE * edge_lr:
        reasons.append(f"{DISAGREES}: the largest good probe is lr {top:.3g}, {top / edge_lr:.2g}x the sweep's "
                       f"edge {edge_lr:.3g}")
    if climbed_out:
        reasons.append(f"{NO_FAILURE}: the probes were still good at lr {top:.3g}, the search's bound")
    return reasons


def repeat_reasons(answers: Sequence[float | None]) -> list[str]:
    """``repeats disagree`` when the repeats' answers spread more than :data:`REPEAT_SPREAD` x (from
    five tests on, the highest and the lowest answer are left out: the median stands on the middle)."""
    found = sorted(a for a in answers if a is not None and a > 0)
    if len(found) < 2:
        return []
    middle = found[1:-1] if len(found) >= 5 else found
    spread = max(middle) / min(middle)
    if spread > REPEAT_SPREAD:
        return [f"{REPEATS_DISAGREE}: {len(found)} tests' answers spread {spread:.2f}x "
                f"({', '.join(f'{a:.3g}' for a in found)})"]
    return []
