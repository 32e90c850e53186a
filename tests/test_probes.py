"""The confirmation probes' search on synthetic probe losses whose right answer is known."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from lrtrack.engine.probes import Probe, ProbeSearch
from lrtrack.engine.suggest import CONFIRMED_MARGIN, suggest

START = 2.0


def probe(lr: float, score: float | None, steps: int = 8) -> Probe:
    """A probe from the start loss 2.0 whose last quarter averages ``score`` (None: diverged after 3 steps)."""
    if score is None:
        return Probe(lr, (START, 50.0, 90.0), steps)
    return Probe(lr, (START, *[score] * (steps - 1)), steps)


def search_with(run: Callable[[float], Probe], top: float = 1.0, lowest: float = 1e-3) -> tuple[ProbeSearch, list[float]]:
    search = ProbeSearch(top, lowest_lr=lowest)
    seen = []
    while (lr := search.next_lr()) is not None:
        seen.append(lr)
        search.add(run(lr))
    return search, seen


def test_a_top_probe_that_ends_above_the_start_does_not_end_the_search() -> None:
    # Adam near the edge: at 1.0 the loss spikes and is still above the start (2.5 > 2.0) after the
    # probe, at 0.707 it diverges; from 0.5 down it trains, best at 0.5. The search used to take the
    # 2.5 as its best, stop after the next probe failed to beat it, and leave `confirmed` without an
    # answer; it must go on down until a probe lowers the loss.
    def run(lr: float) -> Probe:
        if lr > 0.9:
            return probe(lr, 2.5)
        return probe(lr, None) if lr > 0.55 else probe(lr, 1.0 - lr)

    search, seen = search_with(run)
    # 0.354 fails to beat 0.5 (patience 1): stop; then the quarter-octave between 0.5 and 0.707,
    # which diverges too.
    assert seen == pytest.approx([1.0, 2**-0.5, 0.5, 2**-1.5, 2**-0.75])
    chosen, _ = search.choice()
    assert chosen is not None and chosen.lr == pytest.approx(0.5)
    # Best 0.5, threshold 0.5 + 0.2 * (2.0 - 0.5) = 0.8; the diverged 0.595 above counts as the
    # start loss, so the threshold is crossed (0.8 - 0.5) / (2.0 - 0.5) = 0.2 of the way to it.
    s = suggest("confirmed", [1e-3, 10.0], [2.0, 1.0], probes=search.probes)
    assert s.lr == pytest.approx(0.5 * 2 ** (0.25 * 0.2) / CONFIRMED_MARGIN)


def test_probes_that_only_diverge_or_rise_are_searched_down_to_the_lowest_lr() -> None:
    # Nothing lowers the loss: alternately diverged and ending above the start. The search keeps
    # going down (half-octaves) to the sweep's first LR, and `confirmed` says why it has no answer.
    def run(lr: float) -> Probe:
        return probe(lr, None) if round(math.log2(lr) * 2) % 2 else probe(lr, 2.4)

    search, seen = search_with(run, lowest=0.1)
    assert seen == pytest.approx([2 ** (-k / 2) for k in range(7)])  # 1.0 ... 0.125 (>= 0.1)
    s = suggest("confirmed", [0.1, 1.0], [2.0, 1.0], probes=search.probes)
    assert s.lr is None and "no fixed-LR probe lowered the loss" in s.reason


def test_once_a_probe_made_progress_patience_stops_the_descent() -> None:
    # The usual case is unchanged: 1.0 diverges, 0.707 is the best, 0.5 does not beat it: stop.
    def run(lr: float) -> Probe:
        return probe(lr, None) if lr > 0.75 else probe(lr, 1.0 - lr)

    search, seen = search_with(run)
    assert seen == pytest.approx([1.0, 2**-0.5, 0.5, 2**-0.25])
    # Best 1 - 0.707 = 0.293 at 0.707; threshold 0.293 + 0.2 * (2.0 - 0.293); the diverged 0.841
    # above counts as the start loss: crossed 0.2 of the way (in log LR) from 0.707 to 0.841.
    s = suggest("confirmed", [1e-3, 10.0], [2.0, 1.0], probes=search.probes)
    assert s.lr == pytest.approx(2**-0.5 * 2 ** (0.25 * 0.2) / CONFIRMED_MARGIN)


# --------------------------------------------------------------------------- upward probing (issue 19)


def test_a_good_probe_at_the_edge_climbs_until_one_fails() -> None:
    # A sweep whose loss bumped up and recovered put its edge at 1.0, but fixed-LR training is good
    # up to about 3: the search climbs half-octaves while the probes stay good (1.41, 2, 2.83),
    # 4.0 diverges, then one rung below the edge, then the quarter-octave between 2.83 and 4.
    def run(lr: float) -> Probe:
        return probe(lr, None) if lr > 3.0 else probe(lr, 0.5 - 0.01 * lr)

    search, seen = search_with(run)
    assert seen[:5] == pytest.approx([1.0, 2**0.5, 2.0, 2**1.5, 4.0])
    assert seen[5] == pytest.approx(2**-0.5)  # one rung down: is something below much better?
    assert seen[6] == pytest.approx(2**1.5 * 2**0.25)
    chosen, _ = search.choice()
    assert chosen is not None and chosen.lr == pytest.approx(2**1.5)  # 3.36 > 3 diverged
    s = suggest("confirmed", [1e-3, 1.0], [2.0, 1.0], probes=search.probes)  # the sweep ended at 1.0
    assert s.lr is not None and s.lr > 1.0 / CONFIRMED_MARGIN * 2  # not capped at the edge
    assert not search.climbed_out


def test_the_climb_is_bounded_and_says_so() -> None:
    # Every probe is good: the climb stops after MAX_UP rungs (4x the edge) and reports it.
    from lrtrack.engine.probes import MAX_UP

    search, seen = search_with(lambda lr: probe(lr, 0.5))
    assert max(seen) == pytest.approx(2 ** (MAX_UP / 2))
    assert search.climbed_out


def test_a_failing_probe_at_the_edge_does_not_climb() -> None:
    def run(lr: float) -> Probe:
        return probe(lr, None) if lr > 0.9 else probe(lr, 1.0 - lr)

    _, seen = search_with(run)
    assert max(seen) == pytest.approx(1.0)
