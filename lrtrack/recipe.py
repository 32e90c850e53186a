"""The application: set up, range test, choose bounds, train, finish (torchtune's recipe shape).

:class:`RangeTestRecipe` turns one composed config into runs. Each stage is one method and
every run is opened as a context manager, so every path (success, failure, Ctrl-C) ends the
run with the right status: FINISHED, FAILED or KILLED. What is logged where is
:mod:`lrtrack.runlog`'s business; the engine (:mod:`lrtrack.finder`, :mod:`lrtrack.train`)
knows nothing of Hydra or MLflow.

Only this module and :mod:`lrtrack.cli` see a ``DictConfig``. Errors a user can fix (missing
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

from lrtrack import runlog
from lrtrack.config import component_error

log = logging.getLogger("lrtrack")


class UserError(Exception):
    """A problem the user can fix, found while running (missing data, a wrong run id): one line."""


@dataclass
class JobInfo:
    """Where and how a job runs (from Hydra): what its runs' names, tags and config record."""

    choices: dict[str, str]
    overrides: list[str]
    command: str
    launch_dir: Path
    output_dir: Path
    sweep: Any = None  # lrtrack.sweep.SweepContext when the job belongs to a multirun sweep
    job_num: int | None = None
    pipeline_run_id: str | None = field(default=None, init=False)  # once the job's run exists

    def model_name(self, cfg: DictConfig) -> str:
        return self.choices.get("model") or str(cfg.model.get("_target_", "model")).rsplit(".", 1)[-1]


@dataclass
class Components:
    """What set-up builds: data, model, optimizer, loss, and where runs go."""

    data: Any
    model: Any
    optimizer: Any
    criterion: Any
    tracker: Any
    data_info: runlog.DataInfo


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
        self.context = runlog.RunContext(
            config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
            choices=job.choices, overrides=job.overrides, command=job.command)

    # ------------------------------------------------------------------ the pipeline

    def run(self) -> float | None:
        """Run the configured stages; returns the final validation loss (or the min range-test loss)."""
        parts = self.setup()
        stage = self.cfg.stage
        with self._pipeline_run(parts) as pipeline:
            outcome: float | None = None
            curve = None
            if stage in ("all", "range_test"):
                curve, outcome = self.range_test(parts, pipeline.run_id)
            elif self.cfg.train.lr_from:
                curve = self.read_range_test(parts)
            if stage in ("all", "train"):
                bounds = self.choose_bounds(curve)
                outcome = self.train(parts, bounds, curve, pipeline.run_id)
                pipeline.log_summary({"final_val_loss": outcome} if outcome is not None else {})
        if parts.tracker.enabled and self.job.sweep is None:
            log.info("MLflow: %s", parts.tracker.ui_hint())
        return outcome

    def setup(self) -> Components:
        """Seed, then build the data, model, optimizer, loss and tracker (no run is created yet)."""
        from lrtrack.steps import seed_everything

        seed_everything(self.cfg.seed)
        data = self._data()
        model = self._build("model", lambda built: built)
        optimizer = self._build("optimizer", lambda partial: partial(model.parameters()))
        criterion = self._build("criterion", lambda built: built)
        info = runlog.DataInfo(data.name, data.source, data.fell_back)
        return Components(data, model, optimizer, criterion, self._tracker(), info)

    def range_test(self, parts: Components, parent_id: str | None) -> tuple[runlog.RangeCurve, float | None]:
        """The exploratory run: the range test, its suggestions, plot and history."""
        from lrtrack.finder import STOP_INTERRUPTED, run_range_test

        f = self.cfg.finder
        name = self._run_name("range_test", self.job.choices.get("optimizer", ""), f.step_mode)
        with parts.tracker.start_run(name, tags=self.context.tags(runlog.STAGE_EXPLORE),
                                     parent_run_id=parent_id) as run:
            runlog.log_config(run, self.context, parts.data_info)
            result = run_range_test(
                parts.model, parts.optimizer, parts.data.train, criterion=parts.criterion,
                val_loader=parts.data.val if f.val_batches > 0 else None, val_batches=f.val_batches or None,
                start_lr=f.start_lr, end_lr=f.end_lr, num_iter=f.num_iter, step_mode=f.step_mode,
                smoothing=f.smoothing, diverge_th=f.diverge_th, accumulation_steps=f.accumulation_steps,
                amp=f.amp, device=self._device(), observer=run, progress=self.cfg.progress)
            _log_suggestions(result)
            if run.enabled:
                runlog.log_range_test(run, result, chosen_rule=f.suggestion, title=name)
                log.info("range-test run: %s", run.run_id)
            if result.stop_reason == STOP_INTERRUPTED:
                raise KeyboardInterrupt  # the run ends KILLED with the partial curve logged
        return runlog.RangeCurve.from_result(result, run.run_id), result.min_loss

    def read_range_test(self, parts: Components) -> runlog.RangeCurve:
        """``train.lr_from``: a range test logged earlier, read back from MLflow."""
        if not parts.tracker.enabled:
            raise UserError("train.lr_from needs tracking.enabled=true (it reads the run from MLflow)")
        try:
            return runlog.read_range_test(parts.tracker.client, self.cfg.train.lr_from,
                                          where=parts.tracker.tracking_uri)
        except runlog.RunLookupError as err:
            raise UserError(str(err)) from err

    def choose_bounds(self, curve: runlog.RangeCurve | None) -> Any:
        """The LR range of the training run: ``bounds.max_lr`` when set, else from the range test."""
        from lrtrack.schedules import bounds_from_config, bounds_from_suggestions

        b = self.cfg.bounds
        try:
            if b.max_lr is not None:
                return bounds_from_config(b.max_lr, b.base_divisor)
            if curve is None:
                raise UserError("stage=train needs bounds.max_lr=<lr> or train.lr_from=<range-test run id>")
            return bounds_from_suggestions(curve.suggestions, max_lr_rule=b.max_lr_rule,
                                           base_divisor=b.base_divisor, min_loss_lr=curve.min_loss_lr)
        except ValueError as err:  # e.g. the chosen rule had no suggestion on this curve
            raise UserError(str(err).replace("schedule.", "bounds.")) from err

    def train(self, parts: Components, bounds: Any, curve: runlog.RangeCurve | None,
              parent_id: str | None) -> float | None:
        """The final run: the schedule within ``bounds``, then training."""
        from hydra.utils import instantiate

        from lrtrack.schedules import optimizer_steps_per_epoch
        from lrtrack.train import train

        t = self.cfg.train
        steps_per_epoch = optimizer_steps_per_epoch(len(parts.data.train), t.accumulation_steps)
        schedule = instantiate(self.cfg.schedule)(parts.optimizer, max_lr=bounds.max_lr, base_lr=bounds.base_lr,
                                                  steps_per_epoch=steps_per_epoch, epochs=t.epochs)
        schedule_name = self.job.choices.get("schedule", schedule.name)
        name = self._run_name("train", self.job.choices.get("optimizer", ""), schedule_name)
        link = {runlog.RANGE_TEST_LINK_TAG: curve.run_id} if curve is not None and curve.run_id else {}
        log.info("training: %s, max_lr=%.3e base_lr=%.3e (%s), %d epochs x %d steps",
                 schedule_name, bounds.max_lr, bounds.base_lr, bounds.rule, t.epochs, steps_per_epoch)
        with parts.tracker.start_run(name, tags=self.context.tags(runlog.STAGE_FINAL, **link),
                                     parent_run_id=parent_id) as run:
            runlog.log_config(run, self.context, parts.data_info, runlog.bounds_params(bounds, steps_per_epoch))
            checkpoints = self.job.output_dir / "checkpoints"
            result = train(
                parts.model, parts.optimizer, parts.data.train, epochs=t.epochs, schedule=schedule,
                criterion=parts.criterion, val_loader=parts.data.val, device=self._device(),
                accumulation_steps=t.accumulation_steps, grad_clip_norm=t.grad_clip_norm, smoothing=t.smoothing,
                observer=run, checkpoint_dir=checkpoints if t.checkpoint else None, seed=self.cfg.seed,
                progress=self.cfg.progress, amp=t.amp)
            log.info("training done: val_loss=%s val_accuracy=%s", result.final_val_loss, result.final_val_accuracy)
            if run.enabled:
                if result.checkpoint_path is not None:
                    run.log_artifact(result.checkpoint_path, runlog.CHECKPOINT_DIR)
                runlog.log_training(run, result, bounds=bounds, steps_per_epoch=steps_per_epoch, curve=curve,
                                    title=name)
        return result.final_val_loss

    # ------------------------------------------------------------------ building blocks

    @contextmanager
    def _pipeline_run(self, parts: Components) -> Iterator[Any]:
        """The job's parent run (only when it has two stages, or belongs to a sweep)."""
        from lrtrack.tracking import NullRun

        sweep = self.job.sweep
        if not parts.tracker.enabled or (self.cfg.stage != "all" and sweep is None):
            yield NullRun()
            return
        name = self._run_name("lrtrack", self.job.choices.get("optimizer", ""), self.job.choices.get("schedule", ""))
        extra: dict[str, str] = {}
        if sweep is not None:  # a child of the sweep's run, named by the job's swept overrides
            name = sweep.job_name(self.job.overrides)
            extra = {runlog.SWEEP_RUN_TAG: sweep.run_id, runlog.SWEEP_OVERRIDES_TAG: " ".join(
                sweep.swept(self.job.overrides)), runlog.JOB_NUM_TAG: str(self.job.job_num)}
        with parts.tracker.start_run(name, tags=self.context.tags(runlog.STAGE_PIPELINE, **extra),
                                     parent_run_id=sweep.run_id if sweep is not None else None) as run:
            self.job.pipeline_run_id = run.run_id
            runlog.log_config(run, self.context, parts.data_info)
            yield run

    def _data(self) -> Any:
        from lrtrack.data import DataUnavailableError, build_data

        d = self.cfg.data
        root = Path(d.root) if Path(d.root).is_absolute() else self.job.launch_dir / d.root
        try:
            return build_data(d.name, root=root, batch_size=d.batch_size, val_batch_size=d.val_batch_size,
                              in_memory=d.in_memory, download=d.download, fallback=d.fallback,
                              num_workers=d.num_workers, seed=self.cfg.seed, fake_size=d.fake_size)
        except DataUnavailableError as err:
            raise UserError(str(err)) from err

    def _build(self, group: str, finish: Any) -> Any:
        """Instantiate the ``group`` component; a constructor's complaint becomes one line."""
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        node = self.cfg[group]
        try:
            return finish(instantiate(node))
        except (InstantiationException, ValueError, TypeError) as err:
            raise UserError(component_error(group, node, err)) from err

    def _tracker(self) -> Any:
        from lrtrack.tracking import NullTracker, Tracker, resolve_tracking_uri

        t = self.cfg.tracking
        if not t.enabled:
            return NullTracker()
        uri = resolve_tracking_uri(t.tracking_uri, self.job.launch_dir)
        name = t.experiment_name or f"lrtrack-{self.model_name}"
        if self.job.sweep is not None:  # the sweep's store and experiment, created before any job started
            uri, name = self.job.sweep.tracking_uri, self.job.sweep.experiment_name
        return Tracker(uri, name, flush_every=t.flush_every, flush_seconds=t.flush_seconds)

    def _device(self) -> str | None:
        return None if self.cfg.device == "auto" else str(self.cfg.device)

    def _run_name(self, stage: str, *parts: str) -> str:
        return " ".join([stage, self.model_name, *parts])


def _log_suggestions(result: Any) -> None:
    log.info("range test: %d steps, %s (%s)", result.steps, result.stop_reason, result.stop_detail)
    for rule, s in result.suggestions.items():
        shown = f"{s.lr:.3e}" if s.lr is not None and math.isfinite(s.lr) else f"no suggestion: {s.reason}"
        log.info("  %-8s %s", rule, shown)
