"""lrtrack's MLflow run layout: stage names, tag keys, artifact paths, and the writes.

The recipe, the notebook helpers and the sweep write runs only through the functions here, into a
:class:`~lrtrack.tracking.runs.TrackedRun` (or anything with its methods);
:mod:`lrtrack.tracking.records` reads them back. A change to the layout touches these two modules.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrtrack.engine.suggest import RULES
from lrtrack.tracking.redact import redact, redact_tree

if TYPE_CHECKING:
    from lrtrack.engine.finder import RangeTestResult
    from lrtrack.engine.schedules import Bounds
    from lrtrack.engine.seeds import SeedAggregate
    from lrtrack.engine.train import TrainResult
    from lrtrack.tracking.records import RangeCurve

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
#: Tags whose value is another run's id (lrtrack's): the store's id is written on delivery.
RUN_LINK_TAGS = frozenset({PARENT_TAG, RANGE_TEST_LINK_TAG})
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
CONFIDENCE_TAG = "lrtrack.confidence"  # on a range test: high or low, and why (lrtrack.engine.confidence)
CONFIDENCE_REASONS_TAG = "lrtrack.confidence_reasons"
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
SEED_COLUMN_PREFIX = "seed/"  # a column of SEEDS_HISTORY: seed/<seed> holds that seed's smoothed loss
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

#: Params of a training run: the LR range it ran in (the configured bounds.max_lr/base_lr otherwise).
MAX_LR_PARAM = "bounds.max_lr_used"
BASE_LR_PARAM = "bounds.base_lr_used"
MAX_PARAM_VALUE = 6000  # longer param values are rejected/truncated by the store
MAX_TAG_VALUE = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH: a longer tag (a long command line) is refused
MAX_RUN_NAME = 250  # the runs table's name column (String(250); enforced by postgres and mysql)


# --------------------------------------------------------------------------- every job's runs


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
        return {key: value[:MAX_TAG_VALUE] for key, value in redact_tree(tags).items()}


@dataclass(frozen=True)
class DataInfo:
    """Which data set a run really used (after any fallback) and where it came from."""

    name: str
    source: str
    fell_back: bool


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}`` with string values (lists kept as text)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = ("null" if value is None else str(value))[:MAX_PARAM_VALUE]
    return out


def log_config(run: Any, ctx: RunContext, data: DataInfo, extra_params: Mapping[str, Any] | None = None) -> None:
    """Params (the resolved config, flattened), the data tags and the config artifacts."""
    params: dict[str, Any] = flatten(ctx.config)
    params["data.used"] = data.name
    params.update(extra_params or {})
    run.log_params(redact_tree(params))
    run.set_tags(redact_tree({DATA_TAG: data.name, DATA_SOURCE_TAG: data.source,
                              DATA_FALLBACK_TAG: str(data.fell_back).lower()}))
    run.log_dict(redact_tree(dict(ctx.config)), CONFIG_RESOLVED)
    run.log_dict(redact_tree({"overrides": list(ctx.overrides), "choices": dict(ctx.choices),
                              "command": ctx.command}), CONFIG_OVERRIDES)


def error_message(error: BaseException) -> str:
    """An exception as one line, ``Type: message``, short enough for a tag."""
    message = " ".join(line.strip() for line in str(error).strip().splitlines()) or type(error).__name__
    return redact(f"{type(error).__name__}: {message}")[:5000]


def range_test_summary(result: RangeTestResult, chosen_rule: str) -> dict[str, float]:
    """The summary metrics of a range test: every rule's LR, the chosen one, the divergence edge
    (``edge_lr``), the minimum, the sweep's ``steps``, the confirmation's ``probe_steps`` and
    ``probes``, and ``repeats``."""
    out = {f"{SUGGESTED_LR}/{rule}": s.lr for rule, s in result.suggestions.items() if s.lr is not None}
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
    out["total_steps"] = float(result.total_steps)  # sweeps + probes + the extra tests a low verdict ran
    out["extra_steps"] = float(result.extra_steps)
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
                  SUGGESTION_RULE_TAG: chosen_rule, CONFIDENCE_TAG: result.confidence,
                  CONFIDENCE_REASONS_TAG: "; ".join(result.confidence_reasons + result.extra_actions) or "none",
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
    """Everything a training run leaves on its run: summary, figures, history (checkpoints went
    through the observer)."""
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


#: MLflow's own tag for a run's description (the UI shows and edits it as markdown).
NOTE_TAG = "mlflow.note.content"


def compare_fragment(run_ids: Sequence[str], experiment_ids: Sequence[str]) -> str:
    """The MLflow UI's page that shows runs side by side (3.x: ``#/compare-runs``), as a URL fragment."""
    from urllib.parse import quote

    def listed(ids: Sequence[str]) -> str:
        return quote(json.dumps(list(ids), separators=(",", ":")), safe="@")

    return f"#/compare-runs?runs={listed(run_ids)}&experiments={listed(experiment_ids)}"


@dataclass(frozen=True)
class RunText:
    """A tag value that names runs by lrtrack's ids: each placeholder in ``text`` becomes its run's
    store id on delivery (and ``@experiment@`` the experiment's), so links in a note work."""

    text: str
    refs: Mapping[str, str]

    def as_journal(self) -> dict[str, Any]:
        return {"text": self.text, "refs": dict(self.refs)}


def _cell(text: Any) -> str:
    """Text for one cell of a markdown table."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def pipeline_note(*, command: str, explore_run: str | None, final_run: str | None, rule: str | None,
                  suggestion: Any = None, confidence: str | None = None, reasons: Sequence[str] = (),
                  bounds: Any = None, final: Mapping[str, float] | None = None) -> RunText:
    """The pipeline run's description (:data:`NOTE_TAG`, markdown): the suggestion, the confidence,
    the bounds, the final metrics and links to the range test, the training run and both side by side."""
    refs = {k: v for k, v in (("@explore@", explore_run), ("@final@", final_run)) if v}
    rows = []
    if rule is not None:
        lr = getattr(suggestion, "lr", None)
        shown = f"{lr:.3e}" if lr is not None else f"none ({getattr(suggestion, 'reason', '') or 'no answer'})"
        rows.append(("suggestion", f"{rule}: {shown}"))
    if confidence is not None:
        rows.append(("confidence", confidence + (f" ({'; '.join(reasons)})" if reasons else "")))
    if bounds is not None:
        rows.append(("bounds", f"max_lr {bounds.max_lr:.3e}, base_lr {bounds.base_lr:.3e} ({bounds.rule})"))
    rows += [(k, f"{v:.4g}") for k, v in (final or {}).items()]
    lines = ["**lrtrack pipeline**: `" + _cell(command) + "`", "", "| | |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
    links = []
    if "@explore@" in refs:
        links.append("[range test](#/experiments/@experiment@/runs/@explore@)")
    if "@final@" in refs:
        links.append("[training run](#/experiments/@experiment@/runs/@final@)")
    if len(refs) == 2:
        links.append(f"[side by side]({compare_fragment(['@explore@', '@final@'], ['@experiment@'])})")
    if links:
        lines += ["", "Runs: " + " · ".join(links)]
    return RunText("\n".join(lines), refs)


def log_trained_model(run: Any, model: Any, first_batch: Any, *, name: str,
                      registered_model_name: str | None = None) -> None:
    """The trained model as the final run's MLflow logged model (``mlflow.pytorch.log_model`` on
    delivery), named ``name`` in MLflow's characters (a config named resnet.v2 logs resnet_v2), with
    the first rows of ``first_batch`` as its input example; registered as ``registered_model_name``."""
    from lrtrack.tracking.models import input_example

    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name) or "model"  # MLflow refuses / : . % " '
    run.log_model(model, name=safe, input_example=input_example(first_batch),
                  registered_model_name=registered_model_name)


# --------------------------------------------------------------------------- a sweep's own runs


def start_sweep_run(tracker: Any, run_id: str, name: str, *, swept: Sequence[str], overrides: Sequence[str],
                    keys: Sequence[str], command: str, launcher: str, sweep_dir: str) -> Any:
    """Start a sweep's parent run and log its command; returns the run."""
    run = tracker.start_run(name, run_id=run_id, tags=redact_tree({
        STAGE_TAG: STAGE_SWEEP, COMMAND_TAG: command, OVERRIDES_TAG: " ".join(overrides),
        SWEEP_KEYS_TAG: ",".join(keys), LAUNCHER_TAG: launcher, SWEEP_DIR_TAG: sweep_dir}))
    run.log_dict(redact_tree({"command": command, "overrides": list(overrides), "swept": list(swept),
                              "launcher": launcher}), SWEEP_COMMAND)
    return run


def record_failure(tracker: Any, error: BaseException, job_run_id: str | None, *, name: str,
                   parent_run_id: str, tags: Mapping[str, str]) -> str:
    """Mark a failed sweep job: tag its pipeline run (``job_run_id``) with the error or, when it
    failed before it had one (bad config, missing data), start a FAILED pipeline run named
    ``name`` under ``parent_run_id``. Returns the job's run id (lrtrack's)."""
    if job_run_id is not None:
        tracker.run(job_run_id).set_tags({ERROR_TAG: error_message(error)})
        return job_run_id
    run = tracker.start_run(redact(name), parent_run_id=parent_run_id,
                            tags=redact_tree({STAGE_TAG: STAGE_PIPELINE, **tags}))
    run.set_tags({ERROR_TAG: error_message(error)})
    run.end("FAILED")
    return str(run.run_id)


def log_sweep_summary(run: Any, rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                      curves: Sequence[Any], *, wall_seconds: float | None = None) -> None:
    """Log a sweep's summary on its ``run``: the table (one row per job, as CSV and as MLflow's
    ``log_table`` JSON that the UI shows as a table), the overlay of its range-test ``curves``
    (:func:`lrtrack.engine.plots.range_test_overlay_figure`'s input), the job counts and the best job."""
    from lrtrack.engine.plots import range_test_overlay_figure

    run.log_rows_csv(rows, SWEEP_SUMMARY_CSV, columns=columns)
    run.log_dict({"columns": list(columns), "data": [["" if r.get(c) is None else r.get(c) for c in columns]
                                                     for r in rows]}, SWEEP_SUMMARY_JSON)
    if curves:
        run.log_figure(range_test_overlay_figure(curves, title=f"sweep: {len(curves)} range tests"),
                       SWEEP_RANGE_TESTS_PLOT)
    metrics = {"jobs": float(len(rows)), "jobs_failed": float(sum(1 for r in rows if r["status"] != "FINISHED"))}
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


def log_seed_aggregate(tracker: Any, parent_run_id: str, agg: SeedAggregate, *,
                       name: str, group: str, rule: str, seed_run_ids: Sequence[str]) -> str:
    """Log a ``range_test_seeds`` run under ``parent_run_id``; returns its id (lrtrack's). It holds
    each rule's suggestion over the seeds (``suggested_lr/<rule>`` the median, plus ``/min``, ``/max``,
    ``/log10_iqr``, ``/n``; the chosen ``rule``'s median is also ``suggested_lr``), the median curve
    as its range-test history, each seed's curve and suggestions, and the figure. The suggestions
    are each seed's *logged* ones: ``confirmed`` comes from each seed's probes, not from a curve."""
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
        run.log_rows_csv(agg.history_rows(), RANGE_TEST_HISTORY, columns=HISTORY_COLUMNS)
        seed_columns = [f"{SEED_COLUMN_PREFIX}{s}" for s in agg.seeds]
        run.log_rows_csv([{"lr": lr, **{c: agg.curves[j][i] for j, c in enumerate(seed_columns)}}
                          for i, lr in enumerate(agg.lrs)], SEEDS_HISTORY, columns=["lr", *seed_columns])
        run.log_rows_csv([{"seed": s, **agg.per_seed[s]} for s in agg.seeds], SEEDS_SUGGESTIONS,
                         columns=["seed", *RULES])
        run.log_figure(seeds_figure(agg, chosen_rule=rule, title=name), SEEDS_PLOT)
    return str(run.run_id)
