"""The application: set up, range test, choose bounds, train, finish (torchtune's recipe shape).

:class:`RangeTestRecipe` turns one composed config into runs. Each stage is one method and
every run is opened as a context manager, so every path (success, failure, Ctrl-C) ends the
run with the right status: FINISHED, FAILED or KILLED. The job's tracker and components are
built by :mod:`lrtrack.app.components`, ``train.resume`` is :mod:`lrtrack.app.resume`; what is
logged where is :mod:`lrtrack.tracking.layout`'s business; the engine (:mod:`lrtrack.engine.finder`,
:mod:`lrtrack.engine.train`) knows nothing of Hydra or MLflow.

Only the application (:mod:`lrtrack.app`) sees a ``DictConfig``. Errors a user can fix (missing
data, a wrong run id, a component that cannot be built) are raised as :class:`UserError`, one
line, which the CLI prints without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lrtrack.app.components import (
    ComponentBuilder,
    Components,
    NullRun,
    UserError,
    recording_errors,
    store_client,
)
from lrtrack.app.config import ConfigError, dry_run, max_lr_rule, suggestion_rule, validate
from lrtrack.app.where import review_hint
from lrtrack.engine.stopping import check_stop
from lrtrack.tracking import layout
from lrtrack.tracking.records import RangeCurve, RunLookupError, read_range_test, setup_differences
from lrtrack.tracking.redact import redact, redact_tree

__all__ = ["JobInfo", "RangeTestRecipe", "RunFailure", "UserError", "run_sweep_job"]

log = logging.getLogger("lrtrack")


@dataclass
class JobInfo:
    """Where and how a job runs (from Hydra): what its runs' names, tags and config record."""

    choices: dict[str, str]
    overrides: list[str]
    command: str
    launch_dir: Path
    output_dir: Path
    sweep: Any = None  # lrtrack.app.sweep.SweepContext when the job belongs to a multirun sweep
    job_num: int | None = None
    pipeline_run: Any = field(default=None, init=False)  # the job's run, once it exists
    final_run_id: str | None = field(default=None, init=False)  # once training has started
    runs_ended: bool = field(default=False, init=False)  # every run of the job ended FINISHED (delivery may go on)

    @property
    def pipeline_run_id(self) -> str | None:
        """The job's run id in the store (read late: a run may wait in the spool to be created)."""
        return self.pipeline_run.run_id if self.pipeline_run is not None else None

    def model_name(self, cfg: DictConfig) -> str:
        return self.choices.get("model") or str(cfg.model.get("_target_", "model")).rsplit(".", 1)[-1]


class RunFailure(Exception):
    """Training could not go on for a reason lrtrack detected (a NaN loss): one line, exit 1."""


class RangeTestRecipe:
    """The range-test-then-train pipeline of one job.

    Args:
        cfg: the composed, validated config.
        job: where the job runs.
    """

    def __init__(self, cfg: DictConfig, job: JobInfo) -> None:
        self.cfg = cfg
        self.job = job
        self.model_name = job.model_name(cfg)
        self.builder = ComponentBuilder(cfg, job)
        self.data_notes: list[str] = []  # what the data checks noted (lrtrack.data.checks), for a failed suggestion
        self.context = layout.RunContext(
            config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
            choices=job.choices, overrides=job.overrides, command=job.command)
        self.summary: dict[str, Any] = {}  # what the pipeline run's note and the review line show

    # ------------------------------------------------------------------ the pipeline

    def run(self) -> float | None:
        """Run the configured stages; returns the final validation loss (or the min range-test loss).

        Call :func:`lrtrack.app.config.validate` first; the optimizer and schedule are built on a
        dummy parameter here (:func:`lrtrack.app.config.dry_run`), before any data is loaded.
        Raises: ConfigError, UserError: bad input (one line each); nothing was logged.
        """
        # The tracker first: its relay process imports MLflow and opens the store while this one
        # imports torch. It delivers what is left at the end (bounded wait; DeliveryError if it cannot).
        with self.builder.open_tracker() as tracker:
            from tqdm.contrib.logging import logging_redirect_tqdm

            dry_run(self.cfg)  # torch's import: the relay imports MLflow meanwhile
            from lrtrack.engine.distributed import launch_problem, process_group

            problem = launch_problem(self.builder.device())
            if problem is not None:
                raise UserError(problem)
            # torchrun: one process group (gloo on CPU, nccl on CUDA); log lines go through tqdm's bars.
            with process_group(self.builder.device()), logging_redirect_tqdm(loggers=[logging.getLogger()]):
                self._redact_saved_config()
                outcome = self._stages(self.builder.distribute(self.setup(tracker)))
            self.job.runs_ended = True  # a stop from here on ends nothing KILLED: the runs are FINISHED
        self._print_review(tracker)  # delivered: the store's ids are known
        return outcome

    def _print_review(self, tracker: Any) -> None:
        """The last line of a command: the MLflow UI command and one URL that opens its range test
        and training run side by side (a sweep prints its own, once)."""
        runs = [r for r in (self.summary.get("explore"), self.job.final_run_id) if r]
        if tracker.enabled and self.job.sweep is None and runs:
            log.info("review in MLflow: %s", redact(review_hint(tracker.tracking_uri, tracker.experiment_id,
                                                                [tracker.store_id(r) for r in runs])))

    def _stages(self, parts: Components) -> float | None:
        from lrtrack.app.resume import resume
        from lrtrack.engine.distributed import broadcast_object, is_distributed, is_main

        stage = self.cfg.stage
        if self.cfg.train.resume:
            if is_distributed():
                raise UserError("train.resume continues a run in one process: run it without torchrun")
            return resume(self, parts)
        with self._pipeline_run(parts) as pipeline:
            outcome: float | None = None
            curve = None
            if stage in ("all", "range_test"):
                curve, outcome = self.range_test(parts, pipeline.run_id)
            elif self.cfg.train.lr_from:  # torchrun: rank 0 reads it (the others track nothing)
                curve = broadcast_object(self.read_range_test(parts) if is_main() else None)
            if stage in ("all", "train"):
                bounds = broadcast_object(self.choose_bounds(curve))  # torchrun: rank 0's decision everywhere
                check_schedule(self.cfg, parts, bounds)
                outcome = self.train(parts, bounds, curve, pipeline.run_id)
                pipeline.log_summary({"final_val_loss": outcome} if outcome is not None else {})
                self.summary["bounds"] = bounds
            pipeline.set_tags({layout.NOTE_TAG: self._note()})
        return outcome

    def _note(self) -> Any:
        """The pipeline run's description: what the range test suggested, how sure it is, the bounds,
        the final metrics and links to both runs (:func:`lrtrack.tracking.layout.pipeline_note`)."""
        s = self.summary
        return layout.pipeline_note(command=redact(self.job.command), explore_run=s.get("explore"),
                                    final_run=self.job.final_run_id, rule=s.get("rule"),
                                    suggestion=s.get("suggestion"), confidence=s.get("confidence"),
                                    reasons=s.get("reasons", ()), bounds=s.get("bounds"), final=s.get("final"))

    def setup(self, tracker: Any = None) -> Components:
        """Seed, then build the data, model, optimizer, loss, step and metric, check that they fit
        on the first batch (no run is created yet).

        Args:
            tracker: where runs go (default: the configured one, opened now; close it after use).

        Raises:
            UserError: a component cannot be built, or the first batch shows a mismatch
                (one line naming the setting to change).
        """
        return self.builder.build(self.builder.open_tracker() if tracker is None else tracker)

    def range_test(self, parts: Components, parent_id: str | None) -> tuple[RangeCurve, float | None]:
        """The exploratory run: the range test (``finder.repeats`` of them), its suggestions, plot and history."""
        from lrtrack.engine.finder import STOP_INTERRUPTED
        from lrtrack.engine.repeats import auto_repeats, run_repeated_range_test

        f = self.cfg.finder
        name = self._run_name(parts, "range_test", self.job.choices.get("optimizer", ""), f.step_mode)
        with recording_errors(parts.tracker.start_run(name, tags=self.context.tags(layout.STAGE_EXPLORE),
                                                      parent_run_id=parent_id)) as run:
            layout.log_config(run, self.context, parts.data_info)
            repeats = auto_repeats(parts.optimizer) if f.repeats is None else f.repeats
            log.info("range test: %d steps from %s to %g (%s)%s", f.num_iter,
                     "the optimizer's LR" if f.start_lr is None else f"{f.start_lr:g}", f.end_lr, f.step_mode,
                     f", {repeats} repeats" if repeats > 1 else "")
            result = run_repeated_range_test(
                parts.model, parts.optimizer, parts.data.train, repeats=repeats, probe_steps=f.probe_steps,
                **parts.loss_args(),
                val_loader=parts.data.val if f.val_batches > 0 else None, val_batches=f.val_batches or None,
                start_lr=f.start_lr, end_lr=f.end_lr, num_iter=f.num_iter, step_mode=f.step_mode,
                smoothing=f.smoothing, diverge_th=f.diverge_th, accumulation_steps=f.accumulation_steps,
                amp=f.amp, device=self.builder.device(), observer=run, progress=self.cfg.progress)
            check_stop()  # a stop swallowed in a __del__ during the last step: the run ends KILLED, not FINISHED
            _log_suggestions(result)
            self.data_notes = list(parts.data_notes)
            rule, notice = suggestion_rule(self.cfg)
            if notice:
                log.info("%s", notice)
            self.summary.update(explore=run.run_id if run.enabled else None, rule=rule,
                                suggestion=result.suggestions.get(rule), confidence=result.confidence,
                                reasons=list(result.confidence_reasons))
            if run.enabled:
                layout.log_range_test(run, result, chosen_rule=rule, title=name)
                log.info("range-test run: %s", run.run_id)
            if result.stop_reason == STOP_INTERRUPTED:
                raise KeyboardInterrupt  # the run ends KILLED with the partial curve logged
        return RangeCurve.from_result(result, run.run_id if run.enabled else None), result.min_loss

    def read_range_test(self, parts: Components) -> RangeCurve:
        """``train.lr_from``: a range test logged earlier, read back from MLflow."""
        if not parts.tracker.enabled:
            raise UserError("train.lr_from needs tracking.enabled=true (it reads the run from MLflow)")
        try:
            curve = read_range_test(store_client(parts.tracker), self.cfg.train.lr_from,
                                    where=redact(parts.tracker.tracking_uri))
        except RunLookupError as err:
            raise UserError(str(err)) from err
        differences = setup_differences(curve.setup, self.context.config)
        if differences and not self.cfg.train.get("allow_other_setup", False):
            more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
            raise UserError(f"train.lr_from={curve.run_id!r} is a range test of another setup ("
                            f"{'; '.join(differences[:3])}{more}), so its LR may not suit this one; run a range "
                            "test for this setup, or set train.allow_other_setup=true to use it anyway")
        if differences:
            log.warning("train.lr_from=%s is a range test of another setup (%s); used as train.allow_other_setup=true "
                        "asks", curve.run_id, "; ".join(differences))
        if curve.stop_reason == "interrupted" and not self.cfg.train.allow_partial:
            raise UserError(f"train.lr_from={curve.run_id!r} names a range test that was interrupted after "
                            f"{len(curve.lrs)} steps, so its suggestions come from a partial curve; run the "
                            "range test again, or set train.allow_partial=true to use it anyway")
        return curve

    def choose_bounds(self, curve: RangeCurve | None) -> Any:
        """The LR range of the training run: ``bounds.max_lr`` when set, else from the range test."""
        from lrtrack.engine.schedules import bounds_from_config, bounds_from_suggestions

        b = self.cfg.bounds
        try:
            if b.max_lr is not None:
                return bounds_from_config(b.max_lr, b.base_divisor)
            if curve is None:
                raise UserError("stage=train needs bounds.max_lr=<lr> or train.lr_from=<range-test run id>")
            return bounds_from_suggestions(curve.suggestions, max_lr_rule=max_lr_rule(self.cfg),
                                           base_divisor=b.base_divisor, min_loss_lr=curve.min_loss_lr)
        except ValueError as err:  # e.g. the chosen rule had no suggestion on this curve: say what the curve showed
            if curve is not None and b.max_lr is None and "has no suggestion" in str(err):
                from lrtrack.engine.diagnosis import no_suggestion_message

                raise UserError(no_suggestion_message(str(err), curve.lrs, curve.losses, self.data_notes)) from err
            raise UserError(str(err)) from err

    def train(self, parts: Components, bounds: Any, curve: RangeCurve | None,
              parent_id: str | None) -> float | None:
        """The final run: the schedule within ``bounds``, then training."""
        schedule_name = self.job.choices.get("schedule", str(self.cfg.schedule.get("_target_", "")).rsplit(".")[-1])
        name = self._run_name(parts, "train", self.job.choices.get("optimizer", ""), schedule_name)
        link = {layout.RANGE_TEST_LINK_TAG: curve.run_id} if curve is not None and curve.run_id else {}
        with recording_errors(parts.tracker.start_run(name, tags=self.context.tags(layout.STAGE_FINAL, **link),
                                                      parent_run_id=parent_id)) as run:
            return self.fit(parts, bounds, curve, run, run, name)

    def fit(self, parts: Components, bounds: Any, curve: RangeCurve | None, run: Any, observer: Any,
            title: str, resume_from: Any = None) -> float | None:
        """Build the schedule, train (or continue training, from the checkpoint ``resume_from``) into
        ``run`` with ``observer`` taking the steps, and log what the run produced."""
        from hydra.utils import instantiate

        from lrtrack.engine.schedules import optimizer_steps_per_epoch
        from lrtrack.engine.train import CheckpointWriteError, NonFiniteLossError

        t = self.cfg.train
        steps_per_epoch = optimizer_steps_per_epoch(len(parts.data.train), t.accumulation_steps)
        schedule = instantiate(self.cfg.schedule)(parts.optimizer, max_lr=bounds.max_lr, base_lr=bounds.base_lr,
                                                  steps_per_epoch=steps_per_epoch, epochs=t.epochs)
        log.info("training: %s, max_lr=%.3e base_lr=%.3e (%s), %d epochs x %d steps",
                 schedule.name, bounds.max_lr, bounds.base_lr, bounds.rule, t.epochs, steps_per_epoch)
        if run.enabled:
            self.job.final_run_id = run.run_id  # what a user resumes with
            if resume_from is None:
                layout.log_config(run, self.context, parts.data_info, layout.bounds_params(bounds, steps_per_epoch))
            log.info("training run %s started; if it is killed, continue it with: %s train.resume=%s",
                     self.job.final_run_id, redact(self.job.command), self.job.final_run_id)
        try:
            result = self._train(parts, schedule, observer, resume_from)
            check_stop()  # (as after the range test: before the plots and the logged model)
        except (NonFiniteLossError, CheckpointWriteError) as err:  # a full disk, a read-only folder: no checkpoint
            raise RunFailure(f"{err}; the run ends FAILED with the steps before it logged") from err
        self.summary["final"] = layout.final_metrics(result)
        log.info("training done: %s", ", ".join(f"{k}={v:.4g}" for k, v in self.summary["final"].items()))
        if run.enabled:
            layout.log_training(run, result, bounds=bounds, steps_per_epoch=steps_per_epoch, curve=curve,
                                title=title)
            check_stop()  # (a stop swallowed while the figures were drawn: before the model is logged)
            self._log_model(parts, run)
        return result.final_val_loss

    def _log_model(self, parts: Components, run: Any) -> None:
        """The trained model as the final run's MLflow logged model (``tracking.log_model``), registered
        as ``tracking.register_model`` when set; a model that cannot be saved is a warning (the
        checkpoint stays the way to resume it)."""
        import pickle

        from lrtrack.data import peek
        from lrtrack.tracking.journal import JournalError

        tr = self.cfg.tracking
        if not tr.log_model:
            return
        try:
            layout.log_trained_model(run, parts.model, peek(parts.data.train), name=self.model_name,
                                     registered_model_name=tr.register_model)
        except JournalError:
            raise
        except (pickle.PicklingError, TypeError, AttributeError, RuntimeError, ValueError) as err:  # a user's module
            log.warning("the trained model could not be saved for MLflow (%s: %s); it is not logged as a model "
                        "(set tracking.log_model=false to skip it)", type(err).__name__, err)

    def _train(self, parts: Components, schedule: Any, observer: Any, resume_from: Any) -> Any:
        from lrtrack.engine.train import train

        t = self.cfg.train
        return train(
            parts.model, parts.optimizer, parts.data.train, epochs=t.epochs, schedule=schedule,
            **parts.loss_args(), metric=parts.metric, val_loader=parts.data.val, device=self.builder.device(),
            accumulation_steps=t.accumulation_steps, grad_clip_norm=t.grad_clip_norm, smoothing=t.smoothing,
            observer=observer, checkpoint_dir=self.job.output_dir / "checkpoints" if t.checkpoint else None,
            seed=self.cfg.seed, progress=self.cfg.progress, amp=t.amp, resume_from=resume_from)

    # ------------------------------------------------------------------ building blocks

    @contextmanager
    def _pipeline_run(self, parts: Components) -> Iterator[Any]:
        """The job's parent run (only when it has two stages, or belongs to a sweep)."""
        sweep = self.job.sweep
        if not parts.tracker.enabled or (self.cfg.stage != "all" and sweep is None):
            yield NullRun()
            return
        name = self._run_name(parts, "lrtrack", self.job.choices.get("optimizer", ""),
                              self.job.choices.get("schedule", ""))
        extra: dict[str, str] = {}
        if sweep is not None:  # a child of the sweep's run, named by the job's swept overrides
            name = redact(sweep.job_name(self.job.overrides))
            extra = {**sweep.job_tags(self.job.overrides), layout.JOB_NUM_TAG: str(self.job.job_num)}
        with recording_errors(parts.tracker.start_run(
                name, tags=self.context.tags(layout.STAGE_PIPELINE, **extra),
                parent_run_id=sweep.run_id if sweep is not None else None)) as run:
            self.job.pipeline_run = run
            layout.log_config(run, self.context, parts.data_info)
            yield run

    def _redact_saved_config(self) -> None:
        """Hydra saved the config and overrides in the job's folder: mask credentials there too."""
        import yaml

        for path in (self.job.output_dir / ".hydra").glob("*.yaml"):
            text = path.read_text()
            if redact(text) != text:
                path.write_text(yaml.safe_dump(redact_tree(yaml.safe_load(text)), sort_keys=False))

    def _run_name(self, components: Components, stage: str, *parts: str) -> str:
        """``range_test mnist_cnn sgd exp on mnist``: the data set is in the name, so a run that fell
        back to other data never looks like the one that was asked for; in a sweep, the job's
        swept overrides and the sweep's short id follow (``, seed=1 (sweep 3fa9c0)``)."""
        data = components.data_info
        where = f"on {data.name}" + (" (fallback: the requested data was unavailable)" if data.fell_back else "")
        name = " ".join([stage, self.model_name, *[p for p in parts if p], where])
        if self.job.sweep is not None and stage != "lrtrack":  # a sweep's runs: which job, which sweep
            name += f", {self.job.sweep.job_name(self.job.overrides)}"
        return name if len(name) <= layout.MAX_RUN_NAME else name[:layout.MAX_RUN_NAME - 3] + "..."


def check_schedule(cfg: DictConfig, parts: Components, bounds: Any) -> None:
    """The schedule's settings against the real bounds and steps, before the training run starts (the
    dry run had only a stand-in max_lr): one line, the range test's run kept as it ended."""
    from lrtrack.app.config import schedule_problems
    from lrtrack.engine.schedules import optimizer_steps_per_epoch

    steps = optimizer_steps_per_epoch(len(parts.data.train), cfg.train.accumulation_steps)
    problems = schedule_problems(cfg, bounds.max_lr, bounds.base_lr, steps)
    if problems:
        raise UserError(f"{'; '.join(problems)} (with max_lr={bounds.max_lr:.4g} from {bounds.rule}; the "
                        "training run was not started)")


def run_sweep_job(cfg: DictConfig, job: JobInfo) -> float:
    """One job of a multirun: a failure is logged and recorded in MLflow (the job's runs FAILED,
    an ``lrtrack.error`` tag), and NaN is returned so Hydra goes on with the other jobs (its
    basic sweeper would stop the sweep, and skip the sweep's summary, on an exception)."""
    try:
        validate(cfg)  # the settings; the recipe builds the optimizer and schedule once its tracker started
        outcome = RangeTestRecipe(cfg, job).run()
        check_stop()  # a stop Python dropped in a __del__: the sweep stops here, before its next job
        return float("nan") if outcome is None else float(outcome)
    except KeyboardInterrupt:
        raise
    except Exception as err:
        lines = err.errors if isinstance(err, ConfigError) else [str(err).strip() or type(err).__name__]
        expected = isinstance(err, (ConfigError, UserError))
        log.error("job %s failed: %s", " ".join(job.overrides), " ".join(x.strip() for x in lines),
                  exc_info=not expected)  # a bug keeps its traceback in the job's log
        from lrtrack.app.sweep import note_failed_job

        note_failed_job(job.job_num, job.overrides, " ".join(x.strip() for x in lines))  # the sweep exits 1
        if job.sweep is not None:
            try:
                from lrtrack.tracking.runs import Tracker

                tags = layout.RunContext({}, job.choices, job.overrides, job.command).tags(layout.STAGE_PIPELINE)
                with Tracker(job.sweep.tracking_uri, job.sweep.experiment_name,
                             spool_dir=job.output_dir / "tracking-spool") as tracker:
                    job.sweep.record_failure(tracker, job.overrides, err, job.pipeline_run_id, tags=tags)
            except Exception:
                log.exception("could not record the failure in MLflow")
        return float("nan")


def _log_suggestions(result: Any) -> None:
    from lrtrack.engine.diagnosis import curve_diagnosis

    log.info("range test: %d steps, %s (%s)", result.steps, result.stop_reason, result.stop_detail)
    shown = curve_diagnosis(result.lrs, result.losses)
    if shown is not None:
        log.warning("range test: %s", shown)
    for rule, s in result.suggestions.items():
        shown = f"{s.lr:.3e}" if s.lr is not None and math.isfinite(s.lr) else f"no suggestion: {s.reason}"
        log.info("  %-8s %s", rule, shown)
    why = f": {'; '.join(result.confidence_reasons)}" if result.confidence_reasons else ""
    log.info("confidence in the suggestion: %s%s", result.confidence, why)
    for action in result.extra_actions:  # what a low verdict spent before answering
        log.info("  %s", action)
