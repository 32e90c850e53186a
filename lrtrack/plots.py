"""Matplotlib figures (Agg backend, so they render without a display)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

if TYPE_CHECKING:
    from lrtrack.finder import RangeTestResult

RULE_COLORS = {"steepest": "tab:red", "valley": "tab:green", "minimum": "tab:purple", "slide": "tab:orange"}


def range_test_figure(
    result: RangeTestResult, *, title: str | None = None, chosen_rule: str | None = None
) -> Figure:
    """Loss and smoothed loss against LR (log axis), each suggestion marked and labelled."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    draw_range_test(ax, result, chosen_rule=chosen_rule)
    ax.set_title(title or f"LR range test ({result.step_mode}, {result.steps} steps, {result.stop_reason})")
    fig.tight_layout()
    return fig


def draw_range_test(ax: plt.Axes, result: RangeTestResult, *, chosen_rule: str | None = None) -> None:
    """Draw a range-test curve and its suggestions onto ``ax``."""
    lrs = result.lrs
    ax.plot(lrs, result.losses, color="0.7", lw=1, label="loss")
    ax.plot(lrs, result.smoothed_losses, color="tab:blue", lw=2, label="smoothed loss")
    ax.set_xscale("log" if result.step_mode == "exp" else "linear")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    focus_on_descent(ax, result.smoothed_losses)
    for rule, suggestion in result.suggestions.items():
        if suggestion.lr is None:
            continue
        color = RULE_COLORS.get(rule, "black")
        chosen = " (chosen)" if rule == chosen_rule else ""
        ax.axvline(suggestion.lr, color=color, ls="--", lw=2 if chosen else 1, alpha=0.8)
        y = _loss_at(result, suggestion.lr)
        ax.plot([suggestion.lr], [y], "o", color=color, ms=7,
                label=f"{rule}{chosen}: {suggestion.lr:.2e}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="best", fontsize=8)


def focus_on_descent(ax: plt.Axes, *curves: Sequence[float | None]) -> None:
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


def _loss_at(result: RangeTestResult, lr: float) -> float:
    """The smoothed loss at the recorded LR nearest ``lr`` (on a log scale)."""
    pairs = [(abs(math.log(x) - math.log(lr)), v) for x, v in zip(result.lrs, result.smoothed_losses)
             if x > 0 and math.isfinite(v)]
    return min(pairs)[1] if pairs else float("nan")


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
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
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
    fig.tight_layout()
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
    fig, (ax_lr, ax_loss) = plt.subplots(2, 1, figsize=(8, 6), dpi=110, sharex=True)
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
    fig.tight_layout()
    return fig
