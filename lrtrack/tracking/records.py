"""lrtrack's runs read back through ``MlflowClient`` (in :mod:`lrtrack.tracking.layout`'s names): a
range test for ``train.lr_from``, a training run for ``train.resume``, and the jobs, histories and
seed aggregates of a sweep or an experiment for the sweep summary and the report. A run id may be
lrtrack's (what lrtrack prints) or the store's."""

from __future__ import annotations

import csv
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lrtrack.engine.suggest import DEFAULT_RULE, RULES
from lrtrack.tracking import layout
from lrtrack.tracking.journal import OWNER_TAG, RUN_ID_TAG

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from lrtrack.engine.finder import RangeTestResult
    from lrtrack.engine.seeds import SeedAggregate
    from lrtrack.engine.suggest import Suggestion

log = logging.getLogger(__name__)

_ALL_RUNS = 10000  # search_runs page size: every run of an experiment or a sweep in one call


class RunLookupError(ValueError):
    """A run id that does not name a usable run; the message says what to pass instead."""


def get_run(client: MlflowClient, run_id: str) -> Run:
    """A run named by lrtrack's id (its ``lrtrack.run_id`` tag) or the store's; LookupError when none is."""
    from lrtrack.tracking.drain import find_run_id

    store_id = find_run_id(client, run_id)
    if store_id is None:
        raise LookupError(f"no run with id {run_id}")
    return client.get_run(store_id)


def _run_of_stage(client: MlflowClient, run_id: str, stage: str, setting: str, hint: str, where: str) -> Run:
    """The run ``setting`` names, checked to be of ``stage``; else :class:`RunLookupError`."""
    try:
        run = get_run(client, run_id)
    except Exception as err:
        raise RunLookupError(f"{setting}={run_id!r}: no such MLflow run in {where} ({type(err).__name__}); "
                             f"pass {hint}") from err
    found = run.data.tags.get(layout.STAGE_TAG)
    if found != stage:
        what = "range-test" if stage == layout.STAGE_EXPLORE else "training"
        raise RunLookupError(f"{setting}={run_id!r} is not a {what} run (its {layout.STAGE_TAG} tag is {found!r}, "
                             f"expected {stage!r})")
    return run


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
    setup: dict[str, str] = field(default_factory=dict)  # a logged one's model.* and optimizer.* params

    @classmethod
    def from_result(cls, result: RangeTestResult, run_id: str | None) -> RangeCurve:
        return cls(result.lrs, result.losses, result.smoothed_losses, result.suggestions,
                   result.min_loss_lr, run_id, result.stop_reason)


def read_range_test(client: MlflowClient, run_id: str, *, where: str) -> RangeCurve:
    """A logged range test (``train.lr_from``); :class:`RunLookupError` when ``run_id`` names none
    in the store at ``where``."""
    from lrtrack.engine.suggest import Suggestion

    run = _run_of_stage(client, run_id, layout.STAGE_EXPLORE, "train.lr_from", "the run id of a range test (shown in "
                        "the MLflow UI and logged at the end of a range test)", where)
    tags, metrics = run.data.tags, run.data.metrics
    suggestions = {}
    for rule in RULES:
        lr = metrics.get(f"{layout.SUGGESTED_LR}/{rule}")
        reason = "" if lr is not None else tags.get(f"{layout.SUGGESTION_TAG_PREFIX}{rule}", "not logged")
        suggestions[rule] = Suggestion(rule, lr, None, reason)
    history = read_csv_artifact(client, run.info.run_id, layout.RANGE_TEST_HISTORY)
    if not history:
        log.warning("could not read the range-test history of run %s; no overlay figure", run_id)
    setup = {k: v for k, v in run.data.params.items() if k.split(".", 1)[0] in SETUP_NODES}
    return RangeCurve(history.get("lr"), history.get("loss"), history.get("loss_smoothed"),
                      suggestions, metrics.get("min_loss_lr"), run_id, tags.get(layout.STOP_REASON_TAG, "completed"),
                      setup)


SETUP_NODES = ("model", "optimizer")  # what a range test's LR belongs to (train.lr_from compares them)
SETUP_IGNORED = ("optimizer.lr",)  # the range test's start LR: the training run's LR comes from the curve


def setup_differences(logged: dict[str, str], config: dict[str, Any]) -> list[str]:
    """``model._target_: A there, B here``: where this config's model and optimizer differ from those a
    logged range test was run with (params as :func:`layout.flatten` writes them; none logged: none)."""
    if not logged:
        return []
    from lrtrack.tracking.redact import redact_tree

    here = redact_tree(layout.flatten({n: config[n] for n in SETUP_NODES if isinstance(config.get(n), dict)}))
    keys = sorted((set(logged) | set(here)) - set(SETUP_IGNORED))
    def shown(value: str | None) -> str:
        return "(unset)" if value is None else value if len(value) <= 60 else f"{value[:45]}...({len(value)} chars)"

    return [f"{k}: {shown(logged.get(k))} there, {shown(here.get(k))} here" for k in keys
            if logged.get(k) != here.get(k)]


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


def read_training_run(client: MlflowClient, run_id: str, *, where: str) -> TrainingRecord:
    """A final run, for ``train.resume``; raises :class:`RunLookupError` when it is not one."""
    run = _run_of_stage(client, run_id, layout.STAGE_FINAL, "train.resume", "the id of the training run to continue "
                        "(printed when it started)", where)
    tags, params = run.data.tags, run.data.params
    if layout.MAX_LR_PARAM not in params:
        raise RunLookupError(f"train.resume={run_id!r}: the run has no {layout.MAX_LR_PARAM} param (it stopped before "
                             "training started); start a new run instead")
    parent = tags.get(layout.PARENT_TAG)
    parent_tags = client.get_run(parent).data.tags if parent else {}
    return TrainingRecord(run.info.run_id, tags.get(RUN_ID_TAG, run.info.run_id), parent,
                          parent_tags.get(RUN_ID_TAG, parent), run.info.status, tags.get(OWNER_TAG),
                          float(params[layout.MAX_LR_PARAM]), float(params[layout.BASE_LR_PARAM]),
                          params.get("bounds.rule_used", ""), tags.get(layout.RANGE_TEST_LINK_TAG), dict(params))


def download_checkpoint(client: MlflowClient, run_id: str, folder: str) -> str | None:
    """The run's last uploaded checkpoint, downloaded into ``folder`` (None when it has none)."""
    try:
        return client.download_artifacts(run_id, f"{layout.CHECKPOINT_DIR}/last.pt", folder)
    except Exception as err:  # no checkpoint was uploaded (killed in the first epoch)
        log.debug("run %s has no checkpoint (%s)", run_id, err)
        return None


def last_logged_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """For each metric of a run, the last step logged (what a resumed run must not log again)."""
    run = client.get_run(run_id)
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}


def suggestion_rule(run: Run) -> str:
    """The rule a range test (or a ``range_test_seeds`` run) chose: its ``lrtrack.suggestion_rule``
    tag, else the library's default (a run without it ended before its range test was logged)."""
    return run.data.tags.get(layout.SUGGESTION_RULE_TAG) or DEFAULT_RULE


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
        """The suggestion of the rule the range test chose; None without a range test or when that
        rule found none."""
        if self.explore is None:
            return None
        return self.explore.data.metrics.get(f"{layout.SUGGESTED_LR}/{suggestion_rule(self.explore)}")


def child_runs(client: MlflowClient, run: Run) -> list[Run]:
    """Runs whose ``mlflow.parentRunId`` is ``run``, oldest first."""
    return list(client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`{layout.PARENT_TAG}` = '{run.info.run_id}'",
        order_by=["attributes.start_time ASC"], max_results=_ALL_RUNS))


def _by_stage(runs: Iterable[Run], stage: str) -> Run | None:
    return next((r for r in runs if r.data.tags.get(layout.STAGE_TAG) == stage), None)


def job_record(client: MlflowClient, job_run: Run) -> JobRecord:
    """A pipeline (job) run and its explore/final children."""
    kids = child_runs(client, job_run)
    return JobRecord(job_run, _by_stage(kids, layout.STAGE_EXPLORE), _by_stage(kids, layout.STAGE_FINAL))


def _loose(run: Run) -> JobRecord | None:
    """An explore or final run with no pipeline parent as a job of its own (None for other runs)."""
    stage = run.data.tags.get(layout.STAGE_TAG)
    if stage not in (layout.STAGE_EXPLORE, layout.STAGE_FINAL):
        return None
    return JobRecord(None, run, None) if stage == layout.STAGE_EXPLORE else JobRecord(None, None, run)


def sweep_jobs(client: MlflowClient, sweep_run_id: str) -> list[JobRecord]:
    """Every job of a sweep with its runs, in job order (Hydra's job number, else start order)."""
    records = [job_record(client, run) if run.data.tags.get(layout.STAGE_TAG) == layout.STAGE_PIPELINE else _loose(run)
               for run in child_runs(client, get_run(client, sweep_run_id))]

    def job_num(record: JobRecord) -> int:
        num = record.first_run.data.tags.get(layout.JOB_NUM_TAG, "") if record.first_run else ""
        return int(num) if num.isdigit() else 1 << 30

    return sorted((r for r in records if r is not None), key=job_num)


def experiment_jobs(client: MlflowClient, experiment_id: str) -> list[JobRecord]:
    """Every pipeline run of an experiment, plus explore/final runs that have no pipeline parent."""
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"], max_results=_ALL_RUNS)
    records = {r.info.run_id: JobRecord(r, None, None) for r in runs
               if r.data.tags.get(layout.STAGE_TAG) == layout.STAGE_PIPELINE}
    loose: list[JobRecord] = []
    for run in runs:
        stage = run.data.tags.get(layout.STAGE_TAG)
        if stage not in (layout.STAGE_EXPLORE, layout.STAGE_FINAL):
            continue
        record = records.get(run.data.tags.get(layout.PARENT_TAG, ""))
        if record is None:
            loose.append(_loose(run))  # type: ignore[arg-type]
        elif stage == layout.STAGE_EXPLORE:
            record.explore = run
        else:
            record.final = run
    return list(records.values()) + loose


def as_float(value: Any) -> float | None:
    """``float(value)``, or None when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class Curve:
    """A logged history CSV (range test or training): columns as float lists."""

    columns: dict[str, list[float]] = field(default_factory=dict)

    def get(self, name: str) -> list[float]:
        """A column; empty when the CSV has none."""
        return self.columns.get(name, [])

    def __bool__(self) -> bool:
        return bool(self.columns)


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
                    number = as_float(value) if value not in (None, "") else None
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
            history = read_csv_artifact(client, job.explore.info.run_id, layout.RANGE_TEST_HISTORY)
            curves.append((job.name, history.get("lr"), history.get("loss_smoothed"), job.chosen_lr()))
    return curves


def seed_runs(client: MlflowClient, experiment_id: str, sweep_run_id: str | None = None) -> list[Run]:
    """The ``range_test_seeds`` runs of an experiment (of one sweep when ``sweep_run_id`` is given)."""
    query = f"tags.`{layout.STAGE_TAG}` = '{layout.STAGE_SEEDS}'"
    if sweep_run_id is not None:
        query += f" and tags.`{layout.PARENT_TAG}` = '{sweep_run_id}'"
    return list(client.search_runs([experiment_id], filter_string=query, max_results=100))


def read_seed_aggregate(client: MlflowClient, run: Run) -> SeedAggregate | None:
    """Rebuild a ``range_test_seeds`` run's aggregate from its logged CSVs (None without them)."""
    from lrtrack.engine.seeds import aggregate_seeds

    per_seed = read_csv_artifact(client, run.info.run_id, layout.SEEDS_HISTORY)
    if not per_seed:
        return None
    table = read_csv_artifact(client, run.info.run_id, layout.SEEDS_SUGGESTIONS)
    seeds = sorted({c.split("/", 1)[1] for c in per_seed.columns if c.startswith(layout.SEED_COLUMN_PREFIX)})
    curves = {s: (per_seed.get("lr"), per_seed.get(f"{layout.SEED_COLUMN_PREFIX}{s}")) for s in seeds}

    def finite_at(values: Sequence[float], i: int) -> float | None:
        return values[i] if i < len(values) and math.isfinite(values[i]) else None

    suggestions = {str(int(seed)) if math.isfinite(seed) else "?": {r: finite_at(table.get(r), i) for r in RULES}
                   for i, seed in enumerate(table.get("seed"))}
    return aggregate_seeds(curves, suggestions)
