"""lrtrack's range test inside a Lightning ``Trainer.fit``, tracked next to the training run.

Three lines in an existing training script::

    from lrtrack.integrations.lightning import LRRangeTest

    logger = MLFlowLogger(experiment_name="my-model", tracking_uri="sqlite:///mlflow.db")
    trainer = Trainer(logger=logger, log_every_n_steps=1,
                      callbacks=[LRRangeTest(end_lr=1.0), LearningRateMonitor(logging_interval="step")])
    trainer.fit(module)

At the start of ``fit`` the callback runs lrtrack's range test (the default ``confirmed`` rule:
sweep, divergence edge, fixed-LR probes) on the module's own ``training_step``, the optimizer of
its ``configure_optimizers`` and the train dataloader (under DDP through the strategy, so
gradients and the loss are averaged over the ranks), puts the weights, the optimizer and the RNGs
back, and logs the range test as lrtrack's ``explore`` run in the logger's MLflow experiment. It
then sets the bounds: the module's ``lr`` attribute (or ``learning_rate``, in ``hparams`` too) gets
``max_lr`` and its ``base_lr`` attribute, when it has one, ``base_lr``, and its optimizers and
schedulers are built again from ``configure_optimizers``; with ``schedule="onecycle"`` lrtrack adds
a 1cycle schedule (stepped every optimizer step, peak ``max_lr``) instead. The ``MLFlowLogger``'s
run becomes lrtrack's ``final`` run: tagged ``lrtrack.stage=final`` and
``lrtrack.range_test_run_id=<explore run>``, with ``bounds.max_lr_used`` and ``bounds.base_lr_used``
as params; ``LearningRateMonitor`` logs its per-step ``lr`` (the scheduler is named ``lr``).

Not carried into the range test: ``gradient_clip_val`` (the sweep's steps are not clipped).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.parsing import lightning_hasattr, lightning_setattr
from lightning.pytorch.utilities.types import LRSchedulerConfig

from lrtrack.integrations.common import ExploreRun, check_settings, explore, tracking_uri_or_default

log = logging.getLogger(__name__)

SCHEDULES = (None, "onecycle")
LR_ATTRS = ("lr", "learning_rate")  # where Lightning's own Tuner looks too
METRIC_NAME = "lr"  # the scheduler's name: LearningRateMonitor logs it as `lr` (`lr/<group>` for several groups)


class LRRangeTest(Callback):
    """Run lrtrack's range test when ``fit`` starts and train within its bounds.

    Args:
        schedule: None: the schedule the module configures, built again after its ``lr``
            attribute (``lr_attr``) is set to the suggestion; ``"onecycle"``: lrtrack's 1cycle over
            the whole fit (``trainer.estimated_stepping_batches`` steps), replacing the module's.
        base_divisor: ``base_lr = max_lr / base_divisor`` (the 1cycle's start, the module's ``base_lr``).
        lr_attr: the module's attribute for the peak LR (default: the first of ``lr``,
            ``learning_rate`` found on the module or its ``hparams``).
        tracking_uri, experiment: where the ``explore`` run goes (default: the ``MLFlowLogger``'s
            store and experiment; without one ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``, ``lrtrack-<module>``).
        run_name: the ``explore`` run's name.
        **settings: the range test's grid and rule settings (``start_lr``, ``end_lr``, ``num_iter``,
            ``step_mode``, ``smoothing``, ``diverge_th``, ``probe_steps``, ``probe_budget``).

    After ``fit`` starts, :attr:`range_test` holds the result (:class:`~lrtrack.integrations.common.ExploreRun`).
    """

    def __init__(self, *, schedule: str | None = None, base_divisor: float = 4.0, lr_attr: str | None = None,
                 tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 **settings: Any) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be None (the module's own) or 'onecycle'; got {schedule!r}")
        check_settings(settings, base_divisor)
        self.schedule = schedule
        self.base_divisor = float(base_divisor)
        self.lr_attr = lr_attr
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.settings = dict(settings)
        self.range_test: ExploreRun | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None:  # the checkpoint's optimizer and schedule are restored after this hook
            log.warning("LRRangeTest: resuming from %s: no range test (the checkpoint's LRs and schedule go on)",
                        trainer.ckpt_path)
            return
        lr_attr = self._check(trainer, pl_module)
        optimizer = trainer.optimizers[0]
        trainer.fit_loop.setup_data()  # what fit does next; the loop keeps the loader
        loader = trainer.train_dataloader
        if isinstance(loader, (Mapping, list, tuple)):
            raise ValueError(f"LRRangeTest needs one train dataloader; got {len(loader)} (a {type(loader).__name__})")
        loggers = [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]
        uri, experiment = self._store(trainer, pl_module, loggers)
        # float16 on CUDA: the engine's GradScaler (the precision plugin's would only act in Lightning's own step)
        fp16 = pl_module.device.type == "cuda" and str(trainer.precision) in ("16-mixed", "16")
        engine = {"device": pl_module.device, "accumulation_steps": trainer.accumulate_grad_batches, "amp": fp16}
        with _logging_muted(pl_module):
            self.range_test = explore(
                pl_module, optimizer, loader, framework="lightning", step_fn=_training_step(trainer),
                tracking_uri=uri, experiment=experiment, run_name=self.run_name, base_divisor=self.base_divisor,
                settings=self.settings, engine=engine,
                extra={"schedule": self.schedule or "module", "precision": str(trainer.precision),
                       "accumulation_steps": trainer.accumulate_grad_batches, "world_size": trainer.world_size})
        bounds = self.range_test.bounds
        if self.schedule == "onecycle":
            _add_onecycle(trainer, optimizer, bounds, int(trainer.estimated_stepping_batches))
        else:
            _set_module_bounds(trainer, pl_module, lr_attr, bounds)  # type: ignore[arg-type]
        if trainer.is_global_zero:
            self._link(loggers)

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        """The module's LR attribute (None with schedule='onecycle'); one-line errors for what cannot work."""
        if not pl_module.automatic_optimization:
            raise ValueError("LRRangeTest needs automatic optimization (training_step returns the loss); "
                             "this module sets automatic_optimization = False")
        if len(trainer.optimizers) != 1:
            raise ValueError(f"LRRangeTest needs one optimizer from configure_optimizers; got {len(trainer.optimizers)}")
        if self.schedule == "onecycle":
            return None
        names = [self.lr_attr] if self.lr_attr else list(LR_ATTRS)
        for name in names:
            if lightning_hasattr(pl_module, name):
                return name
        raise ValueError(f"LRRangeTest: the module has no {' or '.join(names)} attribute (nor in hparams) for "
                         f"configure_optimizers to read the peak LR from; add one (self.lr = ...), name it with "
                         f"lr_attr=..., or pass schedule='onecycle'")

    def _store(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
               loggers: list[MLFlowLogger]) -> tuple[str, str]:
        if loggers and trainer.is_global_zero and not (self.tracking_uri and self.experiment):
            from lrtrack.tracking.link import client_store

            uri, experiment = client_store(loggers[0].experiment, loggers[0].experiment_id)  # type: ignore[arg-type]
            return tracking_uri_or_default(self.tracking_uri or uri), self.experiment or experiment
        if not loggers and trainer.is_global_zero:
            log.warning("LRRangeTest: no MLFlowLogger: the range test is tracked, the training run is not")
        return tracking_uri_or_default(self.tracking_uri), self.experiment or f"lrtrack-{type(pl_module).__name__}"

    def _link(self, loggers: list[MLFlowLogger]) -> None:
        from lrtrack.tracking.link import final_run_marks, mark_run

        assert self.range_test is not None and self.range_test.run_id is not None
        bounds = self.range_test.bounds
        tags, params = final_run_marks(self.range_test.run_id, max_lr=bounds.max_lr, base_lr=bounds.base_lr,
                                       rule=bounds.rule, command="lightning")
        for logger in loggers:
            mark_run(logger.experiment, logger.run_id, tags, params)  # type: ignore[arg-type]
            log.info("MLFlowLogger run %s is the final run of range test %s", logger.run_id, self.range_test.run_id)


@contextlib.contextmanager
def _logging_muted(module: pl.LightningModule) -> Iterator[None]:
    """``self.log``/``self.log_dict`` as no-ops while the range test calls ``training_step`` (the fit
    loop's result collection does not exist yet, and the test's steps are not training steps)."""
    module.log = _ignore  # type: ignore[method-assign]
    module.log_dict = _ignore  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.log, module.log_dict


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


def _training_step(trainer: pl.Trainer) -> Any:
    """``step_fn(model, batch)``: the module's ``training_step`` through the strategy (DDP, precision)."""
    counter = itertools.count()

    def step(model: Any, batch: Any) -> Any:
        out = trainer.strategy.training_step(batch, next(counter))
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if loss is None:
            raise ValueError("LRRangeTest: training_step returned no loss (a tensor, or a dict with 'loss')")
        return loss

    return step


def _set_module_bounds(trainer: pl.Trainer, pl_module: pl.LightningModule, lr_attr: str, bounds: Any) -> None:
    """The suggestion into the module's LR attribute (and ``base_lr``), then its optimizers and
    schedulers built again; the first scheduler is named ``lr`` for LearningRateMonitor."""
    lightning_setattr(pl_module, lr_attr, bounds.max_lr)
    if lightning_hasattr(pl_module, "base_lr"):
        lightning_setattr(pl_module, "base_lr", bounds.base_lr)
    trainer.strategy.setup_optimizers(trainer)
    configs = trainer.strategy.lr_scheduler_configs
    if configs and configs[0].name is None:
        configs[0].name = METRIC_NAME
    log.info("%s = %.4g (base_lr %.4g); configure_optimizers ran again", lr_attr, bounds.max_lr, bounds.base_lr)


def _add_onecycle(trainer: pl.Trainer, optimizer: Any, bounds: Any, total_steps: int) -> None:
    """lrtrack's 1cycle (peak ``max_lr``, start ``base_lr``, group ratios kept), stepped every optimizer step."""
    from lrtrack.engine.schedules import onecycle

    if trainer.lr_scheduler_configs:
        log.warning("LRRangeTest(schedule='onecycle') replaces the %d scheduler(s) of configure_optimizers",
                    len(trainer.lr_scheduler_configs))
    schedule = onecycle(optimizer, max_lr=bounds.max_lr, base_lr=bounds.base_lr, steps_per_epoch=total_steps, epochs=1)
    trainer.strategy.lr_scheduler_configs = [LRSchedulerConfig(schedule.scheduler, name=METRIC_NAME, interval="step")]


__all__ = ["LRRangeTest"]
