"""One HTML page comparing lrtrack's exploratory (range-test) and final (training) runs.

``python -m lrtrack.report <experiment name | sweep run id | pipeline run id> --out DIR`` writes
``DIR/index.html``, ``DIR/summary.csv`` and PNGs: the range-test curves with their suggestions,
the chosen bounds, the LR paths and train/validation curves of the training runs, the seed
aggregates, and one table row per job. Runs are read through :mod:`lrtrack.tracking.records`, figures
drawn by :mod:`lrtrack.engine.plots`; no Hydra, and the matplotlib backend is left alone.
"""

from __future__ import annotations

import html
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from lrtrack.app.summary import job_row, rows_to_csv, summary_columns
from lrtrack.engine import plots
from lrtrack.engine.suggest import RULES
from lrtrack.tracking import layout, records
from lrtrack.tracking.deliver import OneLineParser
from lrtrack.tracking.redact import install_log_redaction, redact, register_url_credentials

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.FAILED{background:#fdd} td.FINISHED{background:#dfd} td.KILLED{background:#ffd}
img{max-width:100%;border:1px solid #eee;margin:6px 0} .meta{color:#666;font-size:13px}
code{background:#f5f5f5;padding:1px 4px}
"""


class Target(NamedTuple):
    """What a report is about, resolved from the command line's TARGET."""

    title: str
    experiment_id: str
    kind: str  # "experiment", or the run's stage ("sweep", "pipeline", ...)
    jobs: list[records.JobRecord]
    sweep: Run | None  # the run named by TARGET (None for an experiment)


@dataclass
class _Image:
    name: str
    heading: str
    caption: str


def format_value(value: Any) -> str:
    """A table cell: floats to 4 significant digits (scientific outside 1e-3..1e4), None as empty."""
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.3e}"
    return str(value)


def resolve_target(client: MlflowClient, target: str) -> Target:
    """``target`` as an experiment name or id, else a run id (a sweep run or a pipeline run).

    Raises:
        ValueError: When ``target`` is neither; the message lists the experiments.
    """
    exp = client.get_experiment_by_name(target)
    if exp is None and target.isdigit():
        try:
            exp = client.get_experiment(target)
        except Exception:
            exp = None
    if exp is not None:
        jobs = records.experiment_jobs(client, exp.experiment_id)
        return Target(f"experiment {exp.name}", exp.experiment_id, "experiment", jobs, None)
    try:
        run = records.get_run(client, target)  # lrtrack's id (what lrtrack prints) or the store's
    except Exception as err:
        names = ", ".join(e.name for e in client.search_experiments())
        raise ValueError(f"{target!r} is neither an experiment (available: {names or 'none'}) nor a run id "
                         f"in {redact(client.tracking_uri)}") from err
    stage = run.data.tags.get(layout.STAGE_TAG)
    if stage == layout.STAGE_PIPELINE:
        jobs = [records.job_record(client, run)]
    else:
        jobs = records.sweep_jobs(client, run.info.run_id)
    name = run.info.run_name or ""
    title = name if name.startswith(stage or "run") else f"{stage or 'run'} {name}"
    return Target(title, run.info.experiment_id, stage or "run", jobs, run)


def write_report(client: MlflowClient, target: str, out: str | Path) -> Path:
    """Write ``out/index.html``, ``out/summary.csv`` and the PNGs for an experiment, a sweep or
    a pipeline run.

    Returns:
        The path of the HTML page.

    Raises:
        ValueError: When ``target`` names no experiment or run, or it holds no lrtrack runs.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = resolve_target(client, target)
    if not resolved.jobs:
        raise ValueError(f"{target!r} ({resolved.title}) holds no lrtrack runs "
                         f"(no runs tagged {layout.STAGE_TAG})")
    rows = [job_row(job) for job in resolved.jobs]
    images = []
    for name, heading, caption, figure in _figures(client, resolved, rows):
        figure.savefig(out / name)
        images.append(_Image(name, heading, caption))
    (out / "summary.csv").write_text(rows_to_csv(rows))
    page = out / "index.html"
    page.write_text(_page(client, resolved, rows, images))
    log.info("report: %s (%d images)", page, len(images))
    return page


def _figures(client: MlflowClient, target: Target, rows: Sequence[dict[str, Any]]
             ) -> list[tuple[str, str, str, Figure]]:
    """``(file name, heading, caption, figure)`` of every figure the page shows."""
    figures = []
    curves = records.range_test_curves(client, target.jobs)
    if curves:
        figures.append(("range_tests.png", "Range tests (exploratory runs)",
                        "Smoothed loss against LR for every job; the dot is the chosen rule's suggestion.",
                        plots.range_test_overlay_figure(curves, title=f"range tests ({target.title})")))
    bounds = [(str(r["job"]), {rule: r.get(f"{layout.SUGGESTED_LR}/{rule}") for rule in RULES},
               (r["base_lr"], r["max_lr"]) if r.get("base_lr") and r.get("max_lr") else None) for r in rows]
    if any(b or any(s.values()) for _, s, b in bounds):
        figures.append(("bounds.png", "Suggestions and chosen bounds",
                        "Each rule's suggestion per job; the grey bar is the training run's [base_lr, max_lr].",
                        plots.bounds_figure(bounds)))
    paths, trains = [], []
    for job, row in zip(target.jobs, rows):
        if job.final is not None:
            history = records.read_csv_artifact(client, job.final.info.run_id, layout.TRAIN_HISTORY)
            paths.append((job.name, history.get("lr"), row.get("max_lr"), row.get("base_lr")))
            val = records.metric_history(client, job.final.info.run_id, "val_loss")
            trains.append((job.name, history.get("loss_smoothed"), val))
    if paths:
        figures.append(("lr_paths.png", "LR paths (final runs)",
                        "The learning rate of each training run per optimizer step; dashed: its max_lr and base_lr.",
                        plots.lr_paths_figure(paths)))
        figures.append(("training.png", "Training and validation loss (final runs)",
                        "Smoothed training loss per step; dots: validation loss at the end of each epoch.",
                        plots.training_curves_figure(trains)))
    sweep_id = target.sweep.info.run_id if target.sweep is not None else None
    for i, run in enumerate(records.seed_runs(client, target.experiment_id, sweep_id)):
        agg = records.read_seed_aggregate(client, run)
        if agg is not None:
            rule = records.suggestion_rule(run)
            figures.append((f"seeds_{i}.png", f"Range test over seeds: {run.info.run_name}",
                            "Median curve with inter-quartile and min-max bands; each rule's median suggestion, "
                            "its seed spread shaded.",
                            plots.seeds_figure(agg, chosen_rule=rule, title=run.info.run_name)))
    return figures


def _table_html(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            text = html.escape(format_value(row.get(c)))
            cls = f' class="{html.escape(str(row.get(c)))}"' if c == "status" else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _page(client: MlflowClient, target: Target, rows: Sequence[dict[str, Any]], images: Sequence[_Image]) -> str:
    n_failed = sum(1 for r in rows if r["status"] == "FAILED")
    sweep = target.sweep
    meta = (f"{len(rows)} job(s), {n_failed} failed; tracking store <code>{html.escape(redact(client.tracking_uri))}</code>"
            + (f"; sweep run <code>{sweep.info.run_id}</code> ({sweep.info.status})" if sweep is not None else ""))
    shown = [c for c in summary_columns(rows) if any(r.get(c) not in (None, "") for r in rows)]
    if "overrides" in shown and all(r.get("overrides") == r.get("job") for r in rows):
        shown.remove("overrides")  # a sweep names its jobs by their overrides
    title = html.escape(target.title)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>lrtrack report: {title}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>lrtrack report: {title}</h1><p class='meta'>{meta}</p>",
             "<h2>Jobs</h2>", _table_html(rows, shown),
             "<p class='meta'>Also as <a href='summary.csv'>summary.csv</a>.</p>"]
    for image in images:
        heading = html.escape(image.heading)
        parts.append(f"<h2>{heading}</h2><p class='meta'>{html.escape(image.caption)}</p>"
                     f"<img src='{image.name}' alt='{heading}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lrtrack.report TARGET --out DIR``; returns the exit status (2 on a user error)."""
    parser = OneLineParser(
        prog="python -m lrtrack.report",
        description="Compare lrtrack's exploratory and final runs: one HTML page with PNGs.")
    parser.add_argument("target", help="an MLflow experiment name (or id), a sweep run id or a pipeline run id")
    parser.add_argument("--out", default="lrtrack-report", help="output folder (default: lrtrack-report)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")
    args = parser.parse_args(argv)
    if not args.out.strip():  # '' is the current folder: the report's files would land among the user's
        print("lrtrack: error: --out '' is empty; name a folder to write the report into (default: lrtrack-report)",
              file=sys.stderr)
        return 2
    install_log_redaction()  # an error's message or traceback may quote a URI with its password
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    register_url_credentials(uri)  # a password holding a space or a quote: masked as a literal too
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        print(f"lrtrack: error: no MLflow store at {redact(uri)}; pass --tracking-uri or run from the folder "
              "holding mlflow.db", file=sys.stderr)
        return 2
    from lrtrack.tracking.store import TrackingUnavailable, preflight, read_client

    try:
        preflight(uri, setting="--tracking-uri", off_switch=None)  # one line, before MLflow's traceback
    except TrackingUnavailable as err:
        print(f"lrtrack: error: {err}", file=sys.stderr)
        return 2

    out = Path(args.out)
    taken = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if taken is not None:
        print(f"lrtrack: error: --out {args.out!r}: {taken} is a file, not a folder; name a folder to write "
              "the report into (it is created)", file=sys.stderr)
        return 2
    try:
        page = write_report(read_client(uri), args.target, args.out)
    except ValueError as err:
        print(f"lrtrack: error: {redact(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # a folder that cannot be written (read-only, a full disk)
        print(f"lrtrack: error: --out {args.out!r}: cannot write the report there ({err.strerror or err}); "
              "name a writable folder", file=sys.stderr)
        return 2
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
