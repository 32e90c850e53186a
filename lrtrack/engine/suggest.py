"""Suggestion rules on a finished range-test curve, and the divergence edge (no Hydra, no MLflow).

A range test sweeps the learning rate upwards and records a loss at every step. This module
turns that curve into suggested learning rates, one per rule:

* ``confirmed`` (the default, :data:`DEFAULT_RULE`): the largest LR that, in short fixed-LR
  probes from the start (:mod:`lrtrack.engine.probes`, run by the engine), trains about as well as
  the best probe, divided by :data:`CONFIRMED_MARGIN`. Chosen by ``scripts/bench_suggestions.py``;
  ``docs/suggestions.md`` says why it works and where it fails.
* ``steepest``: where the loss falls fastest against log10(LR).
* ``valley``: roughly the middle of the longest stretch over which the loss keeps
  falling, which tends to be more robust to noise than the steepest point.
* ``minimum``: one tenth of the LR at the lowest loss, backing off from the
  point where training is about to become unstable.
* ``slide``: walk back from the divergence edge until the loss gradient at two
  points a fixed window apart agrees, i.e. until the curve stops bending.

The **divergence edge** (:func:`find_edge`) is where the loss starts rising for good. No curve
rule suggests an LR past it: a suggestion beyond it is capped at it (and says so). ``confirmed``
is not capped there: its probes start at the edge and climb above it while they train well (a
loss that bumps up and recovers puts the edge too early), so the probes are its evidence.

The curve rules work on a *trimmed* view of the smoothed curve: non-finite losses at the
tail are dropped first (the test stops at the first NaN, which is still
recorded), then a few noisy points at the start and a few divergent points at
the end are skipped. When a rule cannot answer it returns a
:class:`Suggestion` with ``lr=None`` and a human-readable reason rather than
raising, so a caller can log every rule's outcome side by side.

Only numpy is used here so the rules can run (and be tested) without torch.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lrtrack.engine.probes import Probe, good_limit
from lrtrack.engine.smoothing import zero_lag

#: Every rule, the default first.
RULES: tuple[str, ...] = ("confirmed", "steepest", "valley", "minimum", "slide")
#: The rule the CLI and the library use unless told otherwise.
DEFAULT_RULE = "confirmed"
#: The rules that read the curve alone (no probes).
CURVE_RULES: tuple[str, ...] = ("steepest", "valley", "minimum", "slide")

#: ``confirmed`` divides the largest good probe LR by this. Re-derived in issue 19 on the
#: benchmark's calibration half (``scripts/bench_suggestions.py --calibrate``): with the probes
#: climbing above the edge, 2.5 and 3 kept 7 of 8 calibration tasks within target and 3 had the
#: smaller worst regret (2.2 tolerances against 4.1).
CONFIRMED_MARGIN = 3.0
#: The divergence edge: decay of the centred smoothing of the raw loss ...
EDGE_SMOOTHING = 0.8
#: ... and the band above the curve's minimum, as a share of its descent, that the loss
#: leaves for good at the edge.
EDGE_BAND = 0.05


@dataclass(frozen=True)
class Suggestion:
    """One rule's answer: an LR (and the index of the point it came from), or why there is none."""

    rule: str
    lr: float | None
    index: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.lr is not None


# Smallest number of points each rule can work with. ``slide`` needs a window of
# at least one step plus the two end points of that window.
_MIN_POINTS: dict[str, int] = {"steepest": 3, "valley": 5, "minimum": 2, "slide": 3}

# Defaults of the tunables, kept in one place so docs and code agree.
_MIN_DIVISOR = 10.0
_SLIDE_LR_DIFF = 15
_SLIDE_THRESH = 0.005
_SLIDE_ADJUST = 1.0

# Relative tolerance below which the loss range counts as "no change at all".
_FLAT_RTOL = 1e-12

_FLAT_REASON = "flat curve: the loss never falls over the trimmed range"


@dataclass(frozen=True)
class _Window:
    """The part of the curve a rule looks at.

    Attributes:
        lrs: LRs of the trimmed window.
        losses: Losses of the trimmed window (all finite).
        offset: Index in the original arrays of the window's first point, so
            ``offset + i`` maps a window index back to the caller's arrays.
        n_finite: How many leading points had a finite loss before trimming.
    """

    lrs: np.ndarray
    losses: np.ndarray
    offset: int
    n_finite: int

    def __len__(self) -> int:
        return int(self.losses.shape[0])


# --------------------------------------------------------------------------- #
# Validation and trimming
# --------------------------------------------------------------------------- #


def check_rule(rule: str) -> None:
    """Raise if ``rule`` is not one of :data:`RULES`.

    Args:
        rule: Name of a suggestion rule.

    Raises:
        ValueError: If the rule is unknown; the message names the bad value and
            lists the allowed rules.
    """
    if rule not in RULES:
        raise ValueError(f"unknown suggestion rule {rule!r}; allowed: {', '.join(RULES)}")


def _validate_curve(lrs: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Turn the inputs into float arrays and check that they describe a range test.

    Non-finite *losses* are allowed (they are the divergent tail); non-finite or
    non-positive *LRs* are not, because every rule works in log10(LR).

    Args:
        lrs: LR per step.
        losses: Smoothed loss per step.

    Returns:
        ``(lrs, losses)`` as 1-D float64 arrays.

    Raises:
        ValueError: On mismatched lengths, non-1-D input, or LRs that are not
            finite, positive and non-decreasing.
    """
    lr_arr = np.asarray(lrs, dtype=np.float64)
    loss_arr = np.asarray(losses, dtype=np.float64)
    if lr_arr.ndim != 1 or loss_arr.ndim != 1:
        raise ValueError(
            f"lrs and losses must be 1-D sequences (got {lr_arr.ndim}-D lrs and "
            f"{loss_arr.ndim}-D losses)"
        )
    if lr_arr.shape[0] != loss_arr.shape[0]:
        raise ValueError(
            f"lrs and losses must have the same length (got {lr_arr.shape[0]} lrs and "
            f"{loss_arr.shape[0]} losses)"
        )
    if lr_arr.size:
        if not np.all(np.isfinite(lr_arr)) or np.any(lr_arr <= 0):
            raise ValueError("learning rates must be finite and positive")
        if np.any(np.diff(lr_arr) < 0):
            raise ValueError("learning rates must be non-decreasing (a range test sweeps upwards)")
    return lr_arr, loss_arr


def _check_skip(name: str, value: int | None) -> int | None:
    """Validate a ``skip_start``/``skip_end`` argument (None or an int >= 0)."""
    if value is None:
        return None
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be None or a non-negative integer, got {value!r}") from None
    if count < 0:
        raise ValueError(f"{name} must be None or a non-negative integer, got {value!r}")
    return count


def _finite_prefix_length(losses: np.ndarray) -> int:
    """Number of leading points before the first non-finite loss.

    The range test stops at the first NaN/inf but still records it, and a
    smoothed loss stays non-finite once it has been, so everything from the
    first non-finite value on is treated as the divergent tail.
    """
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else int(losses.shape[0])


def _trim_counts(
    n: int, need: int, skip_start: int | None, skip_end: int | None
) -> tuple[int, int]:
    """How many points to drop from each end of ``n`` finite points.

    The defaults follow fastai: the first ``max(1, n // 10)`` points are noisy
    (the smoother has not warmed up, the model is still at its random start)
    and the last ``min(5, n // 10)`` are where the loss explodes. Trimming is
    then reduced, one point at a time from whichever end drops more, until at
    least ``need`` points remain, so a short curve still gets a chance.

    Args:
        n: Number of finite points.
        need: Fewest points the rule can work with.
        skip_start: Requested points to drop at the start, or None for the default.
        skip_end: Requested points to drop at the end, or None for the default.

    Returns:
        ``(start, end)`` counts actually dropped.
    """
    start = max(1, n // 10) if skip_start is None else skip_start
    end = min(5, n // 10) if skip_end is None else skip_end
    budget = max(0, n - need)
    # Clamp first so the loop below runs at most ``budget`` times even for huge requests.
    start, end = min(start, budget), min(end, budget)
    while start + end > budget:
        # Give points back from the larger side so both ends keep some trimming.
        if start >= end:
            start -= 1
        else:
            end -= 1
    return start, end


def _window(
    lrs: np.ndarray,
    losses: np.ndarray,
    *,
    need: int,
    skip_start: int | None,
    skip_end: int | None,
) -> _Window:
    """Drop the non-finite tail, then trim both ends (see :func:`_trim_counts`)."""
    n_finite = _finite_prefix_length(losses)
    start, end = _trim_counts(n_finite, need, skip_start, skip_end)
    stop = n_finite - end
    return _Window(lrs=lrs[start:stop], losses=losses[start:stop], offset=start, n_finite=n_finite)


def _too_few(rule: str, win: _Window, need: int) -> Suggestion:
    """The 'not enough points' answer, with counts so the user can see why."""
    return Suggestion(
        rule,
        None,
        None,
        f"too few points ({len(win)} finite points after trimming; need at least {need})",
    )


def _is_flat(losses: np.ndarray) -> bool:
    """True if the loss range is negligible relative to the loss level.

    The tolerance is relative (with a floor of 1 for losses near zero) so that
    float rounding in a constant curve does not count as a descent.
    """
    if losses.size == 0:
        return True
    lo = float(np.min(losses))
    return float(np.ptp(losses)) <= _FLAT_RTOL * max(1.0, abs(lo))


def _fmt(x: float) -> str:
    """Short LR formatting for reasons."""
    return f"{x:.3g}"


# --------------------------------------------------------------------------- #
# Rules. Each takes validated arrays and returns a Suggestion whose index is
# already mapped back to the caller's (untrimmed) arrays.
# --------------------------------------------------------------------------- #


def _steepest(
    lrs: np.ndarray,
    losses: np.ndarray,
    *,
    skip_start: int | None = None,
    skip_end: int | None = None,
) -> Suggestion:
    """LR at the start of the steepest downhill segment, slope taken against log10(LR).

    Slopes are finite differences between consecutive points. Using log10(LR)
    as the x-axis matters: the sweep is exponential, so a slope per unit LR
    would be dominated by the high-LR end.

    Args:
        lrs: Validated LR array.
        losses: Validated (smoothed) loss array.
        skip_start: Points to drop at the start (None: default).
        skip_end: Points to drop at the end (None: default).

    Returns:
        The suggestion, or ``lr=None`` with a reason.
    """
    rule, need = "steepest", _MIN_POINTS["steepest"]
    win = _window(lrs, losses, need=need, skip_start=skip_start, skip_end=skip_end)
    if len(win) < need:
        return _too_few(rule, win, need)
    if _is_flat(win.losses):
        return Suggestion(rule, None, None, _FLAT_REASON)

    dx = np.diff(np.log10(win.lrs))
    dy = np.diff(win.losses)
    # Repeated LRs (a schedule may hold the LR for a step) give dx == 0; such a
    # segment has no defined slope, so it is left out rather than dividing by zero.
    valid = dx > 0
    if not np.any(valid):
        return Suggestion(rule, None, None, "the LR never changes, so no slope can be measured")
    slopes = np.full(dy.shape, np.inf)
    slopes[valid] = dy[valid] / dx[valid]
    i = int(np.argmin(slopes))
    if not slopes[i] < 0:
        return Suggestion(
            rule, None, None, "the loss never falls (no segment has a negative slope)"
        )
    lr = float(win.lrs[i])
    return Suggestion(
        rule,
        lr,
        win.offset + i,
        f"steepest descent: slope {slopes[i]:.3g} per decade of LR, "
        f"from lr {_fmt(lr)} to {_fmt(float(win.lrs[i + 1]))}",
    )


def _valley(
    lrs: np.ndarray,
    losses: np.ndarray,
    *,
    skip_start: int | None = None,
    skip_end: int | None = None,
) -> Suggestion:
    """fastai's valley rule: a point inside the longest decreasing stretch.

    ``lds[i]`` is the length of the longest strictly decreasing subsequence that
    ends at point ``i``. The stretch with the largest ``lds`` is the longest
    run of overall improvement; its start is taken as ``end - lds[end]`` and
    the answer sits about halfway into its middle third,
    ``start + int(L / 3) + int(L / 3 / 2)`` with ``L = end - start``. That is
    past the noisy beginning of the descent but well before the bottom, where
    the LR is already close to unstable.

    Args:
        lrs: Validated LR array.
        losses: Validated (smoothed) loss array.
        skip_start: Points to drop at the start (None: default).
        skip_end: Points to drop at the end (None: default).

    Returns:
        The suggestion, or ``lr=None`` with a reason.
    """
    rule, need = "valley", _MIN_POINTS["valley"]
    win = _window(lrs, losses, need=need, skip_start=skip_start, skip_end=skip_end)
    n = len(win)
    if n < need:
        return _too_few(rule, win, need)
    if _is_flat(win.losses):
        return Suggestion(rule, None, None, _FLAT_REASON)

    y = win.losses.tolist()
    lds = [1] * n
    best_end = 0
    for i in range(1, n):
        # O(n^2) is fine: a range test has at most a few thousand points.
        for j in range(i):
            if y[i] < y[j] and lds[j] + 1 > lds[i]:
                lds[i] = lds[j] + 1
        # Strict '>' keeps the earliest of equally long stretches, as fastai does.
        if lds[i] > lds[best_end]:
            best_end = i
    if lds[best_end] < 2:
        return Suggestion(rule, None, None, "the loss never falls (no decreasing stretch)")

    # ``end - lds[end]`` can be one before the window when the stretch starts at
    # point 0; the formula is kept as is and the result clamped below.
    start = best_end - lds[best_end]
    span = best_end - start
    third = span / 3
    idx = start + int(third) + int(third / 2)
    idx = min(max(idx, 0), n - 1)
    lr = float(win.lrs[idx])
    return Suggestion(
        rule,
        lr,
        win.offset + idx,
        f"valley: inside the longest decreasing stretch ({lds[best_end]} falling points "
        f"between lr {_fmt(float(win.lrs[max(start, 0)]))} and {_fmt(float(win.lrs[best_end]))})",
    )


def _minimum(
    lrs: np.ndarray,
    losses: np.ndarray,
    *,
    skip_start: int | None = None,
    skip_end: int | None = None,
    divisor: float = _MIN_DIVISOR,
) -> Suggestion:
    """fastai's ``lr_min``: the LR at the lowest loss divided by ``divisor``.

    At the minimum the LR is already about as large as training tolerates, so
    backing off by an order of magnitude gives a safe, still-fast LR.

    Args:
        lrs: Validated LR array.
        losses: Validated (smoothed) loss array.
        skip_start: Points to drop at the start (None: default).
        skip_end: Points to drop at the end (None: default).
        divisor: How far to back off from the LR at the minimum.

    Returns:
        The suggestion (index of the lowest-loss point), or ``lr=None`` with a reason.
    """
    rule, need = "minimum", _MIN_POINTS["minimum"]
    if not divisor > 0:
        raise ValueError(f"divisor must be positive, got {divisor!r}")
    win = _window(lrs, losses, need=need, skip_start=skip_start, skip_end=skip_end)
    if len(win) < need:
        return _too_few(rule, win, need)
    if _is_flat(win.losses):
        return Suggestion(rule, None, None, _FLAT_REASON)
    i = int(np.argmin(win.losses))  # first of tied minima
    lr_at_min = float(win.lrs[i])
    return Suggestion(
        rule,
        lr_at_min / divisor,
        win.offset + i,
        f"minimum: lowest loss {float(win.losses[i]):.4g} at lr {_fmt(lr_at_min)}, "
        f"divided by {divisor:g}",
    )


def _slide(
    lrs: np.ndarray,
    losses: np.ndarray,
    *,
    skip_start: int | None = None,
    skip_end: int | None = None,
    lr_diff: int = _SLIDE_LR_DIFF,
    thresh: float = _SLIDE_THRESH,
    adjust_value: float = _SLIDE_ADJUST,
) -> Suggestion:
    """fastai's slide rule: slide a window left from the end until the gradient settles.

    ``g`` is the loss gradient per step. A right point ``r`` (starting at the
    last point) and a left point ``l = r - lr_diff`` move left together while
    ``|g[r] - g[l]| > thresh``, i.e. while the curve still bends between them;
    the last ``lrs[l]`` seen while that held is the answer (times
    ``adjust_value``). ``thresh`` is absolute, as in fastai, so it suits
    losses of order one; pass a different one for other scales.

    On a short curve the window shrinks to ``n // 4`` points (at least 1) so
    that it cannot span the whole curve.

    Args:
        lrs: Validated LR array.
        losses: Validated (smoothed) loss array.
        skip_start: Points to drop at the start (None: default).
        skip_end: Points to drop at the end (None: default).
        lr_diff: Window width in steps between the two compared points.
        thresh: Largest gradient difference that counts as "settled".
        adjust_value: Factor applied to the LR found.

    Returns:
        The suggestion (index: the point whose LR is nearest, in log space, to
        the suggested LR), or ``lr=None`` with a reason.
    """
    rule = "slide"
    if operator.index(lr_diff) < 1:
        raise ValueError(f"lr_diff must be at least 1, got {lr_diff!r}")
    if not (math.isfinite(thresh) and thresh >= 0):
        raise ValueError(f"thresh must be finite and non-negative, got {thresh!r}")
    if not (math.isfinite(adjust_value) and adjust_value > 0):
        raise ValueError(f"adjust_value must be finite and positive, got {adjust_value!r}")
    floor = _MIN_POINTS["slide"]
    win = _window(lrs, losses, need=floor, skip_start=skip_start, skip_end=skip_end)
    n = len(win)
    diff = max(1, min(int(lr_diff), n // 4))
    need = max(floor, diff + 2)
    if n < need:
        return _too_few(rule, win, need)
    if _is_flat(win.losses):
        return Suggestion(rule, None, None, _FLAT_REASON)

    g = np.gradient(win.losses)
    r = n - 1
    left = r - diff
    candidate = left
    while left >= 0 and abs(g[r] - g[left]) > thresh:
        candidate = left
        r -= 1
        left -= 1
    lr = float(win.lrs[candidate]) * adjust_value
    # With adjust_value != 1 the LR is off the grid; report the closest point.
    idx = int(np.argmin(np.abs(np.log10(win.lrs) - math.log10(lr))))
    return Suggestion(
        rule,
        lr,
        win.offset + idx,
        f"slide: loss gradient settles (|change| <= {thresh:g} over {diff} steps) "
        f"left of lr {_fmt(float(win.lrs[candidate]))}",
    )


_RULE_FUNCS: dict[str, Callable[..., Suggestion]] = {
    "steepest": _steepest,
    "valley": _valley,
    "minimum": _minimum,
    "slide": _slide,
}


# --------------------------------------------------------------------------- #
# The divergence edge and the confirmed rule
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Edge:
    """Where the loss starts rising for good: the last point before it leaves, for the rest of
    the sweep, a narrow band above its lowest value (``lr`` None when there is no such point)."""

    lr: float | None
    index: int | None
    reason: str

    @property
    def found(self) -> bool:
        return self.lr is not None


def find_edge(
    lrs: Sequence[float],
    losses: Sequence[float],
    *,
    raw_losses: Sequence[float] | None = None,
    band: float = EDGE_BAND,
    smoothing: float = EDGE_SMOOTHING,
) -> Edge:
    """Locate the divergence edge: where the loss starts rising for good.

    The raw loss (``raw_losses``, else ``losses``) is clipped at its starting level (a
    diverged tail must not smear backwards) and smoothed with a *centred* filter
    (:func:`lrtrack.engine.smoothing.zero_lag`): the running EMA a range test logs trails the raw
    loss by about 19 steps at 0.95, which puts every feature of the curve at too large an LR.
    The edge is the last point within ``band`` of the descent above the minimum after which
    the curve never comes back into that band. A non-finite tail (NaN/inf) counts as rising.

    Args:
        lrs: LR per step, non-decreasing and positive.
        losses: the smoothed loss per step (used when ``raw_losses`` is None).
        raw_losses: the raw loss per step (recommended; the engine passes it).
        band: the band's height as a share of the descent (start level - minimum).
        smoothing: the decay of each pass of the centred filter.

    Returns:
        The :class:`Edge`; ``lr`` is None, with a reason, when the loss never falls or is still
        near its lowest at the end of the sweep (the edge lies past ``end_lr``).
    """
    lr_arr, loss_arr = _validate_curve(lrs, losses)
    raw = loss_arr if raw_losses is None else _validate_curve(lrs, raw_losses)[1]
    n = _finite_prefix_length(raw)
    if n < _MIN_POINTS["valley"]:
        return Edge(None, None, f"too few points ({n} finite points; need at least {_MIN_POINTS['valley']})")
    start = float(np.median(raw[: max(3, n // 10)]))
    curve = np.asarray(zero_lag(np.minimum(raw[:n], start).tolist(), smoothing))
    low = int(np.argmin(curve))
    depth = start - float(curve[low])
    if depth <= _FLAT_RTOL * max(1.0, abs(start)):
        return Edge(None, None, _FLAT_REASON)
    top = float(curve[low]) + band * depth
    e = int(np.flatnonzero(curve <= top)[-1])
    if e == n - 1 and n == raw.shape[0]:
        return Edge(None, None, (f"the loss is still near its lowest at the end of the sweep (lr "
                                 f"{_fmt(float(lr_arr[-1]))}): the edge lies past end_lr; raise end_lr"))
    return Edge(float(lr_arr[e]), e, (
        f"the loss rises for good past lr {_fmt(float(lr_arr[e]))} (centred smoothing; it leaves the "
        f"lowest {band:g} of its descent there and never comes back)"))


def _nearest_index(lrs: np.ndarray, lr: float) -> int | None:
    if lrs.size == 0:
        return None
    return int(np.argmin(np.abs(np.log10(lrs) - math.log10(lr))))


def _confirmed(lrs: np.ndarray, probes: Sequence[Probe] | None, margin: float = CONFIRMED_MARGIN) -> Suggestion:
    """The default rule: the largest good probe LR (:func:`lrtrack.engine.probes.good_limit`) / ``margin``."""
    if not probes:
        return Suggestion("confirmed", None, None, (
            "no fixed-LR probes were run (run_range_test runs them when probe_steps > 0, restore=True and the "
            "sweep has at least 5 points); "
            f"choose a curve rule instead ({', '.join(CURVE_RULES)})"))
    limit, why = good_limit(probes)
    if limit is None:
        return Suggestion("confirmed", None, None, why)
    lr = limit / margin
    return Suggestion("confirmed", lr, _nearest_index(lrs, lr), f"confirmed: {why}; divided by {margin:g}")


def _cap(s: Suggestion, edge: Edge) -> Suggestion:
    """``s``, or ``s`` moved back to the edge when it lies past it (the reason says so)."""
    if edge.lr is None or s.lr is None or s.lr <= edge.lr:
        return s
    return Suggestion(s.rule, edge.lr, edge.index, (
        f"{s.reason}; capped at the divergence edge {_fmt(edge.lr)} (it gave {_fmt(s.lr)}, where the "
        "loss already rises for good)"))


def _answer(rule: str, lrs: np.ndarray, losses: np.ndarray, edge: Edge, probes: Sequence[Probe] | None,
            skip_start: int | None, skip_end: int | None) -> Suggestion:
    if rule == "confirmed":
        # The probes are the evidence, the edge only where they start: a good probe above a sweep
        # whose loss bumped up and recovered must not be capped at that edge.
        return _confirmed(lrs, probes)
    if rule == "slide" and edge.index is not None:
        # Slide walks back from the end of the curve: start it at the edge, not past the cliff.
        stop = edge.index + 1
        return _cap(_slide(lrs[:stop], losses[:stop], skip_start=skip_start,
                           skip_end=0 if skip_end is None else skip_end), edge)
    return _cap(_RULE_FUNCS[rule](lrs, losses, skip_start=skip_start, skip_end=skip_end), edge)


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def suggest(
    rule: str,
    lrs: Sequence[float],
    losses: Sequence[float],
    *,
    raw_losses: Sequence[float] | None = None,
    probes: Sequence[Probe] | None = None,
    skip_start: int | None = None,
    skip_end: int | None = None,
) -> Suggestion:
    """Suggest a learning rate from a range-test curve with one rule.

    Args:
        rule: One of :data:`RULES`.
        lrs: LR at each step (param group 0), non-decreasing and positive.
        losses: Smoothed loss at each step; a non-finite tail is ignored.
        raw_losses: Raw loss at each step, for the divergence edge (:func:`find_edge`);
            without it the edge is located on ``losses``.
        probes: The engine's fixed-LR probes (``RangeTestResult.probes``), for ``confirmed``.
        skip_start: Points to drop at the start; None means ``max(1, n // 10)``.
        skip_end: Points to drop at the end; None means ``min(5, n // 10)``.
            Either is reduced if it would leave the rule too few points.

    Returns:
        The rule's :class:`Suggestion`, never past the divergence edge. ``index`` refers to
        the original, untrimmed arrays. When the rule cannot answer, ``lr`` is None and
        ``reason`` says why.

    Raises:
        ValueError: On an unknown rule, mismatched lengths, bad LRs, or a
            negative skip count.
    """
    check_rule(rule)
    return suggest_all(lrs, losses, raw_losses=raw_losses, probes=probes, skip_start=skip_start,
                       skip_end=skip_end, rules=(rule,))[rule]


def suggest_all(
    lrs: Sequence[float],
    losses: Sequence[float],
    *,
    raw_losses: Sequence[float] | None = None,
    probes: Sequence[Probe] | None = None,
    skip_start: int | None = None,
    skip_end: int | None = None,
    rules: Sequence[str] = RULES,
) -> dict[str, Suggestion]:
    """Run every rule on the same curve.

    Args:
        lrs: LR at each step (param group 0), non-decreasing and positive.
        losses: Smoothed loss at each step; a non-finite tail is ignored.
        raw_losses: As in :func:`suggest`.
        probes: As in :func:`suggest`.
        skip_start: As in :func:`suggest`.
        skip_end: As in :func:`suggest`.
        rules: The rules to run (default: all, in :data:`RULES` order).

    Returns:
        ``{rule: Suggestion}`` with keys in ``rules`` order.

    Raises:
        ValueError: As in :func:`suggest`.
    """
    for rule in rules:
        check_rule(rule)
    lr_arr, loss_arr = _validate_curve(lrs, losses)
    start = _check_skip("skip_start", skip_start)
    end = _check_skip("skip_end", skip_end)
    edge = find_edge(lr_arr, loss_arr, raw_losses=raw_losses)
    return {rule: _answer(rule, lr_arr, loss_arr, edge, probes, start, end) for rule in rules}

