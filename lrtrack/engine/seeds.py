"""Range tests of several seeds as one: the median curve, its spread and each rule's spread.

A library module (no MLflow, no Hydra): :func:`aggregate_seeds` takes each seed's range-test
curve (LRs and smoothed losses) and its suggestions, and returns a :class:`SeedAggregate`.
``+experiment=seeds`` logs one per group of sweep jobs that differ only in ``seed``
(:mod:`lrtrack.app.sweep`); :func:`lrtrack.engine.plots.seeds_figure` draws it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Columns of :meth:`SeedAggregate.history_rows` (the aggregate's ``range_test/history.csv``).
HISTORY_COLUMNS = ("step", "lr", "loss_smoothed", "q25", "q75", "min", "max")


@dataclass
class SeedAggregate:
    """Range tests of several seeds on one LR grid.

    Attributes:
        lrs: The LR grid (the longest run's).
        median, q25, q75, lo, hi: Per step, the median, quartiles, minimum and maximum of the
            smoothed loss over the seeds that reached that step.
        seeds: The seeds, in the order given.
        per_seed: ``seed -> rule -> suggested LR`` (None where a rule found none).
        curves: Each seed's smoothed loss on the grid (NaN past its last step).
    """

    lrs: list[float]
    median: list[float]
    q25: list[float]
    q75: list[float]
    lo: list[float]
    hi: list[float]
    seeds: list[str]
    per_seed: dict[str, dict[str, float | None]]
    curves: list[list[float]]

    def rule_stats(self, rule: str) -> dict[str, float]:
        """Median, min, max, count and the geometric spread (log10 IQR) of a rule's suggestion.

        Returns:
            ``{"median", "min", "max", "log10_iqr", "n"}``, or ``{}`` when no seed has one.
        """
        values = [v[rule] for v in self.per_seed.values() if v.get(rule)]
        if not values:
            return {}
        logs = np.log10(values)
        return {"median": float(10 ** np.median(logs)), "min": float(min(values)),
                "max": float(max(values)), "log10_iqr": float(np.subtract(*np.percentile(logs, [75, 25]))),
                "n": float(len(values))}

    def history_rows(self) -> list[dict[str, float]]:
        """One row per step with the :data:`HISTORY_COLUMNS`."""
        columns = zip(self.lrs, self.median, self.q25, self.q75, self.lo, self.hi, strict=False)
        return [{"step": i, "lr": lr, "loss_smoothed": m, "q25": a, "q75": b, "min": c, "max": d}
                for i, (lr, m, a, b, c, d) in enumerate(columns)]


def aggregate_seeds(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    suggestions: Mapping[str, Mapping[str, float | None]]) -> SeedAggregate:
    """Aggregate the range tests of several seeds on their shared LR grid.

    Runs that stopped early (divergence) are shorter: each step's statistics use the seeds that
    reached it, so the median curve runs as far as the longest run.

    Args:
        curves: ``seed -> (lrs, smoothed losses)``; seeds with no LRs are left out.
        suggestions: ``seed -> rule -> suggested LR`` (None where a rule found none).

    Raises:
        ValueError: When no seed has a curve.
    """
    keyed = {seed: (list(lrs), list(losses)) for seed, (lrs, losses) in curves.items() if len(lrs)}
    if not keyed:
        raise ValueError("no range-test history to aggregate (every seed's range_test/history.csv is missing)")
    lrs = max(keyed.values(), key=lambda c: len(c[0]))[0]
    grid = np.full((len(keyed), len(lrs)), np.nan)
    for i, (_, losses) in enumerate(keyed.values()):
        row = np.asarray(losses[: len(lrs)], dtype=float)
        grid[i, : len(row)] = row
    grid[~np.isfinite(grid)] = np.nan
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step no seed reached: all-NaN column
        stats = {name: np.nanpercentile(grid, q, axis=0).tolist()
                 for name, q in (("median", 50), ("q25", 25), ("q75", 75), ("lo", 0), ("hi", 100))}
    return SeedAggregate(lrs=lrs, seeds=list(keyed), curves=[list(map(float, row)) for row in grid],
                         per_seed={k: dict(suggestions.get(k, {})) for k in keyed}, **stats)
