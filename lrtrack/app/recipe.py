"""The application: set up, range test, choose bounds, train, finish (torchtune's recipe shape).

:class:`RangeTestRecipe` turns one composed config into runs. Each stage is one method and
every run is opened as a context manager, so every path (success, failure, Ctrl-C) ends the
run with the right status: FINISHED, FAILED or KILLED. What is logged where is
:mod:`lrtrack.tracking.runlog`'s business; the engine (:mod:`lrtrack.engine.finder`, :mod:`lrtrack.engine.train`)
knows nothing of Hydra or MLflow.

Only this module and :mod:`lrtrack.app.cli` see a ``DictConfig``. Errors a user can fix (missing
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

from lrtrack.app.config import ConfigError, component_error, dry_run, validate
from lrtrack.tracking import runlog
from lrtrack.tracking.redact import redact, redact_tree

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
    sweep: Any = None  # lrtrack.app.sweep.SweepContext when the job belongs to a multirun sweep
    job_num: int | None = None
    pipeline_run: Any = field(default=None, init=False)  # the job's run, once it exists
    final_run_id: str | None = field(default=None, init=False)  # once training has started

    @property
    def pipeline_run_id(self) -> str | None:
        """The job's run id in the store (read late: a run may wait in the spool to be created)."""
        return self.pipeline_run.run_id if self.pipeline_run is not None else None

    def model_name(self, cfg: DictConfig) -> str:
        return self.choices.get("model") or str(cfg.model.get("_target_", "model")).rsplit(".", 1)[-1]


@dataclass
class Components:
    """What set-up builds: data, model, optimizer, loss, step, metric, and where runs go."""

    data: Any
    model: Any
    optimizer: Any
    criterion: Any
    tracker: Any
    data_info: runlog.DataInfo
    step: Any = None  # (model, batch) -> loss from the step setting; None: criterion on (inputs, targets)
    metric: Any = "accuracy"  # the validation metric (lrtrack.engine.tasks.as_metric); None: validation loss only

    def loss_args(self) -> dict[str, Any]:
        """How the engine computes a batch's loss: ``run_range_test(..., **parts.loss_args())``."""
        return {"criterion": None, "step_fn": self.step} if self.step is not None else {"criterion": self.criterion}


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
        """Run the configured stages; returns the final validation loss (or the min range-test loss).

        Call :func:`lrtrack.app.config.validate` first; the optimizer and schedule are built on a
        dummy parameter here (:func:`lrtrack.app.config.dry_run`), before any data is loaded.

        Raises:
            ConfigError, UserError: bad input (one line each); nothing was logged.
        """
        # The tracker first: its relay process imports MLflow and opens the store while this one
        # imports torch. It delivers what is left at the end (bounded wait; DeliveryError if it cannot).
        with self._open_tracker() as tracker:
            from tqdm.contrib.logging import logging_redirect_tqdm

            dry_run(self.cfg)  # torch's import: the relay imports MLflow meanwhile

            from lrtrack.engine.distributed import launch_problem, process_group

            problem = launch_problem(self._device())
            if problem is not None:
                raise UserError(problem)
            # torchrun: one process group for the job (gloo on CPU, nccl on CUDA), left at the end.
            # Log lines go through tqdm while a progress bar is drawn, so neither overwrites the other.
            with process_group(self._device()), logging_redirect_tqdm(loggers=[logging.getLogger()]):
                self._redact_saved_config()
                return self._stages(self._distribute(self.setup(tracker)))

    def _stages(self, parts: Components) -> float | None:
        from lrtrack.engine.distributed import broadcast_object, is_distributed, is_main

        stage = self.cfg.stage
        if self.cfg.train.resume:
            if is_distributed():
                raise UserError("train.resume continues a run in one process: run it without torchrun")
            return self.resume(parts)
        with self._pipeline_run(parts) as pipeline:
            outcome: float | None = None
            curve = None
            if stage in ("all", "range_test"):
                curve, outcome = self.range_test(parts, pipeline.run_id)
            elif self.cfg.train.lr_from:  # torchrun: rank 0 reads it (the others track nothing)
                curve = broadcast_object(self.read_range_test(parts) if is_main() else None)
            if stage in ("all", "train"):
                bounds = broadcast_object(self.choose_bounds(curve))  # torchrun: rank 0's decision everywhere
                outcome = self.train(parts, bounds, curve, pipeline.run_id)
                pipeline.log_summary({"final_val_loss": outcome} if outcome is not None else {})
        if parts.tracker.enabled and self.job.sweep is None:
            log.info("MLflow: %s", redact(parts.tracker.ui_hint()))
        return outcome

    def setup(self, tracker: Any = None) -> Components:
        """Seed, then build the data, model, optimizer, loss, step and metric, check that they fit
        on the first batch (no run is created yet).

        Args:
            tracker: where runs go (default: the configured one, opened now; close it after use).

        Raises:
            UserError: a component cannot be built, or the first batch shows a mismatch
                (one line naming the setting to change).
        """
        self._import_from_launch_dir()
        return self._build_components(self._open_tracker() if tracker is None else tracker)

    def _build_components(self, tracker: Any) -> Components:
        from lrtrack.engine.steps import seed_everything

        seed_everything(self.cfg.seed)
        data = self._data()
        model = self._build("model", lambda built: built)
        optimizer = self._build("optimizer", lambda partial: partial(model.parameters()))
        criterion = self._build("criterion", lambda built: built)
        step, metric = self._step(), self._metric()
        self.check_first_batch(data, model, criterion, step)
        info = runlog.DataInfo(data.name, data.source, data.fell_back)
        return Components(data, model, optimizer, criterion, tracker, info, step=step, metric=metric)

    def check_first_batch(self, data: Any, model: Any, criterion: Any, step: Any) -> None:
        """Run the model once on the first training batch (eval mode, no gradients, data order and
        RNG untouched) and stop before any run starts when model, loss and data cannot train
        together: logits given to ``nll``, probabilities to ``cross_entropy``, class counts or
        shapes that cannot match, dict batches without a ``step``, a loss that is not a scalar."""
        from lrtrack.data import peek
        from lrtrack.engine.steps import move_to_device, resolve_device
        from lrtrack.engine.tasks import first_batch_problem

        device = resolve_device(self._device(), model)
        try:
            batch = move_to_device(peek(data.train), device)
        except ValueError as err:
            raise UserError(f"data ({self.cfg.data.get('_target_')}): {err}") from err
        model.to(device)
        problem = first_batch_problem(model, batch, criterion=None if step is not None else criterion, step=step,
                                      num_classes=data.num_classes)
        if problem is not None:
            raise UserError(f"first batch: {problem}")

    def range_test(self, parts: Components, parent_id: str | None) -> tuple[runlog.RangeCurve, float | None]:
        """The exploratory run: the range test (``finder.repeats`` of them), its suggestions, plot and history."""
        from lrtrack.engine.finder import STOP_INTERRUPTED
        from lrtrack.engine.repeats import auto_repeats, run_repeated_range_test

        f = self.cfg.finder
        name = self._run_name(parts, "range_test", self.job.choices.get("optimizer", ""), f.step_mode)
        with _recording_errors(parts.tracker.start_run(name, tags=self.context.tags(runlog.STAGE_EXPLORE),
                                                       parent_run_id=parent_id)) as run:
            runlog.log_config(run, self.context, parts.data_info)
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
                amp=f.amp, device=self._device(), observer=run, progress=self.cfg.progress)
            _log_suggestions(result)
            if run.enabled:
                runlog.log_range_test(run, result, chosen_rule=f.suggestion, title=name)
                log.info("range-test run: %s", run.run_id)
            if result.stop_reason == STOP_INTERRUPTED:
                raise KeyboardInterrupt  # the run ends KILLED with the partial curve logged
        return runlog.RangeCurve.from_result(result, run.run_id if run.enabled else None), result.min_loss

    def read_range_test(self, parts: Components) -> runlog.RangeCurve:
        """``train.lr_from``: a range test logged earlier, read back from MLflow."""
        if not parts.tracker.enabled:
            raise UserError("train.lr_from needs tracking.enabled=true (it reads the run from MLflow)")
        try:
            curve = runlog.read_range_test(self._client(parts.tracker), self.cfg.train.lr_from,
                                           where=redact(parts.tracker.tracking_uri))
        except runlog.RunLookupError as err:
            raise UserError(str(err)) from err
        if curve.stop_reason == "interrupted" and not self.cfg.train.allow_partial:
            raise UserError(f"train.lr_from={curve.run_id!r} names a range test that was interrupted after "
                            f"{len(curve.lrs)} steps, so its suggestions come from a partial curve; run the "
                            "range test again, or set train.allow_partial=true to use it anyway")
        return curve

    def choose_bounds(self, curve: runlog.RangeCurve | None) -> Any:
        """The LR range of the training run: ``bounds.max_lr`` when set, else from the range test."""
        from lrtrack.engine.schedules import bounds_from_config, bounds_from_suggestions

        b = self.cfg.bounds
        try:
            if b.max_lr is not None:
                return bounds_from_config(b.max_lr, b.base_divisor)
            if curve is None:
                raise UserError("stage=train needs bounds.max_lr=<lr> or train.lr_from=<range-test run id>")
            return bounds_from_suggestions(curve.suggestions, max_lr_rule=b.max_lr_rule,
                                           base_divisor=b.base_divisor, min_loss_lr=curve.min_loss_lr)
        except ValueError as err:  # e.g. the chosen rule had no suggestion on this curve
            raise UserError(str(err)) from err

    def train(self, parts: Components, bounds: Any, curve: runlog.RangeCurve | None,
              parent_id: str | None) -> float | None:
        """The final run: the schedule within ``bounds``, then training."""
        schedule_name = self.job.choices.get("schedule", str(self.cfg.schedule.get("_target_", "")).rsplit(".")[-1])
        name = self._run_name(parts, "train", self.job.choices.get("optimizer", ""), schedule_name)
        link = {runlog.RANGE_TEST_LINK_TAG: curve.run_id} if curve is not None and curve.run_id else {}
        with _recording_errors(parts.tracker.start_run(name, tags=self.context.tags(runlog.STAGE_FINAL, **link),
                                                       parent_run_id=parent_id)) as run:
            return self._fit(parts, bounds, curve, run, run, name)

    def resume(self, parts: Components) -> float | None:
        """``train.resume``: continue a killed training run, into the same MLflow run, from its last
        checkpoint; steps it already logged are not logged again."""
        from lrtrack.tracking.runs import resume_lock

        tracker, run_id = parts.tracker, str(self.cfg.train.resume)
        if not tracker.enabled:
            raise UserError("train.resume needs tracking.enabled=true (it continues an MLflow run)")
        try:
            with resume_lock(tracker.tracking_uri, run_id):
                return self._resume(parts, run_id)
        except RuntimeError as err:
            if "is resuming this run now" not in str(err):
                raise
            raise UserError(str(err)) from err

    def _resume(self, parts: Components, run_id: str) -> float | None:
        from lrtrack.engine.schedules import Bounds
        from lrtrack.tracking.journal import owner_alive
        from lrtrack.tracking.runs import NullRun

        tracker = parts.tracker
        client = self._client(tracker)
        try:
            record = runlog.read_training_run(client, run_id, where=redact(tracker.tracking_uri))
        except runlog.RunLookupError as err:
            raise UserError(str(err)) from err
        if record.status == "RUNNING" and record.owner and owner_alive(record.owner) is not False:
            raise UserError(f"train.resume={run_id!r}: the run is still RUNNING in another job ({record.owner}); "
                            f"resume it once that job has ended")
        self._check_same_config(record)
        folder = self.job.output_dir / "resume"
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = runlog.download_checkpoint(client, record.run_id, str(folder))
        if checkpoint is None:
            raise UserError(f"train.resume={run_id!r}: the run has no checkpoint yet (it stopped in its first "
                            "epoch); start it again without train.resume")
        curve = None
        if record.range_test_run_id:
            curve = runlog.read_range_test(client, record.range_test_run_id, where=redact(tracker.tracking_uri))
        bounds = Bounds(record.max_lr, record.base_lr, record.rule)
        logged = runlog.last_logged_steps(client, record.run_id)
        parent = (tracker.reopen_run(record.parent_lrtrack_id, record.parent_run_id) if record.parent_run_id
                  else NullRun())
        with _recording_errors(parent), _recording_errors(tracker.reopen_run(record.lrtrack_id, record.run_id)) as run:
            log.info("resuming training run %s from %s", record.lrtrack_id, checkpoint)
            title = client.get_run(record.run_id).info.run_name
            outcome = self._fit(parts, bounds, curve, run, runlog.SkipLogged(run, logged), title, checkpoint)
            parent.log_summary({"final_val_loss": outcome} if outcome is not None else {})
        return outcome

    def _fit(self, parts: Components, bounds: Any, curve: runlog.RangeCurve | None, run: Any, observer: Any,
             title: str, resume_from: str | None = None) -> float | None:
        """Build the schedule, train (or continue training), log what the run produced."""
        from hydra.utils import instantiate

        from lrtrack.engine.schedules import optimizer_steps_per_epoch
        from lrtrack.engine.train import NonFiniteLossError

        t = self.cfg.train
        steps_per_epoch = optimizer_steps_per_epoch(len(parts.data.train), t.accumulation_steps)
        schedule = instantiate(self.cfg.schedule)(parts.optimizer, max_lr=bounds.max_lr, base_lr=bounds.base_lr,
                                                  steps_per_epoch=steps_per_epoch, epochs=t.epochs)
        log.info("training: %s, max_lr=%.3e base_lr=%.3e (%s), %d epochs x %d steps",
                 schedule.name, bounds.max_lr, bounds.base_lr, bounds.rule, t.epochs, steps_per_epoch)
        if run.enabled:
            self.job.final_run_id = run.run_id  # what a user resumes with
            if resume_from is None:
                runlog.log_config(run, self.context, parts.data_info, runlog.bounds_params(bounds, steps_per_epoch))
            log.info("training run %s started; if it is killed, continue it with: %s train.resume=%s",
                     self.job.final_run_id, redact(self.job.command), self.job.final_run_id)
        try:
            result = self._train(parts, schedule, observer, resume_from)
        except NonFiniteLossError as err:
            raise RunFailure(f"{err}; the run ends FAILED with the steps before it logged") from err
        log.info("training done: %s", ", ".join(f"{k}={v:.4g}" for k, v in runlog.final_metrics(result).items()))
        if run.enabled:
            runlog.log_training(run, result, bounds=bounds, steps_per_epoch=steps_per_epoch, curve=curve,
                                title=title)
        return result.final_val_loss

    def _train(self, parts: Components, schedule: Any, observer: Any, resume_from: str | None) -> Any:
        from lrtrack.engine.train import train

        t = self.cfg.train
        return train(
            parts.model, parts.optimizer, parts.data.train, epochs=t.epochs, schedule=schedule,
            **parts.loss_args(), metric=parts.metric, val_loader=parts.data.val, device=self._device(),
            accumulation_steps=t.accumulation_steps, grad_clip_norm=t.grad_clip_norm, smoothing=t.smoothing,
            observer=observer, checkpoint_dir=self.job.output_dir / "checkpoints" if t.checkpoint else None,
            seed=self.cfg.seed, progress=self.cfg.progress, amp=t.amp, resume_from=resume_from)

    def _check_same_config(self, record: runlog.TrainingRecord) -> None:
        """A resumed run must continue the same training: refuse settings that changed."""
        from lrtrack.tracking.runs import flatten

        free = ("train.resume", "progress", "device", "stage", "tracking.", "hydra.")
        now = flatten(self.context.config)
        changed = [f"{k}={now[k]} (the run has {record.params[k]})" for k in sorted(now)
                   if k in record.params and now[k] != record.params[k] and not k.startswith(free)]
        if changed:
            raise UserError(f"train.resume={record.run_id!r} continues a run with other settings: "
                            f"{', '.join(changed)}; resume with the overrides the run was started with")

    # ------------------------------------------------------------------ building blocks

    @contextmanager
    def _pipeline_run(self, parts: Components) -> Iterator[Any]:
        """The job's parent run (only when it has two stages, or belongs to a sweep)."""
        from lrtrack.tracking.runs import NullRun

        sweep = self.job.sweep
        if not parts.tracker.enabled or (self.cfg.stage != "all" and sweep is None):
            yield NullRun()
            return
        name = self._run_name(parts, "lrtrack", self.job.choices.get("optimizer", ""),
                              self.job.choices.get("schedule", ""))
        extra: dict[str, str] = {}
        if sweep is not None:  # a child of the sweep's run, named by the job's swept overrides
            name = redact(sweep.job_name(self.job.overrides))
            extra = {runlog.SWEEP_RUN_TAG: sweep.run_id, runlog.SWEEP_OVERRIDES_TAG: " ".join(
                sweep.swept(self.job.overrides)), runlog.JOB_NUM_TAG: str(self.job.job_num)}
        with _recording_errors(parts.tracker.start_run(
                name, tags=self.context.tags(runlog.STAGE_PIPELINE, **extra),
                parent_run_id=sweep.run_id if sweep is not None else None)) as run:
            self.job.pipeline_run = run
            runlog.log_config(run, self.context, parts.data_info)
            yield run

    def _data(self) -> Any:
        """The ``data`` node built: lrtrack's builders get the seed and paths from the launch folder;
        a user's own ``_target_`` gets its settings as written and may return loaders or a bundle."""
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        from lrtrack.data import BUILTINS, DataUnavailableError, as_bundle

        node = self.cfg.data
        target = str(node.get("_target_"))
        settings: dict[str, Any] = {}
        if target in BUILTINS:
            settings["seed"] = self.cfg.seed
            for key in ("root", "path"):
                if node.get(key) is not None and not Path(str(node[key])).is_absolute():
                    settings[key] = str(self.job.launch_dir / str(node[key]))
        try:
            return as_bundle(instantiate(node, **settings), self.job.choices.get("data") or target.rsplit(".", 1)[-1])
        except DataUnavailableError as err:
            raise UserError(str(err)) from err
        except (InstantiationException, ValueError, TypeError) as err:
            if isinstance(err.__cause__, DataUnavailableError):
                raise UserError(str(err.__cause__)) from err
            raise UserError(component_error("data", node, err)) from err

    def _step(self) -> Any:
        """The ``step`` setting: None (the criterion on (inputs, targets)) or a (model, batch) -> loss."""
        node = self.cfg.get("step")
        return self._callable("step", node) if node else None

    def _metric(self) -> Any:
        """The ``metric`` setting as a validation metric (:func:`lrtrack.engine.tasks.as_metric`); None: loss only."""
        from lrtrack.engine.tasks import as_metric

        node = self.cfg.get("metric")
        if not node:
            return None
        built = self._callable("metric", node)
        name = None if hasattr(built, "name") else self.job.choices.get("metric")
        try:
            return as_metric(built, name=name)
        except TypeError as err:
            raise UserError(f"metric ({node.get('_target_')}): {err}") from err

    def _callable(self, group: str, node: DictConfig) -> Any:
        """A ``_target_`` that is called per batch: a class is instantiated with its settings; a
        function is bound to them (``_partial_``), unless the node says otherwise."""
        import inspect

        from hydra.errors import InstantiationException
        from hydra.utils import get_object, instantiate

        from lrtrack.app.config import import_hint

        target = str(node.get("_target_"))
        hint = import_hint(target)
        if hint is not None:
            raise UserError(f"{group} ({target}): {hint}")
        partial = node.get("_partial_", not inspect.isclass(get_object(target)))
        try:
            return instantiate(node, _partial_=partial)
        except (InstantiationException, ValueError, TypeError) as err:
            raise UserError(component_error(group, node, err)) from err

    def _import_from_launch_dir(self) -> None:
        """Make modules in the launch folder importable by ``_target_`` (``python -m`` puts the
        working folder on ``sys.path``; a launcher's worker process may not)."""
        import sys

        folder = str(self.job.launch_dir)
        if folder not in sys.path:
            sys.path.insert(0, folder)

    def _build(self, group: str, finish: Any) -> Any:
        """Instantiate the ``group`` component; a constructor's complaint becomes one line."""
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        node = self.cfg[group]
        try:
            return finish(instantiate(node))
        except (InstantiationException, ValueError, TypeError) as err:
            raise UserError(component_error(group, node, err)) from err

    def _open_tracker(self) -> Any:
        """Check the tracking store at once (one line, seconds at most, before any data is
        loaded), then start the tracker's relay process (:mod:`lrtrack.tracking.relay`), which imports
        MLflow and opens the store while this process imports torch; every write waits in the
        spool until the relay has delivered it."""
        from lrtrack.engine.launcher_env import launch_rank
        from lrtrack.tracking.runs import JournalError, NullTracker, Tracker
        from lrtrack.tracking.store import TrackingUnavailable, preflight, resolve_tracking_uri

        t = self.cfg.tracking
        if not t.enabled or launch_rank() != 0:  # torchrun: rank 0 alone opens the store and logs
            return NullTracker()
        uri = resolve_tracking_uri(t.tracking_uri, self.job.launch_dir)
        name = t.experiment_name or f"lrtrack-{self.model_name}"
        if self.job.sweep is not None:  # the sweep's store and experiment, created before any job started
            uri, name = self.job.sweep.tracking_uri, self.job.sweep.experiment_name
        try:
            preflight(uri)
        except TrackingUnavailable as err:
            raise UserError(str(err)) from err
        for noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # "Creating tables ...": not news
            logging.getLogger(noisy).setLevel(logging.WARNING)
        spool = Path(t.spool_dir) if t.spool_dir else self.job.output_dir / "tracking-spool"
        try:
            return Tracker(uri, name, spool_dir=spool, delivery_timeout_s=t.delivery_timeout_s)
        except JournalError as err:
            raise UserError(str(err)) from err

    @staticmethod
    def _client(tracker: Any) -> Any:
        """The store's client, to read runs back."""
        from lrtrack.tracking.store import TrackingUnavailable

        try:
            return tracker.client
        except TrackingUnavailable as err:
            raise UserError(str(err)) from err

    def _distribute(self, parts: Components) -> Components:
        """torchrun: the model in DistributedDataParallel, each rank on its shard of the data
        (:func:`lrtrack.data.shard_bundle`), and the other ranks' log lines at WARNING only."""
        from lrtrack.data import shard_bundle
        from lrtrack.engine.distributed import is_distributed, is_main, rank, world_size, wrap_model
        from lrtrack.engine.steps import resolve_device

        if not is_distributed():
            return parts
        if not is_main():
            logging.getLogger("lrtrack").setLevel(logging.WARNING)
        log.info("torchrun: %d ranks, DistributedDataParallel; data.batch_size=%s per rank", world_size(),
                 self.cfg.data.get("batch_size", "?"))
        parts.model = wrap_model(parts.model, resolve_device(self._device(), parts.model))
        parts.data = shard_bundle(parts.data, rank(), world_size())
        return parts

    def _redact_saved_config(self) -> None:
        """Hydra saved the config and overrides in the job's folder: mask credentials there too."""
        import yaml

        for path in (self.job.output_dir / ".hydra").glob("*.yaml"):
            text = path.read_text()
            if redact(text) != text:
                path.write_text(yaml.safe_dump(redact_tree(yaml.safe_load(text)), sort_keys=False))

    def _device(self) -> str | None:
        return None if self.cfg.device == "auto" else str(self.cfg.device)

    def _run_name(self, components: Components, stage: str, *parts: str) -> str:
        """``range_test mnist_cnn sgd exp on mnist``: the data set is in the name, so a run that fell
        back to other data never looks like the one that was asked for; in a sweep, the job's
        swept overrides and the sweep's short id follow (``, seed=1 (sweep 3fa9c0)``)."""
        data = components.data_info
        where = f"on {data.name}" + (" (fallback: the requested data was unavailable)" if data.fell_back else "")
        name = " ".join([stage, self.model_name, *[p for p in parts if p], where])
        if self.job.sweep is not None and stage != "lrtrack":  # a sweep's runs: which job, which sweep
            name += f", {self.job.sweep.job_name(self.job.overrides)}"
        return name


def run_sweep_job(cfg: DictConfig, job: JobInfo) -> float:
    """One job of a multirun: a failure is logged and recorded in MLflow (the job's runs FAILED,
    an ``lrtrack.error`` tag), and NaN is returned so Hydra goes on with the other jobs (its
    basic sweeper would stop the sweep, and skip the sweep's summary, on an exception)."""
    try:
        validate(cfg)  # the settings; the recipe builds the optimizer and schedule once its tracker started
        outcome = RangeTestRecipe(cfg, job).run()
        return float("nan") if outcome is None else float(outcome)
    except KeyboardInterrupt:
        raise
    except Exception as err:
        lines = err.errors if isinstance(err, ConfigError) else [str(err).strip() or type(err).__name__]
        expected = isinstance(err, (ConfigError, UserError))
        log.error("job %s failed: %s", " ".join(job.overrides), " ".join(x.strip() for x in lines),
                  exc_info=not expected)  # a bug keeps its traceback in the job's log
        if job.sweep is not None:
            try:
                from lrtrack.tracking.runs import Tracker

                tags = runlog.RunContext({}, job.choices, job.overrides, job.command).tags(runlog.STAGE_PIPELINE)
                with Tracker(job.sweep.tracking_uri, job.sweep.experiment_name,
                             spool_dir=job.output_dir / "tracking-spool") as tracker:
                    runlog.record_failure(tracker, job.sweep, job.overrides, err, job.pipeline_run_id, tags=tags)
            except Exception:
                log.exception("could not record the failure in MLflow")
        return float("nan")


class RunFailure(Exception):
    """Training could not go on for a reason lrtrack detected (a NaN loss): one line, exit 1."""


@contextmanager
def _recording_errors(run: Any) -> Iterator[Any]:
    """Open ``run``; when its work fails, say why on the run (``lrtrack.error``) before it ends FAILED."""
    with run:
        try:
            yield run
        except Exception as err:
            run.set_tags({runlog.ERROR_TAG: runlog.error_message(err)})
            raise


def _log_suggestions(result: Any) -> None:
    log.info("range test: %d steps, %s (%s)", result.steps, result.stop_reason, result.stop_detail)
    for rule, s in result.suggestions.items():
        shown = f"{s.lr:.3e}" if s.lr is not None and math.isfinite(s.lr) else f"no suggestion: {s.reason}"
        log.info("  %-8s %s", rule, shown)
