"""The one owner of lrtrack's MLflow layout: stage names, tag keys and artifact paths.

Every other module that writes or reads lrtrack runs goes through the names and functions
here, so a change to the layout touches this file only:

- writing: :func:`log_config`, :func:`log_range_test`, :func:`log_training` (the recipe);
- reading: :func:`read_range_test` (``train.lr_from``), :func:`sweep_jobs`,
  :func:`experiment_jobs`, :func:`read_csv_artifact` (the sweep summary and the report).

Runs are written through :class:`lrtrack.tracking.runs.TrackedRun` and read through
``MlflowClient``; this module imports neither Hydra nor torch at import time.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lrtrack.engine.suggest import RULES
from lrtrack.tracking.journal import OWNER_TAG, RUN_ID_TAG
from lrtrack.tracking.redact import redact, redact_tree

if TYPE_CHECKING:
    from lrtrack.engine.finder import RangeTestResult
    from lrtrack.engine.schedules import Bounds
    from lrtrack.engine.suggest import Suggestion
    from lrtrack.engine.train import TrainResult

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the layout

#: mlflow's own tag that nests a run under another.
PARENT_TAG = "mlflow.parentRunId"

#: What a run is: one of the stages below.
STAGE_TAG = "lrtrack.stage"
STAGE_EXPLORE = "explore"  # a range test
STAGE_FINAL = "final"  # a training run with bounds from a range test (or the config)
STAGE_PIPELINE = "pipeline"  # one job: the parent of its explore and final runs
STAGE_SWEEP = "sweep"  # one multirun: the parent of its jobs' pipeline runs
STAGE_SEEDS = "range_test_seeds"  # the median range test over a sweep's seeds

#: Tags.
RANGE_TEST_LINK_TAG = "lrtrack.range_test_run_id"  # on a final run: the range test it used
ERROR_TAG = "lrtrack.error"
COMMAND_TAG = "lrtrack.command"
OVERRIDES_TAG = "lrtrack.overrides"
SWEEP_RUN_TAG = "lrtrack.sweep_run_id"
SWEEP_OVERRIDES_TAG = "lrtrack.sweep_overrides"
SWEEP_KEYS_TAG = "lrtrack.sweep_keys"
JOB_NUM_TAG = "lrtrack.job_num"
STOP_REASON_TAG = "lrtrack.stop_reason"
STOP_DETAIL_TAG = "lrtrack.stop_detail"
SUGGESTION_RULE_TAG = "lrtrack.suggestion_rule"
SUGGESTION_TAG_PREFIX = "lrtrack.suggestion."  # + rule: the LR, or why there is none
DATA_TAG = "lrtrack.data"
DATA_SOURCE_TAG = "lrtrack.data_source"
DATA_FALLBACK_TAG = "lrtrack.data_fallback"
CHOICE_TAG_PREFIX = "hydra.choice."  # + group: the option chosen in that config group
LAUNCHER_TAG = "lrtrack.launcher"  # on a sweep run: the Hydra launcher that ran its jobs
SWEEP_DIR_TAG = "lrtrack.sweep_dir"  # on a sweep run: Hydra's sweep output folder
BEST_JOB_TAG = "lrtrack.best_job"  # on a sweep run: the job with the lowest final_val_loss
SEEDS_TAG = "lrtrack.seeds"  # on a range_test_seeds run: its seeds, comma-separated
SEED_RUNS_TAG = "lrtrack.seed_run_ids"  # on a range_test_seeds run: the range tests it aggregates

#: Artifacts.
RANGE_TEST_PLOT = "range_test/plot.png"
RANGE_TEST_HISTORY = "range_test/history.csv"
RANGE_TEST_SUGGESTIONS = "range_test/suggestions.json"
SEEDS_HISTORY = "range_test/seeds_history.csv"
SEEDS_SUGGESTIONS = "range_test/seeds_suggestions.csv"
SEEDS_PLOT = "range_test/seeds.png"
TRAIN_PLOT = "train/lr_and_loss.png"
TRAIN_ON_RANGE_TEST_PLOT = "train/lr_on_range_test.png"
TRAIN_HISTORY = "train/history.csv"
CHECKPOINT_DIR = "checkpoints"
CONFIG_RESOLVED = "config/resolved.yaml"
CONFIG_OVERRIDES = "config/hydra_overrides.yaml"
SWEEP_SUMMARY_CSV = "sweep/summary.csv"
SWEEP_SUMMARY_JSON = "sweep/summary.json"
SWEEP_RANGE_TESTS_PLOT = "sweep/range_tests.png"
SWEEP_COMMAND = "sweep/command.yaml"

#: The step every summary metric (one value per run) is logged at. MLflow's chart view draws a
#: metric as a bar per run when no run has it past step 0, and as a line against step otherwise,
#: so a summary at the run's last step would be a one-dot line chart among the step series.
SUMMARY_STEP = 0

#: Metric keys of a range test's summary.
SUGGESTED_LR = "suggested_lr"  # the chosen rule's LR; per rule: suggested_lr/<rule>
#: A range test's per-step log10(lr), logged with its summary: MLflow's chart view offers a log
#: x-axis only against step, so loss against this metric is the loss-vs-LR curve on a log axis.
LOG10_LR = "log10_lr"

#: Metric keys of a training run's summary.
FINAL_VAL_LOSS = "final_val_loss"
FINAL_VAL_ACCURACY = "final_val_accuracy"

#: Params of a training run: the LR range it ran in.
MAX_LR_PARAM = "bounds.max_lr_used"
BASE_LR_PARAM = "bounds.base_lr_used"


# --------------------------------------------------------------------------- writing runs


@dataclass(frozen=True)
class RunContext:
    """What every run of one job records about where it came from (params, tags, config)."""

    config: Mapping[str, Any]  # the resolved config
    choices: Mapping[str, str]  # config group -> chosen option
    overrides: Sequence[str]
    command: str

    def tags(self, stage: str, **extra: str) -> dict[str, str]:
        tags = {f"{CHOICE_TAG_PREFIX}{group}": str(choice) for group, choice in self.choices.items()
                if not group.startswith("hydra/") and choice is not None}
        tags.update({STAGE_TAG: stage, COMMAND_TAG: self.command, OVERRIDES_TAG: " ".join(self.overrides)})
        tags.update(extra)
        return redact_tree(tags)


@dataclass(frozen=True)
class DataInfo:
    """Which data set a run really used (after any fallback) and where it came from."""

    name: str
    source: str
    fell_back: bool


def log_config(run: Any, ctx: RunContext, data: DataInfo, extra_params: Mapping[str, Any] | None = None) -> None:
    """Params (the resolved config, flattened), the data tags and the config artifacts."""
    from lrtrack.tracking.runs import flatten

    params: dict[str, Any] = flatten(ctx.config)
    params["data.used"] = data.name
    params.update(extra_params or {})
    run.log_params(redact_tree(params))
    run.set_tags(redact_tree({DATA_TAG: data.name, DATA_SOURCE_TAG: data.source,
                              DATA_FALLBACK_TAG: str(data.fell_back).lower()}))
    run.log_dict(redact_tree(dict(ctx.config)), CONFIG_RESOLVED)
    run.log_dict(redact_tree({"overrides": list(ctx.overrides), "choices": dict(ctx.choices),
                              "command": ctx.command}), CONFIG_OVERRIDES)


def range_test_summary(result: RangeTestResult, chosen_rule: str) -> dict[str, float]:
    """The summary metrics of a range test: every rule's LR, the chosen one, the divergence edge
    (``edge_lr``), the minimum, the sweep's ``steps``, the confirmation's ``probe_steps`` and
    ``probes``, and ``repeats``."""
    out: dict[str, float] = {}
    for rule, s in result.suggestions.items():
        if s.lr is not None:
            out[f"{SUGGESTED_LR}/{rule}"] = s.lr
    chosen = result.suggestions.get(chosen_rule)
    if chosen is not None and chosen.lr is not None:
        out[SUGGESTED_LR] = chosen.lr
    if result.edge.lr is not None:
        out["edge_lr"] = result.edge.lr
    if result.min_loss is not None:
        out["min_loss"] = result.min_loss
        out["min_loss_lr"] = float(result.min_loss_lr)  # type: ignore[arg-type]
    out["steps"] = float(result.steps)
    out["probe_steps"] = float(result.probe_steps)
    out["probes"] = float(len(result.probes))
    out["repeats"] = float(max(1, len(result.repeats)))
    return out


def log_range_test(run: Any, result: RangeTestResult, *, chosen_rule: str, title: str) -> None:
    """Everything a range test leaves on its run: the summary metrics (at :data:`SUMMARY_STEP`),
    :data:`LOG10_LR` per step (the other per-step metrics went through the observer), tags, figure,
    history and suggestions."""
    from lrtrack.engine.plots import range_test_figure

    run.log_summary(range_test_summary(result, chosen_rule), step=SUMMARY_STEP)
    for step, lr in enumerate(result.lrs):
        if lr > 0:
            run.on_step(step, {LOG10_LR: math.log10(lr)})
    edge = result.edge
    run.set_tags({STOP_REASON_TAG: result.stop_reason, STOP_DETAIL_TAG: result.stop_detail,
                  SUGGESTION_RULE_TAG: chosen_rule,
                  "lrtrack.edge": edge.reason if edge.lr is None else f"{edge.lr:.6g}",  # the divergence edge
                  **{f"{SUGGESTION_TAG_PREFIX}{rule}": (s.reason if s.lr is None else f"{s.lr:.6g}")
                     for rule, s in result.suggestions.items()}})
    run.log_figure(range_test_figure(result, title=title, chosen_rule=chosen_rule), RANGE_TEST_PLOT)
    run.log_rows_csv(result.history_rows(), RANGE_TEST_HISTORY)  # with repeats: the band's columns too
    run.log_dict({rule: {"lr": s.lr, "index": s.index, "reason": s.reason}
                  for rule, s in result.suggestions.items()}, RANGE_TEST_SUGGESTIONS)
    # The divergence edge, the confirmation probes and each repeat's suggestions, for review.
    run.log_dict({"edge": {"lr": edge.lr, "index": edge.index, "reason": edge.reason},
                  "probes": [p.as_dict() for p in result.probes], "probe_steps": result.probe_steps,
                  "repeats": [{"edge_lr": r.edge.lr, **{rule: s.lr for rule, s in r.suggestions.items()}}
                              for r in result.repeats]}, "range_test/confirmation.json")


def bounds_params(bounds: Bounds, steps_per_epoch: int) -> dict[str, Any]:
    """The params a training run records about the LR range it ran in."""
    return {MAX_LR_PARAM: bounds.max_lr, BASE_LR_PARAM: bounds.base_lr,
            "bounds.rule_used": bounds.rule, "bounds.steps_per_epoch": steps_per_epoch}


def final_metrics(result: TrainResult) -> dict[str, float]:
    """A training run's summary: ``final_<key>`` for each validation value of its last epoch
    (``final_val_loss``, and ``final_val_accuracy`` or ``final_val_<metric>`` where measured)."""
    last = result.epochs[-1] if result.epochs else {}
    return {f"final_{k}": float(v) for k, v in last.items() if k.startswith("val_") and v is not None}


def log_training(run: Any, result: TrainResult, *, bounds: Bounds, steps_per_epoch: int,
                 curve: RangeCurve | None, title: str) -> None:
    """Everything a training run leaves on its run: summary, figures, history, checkpoint."""
    from lrtrack.engine.plots import schedule_on_range_test_figure, training_figure

    run.log_summary(final_metrics(result), step=SUMMARY_STEP)
    # Epoch metrics are logged at the epoch's last optimizer step.
    epoch_steps = [(i + 1) * steps_per_epoch - 1 for i in range(len(result.epochs))]
    val_losses = [e["val_loss"] for e in result.epochs if "val_loss" in e]
    run.log_figure(training_figure(result.lrs, result.losses, result.smoothed_losses, epoch_steps=epoch_steps,
                                   val_losses=val_losses, title=title), TRAIN_PLOT)
    if curve is not None and curve.lrs:
        run.log_figure(schedule_on_range_test_figure(
            curve.lrs, curve.losses, curve.smoothed, result.lrs, bounds=(bounds.base_lr, bounds.max_lr),
            title=f"{title}: LRs on the range test"), TRAIN_ON_RANGE_TEST_PLOT)
    run.log_rows_csv([{"step": i, "lr": lr, "loss": loss, "loss_smoothed": sm} for i, (lr, loss, sm)
                      in enumerate(zip(result.lrs, result.losses, result.smoothed_losses))], TRAIN_HISTORY)


# --------------------------------------------------------------------------- a range test, read back


class RunLookupError(ValueError):
    """A run id that does not name a usable range test; the message says what to pass instead."""


@dataclass
class RangeCurve:
    """The parts of a range test the training stage needs (from this job or a logged run)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestions: dict[str, Suggestion]
    min_loss_lr: float | None
    run_id: str | None = None
    stop_reason: str = "completed"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_result(cls, result: RangeTestResult, run_id: str | None) -> RangeCurve:
        return cls(result.lrs, result.losses, result.smoothed_losses, result.suggestions,
                   result.min_loss_lr, run_id, result.stop_reason)


def get_run(client: Any, run_id: str) -> Run:
    """A run named by lrtrack's id (the ``lrtrack.run_id`` tag, what lrtrack prints) or the store's.

    Raises:
        LookupError: no run has that id.
    """
    from lrtrack.tracking.drain import find_run_id

    store_id = find_run_id(client, run_id)
    if store_id is None:
        raise LookupError(f"no run with id {run_id}")
    return client.get_run(store_id)


def read_range_test(client: Any, run_id: str, *, where: str) -> RangeCurve:
    """Read a logged range test back through the MLflow client (``train.lr_from``).

    Args:
        client: an ``MlflowClient`` on the store.
        run_id: the range test's run id.
        where: the store's URI, for the error message.

    Raises:
        RunLookupError: no such run, or not a range test.
    """
    from lrtrack.engine.suggest import Suggestion

    try:
        run = get_run(client, run_id)
    except Exception as err:
        raise RunLookupError(
            f"train.lr_from={run_id!r}: no such MLflow run in {where} ({type(err).__name__}); pass the run id "
            "of a range test (shown in the MLflow UI and logged at the end of a range test)") from err
    tags, metrics = run.data.tags, run.data.metrics
    if tags.get(STAGE_TAG) != STAGE_EXPLORE:
        raise RunLookupError(f"train.lr_from={run_id!r} is not a range-test run (its {STAGE_TAG} tag is "
                             f"{tags.get(STAGE_TAG)!r}, expected {STAGE_EXPLORE!r})")
    suggestions = {}
    for rule in RULES:
        lr = metrics.get(f"{SUGGESTED_LR}/{rule}")
        reason = "" if lr is not None else tags.get(f"{SUGGESTION_TAG_PREFIX}{rule}", "not logged")
        suggestions[rule] = Suggestion(rule, lr, None, reason)
    history = read_csv_artifact(client, run.info.run_id, RANGE_TEST_HISTORY)
    if not history:
        log.warning("could not read the range-test history of run %s; no overlay figure", run_id)
    return RangeCurve(history.get("lr"), history.get("loss"), history.get("loss_smoothed"),
                      suggestions, metrics.get("min_loss_lr"), run_id, tags.get(STOP_REASON_TAG, "completed"))


# --------------------------------------------------------------------------- a training run, read back


@dataclass
class TrainingRecord:
    """What resuming a killed training run needs from it (``train.resume``)."""

    run_id: str  # the store's
    lrtrack_id: str  # lrtrack's (the journal names the run by it)
    parent_run_id: str | None
    parent_lrtrack_id: str | None
    status: str
    owner: str | None
    max_lr: float
    base_lr: float
    rule: str
    range_test_run_id: str | None
    params: dict[str, str]


def read_training_run(client: Any, run_id: str, *, where: str) -> TrainingRecord:
    """A final run, for ``train.resume``; raises :class:`RunLookupError` when it is not one."""
    try:
        run = get_run(client, run_id)
    except Exception as err:
        raise RunLookupError(f"train.resume={run_id!r}: no such MLflow run in {where} ({type(err).__name__}); "
                             "pass the id of the training run to continue (printed when it started)") from err
    tags, params = run.data.tags, run.data.params
    if tags.get(STAGE_TAG) != STAGE_FINAL:
        raise RunLookupError(f"train.resume={run_id!r} is not a training run (its {STAGE_TAG} tag is "
                             f"{tags.get(STAGE_TAG)!r}, expected {STAGE_FINAL!r})")
    if MAX_LR_PARAM not in params:
        raise RunLookupError(f"train.resume={run_id!r}: the run has no {MAX_LR_PARAM} param (it stopped before "
                             "training started); start a new run instead")
    parent = tags.get(PARENT_TAG)
    parent_tags = client.get_run(parent).data.tags if parent else {}
    return TrainingRecord(run.info.run_id, tags.get(RUN_ID_TAG, run.info.run_id), parent,
                          parent_tags.get(RUN_ID_TAG, parent), run.info.status, tags.get(OWNER_TAG),
                          float(params[MAX_LR_PARAM]),
                          float(params[BASE_LR_PARAM]), params.get("bounds.rule_used", ""),
                          tags.get(RANGE_TEST_LINK_TAG), dict(params))


def download_checkpoint(client: Any, run_id: str, folder: str) -> str | None:
    """The run's last uploaded checkpoint, downloaded into ``folder`` (None when it has none)."""
    try:
        return client.download_artifacts(run_id, f"{CHECKPOINT_DIR}/last.pt", folder)
    except Exception as err:  # no checkpoint was uploaded (killed in the first epoch)
        log.debug("run %s has no checkpoint (%s)", run_id, err)
        return None


def last_logged_steps(client: Any, run_id: str) -> dict[str, int]:
    """For each metric of a run, the last step logged (what a resumed run must not log again)."""
    run = client.get_run(run_id)
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}


class SkipLogged:
    """An observer that passes on only the metrics a resumed run has not logged yet.

    Args:
        inner: the run (or any observer) to pass them to.
        logged: metric key -> last step already logged.
    """

    def __init__(self, inner: Any, logged: Mapping[str, int]) -> None:
        self.inner = inner
        self.logged = dict(logged)

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        fresh = {k: v for k, v in metrics.items() if step > self.logged.get(k, -1)}
        if fresh:
            self.inner.on_step(step, fresh)

    def on_checkpoint(self, path: Any, step: int) -> None:
        on_checkpoint = getattr(self.inner, "on_checkpoint", None)
        if on_checkpoint is not None:
            on_checkpoint(path, step)


# ---- reading runs
# (The read side and the sweep bookkeeping below are edited apart from the write side above, so
# their imports live here.)


from lrtrack.engine.suggest import DEFAULT_RULE  # noqa: E402 - see above

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from lrtrack.engine.seeds import SeedAggregate

#: Columns of a sweep's (and the report's) summary table: one row per job (:meth:`JobRecord.row`).
SUMMARY_COLUMNS: tuple[str, ...] = (
    "job", "overrides", "status", "suggestion_rule", *(f"{SUGGESTED_LR}/{r}" for r in RULES),
    "max_lr", "base_lr", FINAL_VAL_ACCURACY, FINAL_VAL_LOSS, "error",
    "job_run_id", "explore_run_id", "final_run_id",
)
#: A training run's validation summaries: final_val_loss, final_val_accuracy or final_val_<metric>.
FINAL_METRIC_PREFIX = "final_val_"


def summary_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """:data:`SUMMARY_COLUMNS` plus the ``final_val_<metric>`` columns some row measured
    (a custom validation metric), placed before ``final_val_loss``."""
    columns = list(SUMMARY_COLUMNS)
    extra = sorted({k for r in rows for k in r if k.startswith(FINAL_METRIC_PREFIX) and k not in columns})
    at = columns.index(FINAL_VAL_LOSS)
    return columns[:at] + extra + columns[at:]


#: Column prefix of :data:`SEEDS_HISTORY`: ``seed/<seed>`` holds that seed's smoothed loss.
SEED_COLUMN_PREFIX = "seed/"
# Written by cli.py before the recipe (the configured bounds); read only when the *_used params are absent.
_CONFIG_MAX_LR_PARAM, _CONFIG_BASE_LR_PARAM = "bounds.max_lr", "bounds.base_lr"
_ALL_RUNS = 10000  # search_runs page size: every run of an experiment or a sweep in one call


def suggestion_rule(run: Run) -> str:
    """The rule a range test (or a ``range_test_seeds`` run) chose: its ``lrtrack.suggestion_rule``
    tag, else :data:`lrtrack.engine.suggest.DEFAULT_RULE` (lrtrack always writes the tag; a run without it
    ended before its range test was logged)."""
    return run.data.tags.get(SUGGESTION_RULE_TAG) or DEFAULT_RULE


@dataclass
class Curve:
    """A logged history CSV (range test or training): columns as float lists."""

    columns: dict[str, list[float]] = field(default_factory=dict)

    def get(self, name: str) -> list[float]:
        """A column; empty when the CSV has none."""
        return self.columns.get(name, [])

    def __bool__(self) -> bool:
        return bool(self.columns)


@dataclass
class JobRecord:
    """One job of a sweep (or one pipeline run): its pipeline run and its explore/final children.

    Any of the three may be None: a job that failed before its range test has no explore run;
    a range test run on its own (``stage=range_test`` outside a sweep) has no pipeline run.
    """

    job_run: Run | None
    explore: Run | None
    final: Run | None

    @property
    def first_run(self) -> Run | None:
        """The pipeline run, else the explore run, else the final run."""
        return self.job_run or self.explore or self.final

    @property
    def name(self) -> str:
        run = self.first_run
        return run.info.run_name if run else "?"

    def chosen_lr(self) -> float | None:
        """The suggestion of the rule the range test chose (:func:`suggestion_rule`); None when
        there is no range test or that rule found none."""
        if self.explore is None:
            return None
        return self.explore.data.metrics.get(f"{SUGGESTED_LR}/{suggestion_rule(self.explore)}")

    def row(self) -> dict[str, Any]:
        """The summary-table row (see :data:`SUMMARY_COLUMNS`)."""
        first, ex, fi = self.first_run, self.explore, self.final
        tags = first.data.tags if first else {}
        row: dict[str, Any] = {
            "job": self.name,
            "overrides": tags.get(SWEEP_OVERRIDES_TAG) or tags.get(OVERRIDES_TAG, ""),
            "status": first.info.status if first else "?",
            "suggestion_rule": ex.data.tags.get(SUGGESTION_RULE_TAG, "") if ex else "",
        }
        for rule in RULES:
            row[f"{SUGGESTED_LR}/{rule}"] = ex.data.metrics.get(f"{SUGGESTED_LR}/{rule}") if ex else None
        params = fi.data.params if fi else {}
        row["max_lr"] = _float(params.get(MAX_LR_PARAM, params.get(_CONFIG_MAX_LR_PARAM)))
        row["base_lr"] = _float(params.get(BASE_LR_PARAM, params.get(_CONFIG_BASE_LR_PARAM)))
        row[FINAL_VAL_ACCURACY] = fi.data.metrics.get(FINAL_VAL_ACCURACY) if fi else None
        row[FINAL_VAL_LOSS] = fi.data.metrics.get(FINAL_VAL_LOSS) if fi else None
        row.update({k: v for k, v in (fi.data.metrics if fi else {}).items() if k.startswith(FINAL_METRIC_PREFIX)})
        errors = [r.data.tags.get(ERROR_TAG) for r in (self.job_run, ex, fi) if r is not None]
        row["error"] = next((e for e in errors if e), "")
        for column, run in (("job_run_id", self.job_run), ("explore_run_id", ex), ("final_run_id", fi)):
            row[column] = run.info.run_id if run else ""
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
        order_by=["attributes.start_time ASC"], max_results=_ALL_RUNS,
    ))


def _by_stage(runs: Iterable[Run], stage: str) -> Run | None:
    return next((r for r in runs if r.data.tags.get(STAGE_TAG) == stage), None)


def job_record(client: MlflowClient, job_run: Run) -> JobRecord:
    """A pipeline (job) run and its explore/final children."""
    kids = child_runs(client, job_run)
    return JobRecord(job_run, _by_stage(kids, STAGE_EXPLORE), _by_stage(kids, STAGE_FINAL))


def _loose(run: Run) -> JobRecord | None:
    """An explore or final run with no pipeline parent as a job of its own (None for other runs)."""
    stage = run.data.tags.get(STAGE_TAG)
    if stage == STAGE_EXPLORE:
        return JobRecord(None, run, None)
    if stage == STAGE_FINAL:
        return JobRecord(None, None, run)
    return None


def sweep_jobs(client: MlflowClient, sweep_run_id: str) -> list[JobRecord]:
    """Every job of a sweep with its runs, in job order (Hydra's job number, else start order)."""
    records = []
    for run in child_runs(client, get_run(client, sweep_run_id)):
        record = job_record(client, run) if run.data.tags.get(STAGE_TAG) == STAGE_PIPELINE else _loose(run)
        if record is not None:
            records.append(record)
    return sorted(records, key=_job_num)


def _job_num(record: JobRecord) -> int:
    run = record.first_run
    num = run.data.tags.get(JOB_NUM_TAG, "") if run else ""
    return int(num) if num.isdigit() else 1 << 30


def experiment_jobs(client: MlflowClient, experiment_id: str) -> list[JobRecord]:
    """Every pipeline run of an experiment, plus explore/final runs that have no pipeline parent."""
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"], max_results=_ALL_RUNS)
    records = {r.info.run_id: JobRecord(r, None, None) for r in runs
               if r.data.tags.get(STAGE_TAG) == STAGE_PIPELINE}
    loose: list[JobRecord] = []
    for run in runs:
        stage = run.data.tags.get(STAGE_TAG)
        if stage not in (STAGE_EXPLORE, STAGE_FINAL):
            continue
        record = records.get(run.data.tags.get(PARENT_TAG, ""))
        if record is None:
            loose.append(_loose(run))  # type: ignore[arg-type]
        elif stage == STAGE_EXPLORE:
            record.explore = run
        else:
            record.final = run
    return list(records.values()) + loose


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow download progress bar for the small CSVs read here (unless the user set one)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def read_csv_artifact(client: MlflowClient, run_id: str, path: str) -> Curve:
    """A numeric CSV artifact as float columns (NaN for empty or non-numeric cells); an empty
    :class:`Curve` when the run has no such artifact (a failed run may not have logged it)."""
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception as err:
            log.debug("run %s has no %s (%s)", run_id, path, err)
            return Curve()
        columns: dict[str, list[float]] = {}
        with open(local, newline="") as fh:
            for row in csv.DictReader(fh):
                for key, value in row.items():
                    number = _float(value) if value not in (None, "") else None
                    columns.setdefault(key, []).append(math.nan if number is None else number)
        return Curve(columns)


def metric_history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's ``(step, value)`` pairs in step order; empty when the run has none."""
    try:
        history = client.get_metric_history(run_id, key)
    except Exception as err:
        log.debug("run %s has no metric %s (%s)", run_id, key, err)
        return []
    return sorted((m.step, m.value) for m in history)


def range_test_curves(client: MlflowClient, jobs: Sequence[JobRecord]
                      ) -> list[tuple[str, list[float], list[float], float | None]]:
    """``(job name, lrs, smoothed losses, chosen suggestion)`` of every job with a range test,
    as :func:`lrtrack.engine.plots.range_test_overlay_figure` takes them."""
    curves = []
    for job in jobs:
        if job.explore is not None:
            history = read_csv_artifact(client, job.explore.info.run_id, RANGE_TEST_HISTORY)
            curves.append((job.name, history.get("lr"), history.get("loss_smoothed"), job.chosen_lr()))
    return curves


def rows_to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = SUMMARY_COLUMNS) -> str:
    """Rows as CSV text with a header of ``columns`` (other keys left out, None written empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def seed_runs(client: MlflowClient, experiment_id: str, sweep_run_id: str | None = None) -> list[Run]:
    """The ``range_test_seeds`` runs of an experiment (of one sweep when ``sweep_run_id`` is given)."""
    query = f"tags.`{STAGE_TAG}` = '{STAGE_SEEDS}'"
    if sweep_run_id is not None:
        query += f" and tags.`{PARENT_TAG}` = '{sweep_run_id}'"
    return list(client.search_runs([experiment_id], filter_string=query, max_results=100))


def job_seed(job: JobRecord) -> str:
    """The ``seed`` param of a job (its pipeline run's, else its range test's); "" when unknown."""
    for run in (job.job_run, job.explore):
        if run is not None and "seed" in run.data.params:
            return str(run.data.params["seed"])
    return ""


def seed_group(job: JobRecord) -> str:
    """A job's overrides without ``seed=...``: jobs of one group differ only in their seed."""
    run = job.first_run
    overrides = run.data.tags.get(OVERRIDES_TAG, "").split() if run else []
    return " ".join(o for o in overrides if override_key(o) != "seed")


def seed_inputs(client: MlflowClient, jobs: Sequence[JobRecord]
                ) -> tuple[dict[str, tuple[list[float], list[float]]], dict[str, dict[str, float | None]]]:
    """The range tests of ``jobs`` keyed by seed, as :func:`lrtrack.engine.seeds.aggregate_seeds` takes them:
    ``seed -> (lrs, smoothed losses)`` and ``seed -> rule -> suggested LR``."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    suggestions: dict[str, dict[str, float | None]] = {}
    for job in jobs:
        if job.explore is None:
            continue
        seed = job_seed(job) or str(len(curves))
        history = read_csv_artifact(client, job.explore.info.run_id, RANGE_TEST_HISTORY)
        curves[seed] = (history.get("lr"), history.get("loss_smoothed"))
        suggestions[seed] = {r: job.explore.data.metrics.get(f"{SUGGESTED_LR}/{r}") for r in RULES}
    return curves, suggestions


def read_seed_aggregate(client: MlflowClient, run: Run) -> SeedAggregate | None:
    """Rebuild a ``range_test_seeds`` run's aggregate from its logged CSVs (None without them)."""
    from lrtrack.engine.seeds import aggregate_seeds

    per_seed = read_csv_artifact(client, run.info.run_id, SEEDS_HISTORY)
    if not per_seed:
        return None
    table = read_csv_artifact(client, run.info.run_id, SEEDS_SUGGESTIONS)
    seeds = sorted({c.split("/", 1)[1] for c in per_seed.columns if c.startswith(SEED_COLUMN_PREFIX)})
    curves = {s: (per_seed.get("lr"), per_seed.get(f"{SEED_COLUMN_PREFIX}{s}")) for s in seeds}
    suggestions = {str(int(seed)) if math.isfinite(seed) else "?": {r: _finite_at(table.get(r), i) for r in RULES}
                   for i, seed in enumerate(table.get("seed"))}
    return aggregate_seeds(curves, suggestions)


def _finite_at(values: Sequence[float], i: int) -> float | None:
    return values[i] if i < len(values) and math.isfinite(values[i]) else None


# ---- sweep bookkeeping
# The runs a sweep writes besides its jobs' own: its parent run, a FAILED run for a job that
# failed before it had one, the summary, and the range_test_seeds aggregates.


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
    (:mod:`lrtrack.app.sweep` creates it and hands it to the jobs)."""

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
        return {SWEEP_RUN_TAG: self.run_id, OVERRIDES_TAG: " ".join(overrides),
                SWEEP_OVERRIDES_TAG: " ".join(self.swept(overrides))}


def start_sweep_run(tracker: Any, *, swept: Sequence[str], overrides: Sequence[str], keys: Sequence[str],
                    command: str, launcher: str, sweep_dir: str) -> Any:
    """Start a sweep's parent run (named by its short id and swept overrides), log its command,
    and return it (a :class:`~lrtrack.tracking.runs.TrackedRun`)."""
    from lrtrack.tracking.journal import new_run_id

    what = redact(" ".join(swept) or "(no swept keys)")
    run_id = new_run_id()
    run = tracker.start_run(f"sweep {short_id(run_id)} {what}", run_id=run_id, tags=redact_tree({
        STAGE_TAG: STAGE_SWEEP, COMMAND_TAG: command, OVERRIDES_TAG: " ".join(overrides),
        SWEEP_KEYS_TAG: ",".join(keys), LAUNCHER_TAG: launcher, SWEEP_DIR_TAG: sweep_dir}))
    run.log_dict(redact_tree({"command": command, "overrides": list(overrides), "swept": list(swept),
                              "launcher": launcher}), SWEEP_COMMAND)
    return run


def error_message(error: BaseException) -> str:
    """An exception as one line, ``Type: message``, short enough for a tag."""
    message = " ".join(line.strip() for line in str(error).strip().splitlines()) or type(error).__name__
    return redact(f"{type(error).__name__}: {message}")[:5000]


def record_failure(tracker: Any, sweep: SweepContext, overrides: Sequence[str], error: BaseException,
                   job_run_id: str | None, tags: Mapping[str, str] | None = None) -> str:
    """Mark a failed job of ``sweep``: tag its pipeline run with the error, or, when it failed
    before it had one (bad config, missing data), start a FAILED pipeline run for it under the
    sweep's run, named and tagged like the job's would have been. Written through ``tracker``'s
    journal like every other write.

    Args:
        overrides: The job's command-line overrides.
        job_run_id: The job's pipeline run (lrtrack's id), when it has one.
        tags: More tags for a created run (they win over the sweep's).

    Returns:
        The job's run id (lrtrack's).
    """
    from lrtrack.tracking.runs import TrackedRun

    if job_run_id is None:
        run = tracker.start_run(redact(sweep.job_name(overrides)), parent_run_id=sweep.run_id,
                                tags=redact_tree({STAGE_TAG: STAGE_PIPELINE, **sweep.job_tags(overrides), **(tags or {})}))
        run.set_tags({ERROR_TAG: error_message(error)})
        run.end("FAILED")
        return str(run.run_id)
    TrackedRun(tracker.journal, job_run_id).set_tags({ERROR_TAG: error_message(error)})
    return job_run_id


def log_sweep_summary(client: MlflowClient, run: Any, jobs: Sequence[JobRecord],
                      *, wall_seconds: float | None = None) -> list[dict[str, Any]]:
    """Log a sweep's summary on its ``run`` (read through ``client``, written through the run's
    journal): the table (CSV and JSON), the overlay of its range tests, the job counts and the best
    job. Returns the table's rows."""
    from lrtrack.engine.plots import range_test_overlay_figure

    rows = [job.row() for job in jobs]
    columns = summary_columns(rows)
    run.log_text(rows_to_csv(rows, columns), SWEEP_SUMMARY_CSV)
    # MLflow's log_table format (the UI's artifact view shows it as a table).
    run.log_dict({"columns": columns, "data": [["" if r.get(c) is None else r.get(c) for c in columns] for r in rows]},
                 SWEEP_SUMMARY_JSON)
    curves = range_test_curves(client, jobs)
    if curves:
        figure = range_test_overlay_figure(curves, title=f"sweep: {len(curves)} range tests")
        run.log_figure(figure, SWEEP_RANGE_TESTS_PLOT)
    failed = sum(1 for r in rows if r["status"] != "FINISHED")
    metrics = {"jobs": float(len(rows)), "jobs_failed": float(failed)}
    scored = [r for r in rows if r.get(FINAL_VAL_LOSS) is not None]
    if scored:
        best = min(scored, key=lambda r: r[FINAL_VAL_LOSS])
        metrics[f"best_{FINAL_VAL_LOSS}"] = float(best[FINAL_VAL_LOSS])
        run.set_tags({BEST_JOB_TAG: best["job"]})
    accuracies = [r[FINAL_VAL_ACCURACY] for r in rows if r.get(FINAL_VAL_ACCURACY) is not None]
    if accuracies:
        metrics[f"best_{FINAL_VAL_ACCURACY}"] = float(max(accuracies))
    if wall_seconds is not None:
        metrics["wall_seconds"] = float(wall_seconds)
    run.log_summary(metrics, step=SUMMARY_STEP)
    return rows


def log_seed_aggregate(tracker: Any, parent_run_id: str, agg: SeedAggregate, *,
                       name: str, group: str, rule: str, seed_run_ids: Sequence[str]) -> str:
    """Log a ``range_test_seeds`` run under ``parent_run_id``: each rule's suggestion over the seeds
    (``suggested_lr/<rule>`` the median, plus ``/min``, ``/max``, ``/log10_iqr``, ``/n``), the median
    curve as its range-test history, each seed's curve and suggestions, and the figure.

    The suggestions are each seed's *logged* ones (``agg.per_seed``), not re-read from the median
    curve: ``confirmed`` comes from each seed's probes and has no curve to be computed from. The
    chosen ``rule``'s median is also ``suggested_lr``; the ``lrtrack.suggestion.<rule>`` tags hold
    each median, or why there is none (no seed's range test found one).

    Returns:
        The run's id (lrtrack's); the run ends FINISHED, or FAILED (re-raising) when logging fails.
    """
    from lrtrack.engine.plots import seeds_figure
    from lrtrack.engine.seeds import HISTORY_COLUMNS

    with tracker.start_run(name, parent_run_id=parent_run_id, tags={
            STAGE_TAG: STAGE_SEEDS, OVERRIDES_TAG: group, SUGGESTION_RULE_TAG: rule,
            SEEDS_TAG: ",".join(agg.seeds), SEED_RUNS_TAG: ",".join(seed_run_ids)}) as run:
        metrics = {f"{SUGGESTED_LR}/{r}" + ("" if stat == "median" else f"/{stat}"): value
                   for r in RULES for stat, value in agg.rule_stats(r).items()}
        if chosen := agg.rule_stats(rule):
            metrics[SUGGESTED_LR] = chosen["median"]
        metrics["seeds"] = float(len(agg.seeds))
        run.log_summary(metrics, step=SUMMARY_STEP)
        run.set_tags({f"{SUGGESTION_TAG_PREFIX}{r}": f"{s['median']:.6g}" if (s := agg.rule_stats(r)) else
                      f"no seed's range test has a {r} suggestion (each says why in its {SUGGESTION_TAG_PREFIX}{r} tag)"
                      for r in RULES})
        run.log_text(rows_to_csv(agg.history_rows(), HISTORY_COLUMNS), RANGE_TEST_HISTORY)
        seed_columns = [f"{SEED_COLUMN_PREFIX}{s}" for s in agg.seeds]
        per_seed = [{"lr": lr, **{c: agg.curves[j][i] for j, c in enumerate(seed_columns)}}
                    for i, lr in enumerate(agg.lrs)]
        run.log_text(rows_to_csv(per_seed, ["lr", *seed_columns]), SEEDS_HISTORY)
        run.log_text(rows_to_csv([{"seed": s, **agg.per_seed[s]} for s in agg.seeds], ["seed", *RULES]),
                     SEEDS_SUGGESTIONS)
        run.log_figure(seeds_figure(agg, chosen_rule=rule, title=name), SEEDS_PLOT)
    return str(run.run_id)
