"""Figures: built with matplotlib's object API, so importing or using lrtrack never switches the
user's backend (a notebook keeps its own) and needs no pyplot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from matplotlib.figure import Figure

PNG = b"\x89PNG\r\n\x1a\n"

IMPORT_CHECK = """
import json, os, sys
before = dict(os.environ)
import matplotlib
import lrtrack.engine.plots, lrtrack.app.report, lrtrack.app.sweep, lrtrack.tracking.layout, lrtrack.tracking.records, lrtrack.engine.seeds
from lrtrack.engine import plots
fig = plots.range_test_overlay_figure([("a", [1e-3, 1e-2, 1e-1], [2.0, 1.0, 3.0], 1e-2)])
fig.savefig(sys.argv[1])
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps({"backend": matplotlib.get_backend(), "env_changed": changed,
                  "pyplot": "matplotlib.pyplot" in sys.modules}))
"""


def test_importing_and_drawing_leave_the_backend_and_environment_alone(tmp_path: Path) -> None:
    env = {**os.environ, "MPLBACKEND": "svg"}
    proc = subprocess.run([sys.executable, "-c", IMPORT_CHECK, str(tmp_path / "a.png")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"backend": "svg", "env_changed": [], "pyplot": False}
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG  # savefig picks its canvas by file type


def _saved(fig: Figure, path: Path) -> bytes:
    assert isinstance(fig, Figure)
    fig.savefig(path)
    return path.read_bytes()


def test_comparison_figures_render(tmp_path: Path) -> None:
    from lrtrack.engine import plots

    lrs = [10 ** (-4 + i / 5) for i in range(20)]
    loss = [2.0 - 0.08 * i if i < 15 else 5.0 for i in range(20)]
    overlay = plots.range_test_overlay_figure(
        [("sgd", lrs, loss, 1e-2), ("adamw", lrs, loss, None), ("empty", [], [], None)], title="t")
    labels = [t.get_text() for t in overlay.axes[0].get_legend().get_texts()]
    assert labels == ["sgd: 1.00e-02", "adamw: no suggestion (same curve as sgd)"]
    low, high = overlay.axes[0].get_ylim()
    assert high < 5.0  # the divergent tail does not flatten the curves
    assert _saved(overlay, tmp_path / "overlay.png")[:8] == PNG

    paths = plots.lr_paths_figure([("a", [1e-3, 1e-2, 1e-3], 1e-2, 1e-3), ("b", [], None, None)])
    training = plots.training_curves_figure([("a", [2.0, 1.5, 1.0], [(2, 1.2)]), ("b", [], [])])
    bounds = plots.bounds_figure([("job a", {"valley": 1e-2, "steepest": 3e-3}, (1e-3, 1e-2)),
                                  ("job b", {"valley": 2e-2, "minimum": None}, None)])
    names = [t.get_text() for t in bounds.axes[0].get_legend().get_texts()]
    assert names == ["[base_lr, max_lr]", "steepest", "valley"]  # each label once
    assert [t.get_text() for t in bounds.axes[0].get_yticklabels()] == ["job a", "job b"]
    for name, fig in (("paths", paths), ("training", training), ("bounds", bounds)):
        assert _saved(fig, tmp_path / f"{name}.png")[:8] == PNG


def test_seeds_figure_marks_each_rule_median(tmp_path: Path) -> None:
    from lrtrack.engine import plots
    from lrtrack.engine.seeds import aggregate_seeds

    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    agg = aggregate_seeds({"0": (lrs, [2.0, 1.0, 0.5, 3.0]), "1": (lrs, [2.2, 1.2, math.nan, 5.0])},
                          {"0": {"valley": 1e-2}, "1": {"valley": 1e-1}})
    fig = plots.seeds_figure(agg, chosen_rule="valley", title="seeds")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "median of 2 seeds" in labels
    assert any(label.startswith("valley (chosen): 3.16e-02") for label in labels)
    assert _saved(fig, tmp_path / "seeds.png")[:8] == PNG


def test_loss_at_reads_the_nearest_finite_point() -> None:
    from lrtrack.engine.plots import loss_at

    assert loss_at([1e-3, 1e-2, 1e-1], [3.0, 2.0, math.nan], 0.05) == 2.0
    assert math.isnan(loss_at([], [], 1e-2))
