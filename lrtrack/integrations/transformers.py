"""lrtrack's range test for a Hugging Face ``Trainer``, tracked next to the training run.

Three lines in an existing training script::

    from lrtrack.integrations.transformers import range_test

    trainer = Trainer(model=model, args=TrainingArguments(..., report_to=["mlflow"], logging_steps=1), ...)
    range_test(trainer, end_lr=1.0)   # sets trainer.args.learning_rate
    trainer.train()

:func:`range_test` runs lrtrack's range test (the default ``confirmed`` rule: sweep, divergence
edge, fixed-LR probes) on the Trainer's model with its loss (``Trainer.compute_loss``:
``model(**batch).loss``), the optimizer ``Trainer.create_optimizer`` builds (its parameter groups,
no weight decay on biases and norms, move together, so their ratios are kept) and the Trainer's
train dataloader, with the ``TrainingArguments``' gradient accumulation and mixed precision
(``fp16``: float16 with a GradScaler on CUDA; ``bf16``: bfloat16 autocast). It puts the weights,
the optimizer state and the RNGs back, logs the range test as lrtrack's ``explore`` run, and sets
``args.learning_rate`` (the peak of the Trainer's scheduler) to the suggestion; the optimizer and
scheduler are built again by ``train()``. Hugging Face's ``MLflowCallback`` logs the training run
into the same store and experiment, where lrtrack tags it ``lrtrack.stage=final`` and links it
(``lrtrack.range_test_run_id``), with ``bounds.max_lr_used`` as a param; it logs the per-step
``learning_rate`` every ``logging_steps``.

Not carried into the range test: ``max_grad_norm`` clipping (the sweep's steps are not clipped).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from lrtrack.engine import distributed as dist
from lrtrack.integrations.common import ExploreRun, check_settings, explore, tracking_uri_or_default

log = logging.getLogger(__name__)


def range_test(trainer: Trainer, *, base_divisor: float = 4.0, tracking_uri: str | None = None,
               experiment: str | None = None, run_name: str | None = None, **settings: Any) -> ExploreRun:
    """Run lrtrack's range test on ``trainer`` and set ``trainer.args.learning_rate`` from it.

    Call it before ``trainer.train()``; under ``torchrun`` every process calls it (rank 0 logs).

    Args:
        trainer: a ``transformers.Trainer`` whose optimizer is built from its ``TrainingArguments``
            (not one passed as ``optimizers=``).
        base_divisor: ``base_lr = max_lr / base_divisor`` (recorded as ``bounds.base_lr_used``).
        tracking_uri: the MLflow store (default: ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``);
            the training run goes there too.
        experiment: the experiment (default: ``$MLFLOW_EXPERIMENT_NAME``, else ``lrtrack-<model class>``).
        run_name: the ``explore`` run's name.
        **settings: the range test's grid and rule settings (``start_lr``, ``end_lr``, ``num_iter``,
            ``step_mode``, ``smoothing``, ``diverge_th``, ``probe_steps``, ``probe_budget``); the
            grid starts at ``args.learning_rate`` unless ``start_lr`` is given.

    Returns:
        The range test (:class:`~lrtrack.integrations.common.ExploreRun`): ``suggestion``, ``bounds``,
        ``run_id`` (rank 0) and the engine's ``result``.

    Raises:
        ValueError: a bad setting, an optimizer passed to the Trainer, or no suggestion (one line).
    """
    if not isinstance(trainer, Trainer):
        raise TypeError(f"range_test needs a transformers.Trainer; got {type(trainer).__name__}")
    check_settings(settings, base_divisor)
    if trainer.optimizer is not None:
        raise ValueError("range_test(trainer) builds the optimizer from the TrainingArguments; create the Trainer "
                         "without optimizers=(...) (or subclass it and override create_optimizer)")
    args = trainer.args
    if settings.get("start_lr") is None and not (isinstance(args.learning_rate, (int, float))
                                                 and args.learning_rate > 0):
        raise ValueError(f"TrainingArguments.learning_rate={args.learning_rate!r} is the range test's start LR, so it "
                         "must be > 0; set learning_rate=1e-7 (or pass start_lr=...)")
    uri = tracking_uri_or_default(tracking_uri)
    experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"lrtrack-{type(trainer.model).__name__}"
    model = trainer.model
    optimizer = trainer.create_optimizer()
    try:
        found = explore(
            dist.wrap_model(model, args.device), optimizer, trainer.get_train_dataloader(),
            framework="transformers", step_fn=_loss_step(trainer, args), tracking_uri=uri, experiment=experiment,
            run_name=run_name, base_divisor=base_divisor, settings=settings,
            engine={"device": args.device, "accumulation_steps": args.gradient_accumulation_steps,
                    "amp": bool(args.fp16)},
            extra={"fp16": bool(args.fp16), "bf16": bool(args.bf16), "world_size": dist.world_size(),
                   "accumulation_steps": args.gradient_accumulation_steps})
    finally:
        trainer.optimizer = None  # train() builds it again, at the new learning_rate
    args.learning_rate = found.bounds.max_lr
    log.info("learning_rate = %.4g (the range test's confirmed suggestion)", found.bounds.max_lr)
    if dist.is_main():
        _route_final_run(trainer, found)
    return found


def _loss_step(trainer: Trainer, args: Any) -> Any:
    """``step_fn(model, batch)``: the Trainer's own loss, in bfloat16 autocast when ``args.bf16``."""
    device_type = torch.device(args.device).type

    def step(model: Any, batch: Any) -> torch.Tensor:
        context = torch.autocast(device_type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
        with context:
            return trainer.compute_loss(model, batch)

    return step


def _route_final_run(trainer: Trainer, found: ExploreRun) -> None:
    """MLflow's fluent API (``MLflowCallback``'s) at the range test's store and experiment, and the
    callback that marks the training run as its ``final`` run."""
    from transformers.integrations import MLflowCallback

    from lrtrack.tracking.link import use_store

    if not any(isinstance(cb, MLflowCallback) for cb in trainer.callback_handler.callbacks):
        log.warning("range_test: the Trainer has no MLflowCallback (TrainingArguments(report_to=['mlflow'])): "
                    "the range test is tracked, the training run is not")
        return
    use_store(found.tracking_uri, found.experiment)
    trainer.add_callback(FinalRunLink(found))  # after MLflowCallback, which starts the run in on_train_begin


class FinalRunLink(TrainerCallback):
    """Marks the run ``MLflowCallback`` starts as lrtrack's ``final`` run of a range test."""

    def __init__(self, found: ExploreRun) -> None:
        self.found = found

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from lrtrack.tracking.link import final_run_marks, mark_active_run

        if not state.is_world_process_zero or self.found.run_id is None:
            return
        bounds = self.found.bounds
        tags, params = final_run_marks(self.found.run_id, max_lr=bounds.max_lr, base_lr=bounds.base_lr,
                                       rule=bounds.rule, command="transformers")
        run_id = mark_active_run(tags, params)
        if run_id is None:
            log.warning("range_test: no active MLflow run at train begin: the training run is not linked")
        else:
            log.info("MLflow run %s is the final run of range test %s", run_id, self.found.run_id)


__all__ = ["FinalRunLink", "range_test"]
