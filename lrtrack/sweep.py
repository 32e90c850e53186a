"""Sweeps as first-class MLflow citizens: one parent run per ``python -m lrtrack -m ...``.

:class:`SweepCallback` (a Hydra callback, registered in ``conf/config.yaml``) creates the store,
the experiment and the sweep's parent run once, in ``on_multirun_start``, before any job
starts, so parallel jobs (joblib, submitit) never race on a fresh sqlite database. It hands the
sweep to the jobs through environment variables (inherited by launcher worker processes), and
each job's pipeline run becomes a child of the sweep run, named by the job's swept overrides.

In ``on_multirun_end`` it reads every job back through ``MlflowClient``, logs the summary table
(``sweep/summary.csv`` and ``sweep/summary.json``) and the overlay of every range-test curve
(``sweep/range_tests.png``) on the sweep run, and ends it FAILED when any job failed, else
FINISHED. With ``aggregate_seeds: true`` (``+experiment=seeds``) it also logs, per group of
jobs that differ only in ``seed``, a ``range_test_seeds`` run with the median curve, its spread
and each rule's suggestion spread across seeds.

Launchers (any Hydra launcher works; the jobs find the sweep through the environment)::

    python -m lrtrack -m +model=mnist_cnn optimizer=sgd,adamw schedule=onecycle,triangular2
    python -m lrtrack -m +model=mnist_cnn optimizer=sgd,adamw hydra/launcher=joblib hydra.launcher.n_jobs=2
    python -m lrtrack -m +model=mnist_cnn optimizer=sgd,adamw hydra/launcher=submitit_local \
        hydra.launcher.cpus_per_task=1 hydra.launcher.timeout_min=60
    python -m lrtrack.report <sweep run id> --out report/     # compare the jobs on one HTML page

A failed job is logged, its runs end FAILED with an ``lrtrack.error`` tag, and the sweep goes on;
the sweep's run then ends FAILED and the command exits with status 1.
"""

from __future__ import annotations

import logging
import math
import os

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per summary download
import sys
import time
from dataclasses import dataclass
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("lrtrack.sweep")

ENV_RUN_ID = "LRTRACK_SWEEP_RUN_ID"
ENV_TRACKING_URI = "LRTRACK_SWEEP_TRACKING_URI"
ENV_EXPERIMENT = "LRTRACK_SWEEP_EXPERIMENT"
ENV_KEYS = "LRTRACK_SWEEP_KEYS"
ENV_VARS = (ENV_RUN_ID, ENV_TRACKING_URI, ENV_EXPERIMENT, ENV_KEYS)
EXIT_JOBS_FAILED = 1


@dataclass(frozen=True)
class SweepContext:
    """What a job needs to know about the sweep it belongs to."""

    run_id: str
    tracking_uri: str
    experiment_name: str
    keys: tuple[str, ...]

    def swept(self, overrides: list[str]) -> list[str]:
        """The job's overrides of the swept keys (all of them when none are known)."""
        picked = [o for o in overrides if _key(o) in self.keys]
        return picked or list(overrides)

    def job_name(self, overrides: list[str]) -> str:
        return " ".join(self.swept(overrides)) or "job"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def current_sweep() -> SweepContext | None:
    """The sweep this process runs a job of, from the environment (None outside a sweep)."""
    run_id = os.environ.get(ENV_RUN_ID)
    if not run_id:
        return None
    keys = tuple(k for k in os.environ.get(ENV_KEYS, "").split(",") if k)
    return SweepContext(run_id, os.environ[ENV_TRACKING_URI], os.environ[ENV_EXPERIMENT], keys)


def swept_keys(overrides: list[str]) -> list[str]:
    """Keys of the sweep overrides among the command line's (``optimizer=sgd,adamw`` -> optimizer)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [_key(o.get_key_element()) for o in parsed if o.is_sweep_override()]


def _experiment_name(config: DictConfig) -> str:
    configured = OmegaConf.select(config, "tracking.experiment_name")
    if configured:
        return str(configured)
    model = OmegaConf.select(config, "hydra.runtime.choices.model")
    return f"lrtrack-{model}" if model else "lrtrack-sweep"


def record_failure(sweep: SweepContext, overrides: list[str], error: BaseException,
                   job_run_id: str | None, tags: dict[str, str] | None = None) -> str:
    """Mark a failed job in MLflow: tag its pipeline run with the error, or, when it failed
    before it had one (bad config, missing data), create a FAILED run for it under the sweep.

    Returns:
        The job's run id.
    """
    from mlflow.tracking import MlflowClient

    from lrtrack.tracking import ensure_experiment

    message = " ".join(line.strip() for line in str(error).strip().splitlines()) or type(error).__name__
    message = f"{type(error).__name__}: {message}"[:5000]
    client = MlflowClient(tracking_uri=sweep.tracking_uri)
    if job_run_id is None:
        experiment_id = ensure_experiment(client, sweep.experiment_name)
        all_tags = {"lrtrack.stage": "pipeline", "mlflow.parentRunId": sweep.run_id,
                    "lrtrack.overrides": " ".join(overrides),
                    "lrtrack.sweep_overrides": " ".join(sweep.swept(overrides)), **(tags or {})}
        run = client.create_run(experiment_id, run_name=sweep.job_name(overrides), tags=all_tags)
        job_run_id = run.info.run_id
        client.set_terminated(job_run_id, status="FAILED")
    client.set_tag(job_run_id, "lrtrack.error", message)
    return job_run_id


class SweepCallback(Callback):
    """Creates the sweep's parent run before the jobs and summarises it after them.

    Args:
        aggregate_seeds: also log a ``range_test_seeds`` run per group of jobs that differ
            only in ``seed`` (set by ``+experiment=seeds``).
        exit_on_failure: exit with status 1 after the summary when any job failed.
    """

    def __init__(self, aggregate_seeds: bool = False, exit_on_failure: bool = True) -> None:
        self.aggregate_seeds = aggregate_seeds
        self.exit_on_failure = exit_on_failure
        self.context: SweepContext | None = None
        self.started = 0.0

    # ------------------------------------------------------------------ start
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _release_held_stderr()
        if not OmegaConf.select(config, "tracking.enabled", default=True):
            return
        from mlflow.tracking import MlflowClient

        from lrtrack.tracking import ensure_experiment, resolve_tracking_uri

        self.started = time.monotonic()
        launch_dir = OmegaConf.select(config, "hydra.runtime.cwd") or os.getcwd()
        uri = resolve_tracking_uri(OmegaConf.select(config, "tracking.tracking_uri"), launch_dir)
        overrides = list(OmegaConf.select(config, "hydra.overrides.task") or [])
        keys = swept_keys(overrides)
        params = OmegaConf.select(config, "hydra.sweeper.params")  # sweeps set in a config (+experiment=seeds)
        if params:
            for key, value in params.items():
                keys.append(_key(str(key)))
                overrides.append(f"{key}={value}")
        client = MlflowClient(tracking_uri=uri)  # creating the client's store makes the sqlite tables
        name = _experiment_name(config)
        experiment_id = ensure_experiment(client, name)
        command = "python -m lrtrack " + " ".join(sys.argv[1:])
        launcher = OmegaConf.select(config, "hydra.runtime.choices.hydra/launcher") or "basic"
        swept = [o for o in overrides if _key(o) in keys]
        run = client.create_run(experiment_id, run_name="sweep " + (" ".join(swept) or "(no swept keys)"),
                                tags={"lrtrack.stage": "sweep", "lrtrack.command": command,
                                      "lrtrack.overrides": " ".join(overrides),
                                      "lrtrack.sweep_keys": ",".join(keys), "lrtrack.launcher": str(launcher),
                                      "lrtrack.sweep_dir": str(OmegaConf.select(config, "hydra.sweep.dir"))})
        client.log_dict(run.info.run_id, {"command": command, "overrides": overrides, "swept": swept,
                                          "launcher": str(launcher)}, "sweep/command.yaml")
        self.context = SweepContext(run.info.run_id, uri, name, tuple(keys))
        os.environ.update({ENV_RUN_ID: run.info.run_id, ENV_TRACKING_URI: uri, ENV_EXPERIMENT: name,
                           ENV_KEYS: ",".join(keys)})
        log.info("sweep run %s in experiment %s (%s launcher): %s", run.info.run_id, name, launcher,
                 " ".join(swept))

    # ------------------------------------------------------------------ end
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        ctx = self.context
        if ctx is None:
            return
        for var in ENV_VARS:
            os.environ.pop(var, None)
        failed = finish_sweep(ctx, aggregate_seeds=self.aggregate_seeds,
                              wall_seconds=time.monotonic() - self.started)
        self.context = None
        if failed and self.exit_on_failure:
            print(f"lrtrack: error: {failed} sweep job(s) failed; see the FAILED runs under sweep run "
                  f"{ctx.run_id} (their lrtrack.error tag says why)", file=sys.stderr)
            sys.exit(EXIT_JOBS_FAILED)


def finish_sweep(ctx: SweepContext, *, aggregate_seeds: bool = False, wall_seconds: float | None = None) -> int:
    """Summarise a sweep on its parent run and end it; returns the number of failed jobs."""
    from mlflow.tracking import MlflowClient

    from lrtrack import report

    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    status = "FAILED"
    failed = 0
    try:
        jobs = report.sweep_jobs(client, ctx.run_id)
        rows = [j.row() for j in jobs]
        failed = sum(1 for r in rows if r["status"] != "FINISHED")
        status = "FAILED" if failed else "FINISHED"
        client.log_text(ctx.run_id, report.rows_to_csv(rows), "sweep/summary.csv")
        columns = list(report.SUMMARY_COLUMNS)
        client.log_table(ctx.run_id, {c: [_cell(r.get(c)) for r in rows] for c in columns}, "sweep/summary.json")
        overlay = []
        for job, row in zip(jobs, rows, strict=False):
            if job.explore is not None:
                hist = report.read_csv_artifact(client, job.explore.info.run_id, report.RANGE_TEST_HISTORY)
                rule = row["suggestion_rule"] or "valley"
                overlay.append((job.name, hist, row.get(f"suggested_lr/{rule}")))
        if overlay:
            fig = report.range_test_overlay_figure(overlay, title=f"sweep: {len(overlay)} range tests")
            client.log_figure(ctx.run_id, fig, "sweep/range_tests.png")
            report.plt.close(fig)
        metrics = {"jobs": float(len(rows)), "jobs_failed": float(failed)}
        losses = [r["final_val_loss"] for r in rows if r.get("final_val_loss") is not None]
        if losses:
            best = min(range(len(rows)), key=lambda i: rows[i].get("final_val_loss") or math.inf)
            metrics["best_final_val_loss"] = float(min(losses))
            client.set_tag(ctx.run_id, "lrtrack.best_job", rows[best]["job"])
        accs = [r["final_val_accuracy"] for r in rows if r.get("final_val_accuracy") is not None]
        if accs:
            metrics["best_final_val_accuracy"] = float(max(accs))
        if wall_seconds is not None:
            metrics["wall_seconds"] = float(wall_seconds)
        for key, value in metrics.items():
            client.log_metric(ctx.run_id, key, value)
        if aggregate_seeds:
            for group, members in _seed_groups(jobs).items():
                log_seed_aggregate(client, ctx, group, members)
        for row in rows:
            log.info("  %-9s %s  val_loss=%s", row["status"], row["job"], report._fmt(row.get("final_val_loss")))
        log.info("sweep %s: %d job(s), %d failed; summary logged to run %s", status, len(rows), failed, ctx.run_id)
    except Exception:
        log.exception("could not summarise sweep run %s", ctx.run_id)
        status = "FAILED"
    finally:
        client.set_terminated(ctx.run_id, status=status)
    return failed


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _seed_groups(jobs: list[Any]) -> dict[str, list[Any]]:
    """Jobs grouped by their overrides without ``seed=...``."""
    groups: dict[str, list[Any]] = {}
    for job in jobs:
        if job.explore is None or job.explore.info.status != "FINISHED":
            continue
        overrides = (job.job_run or job.explore).data.tags.get("lrtrack.overrides", "").split()
        key = " ".join(o for o in overrides if _key(o) != "seed")
        groups.setdefault(key, []).append(job)
    return groups


def log_seed_aggregate(client: Any, ctx: SweepContext, group: str, jobs: list[Any]) -> str | None:
    """One ``range_test_seeds`` run under the sweep: median curve, spreads, aggregated suggestions."""
    from lrtrack import report
    from lrtrack.tracking import ensure_experiment

    histories: dict[str, report.Curve] = {}
    suggestions: dict[str, dict[str, float | None]] = {}
    for job in jobs:
        run = job.explore
        seed = str((job.job_run or run).data.params.get("seed", run.data.params.get("seed", len(histories))))
        histories[seed] = report.read_csv_artifact(client, run.info.run_id, report.RANGE_TEST_HISTORY)
        suggestions[seed] = {r: run.data.metrics.get(f"suggested_lr/{r}") for r in report.RULES}
    try:
        agg = report.aggregate_seeds(histories, suggestions)
    except ValueError as err:
        log.warning("seed aggregate of %s skipped: %s", group or "the sweep", err)
        return None
    rule = jobs[0].explore.data.tags.get("lrtrack.suggestion_rule", "valley")
    experiment_id = ensure_experiment(client, ctx.experiment_name)
    name = f"range_test_seeds x{len(agg.seeds)}" + (f" {_short(group, ctx)}" if _short(group, ctx) else "")
    run = client.create_run(experiment_id, run_name=name, tags={
        "lrtrack.stage": "range_test_seeds", "mlflow.parentRunId": ctx.run_id, "lrtrack.overrides": group,
        "lrtrack.suggestion_rule": rule, "lrtrack.seeds": ",".join(agg.seeds),
        "lrtrack.seed_run_ids": ",".join(j.explore.info.run_id for j in jobs)})
    run_id = run.info.run_id
    try:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for r in report.RULES:
            for stat, value in agg.rule_stats(r).items():
                key = f"suggested_lr/{r}" if stat == "median" else f"suggested_lr/{r}/{stat}"
                metrics.append(Metric(key, value, now, 0))
        chosen = agg.rule_stats(rule)
        if chosen:
            metrics.append(Metric("suggested_lr", chosen["median"], now, 0))
        metrics.append(Metric("seeds", float(len(agg.seeds)), now, 0))
        client.log_batch(run_id, metrics=metrics)
        client.log_text(run_id, report.rows_to_csv(agg.history_rows(), ["step", "lr", "loss_smoothed", "q25", "q75", "min", "max"]),
                        report.RANGE_TEST_HISTORY)
        per_seed_cols = ["lr", *(f"seed/{s}" for s in agg.seeds)]
        per_seed_rows = [{"lr": lr, **{f"seed/{s}": agg.curves[j][i] for j, s in enumerate(agg.seeds)}}
                         for i, lr in enumerate(agg.lrs)]
        client.log_text(run_id, report.rows_to_csv(per_seed_rows, per_seed_cols), "range_test/seeds_history.csv")
        client.log_text(run_id, report.rows_to_csv(
            [{"seed": s, **agg.per_seed[s]} for s in agg.seeds], ["seed", *report.RULES]),
            "range_test/seeds_suggestions.csv")
        fig = report.seeds_figure(agg, chosen_rule=rule, title=name)
        client.log_figure(run_id, fig, "range_test/seeds.png")
        report.plt.close(fig)
        client.set_terminated(run_id, "FINISHED")
        summary = ", ".join(f"{r} {s['median']:.2e} [{s['min']:.1e}, {s['max']:.1e}]"
                            for r in report.RULES if (s := agg.rule_stats(r)))
        log.info("seeds %s: %s", ",".join(agg.seeds), summary)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def _short(group: str, ctx: SweepContext) -> str:
    return " ".join(o for o in group.split() if _key(o) in ctx.keys and _key(o) != "seed")


def _release_held_stderr() -> None:
    """Composition has succeeded: let stderr held back by the CLI through (with a launcher the
    jobs run in other processes, so the main one would otherwise hold it until exit)."""
    gate = getattr(sys.modules.get("lrtrack.cli"), "_stderr_gate", None)
    if gate is not None and hasattr(gate, "release"):
        gate.release()
