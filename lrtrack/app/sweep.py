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

What the runs hold (tags, artifacts) is :mod:`lrtrack.tracking.layout`'s; the summary table is
:mod:`lrtrack.app.summary`'s.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lrtrack.app.summary import job_row, summary_columns
from lrtrack.engine.suggest import RULES
from lrtrack.tracking import layout, records
from lrtrack.tracking.records import JobRecord

log = logging.getLogger("lrtrack.app.sweep")

ENV_RUN_ID = "LRTRACK_SWEEP_RUN_ID"
ENV_TRACKING_URI = "LRTRACK_SWEEP_TRACKING_URI"
ENV_EXPERIMENT = "LRTRACK_SWEEP_EXPERIMENT"
ENV_KEYS = "LRTRACK_SWEEP_KEYS"
ENV_VARS = (ENV_RUN_ID, ENV_TRACKING_URI, ENV_EXPERIMENT, ENV_KEYS)
#: Where a failed job of this sweep leaves a note (one file per job, in the sweep's folder): the
#: sweep counts its failed jobs whatever the launcher (worker processes inherit the variable) and
#: with tracking off or the store away, where it cannot read them back from MLflow.
ENV_FAILED_DIR = "LRTRACK_SWEEP_FAILED_DIR"
FAILED_DIR = ".lrtrack-failed-jobs"
EXIT_JOBS_FAILED = 1
EXIT_FAILED = 1
SHORT_ID_LENGTH = 6


def short_id(run_id: str) -> str:
    """``"3fa9c0d2..."`` -> ``"3fa9c0"``: enough to tell a handful of sweeps apart, short enough to read."""
    return run_id[:SHORT_ID_LENGTH]


def override_key(override: str) -> str:
    """The key of a command-line override (``+model=mlp`` -> ``model``)."""
    return override.split("=", 1)[0].lstrip("+~")


@dataclass(frozen=True)
class SweepContext:
    """A sweep as its jobs see it: its parent run, store, experiment and swept keys
    (:class:`SweepCallback` creates it and hands it to the jobs)."""

    run_id: str
    tracking_uri: str
    experiment_name: str
    keys: tuple[str, ...]

    def swept(self, overrides: Sequence[str]) -> list[str]:
        """The job's overrides of the swept keys (all of them when none are known)."""
        picked = [o for o in overrides if override_key(o) in self.keys]
        return picked or list(overrides)

    @property
    def short_id(self) -> str:
        """The start of the sweep run's id: in the names of the sweep's runs, so that two sweeps
        with the same overrides never look alike (the sweep run's name carries it too)."""
        return short_id(self.run_id)

    def job_name(self, overrides: Sequence[str]) -> str:
        """A job's run name: its swept overrides and the sweep's short id."""
        return f"{' '.join(self.swept(overrides)) or 'job'} (sweep {self.short_id})"

    def job_tags(self, overrides: Sequence[str]) -> dict[str, str]:
        """The tags that place a job's pipeline run in this sweep."""
        return {layout.SWEEP_RUN_TAG: self.run_id, layout.OVERRIDES_TAG: " ".join(overrides),
                layout.SWEEP_OVERRIDES_TAG: " ".join(self.swept(overrides))}

    def record_failure(self, tracker: Any, overrides: Sequence[str], error: BaseException, job_run_id: str | None,
                       tags: dict[str, str] | None = None) -> str:
        """Mark a failed job of this sweep (:func:`lrtrack.tracking.layout.record_failure`): a job that
        failed before it had a pipeline run gets a FAILED one, named and tagged as its own would have
        been (``tags`` win over the sweep's). Returns the job's run id (lrtrack's)."""
        return layout.record_failure(tracker, error, job_run_id, name=self.job_name(overrides),
                                     parent_run_id=self.run_id, tags={**self.job_tags(overrides), **(tags or {})})


def note_failed_job(job_num: int | None, overrides: Sequence[str], error: str) -> None:
    """Count a failed job of the running sweep (:data:`ENV_FAILED_DIR`); nothing outside a sweep."""
    folder = os.environ.get(ENV_FAILED_DIR)
    if not folder:
        return
    name = f"job-{job_num if job_num is not None else os.getpid()}"
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_text(f"{' '.join(overrides)}\n{error}\n")
    except OSError as err:  # the job's own failure is logged already; the store may still count it
        log.warning("could not note the failed job in %s (%s)", folder, err.strerror or err)


def noted_failures(folder: Path) -> int:
    """How many jobs :func:`note_failed_job` noted in ``folder``."""
    try:
        return sum(1 for p in folder.iterdir() if p.name.startswith("job-"))
    except OSError:
        return 0


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
    return [override_key(o.get_key_element()) for o in parsed if o.is_sweep_override()]


def seed_sweep_problems(config: DictConfig) -> list[str]:
    """``aggregate_seeds`` (``+experiment=seeds``) summarises range tests over several seeds: a seed fixed on
    the command line, a single swept seed or a stage without a range test would make a "median over seeds"
    of one seed, or of nothing."""
    overrides = [str(o) for o in OmegaConf.to_container(OmegaConf.select(config, "hydra.overrides.task") or [],
                                                         resolve=False)]
    fixed = [o for o in overrides if override_key(o) == "seed" and not any(c in o for c in ",(")]
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    swept = str(params.get("seed", "")) if params else ""
    problems = []
    if fixed:
        problems.append(f"{fixed[0]} is invalid: +experiment=seeds summarises the range test over several seeds, and "
                        f"{fixed[0]} fixes one; give them as hydra.sweeper.params.seed='0,1,2,3' (or drop "
                        "+experiment=seeds)")
    elif swept and "," not in swept and "(" not in swept:
        problems.append(f"hydra.sweeper.params.seed={swept} is invalid: a summary over seeds needs at least two, e.g. "
                        "hydra.sweeper.params.seed='0,1,2,3'")
    stage = OmegaConf.select(config, "stage")
    if stage != "range_test":
        problems.append(f"stage={stage} is invalid: +experiment=seeds summarises range tests (stage=range_test); "
                        "drop the stage override")
    return problems


def _experiment_name(config: DictConfig) -> str:
    configured = OmegaConf.select(config, "tracking.experiment_name")
    if configured:
        return str(configured)
    model = OmegaConf.select(config, "hydra.runtime.choices.model")
    return f"lrtrack-{model}" if model else "lrtrack-sweep"


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
        self.tracker: Any = None  # the sweep's own journal and relay (its parent run, summary, seed runs)
        self.run: Any = None
        self.started = 0.0
        self.failed_dir: Path | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Launchers (joblib, submitit) pickle the callbacks for their workers: the sweep's tracker
        (an open journal and its relay) stays in the process that started the sweep."""
        return {**self.__dict__, "tracker": None, "run": None}

    # ------------------------------------------------------------------ start
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from lrtrack.app.sweepcheck import sweep_job_problems

        problems = sweep_job_problems(config) + (seed_sweep_problems(config) if self.aggregate_seeds else [])
        for problem in problems:
            print(f"lrtrack: error: {problem}", file=sys.stderr)
        if problems:
            sys.exit(2)
        self._count_failures(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).resolve() / FAILED_DIR)
        if not OmegaConf.select(config, "tracking.enabled", default=True):
            return
        from lrtrack.app.where import resolve_tracking_uri
        from lrtrack.tracking.journal import new_run_id
        from lrtrack.tracking.redact import redact
        from lrtrack.tracking.runs import Tracker
        from lrtrack.tracking.store import (
            DeletedExperiment,
            TrackingUnavailable,
            check_experiment,
            open_store,
            preflight,
        )

        self.started = time.monotonic()
        launch_dir = OmegaConf.select(config, "hydra.runtime.cwd") or os.getcwd()
        uri = resolve_tracking_uri(OmegaConf.select(config, "tracking.tracking_uri"), launch_dir)
        overrides = list(OmegaConf.select(config, "hydra.overrides.task") or [])
        keys = swept_keys(overrides)
        params = OmegaConf.select(config, "hydra.sweeper.params")  # sweeps set in a config (+experiment=seeds)
        if params:
            for key, value in params.items():
                keys.append(override_key(str(key)))
                overrides.append(f"{key}={value}")
        name = _experiment_name(config)
        try:  # the store as a single job checks it; MLflow's name limits; a deleted experiment refused, not restored
            preflight(uri)
            check_experiment(uri, name)
        except (TrackingUnavailable, DeletedExperiment) as err:
            print(f"lrtrack: error: {err}", file=sys.stderr)
            sys.exit(2)
        open_store(uri)  # a fresh sqlite store is created under a file lock, before any job starts
        launcher = str(OmegaConf.select(config, "hydra.runtime.choices.hydra/launcher") or "basic")
        swept = [o for o in overrides if override_key(o) in keys]
        sweep_dir = str(OmegaConf.select(config, "hydra.sweep.dir"))
        from lrtrack.tracking.journal import JournalError

        try:  # (Hydra turns a callback's exception into a warning and sweeps on: say it and stop here)
            self.tracker = Tracker(uri, name, spool_dir=Path(sweep_dir).resolve() / "tracking-spool",
                                   delivery_timeout_s=float(OmegaConf.select(config, "tracking.delivery_timeout_s",
                                                                             default=60.0)))
        except JournalError as err:
            print(f"lrtrack: error: {err} (the sweep's journal is in hydra.sweep.dir={sweep_dir}: choose a folder "
                  "you can write)", file=sys.stderr)
            sys.exit(2)
        self.sweep_dir = Path(sweep_dir).resolve()
        run_id = new_run_id()
        self.run = layout.start_sweep_run(
            self.tracker, run_id, f"sweep {short_id(run_id)} {redact(' '.join(swept) or '(no swept keys)')}",
            swept=swept, overrides=overrides, keys=keys, command="python -m lrtrack " + shlex.join(sys.argv[1:]),
            launcher=launcher, sweep_dir=sweep_dir)
        self.context = SweepContext(self.run.run_id, uri, name, tuple(keys))
        _ACTIVE[:] = [self]  # Ctrl-C or SIGTERM mid-sweep: :func:`interrupt_sweep` ends its run KILLED
        os.environ.update({ENV_RUN_ID: self.run.run_id, ENV_TRACKING_URI: uri, ENV_EXPERIMENT: name,
                           ENV_KEYS: ",".join(keys)})
        log.info("sweep run %s in experiment %s (%s launcher): %s", self.run.run_id, name, launcher, " ".join(swept))

    def _count_failures(self, folder: Path) -> None:
        """Let the jobs note their failures in ``folder`` (emptied first: a sweep folder used again)."""
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        self.failed_dir = folder
        os.environ[ENV_FAILED_DIR] = str(folder)

    def _noted_failures(self) -> int:
        import shutil

        os.environ.pop(ENV_FAILED_DIR, None)
        if self.failed_dir is None:
            return 0
        count = noted_failures(self.failed_dir)
        shutil.rmtree(self.failed_dir, ignore_errors=True)
        return count

    # ------------------------------------------------------------------ end
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Summarise the sweep on its run and deliver it; exit 1 (one ``lrtrack: error:`` line) when a
        job failed or the sweep's records could not be delivered (the line says how to send them).
        Hydra turns a callback's exception into a warning and exits 0: the errors a user can act on
        are said here, and the exit status set here."""
        from lrtrack.tracking.journal import DeliveryError, JournalError
        from lrtrack.tracking.store import TrackingUnavailable

        noted = self._noted_failures()
        ctx = self.context
        failed, errors = noted, []
        if ctx is not None:
            for var in ENV_VARS:
                os.environ.pop(var, None)
            delivered = False
            try:
                with self.tracker:  # delivered before the review hint is printed
                    try:
                        failed = max(noted, finish_sweep(ctx, self.tracker, self.run,
                                                         aggregate_seeds=self.aggregate_seeds,
                                                         wall_seconds=time.monotonic() - self.started))
                    except SweepSummaryError as err:
                        errors.append(str(err))
                delivered = True
            except (DeliveryError, JournalError, TrackingUnavailable) as err:  # the line names the deliver command
                errors.append(str(err))
            self.context = None
            if delivered:
                _print_review_hint(ctx, self.tracker)
        if failed and self.exit_on_failure:
            where = (f"see the FAILED runs under sweep run {ctx.run_id} (their {layout.ERROR_TAG} tag says why)"
                     if ctx is not None else "see each job's error above and its log in its folder under "
                     f"hydra.sweep.dir={self.failed_dir.parent if self.failed_dir else '?'}")
            errors.insert(0, f"{failed} sweep job(s) failed; {where}")
        if errors:
            print(f"lrtrack: error: {'; '.join(errors)}", file=sys.stderr)
            sys.exit(EXIT_JOBS_FAILED if failed and self.exit_on_failure else EXIT_FAILED)

    def interrupted(self) -> str | None:
        """Ctrl-C or SIGTERM stopped the sweep (inside a job or between jobs): its run ends KILLED and
        its journal goes to the relay; returns the sweep run's id (None when none was started)."""
        ctx = self.context
        if ctx is None:
            return None
        self.context = None
        for var in (*ENV_VARS, ENV_FAILED_DIR):
            os.environ.pop(var, None)
        self.run.end("KILLED")
        self.tracker.hand_over(1.0)  # the job's tracker waited already: within the 5 s a stop may take
        _deliver_orphans(self.sweep_dir, ctx.tracking_uri)
        return ctx.run_id


def _deliver_orphans(sweep_dir: Path, uri: str) -> None:
    """A launcher that kills its workers' process trees on a stop (joblib's loky: SIGKILL) kills their
    relays too: a detached ``python -m lrtrack.deliver <sweep folder>`` delivers the journals they left
    (their runs end KILLED) after this process exits; journals a live relay still holds are skipped."""
    import subprocess

    from lrtrack.tracking.journal import needs_uri
    from lrtrack.tracking.redact import redact

    if needs_uri(redact(uri)):  # credentials are never put on a command line: say what to run instead
        log.warning("a stopped sweep's jobs may have left journals: deliver them with python -m lrtrack.deliver %s "
                    "--tracking-uri <the URI>", sweep_dir)
        return
    root = str(Path(__file__).resolve().parents[2])
    subprocess.Popen([sys.executable, "-m", "lrtrack.deliver", str(sweep_dir), "--timeout", "60"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True,
                     env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)})


_ACTIVE: list[SweepCallback] = []  # the sweep this process started, while it runs


def interrupt_sweep() -> str:
    """End the running sweep of this process KILLED (see :meth:`SweepCallback.interrupted`); the line to show."""
    run_id = _ACTIVE.pop().interrupted() if _ACTIVE else None
    return (f"interrupted; the sweep run {run_id} and its jobs' runs are kept in MLflow, those still running "
            "ended KILLED") if run_id else "interrupted"


REVIEW_MAX_RUNS = 20  # the compare page of a larger sweep is unreadable: its sweep run's page instead


def _print_review_hint(ctx: SweepContext, tracker: Any) -> None:
    """The one review hint of a sweep (its jobs print none): the report command, with
    ``--tracking-uri`` unless the store is the report's default (./mlflow.db), so that it works as
    printed; and the UI with every job's range test and training run side by side (the sweep's
    tracker, closed, knows the experiment's and the sweep run's ids in the store)."""
    from lrtrack.app.where import review_hint, ui_hint
    from lrtrack.tracking.redact import redact

    uri = ctx.tracking_uri
    runs = _review_runs(ctx)
    ui = review_hint(uri, tracker.experiment_id, runs) if 2 <= len(runs) <= REVIEW_MAX_RUNS else \
        ui_hint(uri, tracker.experiment_id, tracker.store_id(ctx.run_id))
    default = f"sqlite:///{Path.cwd() / 'mlflow.db'}"  # what python -m lrtrack.report reads unless told
    report = "python -m lrtrack.report" + ("" if uri == default else f" --tracking-uri {shlex.quote(uri)}")
    log.info("sweep %s done. Compare its jobs on one page: %s %s --out report/\n"
             "review in MLflow: %s", ctx.run_id, redact(report), ctx.run_id, redact(ui))


def _review_runs(ctx: SweepContext) -> list[str]:
    """The store ids of the sweep's range tests and training runs, job by job ([] when unreadable)."""
    from lrtrack.tracking.store import read_client

    try:
        jobs = records.sweep_jobs(read_client(ctx.tracking_uri), ctx.run_id)
    except Exception:  # the hint is a convenience: never fail the sweep over it
        log.debug("could not read the sweep's runs for the review URL", exc_info=True)
        return []
    return [run.info.run_id for job in jobs for run in (job.explore, job.final) if run is not None]


class SweepSummaryError(RuntimeError):
    """The sweep's summary could not be read or written (the message says why, in one line)."""


def finish_sweep(ctx: SweepContext, tracker: Any, run: Any, *, aggregate_seeds: bool = False,
                 wall_seconds: float | None = None) -> int:
    """Summarise a sweep on its parent ``run`` and end it (FAILED when any job failed or the summary
    could not be written, else FINISHED); returns the number of failed jobs. Reads the jobs from
    the store (each job delivered its runs before it ended); writes through ``tracker``.

    Raises:
        SweepSummaryError: the summary could not be made (the store went away, the journal cannot be
            written: one line; a bug also logs its traceback); the run ends FAILED all the same.
    """
    from lrtrack.tracking.journal import JournalError
    from lrtrack.tracking.redact import redact
    from lrtrack.tracking.store import read_client, store_errors

    status = "FAILED"
    failed = 0
    problem: str | None = None
    try:
        client = read_client(ctx.tracking_uri)
        jobs = records.sweep_jobs(client, ctx.run_id)
        rows = [job_row(job) for job in jobs]
        layout.log_sweep_summary(run, rows, summary_columns(rows), records.range_test_curves(client, jobs),
                                 wall_seconds=wall_seconds)
        failed = sum(1 for r in rows if r["status"] != "FINISHED")
        status = "FAILED" if failed else "FINISHED"
        if aggregate_seeds:
            for group, members in _seed_groups(jobs).items():
                log_seed_aggregate(client, tracker, ctx, group, members)
        for row in rows:
            loss = row.get(layout.FINAL_VAL_LOSS)
            log.info("  %-9s %s  val_loss=%s", row["status"], row["job"], "" if loss is None else f"{loss:.4g}")
        log.info("sweep %s: %d job(s), %d failed; summary logged to run %s", status, len(rows), failed, ctx.run_id)
    except (*store_errors(), JournalError, OSError) as err:  # the store or the disk
        problem = " ".join(str(err).split())[:500]
        status = "FAILED"
    except Exception as err:  # a bug: its traceback in the log
        log.exception("could not summarise sweep run %s", ctx.run_id)
        problem = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        status = "FAILED"
    finally:
        run.end(status)
    if problem is not None:
        raise SweepSummaryError(f"could not summarise sweep run {ctx.run_id} ({redact(problem)}); its run ends FAILED")
    return failed


# --------------------------------------------------------------------------- range tests over seeds


def job_seed(job: JobRecord) -> str:
    """The ``seed`` param of a job (its pipeline run's, else its range test's); "" when unknown."""
    for run in (job.job_run, job.explore):
        if run is not None and "seed" in run.data.params:
            return str(run.data.params["seed"])
    return ""


def seed_group(job: JobRecord) -> str:
    """A job's overrides without ``seed=...``: jobs of one group differ only in their seed."""
    run = job.first_run
    overrides = run.data.tags.get(layout.OVERRIDES_TAG, "").split() if run else []
    return " ".join(o for o in overrides if override_key(o) != "seed")


def _seed_groups(jobs: Sequence[JobRecord]) -> dict[str, list[JobRecord]]:
    """Jobs whose range test finished, grouped by :func:`seed_group`."""
    groups: dict[str, list[JobRecord]] = {}
    for job in jobs:
        if job.explore is not None and job.explore.info.status == "FINISHED":
            groups.setdefault(seed_group(job), []).append(job)
    return groups


def seed_inputs(client: Any, jobs: Sequence[JobRecord]
                ) -> tuple[dict[str, tuple[list[float], list[float]]], dict[str, dict[str, float | None]]]:
    """The range tests of ``jobs`` keyed by seed, as :func:`lrtrack.engine.seeds.aggregate_seeds` takes them:
    ``seed -> (lrs, smoothed losses)`` and ``seed -> rule -> suggested LR``."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    suggestions: dict[str, dict[str, float | None]] = {}
    for job in jobs:
        if job.explore is None:
            continue
        seed = job_seed(job) or str(len(curves))
        history = records.read_csv_artifact(client, job.explore.info.run_id, layout.RANGE_TEST_HISTORY)
        curves[seed] = (history.get("lr"), history.get("loss_smoothed"))
        suggestions[seed] = {r: job.explore.data.metrics.get(f"{layout.SUGGESTED_LR}/{r}") for r in RULES}
    return curves, suggestions


def log_seed_aggregate(client: Any, tracker: Any, ctx: SweepContext, group: str,
                       jobs: Sequence[JobRecord]) -> str | None:
    """One ``range_test_seeds`` run under the sweep: median curve, spreads, aggregated suggestions.

    Returns:
        Its run id; None when no job of the group has a range-test history.
    """
    from lrtrack.engine.seeds import aggregate_seeds

    try:
        agg = aggregate_seeds(*seed_inputs(client, jobs))
    except ValueError as err:
        log.warning("seed aggregate of %s skipped: %s", group or "the sweep", err)
        return None
    rule = records.suggestion_rule(jobs[0].explore)  # the jobs differ only in seed: one rule
    short = " ".join(o for o in group.split() if override_key(o) in ctx.keys and override_key(o) != "seed")
    name = f"range_test_seeds x{len(agg.seeds)}" + (f" {short}" if short else "")
    run_id = layout.log_seed_aggregate(
        tracker, ctx.run_id, agg, name=name, group=group,
        rule=rule, seed_run_ids=[j.explore.info.run_id for j in jobs if j.explore is not None])
    summary = ", ".join(f"{r} {s['median']:.2e} [{s['min']:.1e}, {s['max']:.1e}]"
                        for r in RULES if (s := agg.rule_stats(r)))
    log.info("seeds %s: %s", ",".join(agg.seeds), summary)
    if not agg.rule_stats(rule):
        log.warning("seeds %s: no range test has a %s suggestion, so run %s has no %s; each range test's "
                    "%s%s tag says why", ",".join(agg.seeds), rule, run_id, layout.SUGGESTED_LR,
                    layout.SUGGESTION_TAG_PREFIX, rule)
    return run_id
