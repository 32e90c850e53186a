"""The building blocks of a job (:mod:`lrtrack.app.recipe`): its tracker, and the data, model,
optimizer, loss, step and metric built from the config and checked together on the first batch.

Objects are built with ``hydra.utils.instantiate``, so a user's own ``_target_`` plugs in; a
component that cannot be built, or data that cannot be had, is a :class:`UserError` (one line).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from lrtrack.app import kinds
from lrtrack.app.config import component_error, model_memory_problem
from lrtrack.tracking.layout import ERROR_TAG, DataInfo, error_message

if TYPE_CHECKING:
    from lrtrack.app.recipe import JobInfo

log = logging.getLogger("lrtrack")


class UserError(Exception):
    """A problem the user can fix, found while running (missing data, a wrong run id): one line."""


class NullRun:
    """A run that records nothing: what the recipe uses with ``tracking.enabled=false``."""

    run_id: str | None = None
    enabled = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("log_", "set_", "on_")) or name == "end":
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def __enter__(self) -> NullRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class NullTracker:
    """No tracking (``tracking.enabled=false``): its runs record nothing."""

    enabled = False
    undelivered: Path | None = None

    def start_run(self, name: str, **kwargs: Any) -> NullRun:
        return NullRun()

    def close(self, timeout_s: float | None = None) -> None:
        pass

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


@dataclass
class Components:
    """What set-up builds: data, model, optimizer, loss, step, metric, and where runs go."""

    data: Any
    model: Any
    optimizer: Any
    criterion: Any
    tracker: Any
    data_info: DataInfo
    step: Any = None  # (model, batch) -> loss from the step setting; None: criterion on (inputs, targets)
    metric: Any = "accuracy"  # the validation metric (lrtrack.engine.tasks.as_metric); None: validation loss only
    data_notes: list[str] = field(default_factory=list)  # what a range test's curve may be blamed on (the data's scale)

    def loss_args(self) -> dict[str, Any]:
        """How the engine computes a batch's loss: ``run_range_test(..., **parts.loss_args())``."""
        return {"criterion": None, "step_fn": self.step} if self.step is not None else {"criterion": self.criterion}


@contextmanager
def recording_errors(run: Any) -> Iterator[Any]:
    """Open ``run``; when its work fails, say why on the run (``lrtrack.error``) before it ends FAILED."""
    from lrtrack.engine.stopping import stop_requested

    with run:
        try:
            yield run
        except Exception as err:
            if stop_requested():  # the stop broke what ran (a DataLoader worker it killed, torch.save): KILLED
                raise KeyboardInterrupt(f"stopped ({type(err).__name__} on the way)") from err
            run.set_tags({ERROR_TAG: error_message(err)})
            raise


def store_client(tracker: Any) -> Any:
    """The tracking store's client, to read runs back."""
    from lrtrack.tracking.store import TrackingUnavailable

    try:
        return tracker.client
    except TrackingUnavailable as err:
        raise UserError(str(err)) from err


class ComponentBuilder:
    """Builds a job's tracker and components from its config.

    Args:
        cfg: the composed, validated config.
        job: where the job runs.
    """

    def __init__(self, cfg: DictConfig, job: JobInfo) -> None:
        self.cfg = cfg
        self.job = job

    def device(self) -> str | None:
        return None if self.cfg.device == "auto" else str(self.cfg.device)

    def open_tracker(self) -> Any:
        """Check the tracking store at once (one line, seconds at most, before any data is
        loaded), then start the tracker's relay process (:mod:`lrtrack.tracking.relay`), which imports
        MLflow and opens the store while this process imports torch; every write waits in the
        journal until the relay has delivered it."""
        from lrtrack.app.where import resolve_tracking_uri
        from lrtrack.engine.launcher_env import launch_rank
        from lrtrack.tracking.runs import JournalError, Tracker
        from lrtrack.tracking.store import (
            DeletedExperiment,
            TrackingUnavailable,
            check_experiment,
            preflight,
        )

        t = self.cfg.tracking
        if not t.enabled or launch_rank() != 0:  # torchrun: rank 0 alone opens the store and logs
            return NullTracker()
        uri = resolve_tracking_uri(t.tracking_uri, self.job.launch_dir)
        name = t.experiment_name or f"lrtrack-{self.job.model_name(self.cfg)}"
        if self.job.sweep is not None:  # the sweep's store and experiment, created before any job started
            uri, name = self.job.sweep.tracking_uri, self.job.sweep.experiment_name
        try:
            preflight(uri)
            check_experiment(uri, name)  # MLflow's name limits; a deleted experiment is refused, not restored
        except (TrackingUnavailable, DeletedExperiment) as err:
            raise UserError(str(err)) from err
        for noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # "Creating tables ...": not news
            logging.getLogger(noisy).setLevel(logging.WARNING)
        spool = Path(t.spool_dir) if t.spool_dir else self.job.output_dir / "tracking-spool"
        if self.job.sweep is None:  # an earlier job killed with its relay: its records first (a sweep's own do it)
            from lrtrack.app.stranded import deliver_stranded

            deliver_stranded(Path(self.job.launch_dir), Path(t.spool_dir) if t.spool_dir else None, uri)
        try:
            return Tracker(uri, name, spool_dir=spool, delivery_timeout_s=t.delivery_timeout_s)
        except JournalError as err:
            raise UserError(str(err)) from err

    def build(self, tracker: Any) -> Components:
        """Seed, then build the data, model, optimizer, loss, step and metric, and check that they
        fit on the first batch (:meth:`check_first_batch`)."""
        from lrtrack.engine.steps import seed_everything

        self._import_from_launch_dir()
        seed_everything(self.cfg.seed)
        data = self._data()
        self._check_accumulation(data)
        model = self._build("model", lambda built: self._checked(kinds.model_problem, "model", built))
        problem = model_memory_problem(self.cfg, sum(p.numel() * p.element_size() for p in model.parameters()))
        if problem:
            raise UserError(problem)
        if not any(p.requires_grad for p in model.parameters()):  # torch would blame the optimizer's settings
            raise UserError(f"model._target_={self.cfg.model.get('_target_')} built a model with no trainable "
                            "parameters: there is nothing for the range test to train; check model._target_ (and "
                            "any requires_grad=False in it)")
        optimizer = self._build("optimizer", lambda factory: self._checked(
            kinds.optimizer_problem, "optimizer",
            self._checked(kinds.optimizer_factory_problem, "optimizer", factory)(model.parameters())))
        criterion = self._build("criterion", lambda built: self._checked(
            lambda target, obj: kinds.callable_problem("criterion", target, obj), "criterion", built))
        step, metric = self._step(), self._metric()
        notes = self.check_first_batch(data, model, criterion, step, metric)
        info = DataInfo(data.name, data.source, data.fell_back)
        return Components(data, model, optimizer, criterion, tracker, info, step=step, metric=metric,
                          data_notes=notes)

    def check_first_batch(self, data: Any, model: Any, criterion: Any, step: Any, metric: Any = None) -> list[str]:
        """Run the model once on the first training batch (eval mode, no gradients, data order and
        RNG untouched) and stop before any run starts when model, loss and data cannot train
        together: logits given to ``nll``, probabilities to ``cross_entropy``, class counts or
        shapes that cannot match, dict batches without a ``step``, a loss that is not a scalar; then
        the validation ``metric`` on that batch's outputs and targets (it must give a finite number:
        :func:`lrtrack.engine.metric_check.metric_problem`). The whole data is checked where that is
        cheap (:func:`lrtrack.data.checks.check_data`): returns its notes (what a range test's curve
        may be blamed on)."""
        from lrtrack.data import peek
        from lrtrack.engine.metric_check import metric_problem
        from lrtrack.engine.steps import move_to_device, resolve_device
        from lrtrack.engine.tasks import first_batch_problem

        device = resolve_device(self.device(), model)
        try:
            batch = move_to_device(peek(data.train), device)
        except ValueError as err:
            raise UserError(f"data ({self.cfg.data.get('_target_')}): {err}") from err
        model.to(device)
        notes = self._check_data(data, model, batch, None if step is not None else criterion)
        problem = first_batch_problem(model, batch, criterion=None if step is not None else criterion, step=step,
                                      num_classes=data.num_classes)
        if problem is not None:
            raise UserError(f"first batch: {problem}")
        problem = metric_problem(metric, model, batch, criterion=None if step is not None else criterion, step=step)
        if problem is not None:
            raise UserError(f"metric._target_={self.cfg.metric.get('_target_')} {problem}")
        return notes

    def _check_data(self, data: Any, model: Any, batch: Any, criterion: Any) -> list[str]:
        """The data past its first batch (:mod:`lrtrack.data.checks`): errors stop the job in one line,
        warnings are logged; returns the notes."""
        import torch
        from torch import nn

        from lrtrack.data import peek
        from lrtrack.data.checks import check_data, val_batches_warning

        classification = isinstance(criterion, (nn.NLLLoss, nn.CrossEntropyLoss))
        first_val, classes = None, None
        if data.val is not None:
            try:
                first_val = peek(data.val)
            except ValueError:
                raise UserError(f"data ({self.cfg.data.get('_target_')}): the validation data yields no batches; "
                                "check its size and val_batch_size") from None
        if classification and isinstance(batch, (list, tuple)) and len(batch) >= 2:
            was_training = model.training
            try:
                with torch.no_grad(), torch.random.fork_rng(devices=[]):
                    outputs = model.eval()(batch[0])
                classes = int(outputs.shape[1]) if isinstance(outputs, torch.Tensor) and outputs.dim() >= 2 else None
            except Exception:  # the first-batch check says what is wrong, in one line
                classes = None
            finally:
                model.train(was_training)
        report = check_data(data.train, data.val, first_train=batch, first_val=first_val, classes=classes,
                            classification=classification, ignore_index=getattr(criterion, "ignore_index", None),
                            num_train=data.num_train)
        if report.errors:
            raise UserError(f"data ({self.cfg.data.get('_target_')}): {'; '.join(report.errors)}")
        if data.val is None and self.cfg.finder.val_batches > 0:  # asked for, and impossible: not a warning
            raise UserError(f"finder.val_batches={self.cfg.finder.val_batches} is invalid: the data "
                            f"({self._data_setting()}) has no validation loader; give validation data or set "
                            "finder.val_batches=0 (the range test then records the training loss)")
        val_batches = val_batches_warning(data.val, int(self.cfg.finder.val_batches))
        for warning in [*report.warnings, *([val_batches] if val_batches else [])]:
            log.warning("WARNING, check the data (%s): %s", self._data_setting(), warning)
        return report.notes

    def _check_accumulation(self, data: Any) -> None:
        """train.accumulation_steps beyond the batches of an epoch: an epoch would take no optimizer step
        (the config's estimate knows the built-in data's size only; a user's loader is counted here)."""
        t = self.cfg.train
        try:
            batches = len(data.train)
        except TypeError:  # an iterable of unknown length
            return
        if self.cfg.stage in ("all", "train") and t.accumulation_steps > batches:
            raise UserError(f"train.accumulation_steps={t.accumulation_steps} is invalid: an epoch of "
                            f"{self._data_setting()} has {batches} batches, so no optimizer step would happen; "
                            f"use at most {batches}")

    def _data_setting(self) -> str:
        """The setting that says which data this is: ``data.path=...``, ``data.root=...`` or ``data=<name>``."""
        node = self.cfg.data
        for key in ("path", "root"):
            if node.get(key) is not None:
                return f"data.{key}={node[key]}"
        return f"data={self.job.choices.get('data') or node.get('_target_')}"

    def distribute(self, parts: Components) -> Components:
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
        parts.model = wrap_model(parts.model, resolve_device(self.device(), parts.model))
        parts.data = shard_bundle(parts.data, rank(), world_size())
        return parts

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
            built = instantiate(node, **settings)
        except DataUnavailableError as err:
            raise UserError(str(err)) from err
        except (InstantiationException, ValueError, TypeError, SystemExit) as err:
            if isinstance(err.__cause__, DataUnavailableError):
                raise UserError(str(err.__cause__)) from err
            raise UserError(component_error("data", node, err)) from err
        try:
            return as_bundle(built, self.job.choices.get("data") or target.rsplit(".", 1)[-1])
        except TypeError as err:  # not loaders: say what the target built
            raise UserError(f"data._target_={target} {err}") from err

    def _step(self) -> Any:
        """The ``step`` setting: None (the criterion on (inputs, targets)) or a (model, batch) -> loss."""
        node = self.cfg.get("step")
        if not node:
            return None
        return self._checked(lambda target, built: kinds.callable_problem("step", target, built), "step",
                             self._callable("step", node))

    def _metric(self) -> Any:
        """The ``metric`` setting as a validation metric (:func:`lrtrack.engine.tasks.as_metric`); None: loss only."""
        from lrtrack.engine.tasks import as_metric

        node = self.cfg.get("metric")
        if not node:
            return None
        built = self._checked(kinds.metric_problem, "metric", self._callable("metric", node))
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
        except (InstantiationException, ValueError, TypeError, SystemExit) as err:
            raise UserError(component_error(group, node, err)) from err

    def _checked(self, problem_of: Any, group: str, built: Any) -> Any:
        """``built`` when it is what ``group`` needs (:mod:`lrtrack.app.kinds`), else a UserError naming it."""
        problem = problem_of(str(self.cfg[group].get("_target_")), built)
        if problem is not None:
            raise UserError(problem)
        return built

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
        except (InstantiationException, ValueError, TypeError, SystemExit) as err:
            raise UserError(component_error(group, node, err)) from err
