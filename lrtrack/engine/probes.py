"""The confirmation stage of a range test: short fixed-LR probes from the start (no torch here).

A sweep raises the LR every step, so the loss it records at an LR depends on everything
before it. On a noiseless problem the sweep first removes the directions that later turn
unstable, and the loss keeps falling several times past the LR where training at that fixed
LR diverges (on least squares the sweep's minimum lies 3-7x past the stability edge
``2 / lambda_max``). A probe asks the direct question instead: from the state the test
started in, take ``steps`` optimizer steps at one fixed LR and measure the loss.

:class:`ProbeSearch` decides which LRs to probe: the divergence edge; half-octave steps (factors
of sqrt(2)) *up* from it while the probes stay good (the edge is only a starting point: a sweep
whose loss bumps up and recovers puts it too early); then half-octave steps down until a probe
has lowered the loss and the next one fails to beat the best one; then one quarter-octave probe
between the largest good LR and the failing one above it.
:func:`good_limit` reads off the largest LR that trains about as well as the best probe. The
engine (:func:`lrtrack.engine.finder.run_range_test`) runs every probe from the same start state on
the same batches, so the probes differ only in their LR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Stop descending after this many probes in a row that do not beat the best one.
PATIENCE = 1
#: Probes at most (the unstable ones usually stop after a few steps).
MAX_PROBES = 10
#: Half-octave rungs above the divergence edge the search may climb while the probes stay good.
MAX_UP = 4
#: A probe counts as good when its loss is within this share of the best probe's progress
#: (``start loss - best``) of the best probe.
TOLERANCE = 0.2


@dataclass(frozen=True)
class Probe:
    """One fixed-LR probe.

    Attributes:
        lr: the LR of the first parameter group (the others keep their ratio to it).
        losses: the loss of every step taken; the first is measured at the start weights.
        planned: the steps the probe was to take; fewer means it diverged and was stopped.
    """

    lr: float
    losses: tuple[float, ...]
    planned: int

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def diverged(self) -> bool:
        return self.steps < self.planned or not all(math.isfinite(v) for v in self.losses)

    @property
    def score(self) -> float:
        """The mean loss of the last quarter of its steps (at least 2); inf when it diverged."""
        if self.diverged or not self.losses:
            return math.inf
        tail = self.losses[-max(2, self.planned // 4):]
        return sum(tail) / len(tail)

    def as_dict(self) -> dict[str, float | int | bool]:
        return {"lr": self.lr, "score": self.score, "steps": self.steps, "planned": self.planned,
                "diverged": self.diverged}


def good_probes(probes: Sequence[Probe], tol: float | None = None) -> tuple[list[Probe], float, float]:
    """The probes that train about as well as the best one (``tol`` None: :data:`TOLERANCE`).

    Returns:
        ``(good, best_score, threshold)``: ``good`` holds every probe whose score is at most
        ``best + tol * (start - best)``, where ``start`` is the loss at the start weights (every
        probe's first loss). Empty when no probe lowered the loss.
    """
    tol = TOLERANCE if tol is None else tol
    finite = [p for p in probes if math.isfinite(p.score)]
    if not finite:
        return [], math.inf, math.inf
    best = min(p.score for p in finite)
    start = finite[0].losses[0]
    if not best < start:
        return [], best, best
    threshold = best + tol * (start - best)
    return [p for p in finite if p.score <= threshold], best, threshold


class ProbeSearch:
    """Which LR to probe next; call :meth:`next_lr`, run the probe, :meth:`add` it, repeat.

    The probes are the evidence; the sweep's divergence edge is only where they start. The
    search runs in three phases on a ladder of half-octave rungs ``top * sqrt(2) ** k``:

    1. **Up** (``k = 1, 2, ...``, at most ``max_up`` rungs): while the newest probe at or above
       ``top`` trains about as well as the best probe so far (:func:`good_probes`). A sweep whose
       loss bumps up and recovers puts its edge too early; a good probe there says "look higher",
       and only a failing probe ends the climb.
    2. **Down** (``k = -1, -2, ...``): until a probe has lowered the loss below the start and the
       next one below it fails to beat the best one (``patience``); never below ``lowest_lr``.
    3. **Refinement**: once, the quarter-octave between the largest good rung and a failing rung
       above it.

    Args:
        top_lr: the first LR to probe (the divergence edge, or the sweep's last LR).
        lowest_lr: never probe below this (the sweep's first LR).
        max_probes: probes at most.
        patience: stop descending after this many probes in a row without a new best, once a
            probe has lowered the loss below the start loss. Before that the search goes on
            down: a probe that diverged or ended above the start says nothing about the LRs
            below it (stopping there left ``confirmed`` without an answer).
        tol: see :func:`good_probes`.
        max_up: half-octave rungs above ``top_lr`` at most (None: :data:`MAX_UP`).
    """

    def __init__(self, top_lr: float, *, lowest_lr: float, max_probes: int = MAX_PROBES,
                 patience: int = PATIENCE, tol: float | None = None, max_up: int | None = None) -> None:
        if not (math.isfinite(top_lr) and top_lr > 0):
            raise ValueError(f"top_lr must be a finite positive LR; got {top_lr!r}")
        self.top = float(top_lr)
        self.lowest = lowest_lr
        self.max_probes, self.patience = max_probes, patience
        self.tol = TOLERANCE if tol is None else tol
        self.max_up = MAX_UP if max_up is None else max_up
        self.probes: list[Probe] = []
        self._rungs: list[int | None] = []  # the rung of every probe (None: the refinement)
        self._phase = "up"
        self._refined = False

    def _rung_lr(self, k: int) -> float:
        return self.top * math.sqrt(2) ** k

    def next_lr(self) -> float | None:
        """The next LR to probe, or None when the search is over."""
        if len(self.probes) >= self.max_probes:
            return None
        if not self.probes:
            return self.top
        if self._phase == "up":
            k = max(r for r in self._rungs if r is not None)
            if k < self.max_up and self._good(self.probes[-1]):
                return self._rung_lr(k + 1)
            self._phase = "down"
        if self._phase == "down":
            down = [p for p, r in zip(self.probes, self._rungs) if r is not None and r < 0]
            k = min(r for r in self._rungs if r is not None)
            lr = self._rung_lr(min(k, 0) - 1)
            if self._descend(down) and lr >= self.lowest * (1 - 1e-9):
                return lr
            self._phase = "refine"
        return self._refinement()

    def _good(self, probe: Probe) -> bool:
        """Whether ``probe`` lowered the loss and trains about as well as the best probe so far."""
        good, _, _ = good_probes(self.probes, self.tol)
        return any(p is probe for p in good)

    def _descend(self, down: list[Probe]) -> bool:
        """Go on down: no rung below the top yet, no progress yet, or the last one was a new best."""
        if not down or not self._progressed():
            return True
        misses = 0
        for p in reversed(down):
            if p.score <= min(q.score for q in self.probes if q is not p) and p.score < math.inf:
                break
            misses += 1
        return misses < self.patience

    def _progressed(self) -> bool:
        """Whether a probe has lowered the loss below the start loss (every probe's first loss)."""
        return bool(self.probes) and min(p.score for p in self.probes) < self.probes[0].losses[0]

    def _refinement(self) -> float | None:
        """Once: the quarter-octave between the largest good rung and a failing rung above it."""
        if self._refined:
            return None
        self._refined = True
        good, _, _ = good_probes(self.probes, self.tol)
        if not good:
            return None
        chosen = max(p.lr for p in good)
        above = [p for p in self.probes if math.isclose(p.lr, chosen * math.sqrt(2), rel_tol=1e-6)]
        if not above:
            return None
        return chosen * 2.0 ** 0.25

    def add(self, probe: Probe) -> None:
        """Record a finished probe (the LR :meth:`next_lr` gave)."""
        rung = None if self._refined else round(2 * math.log2(probe.lr / self.top))
        self._rungs.append(rung)
        self.probes.append(probe)

    def cut_matters(self) -> bool:
        """Whether stopping now leaves the answer open: still climbing, or no failing probe above
        the largest good one (a refinement left out does not count)."""
        if self._phase == "up":
            return True
        good, _, _ = good_probes(self.probes, self.tol)
        if not good:
            return True
        chosen = max(p.lr for p in good)
        return not any(p.lr > chosen for p in self.probes)

    @property
    def climbed_out(self) -> bool:
        """Whether the climb stopped at ``max_up`` rungs with the highest probe still good."""
        ups = [p for p, r in zip(self.probes, self._rungs) if r is not None and r >= self.max_up]
        return bool(ups) and self._good(ups[-1])

    def choice(self) -> tuple[Probe | None, str]:
        """The largest probed LR that trains about as well as the best probe, and why."""
        return choose(self.probes, self.tol)


def choose(probes: Sequence[Probe], tol: float | None = None) -> tuple[Probe | None, str]:
    """The largest probed LR that trains about as well as the best probe (see :func:`good_probes`).

    Returns:
        ``(probe, reason)``; ``probe`` is None when every probe diverged or none lowered the
        loss, and ``reason`` says which.
    """
    if not probes:
        return None, "no probe was run"
    good, best, _ = good_probes(probes, tol)
    if not good:
        lowest = min(p.lr for p in probes)
        if not math.isfinite(best):
            return None, (f"every fixed-LR probe diverged (down to lr {lowest:.3g}); lower the start LR "
                          "of the sweep so the probes can reach a stable LR")
        return None, (f"no fixed-LR probe lowered the loss in {probes[0].planned} steps (down to lr "
                      f"{lowest:.3g}); the loss may be flat, or the probes too short (probe_steps)")
    chosen = max(good, key=lambda p: p.lr)
    return chosen, (f"{len(probes)} fixed-LR probes of {probes[0].planned} steps from the start: lr "
                    f"{chosen.lr:.3g} is the largest within {TOLERANCE if tol is None else tol:g} of the best progress "
                    f"(loss {chosen.score:.4g}; best {best:.4g})")


def good_limit(probes: Sequence[Probe], tol: float | None = None) -> tuple[float | None, str]:
    """The largest LR that trains about as well as the best probe, between the probed LRs.

    From the largest good probe (:func:`choose`) towards the next probe above it, the loss is
    interpolated linearly against log(LR) to where it crosses the threshold; a diverged probe,
    or one that ended above the start loss, counts as the start loss. Without a probe above,
    the largest good probe's LR.

    Returns:
        ``(lr, reason)``; ``lr`` is None as in :func:`choose`.
    """
    chosen, why = choose(probes, tol)
    if chosen is None:
        return None, why
    _, _, threshold = good_probes(probes, tol)
    start = chosen.losses[0]
    above = [p for p in probes if p.lr > chosen.lr * (1 + 1e-9)]
    if not above:
        return chosen.lr, why
    upper = min(above, key=lambda p: p.lr)
    high = min(upper.score, start)
    if not high > chosen.score:
        return chosen.lr, why
    f = min(1.0, max(0.0, (threshold - chosen.score) / (high - chosen.score)))
    lr = chosen.lr * (upper.lr / chosen.lr) ** f
    return lr, f"{why}; the threshold is crossed at lr {lr:.3g}, on the way to lr {upper.lr:.3g}"
