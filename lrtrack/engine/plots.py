"""Matplotlib figures for range tests, training runs, sweeps and seed aggregates.

Every figure is a :class:`matplotlib.figure.Figure` built with the object API: nothing here
imports pyplot or switches the backend, so a notebook keeps its own. Save one with
``fig.savefig(path)`` or log it with ``MlflowClient.log_figure``; it needs no ``plt.close``.
The functions take plain sequences (no MLflow): :mod:`lrtrack.tracking.records` reads them back.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib
from matplotlib.figure import Figure

from lrtrack.engine.suggest import DEFAULT_RULE, RULES

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from lrtrack.engine.finder import RangeTestResult
    from lrtrack.engine.seeds import SeedAggregate

RULE_COLORS = {"confirmed": "tab:brown", "steepest": "tab:red", "valley": "tab:green", "minimum": "tab:purple",
               "slide": "tab:orange"}
EDGE_COLOR = "tab:red"

#: One job on the range-test overlay: (label, lrs, smoothed losses, the chosen suggestion).
OverlayCurve = tuple[str, Sequence[float], Sequence[float], float | None]
#: One training run's LR path: (label, LR per optimizer step, max_lr, base_lr).
LRPath = tuple[str, Sequence[float], float | None, float | None]
#: One training run's losses: (label, smoothed loss per step, [(step, validation loss)]).
TrainingCurves = tuple[str, Sequence[float], Sequence[tuple[int, float]]]
#: One job's bounds: (label, {rule: suggested LR}, (base_lr, max_lr) or None).
JobBounds = tuple[str, Mapping[str, float | None], tuple[float, float] | None]


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), dpi=110, layout="tight")
    return fig, fig.add_subplot()


def _color(i: int) -> tuple[float, float, float, float]:
    return matplotlib.colormaps["tab10"](i % 10)


def range_test_figure(
    result: RangeTestResult, *, title: str | None = None, chosen_rule: str | None = DEFAULT_RULE
) -> Figure:
    """Loss and smoothed loss against LR (log axis), each suggestion marked and labelled.

    Also drawn: the divergence edge (and the region past it), the confirmation probes, the
    band of a repeated test, and under the axes which rule chose the LR and why.
    """
    fig = Figure(figsize=(9, 6.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    draw_range_test(ax, result, chosen_rule=chosen_rule)
    repeats = f", median of {len(result.repeats)} repeats" if result.repeats else ""
    ax.set_title(title or f"LR range test ({result.step_mode}, {result.steps} steps{repeats}, {result.stop_reason})")
    fig.supxlabel(chosen_text(result, chosen_rule), fontsize=8, ha="left", x=0.01)
    return fig


def chosen_text(result: RangeTestResult, chosen_rule: str | None) -> str:
    """Which rule chose the LR and why (wrapped), plus the divergence edge: the figure's caption."""
    lines = []
    s = result.suggestions.get(chosen_rule) if chosen_rule else None
    if s is not None:
        head = f"chosen: {s.rule} = {s.lr:.3g}" if s.lr is not None else f"chosen: {s.rule}: no suggestion"
        lines.append(textwrap.fill(f"{head} ({s.reason})", 150))
    edge = result.edge
    edge_text = f"{edge.lr:.3g}" if edge.lr is not None else "not found"
    lines.append(textwrap.fill(f"divergence edge: {edge_text} ({edge.reason}); no curve rule goes past it", 150))
    lines.append(textwrap.fill(confidence_text(result), 150))
    return "\n".join(lines)


def confidence_text(result: RangeTestResult) -> str:
    """The confidence verdict, its reasons and what the extra budget did: one line for a caption."""
    text = f"confidence: {result.confidence}"
    if result.confidence_reasons:
        text += " (" + "; ".join(result.confidence_reasons) + ")"
    if result.extra_actions:
        text += "; " + " ".join(result.extra_actions)
    return text


def draw_range_test(ax: Axes, result: RangeTestResult, *, chosen_rule: str | None = None) -> None:
    """Draw a range-test curve, its band, edge, probes and suggestions onto ``ax``."""
    lrs = result.lrs
    ax.plot(lrs, result.losses, color="0.7", lw=1, label="loss")
    band = result.band()
    if band:
        ax.fill_between(lrs, band["min"], band["max"], color="tab:blue", alpha=0.10,
                        label=f"min-max of {len(result.repeats)} repeats")
        ax.fill_between(lrs, band["q25"], band["q75"], color="tab:blue", alpha=0.25, label="inter-quartile")
    ax.plot(lrs, result.smoothed_losses, color="tab:blue", lw=2,
            label="smoothed loss (median)" if band else "smoothed loss")
    ax.set_xscale("log" if result.step_mode == "exp" else "linear")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    # The probes' losses belong in view too: they usually end below the sweep's smoothed curve.
    focus_on_descent(ax, result.smoothed_losses, [p.score for p in result.probes])
    _draw_edge_and_probes(ax, result)
    for rule, suggestion in result.suggestions.items():
        if suggestion.lr is None:
            continue
        color = RULE_COLORS.get(rule, "black")
        chosen = " (chosen)" if rule == chosen_rule else ""
        ax.axvline(suggestion.lr, color=color, ls="--", lw=2 if chosen else 1, alpha=0.8)
        y = loss_at(result.lrs, result.smoothed_losses, suggestion.lr)
        ax.plot([suggestion.lr], [y], "o", color=color, ms=7,
                label=f"{rule}{chosen}: {suggestion.lr:.2e}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="best", fontsize=8)


def _draw_edge_and_probes(ax: Axes, result: RangeTestResult) -> None:
    """The divergence edge (a line, the region past it shaded) and each probe's final loss."""
    if result.edge.lr is not None and result.lrs:
        ax.axvline(result.edge.lr, color=EDGE_COLOR, ls="-.", lw=1.5,
                   label=f"divergence edge: {result.edge.lr:.2e}")
        ax.axvspan(result.edge.lr, max(result.lrs[-1], result.edge.lr), color=EDGE_COLOR, alpha=0.06)
    probes = [p for p in result.probes if not result.repeats or p in result.repeats[0].probes]
    if not probes:
        return
    steps = probes[0].planned
    good = [(p.lr, p.score) for p in probes if math.isfinite(p.score)]
    if good:
        ax.plot(*zip(*good), "x", color="tab:brown", ms=8, mew=2,
                label=f"probes: loss after {steps} steps at a fixed LR")
    bad = [p.lr for p in probes if not math.isfinite(p.score)]
    if bad:
        top = ax.get_ylim()[1]
        ax.plot(bad, [top] * len(bad), "v", color="tab:brown", ms=7, clip_on=False, label="probes that diverged")


def focus_on_descent(ax: Axes, *curves: Sequence[float | None]) -> None:
    """Limit the y axis to where the curves descend, so divergent tails do not flatten them.

    The top is the highest starting value, or a little above it when a curve rises early;
    the bottom is the lowest finite value of any curve.
    """
    firsts, lows, highs = [], [], []
    for curve in curves:
        finite = [v for v in curve if v is not None and math.isfinite(v)]
        if finite:
            firsts.append(finite[0])
            lows.append(min(finite))
            highs.append(max(finite))
    if not firsts:
        return
    lo, start = min(lows), max(firsts)
    hi = max(start, min(max(highs), start + 2 * (start - lo) + 1e-9))
    pad = 0.08 * (hi - lo if hi > lo else 1.0)
    ax.set_ylim(lo - pad, hi + pad)


def loss_at(lrs: Sequence[float], losses: Sequence[float | None], lr: float) -> float:
    """The loss at the recorded LR nearest ``lr`` (on a log scale); NaN when there is none."""
    pairs = [(abs(math.log(x) - math.log(lr)), v) for x, v in zip(lrs, losses)
             if x and x > 0 and v is not None and math.isfinite(v)]
    return min(pairs)[1] if pairs else math.nan


def schedule_on_range_test_figure(
    range_lrs: list[float],
    range_losses: list[float],
    range_smoothed: list[float],
    train_lrs: list[float],
    *,
    bounds: tuple[float, float] | None = None,
    title: str = "training LRs on the range-test curve",
) -> Figure:
    """The range-test loss against LR with the band of LRs the training run visits shaded."""
    fig, ax = _figure(8, 5)
    ax.plot(range_lrs, range_losses, color="0.7", lw=1, label="range-test loss")
    ax.plot(range_lrs, range_smoothed, color="tab:blue", lw=2, label="range-test smoothed loss")
    ax.set_xscale("log")
    visited = [lr for lr in train_lrs if lr > 0]
    if visited:
        lo, hi = min(visited), max(visited)
        ax.axvspan(lo, hi, color="tab:orange", alpha=0.2, label=f"LRs visited in training: {lo:.2e} - {hi:.2e}")
    if bounds is not None:
        base_lr, max_lr = bounds
        ax.axvline(max_lr, color="tab:red", ls="--", label=f"max_lr {max_lr:.2e}")
        ax.axvline(base_lr, color="tab:green", ls="--", label=f"base_lr {base_lr:.2e}")
    focus_on_descent(ax, range_smoothed)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("range-test loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="best", fontsize=8)
    return fig


def training_figure(
    lrs: list[float],
    losses: list[float],
    smoothed: list[float],
    *,
    epoch_steps: list[int] | None = None,
    val_losses: list[float] | None = None,
    title: str = "training run",
) -> Figure:
    """LR (top) and loss (bottom) against optimizer step, with validation loss per epoch."""
    fig = Figure(figsize=(8, 6), dpi=110, layout="tight")
    ax_lr, ax_loss = fig.subplots(2, 1, sharex=True)
    steps = list(range(len(lrs)))
    ax_lr.plot(steps, lrs, color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(True, alpha=0.25)
    ax_loss.plot(steps, losses, color="0.7", lw=1, label="loss")
    ax_loss.plot(steps, smoothed, color="tab:blue", lw=2, label="smoothed loss")
    if epoch_steps and val_losses:
        ax_loss.plot(epoch_steps, val_losses, "o-", color="tab:red", label="validation loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(True, alpha=0.25)
    ax_loss.legend(loc="best", fontsize=8)
    ax_lr.set_title(title)
    return fig


# --------------------------------------------------------------------------- comparing runs


def range_test_overlay_figure(curves: Sequence[OverlayCurve], *, title: str = "range tests") -> Figure:
    """Every job's smoothed range-test curve, each with its chosen suggestion marked.

    Identical curves (same model, optimizer, data and seed) are drawn dashed and say so.

    Args:
        curves: ``(label, lrs, smoothed losses, suggested LR or None)`` per job.
    """
    fig, ax = _figure(9, 5.5)
    drawn: list[Sequence[float]] = []
    seen: dict[tuple[float, ...], str] = {}
    for i, (label, lrs, smoothed, lr) in enumerate(curves):
        if not lrs:
            continue
        color = _color(i)
        text = f"{label}: {lr:.2e}" if lr else f"{label}: no suggestion"
        first = seen.setdefault(tuple(round(v, 9) for v in smoothed), label)
        if first != label:
            text += f" (same curve as {first})"
        ax.plot(lrs, smoothed, color=color, lw=1.8 if first == label else 1.2,
                ls="-" if first == label else (0, (4, 3)), label=text)
        drawn.append(smoothed)
        if lr:
            ax.plot([lr], [loss_at(lrs, smoothed, lr)], "o", color=color, ms=8, mec="black")
            ax.axvline(lr, color=color, ls=":", lw=1)
    ax.set_xscale("log")
    focus_on_descent(ax, *drawn)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    if drawn:
        ax.legend(loc="best", fontsize=7)
    return fig


def lr_paths_figure(paths: Sequence[LRPath], *, title: str = "LR paths of the training runs") -> Figure:
    """Each training run's LR per optimizer step, its max_lr/base_lr as dashed lines."""
    fig, ax = _figure(9, 4.5)
    for i, (label, lrs, max_lr, base_lr) in enumerate(paths):
        color = _color(i)
        if lrs:
            ax.plot(range(len(lrs)), lrs, color=color, lw=1.5, label=label)
        for bound in (max_lr, base_lr):
            if bound:
                ax.axhline(bound, color=color, ls="--", lw=0.8, alpha=0.7)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    if paths:
        ax.legend(loc="best", fontsize=7)
    return fig


def training_curves_figure(runs: Sequence[TrainingCurves], *,
                           title: str = "training loss (smoothed) and validation loss") -> Figure:
    """Each training run's smoothed training loss, and its validation loss per epoch as dots."""
    fig, ax = _figure(9, 5)
    for i, (label, smoothed, val) in enumerate(runs):
        color = _color(i)
        if smoothed:
            ax.plot(range(len(smoothed)), smoothed, color=color, lw=1.5, label=f"{label} train")
        if val:
            xs, ys = zip(*val)
            ax.plot(xs, ys, "o--", color=color, ms=6, label=f"{label} val")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.25)
    if runs:
        ax.legend(loc="best", fontsize=7)
    return fig


def bounds_figure(jobs: Sequence[JobBounds], *, title: str = "suggestions and chosen bounds per job") -> Figure:
    """Per job (one line each): every rule's suggestion as a marker and the [base_lr, max_lr] bar."""
    fig, ax = _figure(9, 0.6 * max(len(jobs), 2) + 1.6)
    labelled: set[str] = set()
    for y, (_, suggestions, bounds) in enumerate(jobs):
        if bounds and bounds[0] and bounds[1]:
            ax.plot(list(bounds), [y, y], color="0.3", lw=6, alpha=0.35, solid_capstyle="butt",
                    label=None if "bounds" in labelled else "[base_lr, max_lr]")
            labelled.add("bounds")
        for rule in RULES:
            lr = suggestions.get(rule)
            if lr:
                ax.plot([lr], [y], "o", color=RULE_COLORS[rule], ms=7, label=None if rule in labelled else rule)
                labelled.add(rule)
    ax.set_yticks(range(len(jobs)), [label[:60] for label, _, _ in jobs], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_title(title)
    ax.grid(True, which="both", axis="x", alpha=0.25)
    if labelled:
        ax.legend(loc="best", fontsize=7)
    return fig


def seeds_figure(agg: SeedAggregate, *, chosen_rule: str = "confirmed", title: str = "range test over seeds") -> Figure:
    """The median curve over seeds with its inter-quartile and min-max bands, each seed faint
    behind, and each rule's median suggestion with its spread over the seeds shaded."""
    fig, ax = _figure(9, 5.5)
    for curve in agg.curves:
        ax.plot(agg.lrs, curve, color="0.75", lw=0.8)
    ax.fill_between(agg.lrs, agg.lo, agg.hi, color="tab:blue", alpha=0.12, label="min-max over seeds")
    ax.fill_between(agg.lrs, agg.q25, agg.q75, color="tab:blue", alpha=0.25, label="inter-quartile")
    ax.plot(agg.lrs, agg.median, color="tab:blue", lw=2.2, label=f"median of {len(agg.seeds)} seeds")
    for rule in RULES:
        s = agg.rule_stats(rule)
        if not s:
            continue
        color = RULE_COLORS[rule]
        chosen = " (chosen)" if rule == chosen_rule else ""
        ax.axvspan(s["min"], s["max"], color=color, alpha=0.10)
        ax.axvline(s["median"], color=color, ls="--", lw=2 if chosen else 1)
        ax.plot([s["median"]], [loss_at(agg.lrs, agg.median, s["median"])], "o", color=color, ms=8,
                label=f"{rule}{chosen}: {s['median']:.2e} [{s['min']:.1e}, {s['max']:.1e}]")
    ax.set_xscale("log")
    focus_on_descent(ax, agg.median, agg.q75)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="best", fontsize=7)
    return fig
