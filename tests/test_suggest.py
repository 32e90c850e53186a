"""Suggestion rules on synthetic curves whose right answer is known in advance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrtrack.engine.probes import Probe, ProbeSearch, choose, good_limit
from lrtrack.engine.smoothing import smooth, zero_lag
from lrtrack.engine.suggest import (
    CONFIRMED_MARGIN,
    CURVE_RULES,
    DEFAULT_RULE,
    RULES,
    Suggestion,
    _minimum,
    _slide,
    _steepest,
    check_rule,
    find_edge,
    suggest,
    suggest_all,
)


def sigmoid_curve() -> tuple[np.ndarray, np.ndarray]:
    """100 LRs over 1e-5..10: a sigmoid descent centred at 1e-2, then a sharp rise past 1."""
    lrs = np.logspace(-5, 1, 100)
    x = np.log10(lrs)
    loss = 2.5 - 2.0 / (1.0 + np.exp(-3.0 * (x + 2.0))) + np.where(x > 0, 3.0 * x**2, 0.0)
    return lrs, loss


def piecewise_curve() -> tuple[np.ndarray, np.ndarray]:
    """41 LRs, 0.1 decade apart: a gentle fall, one cliff between points 20 and 21, a rise after 30.

    Slope per decade: -1 everywhere before 30 except the cliff segment (-5), then +2.
    Steepest segment: 20 -> 21, so the steepest rule must report index 20.
    Lowest loss: point 30 (the rise starts right after it).
    """
    lrs = np.logspace(-4, 0, 41)
    steps = np.full(40, -0.1)  # loss change per 0.1-decade step
    steps[20] = -0.5
    steps[30:] = 0.2
    loss = np.concatenate([[5.0], 5.0 + np.cumsum(steps)])
    return lrs, loss


# Twelve hand-made points. Longest strictly decreasing subsequence: 6, 4, 3.5, 3, 2.5, 2, 1.5, 1
# (indices 1..8; the equally long 5, 4, ... ends at the same index), so lds[8] = 8, end = 8,
# start = end - lds[end] = 0, L = 8, idx = 0 + int(8/3) + int(8/3/2) = 0 + 2 + 1 = 3.
VALLEY_LOSSES = [5.0, 6.0, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 1.2, 3.0, 8.0]
VALLEY_LRS = np.logspace(-4, -1, 12)


# --------------------------------------------------------------------------- #
# A realistic curve
# --------------------------------------------------------------------------- #


def test_sigmoid_curve_every_rule_lands_where_expected() -> None:
    lrs, loss = sigmoid_curve()
    got = suggest_all(lrs, loss)
    assert all(got[rule].ok for rule in CURVE_RULES), got

    # Steepest: the sigmoid is steepest at its centre, 1e-2.
    assert 1e-2 / 1.5 <= got["steepest"].lr <= 1e-2 * 1.5

    # Minimum: exactly a tenth of the LR at the lowest loss, index of that point.
    i_min = int(np.argmin(loss))
    assert got["minimum"].index == i_min
    assert got["minimum"].lr == lrs[i_min] / 10

    # Valley: inside the descent (below the bottom) and below the minimum's LR.
    valley = got["valley"]
    assert 1e-4 < valley.lr < lrs[i_min]
    assert valley.lr < got["minimum"].lr
    assert loss[valley.index] < loss[0] and valley.lr == lrs[valley.index]

    # Slide: a finite LR inside the descent region.
    slide = got["slide"]
    assert math.isfinite(slide.lr) and 1e-4 < slide.lr < lrs[i_min]
    assert slide.lr == lrs[slide.index]


def test_suggest_matches_suggest_all() -> None:
    lrs, loss = sigmoid_curve()
    every = suggest_all(lrs, loss)
    for rule in RULES:
        assert suggest(rule, lrs, loss) == every[rule]


def test_suggest_all_keys_in_rules_order() -> None:
    lrs, loss = sigmoid_curve()
    got = suggest_all(list(lrs), list(loss))  # plain lists work too
    assert list(got) == list(RULES) and RULES[0] == DEFAULT_RULE == "confirmed"
    assert all(isinstance(s, Suggestion) and s.rule == r for r, s in got.items())


# --------------------------------------------------------------------------- #
# Exact indices, with default trimming (41 points: 4 dropped at each end), so the
# indices also prove the mapping back to the original arrays.
# --------------------------------------------------------------------------- #


def test_steepest_exact_index() -> None:
    lrs, loss = piecewise_curve()
    s = suggest("steepest", lrs, loss)
    assert s.index == 20
    assert s.lr == lrs[20]
    assert "-5" in s.reason


def test_minimum_exact_index() -> None:
    lrs, loss = piecewise_curve()
    s = suggest("minimum", lrs, loss)
    assert s.index == 30
    assert s.lr == lrs[30] / 10


def test_minimum_divisor_is_tunable() -> None:
    lrs, loss = piecewise_curve()
    s = _minimum(lrs, loss, divisor=4.0)
    assert s.index == 30 and s.lr == lrs[30] / 4


def test_valley_exact_index_without_trimming() -> None:
    s = suggest("valley", VALLEY_LRS, VALLEY_LOSSES, skip_start=0, skip_end=0)
    assert s.index == 3
    assert s.lr == VALLEY_LRS[3]


def test_valley_exact_index_with_default_trimming() -> None:
    # Default trimming drops point 0 and point 11. In the window [1..10] the longest
    # stretch ends at window index 7 with lds = 8, so start = -1, L = 8 and
    # idx = -1 + 2 + 1 = 2, i.e. original index 3.
    s = suggest("valley", VALLEY_LRS, VALLEY_LOSSES)
    assert s.index == 3
    assert s.lr == VALLEY_LRS[3]


def test_valley_stretch_starting_at_first_point() -> None:
    # Strictly decreasing from the first point: lds[4] = 5, start = 4 - 5 = -1, L = 5,
    # idx = -1 + int(5/3) + int(5/3/2) = -1 + 1 + 0 = 0,
    # and with 6 points: lds[5] = 6, start = -1, L = 6, idx = -1 + 2 + 1 = 2.
    lrs = np.logspace(-3, -1, 6)
    s5 = suggest("valley", lrs[:5], [5, 4, 3, 2, 1], skip_start=0, skip_end=0)
    s6 = suggest("valley", lrs, [6, 5, 4, 3, 2, 1], skip_start=0, skip_end=0)
    assert s5.index == 0 and s5.lr == lrs[0]
    assert s6.index == 2 and s6.lr == lrs[2]


def test_valley_clamps_negative_index() -> None:
    # One fall, then flat: the first longest stretch ends at 1 with lds = 2, so
    # start = -1, L = 2 and idx = -1 + 0 + 0 = -1, clamped to 0.
    lrs = np.logspace(-3, -1, 5)
    s = suggest("valley", lrs, [2, 1, 1, 1, 1], skip_start=0, skip_end=0)
    assert s.index == 0 and s.lr == lrs[0]


# --------------------------------------------------------------------------- #
# Slide tunables
# --------------------------------------------------------------------------- #


def test_slide_large_thresh_stops_at_first_window() -> None:
    # With a threshold nothing exceeds, the loop never runs: the answer is the
    # first left point, n - 1 - lr_diff of the window.
    lrs, loss = sigmoid_curve()
    s = _slide(lrs, loss, skip_start=0, skip_end=0, lr_diff=15, thresh=1e9)
    assert s.index == 99 - 15
    assert s.lr == lrs[84]


def test_slide_window_shrinks_on_short_curve() -> None:
    # 20 points, no trimming: the window is min(15, 20 // 4) = 5 steps.
    lrs = np.logspace(-3, 0, 20)
    loss = np.linspace(3.0, 1.0, 20) ** 2
    s = _slide(lrs, loss, skip_start=0, skip_end=0, thresh=1e9)
    assert s.index == 19 - 5


def test_slide_adjust_value_reports_nearest_index() -> None:
    lrs, loss = sigmoid_curve()
    base = _slide(lrs, loss)
    # One grid step is 6/99 decades; a factor 10**0.07 is just over one step away,
    # so the nearest grid point is the next one up.
    moved = _slide(lrs, loss, adjust_value=10**0.07)
    assert moved.lr == pytest.approx(base.lr * 10**0.07)
    assert moved.index == base.index + 1


def test_slide_rejects_bad_tunables() -> None:
    lrs, loss = sigmoid_curve()
    with pytest.raises(ValueError, match="lr_diff"):
        _slide(lrs, loss, lr_diff=0)
    with pytest.raises(ValueError, match="thresh"):
        _slide(lrs, loss, thresh=-1.0)


# --------------------------------------------------------------------------- #
# Curves with no answer
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("rule", CURVE_RULES)
def test_flat_curve_gives_no_suggestion(rule: str) -> None:
    lrs = np.logspace(-5, 1, 100)
    s = suggest(rule, lrs, np.full(100, 2.3))
    assert s.lr is None and s.index is None and not s.ok
    assert "flat" in s.reason and "never falls" in s.reason


@pytest.mark.parametrize("rule", ["steepest", "valley"])
def test_rising_curve_never_falls(rule: str) -> None:
    lrs = np.logspace(-5, 1, 50)
    s = suggest(rule, lrs, np.linspace(1.0, 3.0, 50))
    assert s.lr is None and "never falls" in s.reason


def test_three_points_is_too_few_for_valley() -> None:
    s = suggest("valley", [1e-3, 1e-2, 1e-1], [3.0, 2.0, 1.0])
    assert s.lr is None and s.index is None
    assert s.reason == "too few points (3 finite points after trimming; need at least 5)"


@pytest.mark.parametrize(
    ("rule", "need"), [("steepest", 3), ("valley", 5), ("minimum", 2), ("slide", 3)]
)
def test_too_few_points_per_rule(rule: str, need: int) -> None:
    n = need - 1
    s = suggest(rule, np.logspace(-3, -1, n), np.linspace(3.0, 1.0, n))
    assert s.lr is None
    assert "too few points" in s.reason and f"need at least {need}" in s.reason


def test_empty_curve_is_too_few_points() -> None:
    got = suggest_all([], [])
    for rule in CURVE_RULES:
        assert got[rule].lr is None and "too few points (0 finite points" in got[rule].reason
    assert got["confirmed"].lr is None and "no fixed-LR probes were run" in got["confirmed"].reason


def test_trimming_is_reduced_to_leave_enough_points() -> None:
    # 5 points: default trimming would drop the first one and leave 4, too few for
    # valley, so it trims less and still answers (stretch 0..4: idx 0 as computed above).
    lrs = np.logspace(-3, -1, 5)
    s = suggest("valley", lrs, [5.0, 4.0, 3.0, 2.0, 1.0])
    assert s.ok and s.index == 0
    # An explicit request that would leave too few is reduced too.
    s = suggest("valley", lrs, [5.0, 4.0, 3.0, 2.0, 1.0], skip_start=3, skip_end=3)
    assert s.ok and s.index == 0


def test_explicit_skip_moves_the_window() -> None:
    # Starting the window past the sigmoid's centre (index 49/50), the descent only
    # gets gentler, so the window's first segment is the steepest.
    lrs, loss = sigmoid_curve()
    s = suggest("steepest", lrs, loss, skip_start=60, skip_end=0)
    assert s.index == 60 and s.lr == lrs[60]
    # Ending the piecewise curve's window at point 25 (before its bottom at 30), the
    # loss still falls everywhere, so the lowest point is the window's last one.
    lrs, loss = piecewise_curve()
    s = suggest("minimum", lrs, loss, skip_start=0, skip_end=15)
    assert s.index == 25 and s.lr == lrs[25] / 10


# --------------------------------------------------------------------------- #
# Non-finite tail and odd LR grids
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_tail_is_ignored(bad: float) -> None:
    lrs, loss = piecewise_curve()
    # Extend the sweep by three steps whose loss blew up (the first one is recorded).
    more_lrs = np.concatenate([lrs, lrs[-1] * 10 ** (0.1 * np.arange(1, 4))])
    more_loss = np.concatenate([loss, [bad, bad, bad]])
    assert suggest_all(more_lrs, more_loss) == suggest_all(lrs, loss)


def test_all_nan_is_too_few_points() -> None:
    s = suggest("minimum", [1e-3, 1e-2, 1e-1], [math.nan] * 3)
    assert s.lr is None and "too few points (0 finite points" in s.reason


def test_steepest_ignores_repeated_lrs() -> None:
    # A held LR (zero-width segment) must not divide by zero; the real steepest
    # segment (2 -> 3, slope -2/decade) still wins.
    lrs = [1e-3, 1e-2, 1e-2, 1e-1, 1e0, 1e1]
    loss = [5.0, 4.0, 3.5, 1.5, 1.0, 0.9]
    s = suggest("steepest", lrs, loss, skip_start=0, skip_end=0)
    assert s.index == 2 and s.lr == 1e-2


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match=r"same length \(got 3 lrs and 2 losses\)"):
        suggest("steepest", [1e-3, 1e-2, 1e-1], [1.0, 0.5])
    with pytest.raises(ValueError, match="got 3 lrs and 2 losses"):
        suggest_all([1e-3, 1e-2, 1e-1], [1.0, 0.5])


def test_unknown_rule_raises() -> None:
    msg = "unknown suggestion rule 'foo'; allowed: confirmed, steepest, valley, minimum, slide"
    with pytest.raises(ValueError) as err:
        suggest("foo", [1e-3, 1e-2], [1.0, 0.5])
    assert str(err.value) == msg
    with pytest.raises(ValueError) as err:
        check_rule("foo")
    assert str(err.value) == msg
    for rule in RULES:
        check_rule(rule)


def test_bad_lrs_raise() -> None:
    with pytest.raises(ValueError, match="non-decreasing"):
        suggest("minimum", [1e-2, 1e-3, 1e-1], [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        suggest("minimum", [0.0, 1e-3, 1e-1], [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        suggest("minimum", [-1e-3, 1e-3, 1e-1], [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        suggest("minimum", [1e-3, 1e-2, math.inf], [3.0, 2.0, 1.0])


def test_negative_skip_raises() -> None:
    with pytest.raises(ValueError, match="skip_start"):
        suggest("minimum", [1e-3, 1e-2, 1e-1], [3.0, 2.0, 1.0], skip_start=-1)
    with pytest.raises(ValueError, match="skip_end"):
        suggest("minimum", [1e-3, 1e-2, 1e-1], [3.0, 2.0, 1.0], skip_end=1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# The divergence edge
# --------------------------------------------------------------------------- #


def v_curve(turn: int = 30, n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Falls by 0.1 per step to its lowest point at ``turn``, then rises by 0.5 per step."""
    lrs = np.logspace(-4, 1, n)
    i = np.arange(n)
    return lrs, np.where(i <= turn, 5.0 - 0.1 * i, 5.0 - 0.1 * turn + 0.5 * (i - turn))


def test_zero_lag_is_the_ema_run_forwards_then_backwards() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    assert zero_lag(values, 0.5) == pytest.approx(smooth(smooth(values, 0.5)[::-1], 0.5)[::-1])
    assert zero_lag(values, 0.0) == values
    # The bottom of a V stays where it is (no delay); the causal EMA's moves right.
    i = np.arange(50)
    v = list(np.where(i <= 30, 5.0 - 0.1 * i, 2.0 + 0.1 * (i - 30)))
    assert int(np.argmin(zero_lag(v, 0.8))) == 30
    assert int(np.argmin(smooth(v, 0.8))) == 33 and int(np.argmin(smooth(v, 0.95))) == 38


def test_edge_exact_without_smoothing() -> None:
    # Start level: median of the first 5 points = 4.8; depth 4.8 - 2.0 = 2.8; band top 2.0 + 0.14.
    # Only point 30 lies in the band, and everything after it is above: the edge is point 30.
    lrs, loss = v_curve()
    edge = find_edge(lrs, loss, smoothing=0.0)
    assert edge.index == 30 and edge.lr == lrs[30]
    assert "rises for good past lr" in edge.reason


def test_edge_wider_band_takes_the_last_point_in_it() -> None:
    # band 0.2: top = 2.0 + 0.2 * 2.8 = 2.56: points 25..30 on the way down (2.5..2.0) and
    # point 31 (2.5) on the way up; nothing after 31 comes back, so the edge is point 31.
    lrs, loss = v_curve()
    edge = find_edge(lrs, loss, smoothing=0.0, band=0.2)
    assert edge.index == 31


def test_edge_reads_the_raw_loss_not_the_lagging_ema() -> None:
    lrs, raw = v_curve()
    ema = smooth(list(raw), 0.95)
    assert int(np.argmin(ema)) == 32  # the logged EMA bottoms out past the turn (30)
    edge = find_edge(lrs, ema, raw_losses=raw)
    assert 29 <= edge.index <= 31


def test_edge_counts_a_nan_tail_as_rising() -> None:
    lrs, loss = v_curve(turn=49)  # still falling at the end: no edge yet
    edge = find_edge(lrs, loss)
    assert edge.lr is None and "raise end_lr" in edge.reason
    loss = loss.copy()
    loss[-1] = math.nan  # the last step blew up
    edge = find_edge(lrs, loss)
    assert edge.index == 48


def test_edge_of_a_flat_or_short_curve() -> None:
    assert find_edge(np.logspace(-3, 0, 20), np.full(20, 2.3)).lr is None
    short = find_edge([1e-3, 1e-2, 1e-1], [3.0, 2.0, 5.0])
    assert short.lr is None and "too few points" in short.reason


# --------------------------------------------------------------------------- #
# No rule past the edge; slide fixed
# --------------------------------------------------------------------------- #


def collapse_curve() -> tuple[np.ndarray, np.ndarray]:
    """A fall to point 40, a rise, then a diverged network's plateau and a steep collapse to it.

    The steepest drop (segment 70 -> 71) and the flat tail (where slide stops at once) lie past
    the edge, as on a real MNIST range test whose loss saturates at ln(10) after diverging.
    """
    lrs = np.logspace(-4, 1, 100)
    i = np.arange(100)
    loss = np.where(i <= 40, 3.0 - 0.05 * i, 1.0 + 0.3 * (i - 40))
    loss = np.where(i > 70, 2.3, loss)
    return lrs, loss


def test_no_rule_suggests_past_the_edge() -> None:
    lrs, loss = collapse_curve()
    # Without smoothing: start level 2.775 (median of the first 10), depth 1.775, band top
    # 1.0 + 0.05 * 1.775 = 1.089; point 41 (1.3) is above it, so the edge is the minimum, 40.
    assert find_edge(lrs, loss, smoothing=0.0).index == 40
    edge = find_edge(lrs, loss)  # the centred smoothing rounds the V's tip: a little earlier
    assert 37 <= edge.index <= 40
    probes = [Probe(float(lrs[60]), (3.0, 1.0, 0.5, 0.5), 4)]  # a good probe past the edge
    got = suggest_all(lrs, loss, probes=probes)
    for rule, s in got.items():
        if rule != "confirmed":
            assert s.lr is not None and s.lr <= edge.lr, rule
    # confirmed follows its probes, not the edge: a probe that trains well above it is the evidence
    assert got["confirmed"].lr == pytest.approx(float(lrs[60]) / CONFIRMED_MARGIN)
    assert "capped" not in got["confirmed"].reason


def test_steepest_past_the_edge_is_capped_there() -> None:
    lrs, loss = collapse_curve()
    edge = find_edge(lrs, loss)
    uncapped = _steepest(lrs, loss)
    assert uncapped.index == 70  # the collapse 70 -> 71, past the edge
    s = suggest("steepest", lrs, loss)
    assert s.lr == edge.lr and s.index == edge.index
    assert "capped at the divergence edge" in s.reason


def test_slide_starts_at_the_edge_not_past_the_cliff() -> None:
    lrs, loss = collapse_curve()
    edge = find_edge(lrs, loss)
    # fastai's slide on the whole curve stops at once in the flat diverged tail:
    assert _slide(lrs, loss).lr > edge.lr
    s = suggest("slide", lrs, loss)
    assert s.lr is not None and s.lr < edge.lr and "capped" not in s.reason
    # Walking back from the edge over a straight fall (constant gradient) it stops at once: the
    # window's left end, min(15, points // 4) steps before the edge (the window ends at the edge).
    assert s.index == edge.index - min(15, (edge.index + 1) // 4)


# --------------------------------------------------------------------------- #
# The confirmed rule and its probes
# --------------------------------------------------------------------------- #


def probe(lr: float, score: float | None, start: float = 2.0, steps: int = 8) -> Probe:
    """A probe whose last quarter averages ``score`` (None: it diverged after 3 steps)."""
    if score is None:
        return Probe(lr, (start, 50.0, 90.0), steps)
    return Probe(lr, (start, *[score] * (steps - 1)), steps)


def test_probe_score_and_divergence() -> None:
    p = Probe(0.1, (2.0, 1.5, 1.0, 0.9, 0.8, 0.6, 0.5, 0.4), 8)
    assert p.score == pytest.approx(0.45) and not p.diverged and p.steps == 8  # mean of the last 2
    assert math.isinf(Probe(0.1, (2.0, 5.0), 8).score)  # stopped early: diverged
    assert math.isinf(Probe(0.1, (2.0, math.nan), 2).score)


def test_confirmed_exact_answer() -> None:
    # start 2.0, best 0.4 (at 0.5): threshold 0.4 + 0.2 * (2.0 - 0.4) = 0.72. Good: 0.707 (0.5),
    # 0.5, 0.354; the largest is 0.707. Above it 1.0 diverged, which counts as the start loss
    # 2.0: the threshold is crossed f = (0.72 - 0.5) / (2.0 - 0.5) of the way (in log LR) to 1.0.
    probes = [probe(1.0, None), probe(0.707, 0.5), probe(0.5, 0.4), probe(0.354, 0.6)]
    chosen, _ = choose(probes)
    assert chosen is not None and chosen.lr == 0.707
    limit, _ = good_limit(probes)
    f = (0.72 - 0.5) / (2.0 - 0.5)
    assert limit == pytest.approx(0.707 * (1.0 / 0.707) ** f)
    lrs = np.logspace(-3, 1, 41)
    s = suggest("confirmed", lrs, np.linspace(3.0, 1.0, 41), probes=probes)
    assert s.lr == pytest.approx(limit / CONFIRMED_MARGIN)
    assert s.index == int(np.argmin(np.abs(np.log10(lrs) - math.log10(s.lr))))
    assert "largest within 0.2 of the best progress" in s.reason and f"divided by {CONFIRMED_MARGIN:g}" in s.reason


def test_confirmed_top_probe_good_is_not_extrapolated() -> None:
    probes = [probe(0.3, 0.5), probe(0.3 / math.sqrt(2), 0.6)]
    assert good_limit(probes)[0] == 0.3
    assert suggest("confirmed", [1e-3, 1.0], [2.0, 1.0], probes=probes).lr == pytest.approx(0.3 / CONFIRMED_MARGIN)


def test_confirmed_without_an_answer_says_why() -> None:
    lrs, loss = [1e-3, 1e-2, 1e-1], [3.0, 2.0, 1.0]
    s = suggest("confirmed", lrs, loss, probes=[probe(1.0, None), probe(0.7, None)])
    assert s.lr is None and "every fixed-LR probe diverged" in s.reason
    s = suggest("confirmed", lrs, loss, probes=[probe(1.0, 2.5), probe(0.7, 2.1)])
    assert s.lr is None and "no fixed-LR probe lowered the loss" in s.reason
    s = suggest("confirmed", lrs, loss)
    assert s.lr is None and "no fixed-LR probes were run" in s.reason


def test_probe_search_descends_from_the_edge_then_refines_once() -> None:
    # Unstable from 0.75 up; below, the loss after the probe is lower the larger the LR.
    def run(lr: float) -> Probe:
        return probe(lr, None) if lr > 0.75 else probe(lr, 1.0 - lr)

    search = ProbeSearch(1.0, lowest_lr=1e-3)
    seen = []
    while (lr := search.next_lr()) is not None:
        seen.append(lr)
        search.add(run(lr))
    # 1.0 diverges, 0.707 is the best, 0.5 is worse (patience 1): stop descending; then the
    # quarter-octave between 0.707 and the failed 1.0.
    assert seen == pytest.approx([1.0, 2**-0.5, 0.5, 2**-0.25])
    assert search.choice()[0].lr == pytest.approx(2**-0.5)


def test_probe_search_stops_at_the_lowest_lr_and_the_probe_cap() -> None:
    search = ProbeSearch(1.0, lowest_lr=0.3)
    seen = []
    while (lr := search.next_lr()) is not None:
        seen.append(lr)
        search.add(probe(lr, None))  # everything diverges
    assert seen == pytest.approx([1.0, 2**-0.5, 0.5, 2**-1.5])  # 0.25 < 0.3 is never probed
    search = ProbeSearch(1.0, lowest_lr=1e-9, max_probes=3)
    for _ in range(5):
        if (lr := search.next_lr()) is not None:
            search.add(probe(lr, None))
    assert len(search.probes) == 3
    with pytest.raises(ValueError, match="top_lr must be a finite positive LR"):
        ProbeSearch(0.0, lowest_lr=1e-3)


def test_confirmed_on_least_squares_probes_lands_below_the_stability_edge() -> None:
    # Fixed-LR gradient descent on a quadratic with eigenvalues 0.01..1: the stability edge is
    # 2 / lambda_max = 2 and the best fixed LR 2 / (1 + 0.01). Simulated probes from w0 = 1 per
    # direction; the rule must land in [0.3, 1.0] x the best fixed LR.
    lams = np.logspace(-2, 0, 20)

    def run(lr: float, steps: int = 20) -> Probe:
        e, losses = np.ones_like(lams), []
        for _ in range(steps):
            losses.append(float(0.5 * np.sum(lams * e**2)))
            if losses[-1] > 5 * losses[0]:
                break
            e = (1 - lr * lams) * e
        return Probe(lr, tuple(losses), steps)

    search = ProbeSearch(9.3, lowest_lr=1e-4)  # the sweep's edge lies far past the real one
    while (lr := search.next_lr()) is not None:
        search.add(run(lr))
    s = suggest("confirmed", [1e-4, 10.0], [1.0, 0.5], probes=search.probes)
    best = 2 / (1 + 0.01)
    assert 0.3 * best <= s.lr <= 1.0 * best


# --------------------------------------------------------------------------- confidence reasons (issue 19)


def _bumpy(recover: bool) -> tuple[list[float], list[float]]:
    """A descent to 1.0 by step 40, a bump to 2.0 at step 55, back to 1.1 by step 70 (recover) or on up."""
    lrs = list(np.logspace(-4, 1, 100))
    loss = []
    for i in range(100):
        if i <= 40:
            loss.append(3.0 - 0.05 * i)
        elif i <= 55:
            loss.append(1.0 + 1.0 * (i - 40) / 15)
        elif recover and i <= 70:
            loss.append(2.0 - 0.9 * (i - 55) / 15)
        else:
            loss.append(min(3.5, loss[-1] + 0.15))
    return lrs, loss


def test_a_bump_that_recovers_is_a_non_monotone_sweep() -> None:
    from lrtrack.engine.confidence import curve_reasons

    lrs, loss = _bumpy(recover=True)
    reasons = curve_reasons(lrs, loss)
    assert len(reasons) == 1 and reasons[0].startswith("non-monotone sweep")
    lrs, loss = _bumpy(recover=False)  # a plain rise to divergence: nothing to doubt
    assert curve_reasons(lrs, loss) == []


def test_a_flat_loss_and_a_short_sweep_are_reasons() -> None:
    from lrtrack.engine.confidence import curve_reasons

    lrs = list(np.logspace(-4, 1, 100))
    flat = [2.0 - 0.0005 * i for i in range(100)]
    assert curve_reasons(lrs, flat)[0].startswith("flat loss")
    short = [3.0 - 0.1 * i for i in range(10)] + [math.nan]
    assert curve_reasons(lrs[:11], short)[0].startswith("too few steps")


def test_probe_reasons_name_what_disagrees() -> None:
    from lrtrack.engine.confidence import probe_reasons

    good = [Probe(0.1, (2.0, 1.0, 1.0, 1.0), 4), Probe(0.4, (2.0, 1.0, 1.0, 1.0), 4)]
    assert probe_reasons(good, edge_lr=0.1) != [] and probe_reasons(good, edge_lr=0.1)[0].startswith(
        "probes disagree with the curve")  # good at 4x the sweep's edge
    assert probe_reasons(good, edge_lr=0.3) == []
    assert probe_reasons(good, edge_lr=0.3, climbed_out=True)[0].startswith("no probe failed above the answer")
    assert probe_reasons(good, edge_lr=0.3, cut=True)[0].startswith("too few steps")
    flat = [Probe(0.1, (2.0, 1.99, 1.99, 1.99), 4)]
    assert probe_reasons(flat, edge_lr=0.1)[0].startswith("flat loss")
    slow = [Probe(0.1, (2.0, 1.5, 1.4, 1.4), 4)]  # 30% of the start loss: the probes barely tell LRs apart
    assert probe_reasons(slow, edge_lr=0.1) == ["slow probes: the best probe lowered the loss by 30% of its start "
                                                "in 4 steps (under 50%)"]
    none = [Probe(0.1, (2.0, 50.0, 90.0), 4)]
    assert probe_reasons(none, edge_lr=0.1)[0].startswith("no confirmed answer")
