"""Read lrtrack runs back from MLflow and compare them: sweep summaries, figures, an HTML page.

``python -m lrtrack.report <experiment name | sweep run id> --out DIR`` writes ``DIR/index.html``
and PNGs comparing the exploratory (range-test) and final (training) runs: range-test curves
with their suggestions, the chosen bounds, the LR paths and train/validation curves of the
training runs, and one table row per job. Everything is read through ``MlflowClient``; no Hydra.

The same functions build the summary table and the overlay figure that a sweep logs on its
parent run when it ends (:mod:`lrtrack.sweep`), and the seed aggregate of ``+experiment=seeds``.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lrtrack.plots import focus_on_descent  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
STAGE_TAG = "lrtrack.stage"
RULES = ("steepest", "valley", "minimum", "slide")
RULE_COLORS = {"steepest": "tab:red", "valley": "tab:green", "minimum": "tab:purple", "slide": "tab:orange"}
RANGE_TEST_HISTORY = "range_test/history.csv"
TRAIN_HISTORY = "train/history.csv"
SUMMARY_COLUMNS = (
    "job", "overrides", "status", "suggestion_rule", *(f"suggested_lr/{r}" for r in RULES),
    "max_lr", "base_lr", "final_val_accuracy", "final_val_loss", "error",
    "job_run_id", "explore_run_id", "final_run_id",
)


# --------------------------------------------------------------------------- reading runs


@dataclass
class Curve:
    """A logged history CSV (range test or training): columns as float lists."""

    columns: dict[str, list[float]] = field(default_factory=dict)

    def get(self, name: str) -> list[float]:
        return self.columns.get(name, [])

    def __bool__(self) -> bool:
        return bool(self.columns)


@dataclass
class JobRecord:
    """One job of a sweep (or one pipeline run): its runs and what they found."""

    job_run: Run | None
    explore: Run | None
    final: Run | None

    @property
    def name(self) -> str:
        run = self.job_run or self.explore or self.final
        return run.info.run_name if run else "?"

    def row(self) -> dict[str, Any]:
        """The summary-table row (see :data:`SUMMARY_COLUMNS`)."""
        job, ex, fi = self.job_run, self.explore, self.final
        tags = job.data.tags if job else (ex or fi).data.tags if (ex or fi) else {}
        row: dict[str, Any] = {
            "job": self.name,
            "overrides": tags.get("lrtrack.sweep_overrides") or tags.get("lrtrack.overrides", ""),
            "status": (job or ex or fi).info.status if (job or ex or fi) else "?",
            "suggestion_rule": ex.data.tags.get("lrtrack.suggestion_rule", "") if ex else "",
        }
        for rule in RULES:
            row[f"suggested_lr/{rule}"] = ex.data.metrics.get(f"suggested_lr/{rule}") if ex else None
        row["max_lr"] = _float(fi.data.params.get("bounds.max_lr")) if fi else None
        row["base_lr"] = _float(fi.data.params.get("bounds.base_lr")) if fi else None
        row["final_val_accuracy"] = fi.data.metrics.get("final_val_accuracy") if fi else None
        row["final_val_loss"] = fi.data.metrics.get("final_val_loss") if fi else None
        errors = [r.data.tags.get("lrtrack.error") for r in (job, ex, fi) if r is not None]
        row["error"] = next((e for e in errors if e), "")
        row["job_run_id"] = job.info.run_id if job else ""
        row["explore_run_id"] = ex.info.run_id if ex else ""
        row["final_run_id"] = fi.info.run_id if fi else ""
        return row


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def child_runs(client: MlflowClient, run: Run) -> list[Run]:
    """Runs whose ``mlflow.parentRunId`` is ``run``, oldest first."""
    return list(client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run.info.run_id}'",
        order_by=["attributes.start_time ASC"], max_results=10000,
    ))


def _by_stage(runs: Iterable[Run], stage: str) -> Run | None:
    return next((r for r in runs if r.data.tags.get(STAGE_TAG) == stage), None)


def job_record(client: MlflowClient, job_run: Run) -> JobRecord:
    """A pipeline (job) run and its explore/final children."""
    kids = child_runs(client, job_run)
    return JobRecord(job_run, _by_stage(kids, "explore"), _by_stage(kids, "final"))


def sweep_jobs(client: MlflowClient, sweep_run_id: str) -> list[JobRecord]:
    """Every job of a sweep, in start order, with its runs (read through ``search_runs``)."""
    sweep = client.get_run(sweep_run_id)
    records = []
    for run in child_runs(client, sweep):
        stage = run.data.tags.get(STAGE_TAG)
        if stage == "pipeline":
            records.append(job_record(client, run))
        elif stage == "explore":
            records.append(JobRecord(None, run, None))
        elif stage == "final":
            records.append(JobRecord(None, None, run))
    return sorted(records, key=_job_num)


def _job_num(record: JobRecord) -> int:
    run = record.job_run or record.explore or record.final
    num = run.data.tags.get("lrtrack.job_num", "") if run else ""
    return int(num) if num.isdigit() else 1 << 30


def experiment_jobs(client: MlflowClient, experiment_id: str) -> list[JobRecord]:
    """Every pipeline run of an experiment (plus explore/final runs that have no pipeline parent)."""
    runs = list(client.search_runs([experiment_id], order_by=["attributes.start_time ASC"], max_results=10000))
    by_id = {r.info.run_id: r for r in runs}
    records: dict[str, JobRecord] = {}
    loose: list[JobRecord] = []
    for r in runs:
        if r.data.tags.get(STAGE_TAG) == "pipeline":
            records[r.info.run_id] = JobRecord(r, None, None)
    for r in runs:
        stage = r.data.tags.get(STAGE_TAG)
        if stage not in ("explore", "final"):
            continue
        parent = r.data.tags.get(PARENT_TAG)
        rec = records.get(parent) if parent else None
        if rec is None:
            loose.append(JobRecord(None, r if stage == "explore" else None, r if stage == "final" else None))
        elif stage == "explore":
            rec.explore = r
        else:
            rec.final = r
    del by_id
    return list(records.values()) + loose


def read_csv_artifact(client: MlflowClient, run_id: str, path: str) -> Curve:
    """A numeric CSV artifact as columns; empty when the run has none."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception as err:  # a failed run may not have logged it
            log.debug("run %s has no %s (%s)", run_id, path, err)
            return Curve()
        columns: dict[str, list[float]] = {}
        with open(local, newline="") as fh:
            for row in csv.DictReader(fh):
                for key, value in row.items():
                    columns.setdefault(key, []).append(_float(value) if value not in (None, "") else math.nan)
        return Curve(columns)


def rows_to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


# --------------------------------------------------------------------------- figures


def _nearest(lrs: Sequence[float], values: Sequence[float], lr: float) -> float:
    pairs = [(abs(math.log(x) - math.log(lr)), v) for x, v in zip(lrs, values, strict=False)
             if x and x > 0 and v is not None and math.isfinite(v)]
    return min(pairs)[1] if pairs else math.nan


def range_test_overlay_figure(curves: Sequence[tuple[str, Curve, float | None]], *,
                              title: str = "range tests") -> Figure:
    """Every job's smoothed range-test curve, each with its chosen suggestion marked.

    Args:
        curves: ``(label, history, suggested_lr)`` per job; ``history`` has ``lr`` and
            ``loss_smoothed`` columns (the ``range_test/history.csv`` artifact).
    """
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    cmap = plt.get_cmap("tab10")
    drawn: list[list[float]] = []
    seen: dict[tuple[float, ...], str] = {}
    for i, (label, curve, lr) in enumerate(curves):
        lrs, sm = curve.get("lr"), curve.get("loss_smoothed")
        if not lrs:
            continue
        color = cmap(i % 10)
        text = f"{label}: {lr:.2e}" if lr else f"{label}: no suggestion"
        same = seen.setdefault(tuple(round(v, 9) for v in sm), label)
        if same != label:  # identical range tests (same model, optimizer, data and seed) overlap
            text += f" (same curve as {same})"
        ax.plot(lrs, sm, color=color, lw=1.8 if same == label else 1.2, ls="-" if same == label else (0, (4, 3)), label=text)
        drawn.append(sm)
        if lr:
            ax.plot([lr], [_nearest(lrs, sm, lr)], "o", color=color, ms=8, mec="black")
            ax.axvline(lr, color=color, ls=":", lw=1)
    ax.set_xscale("log")
    focus_on_descent(ax, *drawn)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    if drawn:
        ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig


def lr_paths_figure(paths: Sequence[tuple[str, Curve, float | None, float | None]], *,
                    title: str = "LR paths of the training runs") -> Figure:
    """Each training run's LR per optimizer step, its max_lr/base_lr as dashed lines."""
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    cmap = plt.get_cmap("tab10")
    for i, (label, curve, max_lr, base_lr) in enumerate(paths):
        color = cmap(i % 10)
        lrs = curve.get("lr")
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
    fig.tight_layout()
    return fig


def training_curves_figure(runs: Sequence[tuple[str, Curve, list[tuple[int, float]]]], *,
                           title: str = "training loss (smoothed) and validation loss") -> Figure:
    """Each training run's smoothed training loss, and its validation loss per epoch as dots."""
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    cmap = plt.get_cmap("tab10")
    drawn = []
    for i, (label, curve, val) in enumerate(runs):
        color = cmap(i % 10)
        sm = curve.get("loss_smoothed")
        if sm:
            ax.plot(range(len(sm)), sm, color=color, lw=1.5, label=f"{label} train")
            drawn.append(sm)
        if val:
            xs, ys = zip(*val, strict=False)
            ax.plot(xs, ys, "o--", color=color, ms=6, label=f"{label} val")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.25)
    if runs:
        ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig


def bounds_figure(rows: Sequence[dict[str, Any]], *, title: str = "suggestions and chosen bounds per job") -> Figure:
    """Per job (one line each): every rule's suggestion as a marker and the [base_lr, max_lr] bar."""
    fig, ax = plt.subplots(figsize=(9, 0.6 * max(len(rows), 2) + 1.6), dpi=110)
    labels = []
    for y, row in enumerate(rows):
        labels.append(str(row.get("job", y))[:60])
        lo, hi = row.get("base_lr"), row.get("max_lr")
        if lo and hi:
            ax.plot([lo, hi], [y, y], color="0.3", lw=6, alpha=0.35, solid_capstyle="butt",
                    label="[base_lr, max_lr]" if y == 0 else None)
        for rule in RULES:
            lr = row.get(f"suggested_lr/{rule}")
            if lr:
                ax.plot([lr], [y], "o", color=RULE_COLORS[rule], ms=7, label=rule if rule not in
                        [h.get_label() for h in ax.get_lines()] else None)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_title(title)
    ax.grid(True, which="both", axis="x", alpha=0.25)
    handles, names = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, names, loc="best", fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- seeds


@dataclass
class SeedAggregate:
    """Range tests of several seeds: the median curve, its spread and the suggestions' spread."""

    lrs: list[float]
    median: list[float]
    q25: list[float]
    q75: list[float]
    lo: list[float]
    hi: list[float]
    seeds: list[str]
    per_seed: dict[str, dict[str, float | None]]  # seed -> rule -> lr
    curves: list[list[float]]

    def rule_stats(self, rule: str) -> dict[str, float]:
        """Median, min, max and the geometric spread (log10 IQR) of a rule's suggestion."""
        import numpy as np

        values = [v[rule] for v in self.per_seed.values() if v.get(rule)]
        if not values:
            return {}
        logs = np.log10(values)
        return {"median": float(10 ** np.median(logs)), "min": float(min(values)), "max": float(max(values)),
                "log10_iqr": float(np.subtract(*np.percentile(logs, [75, 25]))), "n": float(len(values))}

    def history_rows(self) -> list[dict[str, float]]:
        return [{"step": i, "lr": lr, "loss_smoothed": m, "q25": a, "q75": b, "min": c, "max": d}
                for i, (lr, m, a, b, c, d) in enumerate(zip(self.lrs, self.median, self.q25, self.q75, self.lo, self.hi, strict=False))]


def aggregate_seeds(histories: dict[str, Curve], suggestions: dict[str, dict[str, float | None]]) -> SeedAggregate:
    """Aggregate range-test histories of several seeds on their shared LR grid.

    Runs that stopped early (divergence) are shorter: each step's statistics use the seeds that
    reached it, so the median curve runs as far as the longest run.
    """
    import numpy as np

    keyed = {k: c for k, c in histories.items() if c.get("lr")}
    if not keyed:
        raise ValueError("no range-test history to aggregate (every seed's range_test/history.csv is missing)")
    longest = max(keyed.values(), key=lambda c: len(c.get("lr")))
    lrs = longest.get("lr")
    grid = np.full((len(keyed), len(lrs)), np.nan)
    for i, c in enumerate(keyed.values()):
        sm = c.get("loss_smoothed")
        grid[i, : len(sm)] = sm
    grid[~np.isfinite(grid)] = np.nan
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            stats = {name: np.nanpercentile(grid, q, axis=0).tolist()
                     for name, q in (("median", 50), ("q25", 25), ("q75", 75), ("lo", 0), ("hi", 100))}
    return SeedAggregate(lrs=list(lrs), seeds=list(keyed), per_seed={k: suggestions.get(k, {}) for k in keyed},
                         curves=[list(row) for row in grid], **stats)


def seeds_figure(agg: SeedAggregate, *, chosen_rule: str = "valley", title: str = "range test over seeds") -> Figure:
    """Median curve with the inter-quartile and min-max bands, each rule's median suggestion with
    its seed spread (shaded), each seed faint behind."""
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
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
        ax.plot([s["median"]], [_nearest(agg.lrs, agg.median, s["median"])], "o", color=color, ms=8,
                label=f"{rule}{chosen}: {s['median']:.2e} [{s['min']:.1e}, {s['max']:.1e}]")
    ax.set_xscale("log")
    focus_on_descent(ax, agg.median, agg.q75)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the report


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.3e}"
    return str(value)


def _table_html(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            text = html.escape(_fmt(row.get(c)))
            cls = f' class="{html.escape(str(row.get(c)))}"' if c == "status" else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.FAILED{background:#fdd} td.FINISHED{background:#dfd} td.KILLED{background:#ffd}
img{max-width:100%;border:1px solid #eee;margin:6px 0} .meta{color:#666;font-size:13px}
code{background:#f5f5f5;padding:1px 4px}
"""


def resolve_target(client: MlflowClient, target: str) -> tuple[str, str, str, list[JobRecord], Run | None]:
    """``target`` as a run id (a sweep or a pipeline run) or an experiment name/id.

    Returns:
        (title, experiment_id, kind, jobs, sweep_run_or_None)
    """
    exp = client.get_experiment_by_name(target)
    if exp is None and target.isdigit():
        try:
            exp = client.get_experiment(target)
        except Exception:
            exp = None
    if exp is not None:
        return f"experiment {exp.name}", exp.experiment_id, "experiment", experiment_jobs(client, exp.experiment_id), None
    try:
        run = client.get_run(target)
    except Exception as err:
        names = ", ".join(e.name for e in client.search_experiments())
        raise ValueError(f"{target!r} is neither an experiment (available: {names or 'none'}) nor a run id "
                         f"in {client.tracking_uri}") from err
    stage = run.data.tags.get(STAGE_TAG)
    if stage == "pipeline":
        jobs = [job_record(client, run)]
    else:
        jobs = sweep_jobs(client, run.info.run_id)
    title = run.info.run_name if (run.info.run_name or "").startswith(stage or "run") else f"{stage or 'run'} {run.info.run_name}"
    return title, run.info.experiment_id, stage or "run", jobs, run


def write_report(client: MlflowClient, target: str, out: str | Path) -> Path:
    """Write ``out/index.html`` and its PNGs for an experiment, a sweep or a pipeline run.

    Returns:
        The path of the HTML page.

    Raises:
        ValueError: When ``target`` names no experiment or run, or it holds no lrtrack runs.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title, experiment_id, kind, jobs, sweep = resolve_target(client, target)
    if not jobs:
        raise ValueError(f"{target!r} ({title}) holds no lrtrack runs (no runs tagged lrtrack.stage)")
    rows = [j.row() for j in jobs]
    images: list[tuple[str, str, str]] = []

    def save(fig: Figure, name: str, heading: str, caption: str) -> None:
        fig.savefig(out / name)
        plt.close(fig)
        images.append((name, heading, caption))

    overlay = []
    for job, row in zip(jobs, rows, strict=False):
        if job.explore is not None:
            hist = read_csv_artifact(client, job.explore.info.run_id, RANGE_TEST_HISTORY)
            rule = row["suggestion_rule"] or "valley"
            overlay.append((job.name, hist, row.get(f"suggested_lr/{rule}")))
    if overlay:
        save(range_test_overlay_figure(overlay, title=f"range tests ({title})"), "range_tests.png",
             "Range tests (exploratory runs)",
             "Smoothed loss against LR for every job; the dot is the chosen rule's suggestion.")
    if any(r.get("max_lr") or any(r.get(f"suggested_lr/{x}") for x in RULES) for r in rows):
        save(bounds_figure(rows), "bounds.png", "Suggestions and chosen bounds",
             "Each rule's suggestion per job; the grey bar is the training run's [base_lr, max_lr].")
    paths, trains = [], []
    for job, row in zip(jobs, rows, strict=False):
        if job.final is None:
            continue
        hist = read_csv_artifact(client, job.final.info.run_id, TRAIN_HISTORY)
        paths.append((job.name, hist, row.get("max_lr"), row.get("base_lr")))
        val = [(m.step, m.value) for m in _metric_history(client, job.final.info.run_id, "val_loss")]
        trains.append((job.name, hist, val))
    if paths:
        save(lr_paths_figure(paths), "lr_paths.png", "LR paths (final runs)",
             "The learning rate of each training run per optimizer step; dashed: its max_lr and base_lr.")
        save(training_curves_figure(trains), "training.png", "Training and validation loss (final runs)",
             "Smoothed training loss per step; dots: validation loss at the end of each epoch.")
    seeds = [r for r in _seed_runs(client, experiment_id, sweep)]
    for i, run in enumerate(seeds):
        src = read_csv_artifact(client, run.info.run_id, "range_test/seeds_history.csv")
        if src:
            name = f"seeds_{i}.png"
            fig = _seeds_from_artifacts(client, run)
            if fig is not None:
                save(fig, name, f"Range test over seeds: {run.info.run_name}",
                     "Median curve with inter-quartile and min-max bands; each rule's median suggestion, its seed spread shaded.")

    (out / "summary.csv").write_text(rows_to_csv(rows))
    n_failed = sum(1 for r in rows if r["status"] == "FAILED")
    meta = (f"{len(rows)} job(s), {n_failed} failed; tracking store <code>{html.escape(client.tracking_uri)}</code>"
            + (f"; sweep run <code>{sweep.info.run_id}</code> ({sweep.info.status})" if sweep is not None else ""))
    shown = [c for c in SUMMARY_COLUMNS if any(r.get(c) not in (None, "") for r in rows)]
    if all(r.get("overrides") == r.get("job") for r in rows):
        shown.remove("overrides")  # a sweep names its jobs by their overrides
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>lrtrack report: {html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>lrtrack report: {html.escape(title)}</h1><p class='meta'>{meta}</p>",
             "<h2>Jobs</h2>", _table_html(rows, shown),
             "<p class='meta'>Also as <a href='summary.csv'>summary.csv</a>.</p>"]
    for name, heading, caption in images:
        parts.append(f"<h2>{html.escape(heading)}</h2><p class='meta'>{html.escape(caption)}</p>"
                     f"<img src='{name}' alt='{html.escape(heading)}'>")
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts))
    log.info("report: %s (%d images)", page, len(images))
    return page


def _metric_history(client: MlflowClient, run_id: str, key: str) -> list[Any]:
    try:
        return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    except Exception:
        return []


def _seed_runs(client: MlflowClient, experiment_id: str, sweep: Run | None) -> list[Run]:
    filt = f"tags.`{STAGE_TAG}` = 'range_test_seeds'"
    if sweep is not None:
        filt += f" and tags.`{PARENT_TAG}` = '{sweep.info.run_id}'"
    return list(client.search_runs([experiment_id], filter_string=filt, max_results=100))


def _seeds_from_artifacts(client: MlflowClient, run: Run) -> Figure | None:
    """Rebuild the seed figure of a ``range_test_seeds`` run from its logged CSVs."""
    curves = read_csv_artifact(client, run.info.run_id, "range_test/seeds_history.csv")
    sugg = read_csv_artifact(client, run.info.run_id, "range_test/seeds_suggestions.csv")
    if not curves:
        return None
    seeds = sorted({c.split("/", 1)[1] for c in curves.columns if c.startswith("seed/")})
    histories = {s: Curve({"lr": curves.get("lr"), "loss_smoothed": curves.get(f"seed/{s}")}) for s in seeds}
    per_seed: dict[str, dict[str, float | None]] = {}
    for i, seed in enumerate(sugg.get("seed")):
        key = str(int(seed)) if seed == seed else "?"
        per_seed[key] = {r: (sugg.get(r)[i] if sugg.get(r) and math.isfinite(sugg.get(r)[i]) else None) for r in RULES}
    agg = aggregate_seeds(histories, per_seed)
    return seeds_figure(agg, chosen_rule=run.data.tags.get("lrtrack.suggestion_rule", "valley"),
                        title=run.info.run_name)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lrtrack.report TARGET --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m lrtrack.report",
        description="Compare lrtrack's exploratory and final runs: one HTML page with PNGs.")
    parser.add_argument("target", help="an MLflow experiment name (or id), a sweep run id or a pipeline run id")
    parser.add_argument("--out", default="lrtrack-report", help="output folder (default: lrtrack-report)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        print(f"lrtrack.report: error: no MLflow store at {uri}; pass --tracking-uri or run from the folder "
              "holding mlflow.db", file=sys.stderr)
        return 2
    from mlflow.tracking import MlflowClient

    try:
        page = write_report(MlflowClient(tracking_uri=uri), args.target, args.out)
    except ValueError as err:
        print(f"lrtrack.report: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
