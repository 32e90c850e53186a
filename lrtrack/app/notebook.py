"""Tracked range tests and training runs from plain Python (a notebook), without Hydra.

One call each, and the runs look exactly like the CLI's (:mod:`lrtrack.tracking.layout` writes both):
the range test's run has the per-step ``lr``/``loss``/``loss_smoothed``, the plot, the history,
the suggestions and the params; the training run has its bounds, figures, history and
``final_val_*`` summary, and is linked to the range test it took its bounds from::

    from lrtrack.app.notebook import tracked_range_test, tracked_training

    rt = tracked_range_test(model, optimizer, train_loader, criterion=nn.CrossEntropyLoss(), end_lr=1)
    tr = tracked_training(model, optimizer, train_loader, val_loader=val_loader, epochs=2, range_test=rt)

The store is ``$MLFLOW_TRACKING_URI``, else ``tracking_uri``, else ``./mlflow.db``; the
experiment is ``lrtrack-<model class>`` unless given. Before anything is logged, the model runs
once on the first batch (as the CLI does), so a loss that does not fit the model's outputs
raises one clear ``ValueError`` instead of a diverging curve.

This is an application module (it uses MLflow through :mod:`lrtrack.tracking.runs`), not part of
the Hydra-free, MLflow-free library.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lrtrack.app.where import review_hint, ui_hint
from lrtrack.engine.suggest import DEFAULT_RULE
from lrtrack.tracking import layout
from lrtrack.tracking.records import RangeCurve

log = logging.getLogger(__name__)

COMMAND = "notebook"  # the lrtrack.command tag of runs started from Python


@dataclass
class TrackedRangeTest:
    """A range test and where it was logged.

    Attributes:
        result: the engine's :class:`lrtrack.engine.finder.RangeTestResult`.
        run_id: its MLflow run.
        tracking_uri: the store.
        experiment: the experiment's name.
        suggestion: the rule the training stage uses by default.
    """

    result: Any
    run_id: str
    tracking_uri: str
    experiment: str
    suggestion: str = DEFAULT_RULE

    @property
    def lr(self) -> float | None:
        """The chosen rule's suggested LR (None when the curve gave that rule none)."""
        return self.result.suggestions[self.suggestion].lr

    def __repr__(self) -> str:
        shown = ", ".join(f"{rule}={s.lr:.3g}" if s.lr is not None else f"{rule}=None"
                          for rule, s in self.result.suggestions.items())
        return (f"TrackedRangeTest(run_id={self.run_id!r}, steps={self.result.steps}, "
                f"stop_reason={self.result.stop_reason!r}, {shown})")


@dataclass
class TrackedTraining:
    """A training run and where it was logged: ``result`` (:class:`lrtrack.engine.train.TrainResult`),
    ``bounds`` (the LR range it ran in), ``run_id``, ``metrics`` (its ``final_val_*`` summary)."""

    result: Any
    bounds: Any
    run_id: str
    tracking_uri: str
    experiment: str
    metrics: dict[str, float]

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
        return (f"TrackedTraining(run_id={self.run_id!r}, max_lr={self.bounds.max_lr:.3g}, "
                f"base_lr={self.bounds.base_lr:.3g}, {shown})")


def _tracker(tracking_uri: str | None, experiment: str | None, model: nn.Module) -> Any:
    from lrtrack.app.where import resolve_tracking_uri
    from lrtrack.tracking.runs import Tracker
    from lrtrack.tracking.store import preflight

    # The argument first (MLFLOW_TRACKING_URI is only the default: Lightning's MLFlowLogger, for one, sets it).
    uri = tracking_uri or resolve_tracking_uri(None, Path.cwd())
    # A store that cannot be reached is said now (TrackingUnavailable), not after the test ran and its
    # delivery waited delivery_timeout_s.
    preflight(uri, setting="tracking_uri", off_switch=None)
    return Tracker(uri, experiment or f"lrtrack-{type(model).__name__}")


def _hint(tracker: Any, run: Any) -> str:
    return ui_hint(tracker.tracking_uri, tracker.experiment_id, tracker.store_id(run.run_id))


def _qualname(obj: Any) -> str:
    kind = obj if isinstance(obj, type) else type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _config(model: nn.Module, optimizer: Any, loader: Any, loss: Any, data: str,
            section: str, settings: Mapping[str, Any], params: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the run's params record: the components' classes and settings, as the CLI's config does."""
    group = {k: v for k, v in optimizer.defaults.items() if isinstance(v, (int, float, str, bool, tuple))}
    config: dict[str, Any] = {
        "model": {"_target_": _qualname(model)},
        "optimizer": {"_target_": _qualname(optimizer), **group},
        "data": {"name": data, "batch_size": getattr(loader, "batch_size", None)},
        "step" if not isinstance(loss, nn.Module) else "criterion": {"_target_": _qualname(loss)},
        section: dict(settings),
    }
    config.update(params or {})
    return config


def _check_first_batch(model: nn.Module, loader: Iterable[Any], criterion: Any, step_fn: Any,
                       num_classes: int | None, device: Any) -> None:
    from lrtrack.data import peek
    from lrtrack.engine.steps import move_to_device, resolve_device
    from lrtrack.engine.tasks import first_batch_problem

    where = resolve_device(device, model)
    model.to(where)
    problem = first_batch_problem(model, move_to_device(peek(loader), where), criterion=criterion, step=step_fn,
                                  num_classes=num_classes)
    if problem is not None:
        raise ValueError(f"first batch: {problem}")


def tracked_range_test(
    model: nn.Module,
    optimizer: Any,
    train_loader: Iterable[Any],
    *,
    criterion: Any = None,
    step_fn: Any = None,
    val_loader: Iterable[Any] | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    suggestion: str = DEFAULT_RULE,
    data_name: str | None = None,
    num_classes: int | None = None,
    params: Mapping[str, Any] | None = None,
    **settings: Any,
) -> TrackedRangeTest:
    """:func:`lrtrack.engine.finder.run_range_test`, logged as the CLI's range-test (``explore``) run.

    Args:
        model, optimizer, train_loader, criterion, step_fn, val_loader: as for ``run_range_test``.
        tracking_uri: the MLflow store (default: ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``).
        experiment: the experiment (default: ``lrtrack-<model class>``).
        run_name: the run's name (default: ``range_test <model class> <optimizer> <step mode>``).
        suggestion: the rule the training stage will use (default: the library's, as the CLI's).
        data_name: the data's name in the run (the ``lrtrack.data`` tag; default: the dataset's class).
        num_classes: the data's class count, when known, for the first-batch check.
        params: extra params to record (nested mappings become dotted keys).
        **settings: ``run_range_test``'s other settings (``end_lr``, ``num_iter``, ``step_mode``,
            ``start_lr``, ``smoothing``, ``diverge_th``, ``val_batches``, ``device``, ``amp``, ...).

    Raises:
        ValueError: the first batch shows that the model and the loss do not fit (one line).
    """
    from lrtrack.engine.finder import run_range_test

    _check_first_batch(model, train_loader, criterion, step_fn, num_classes, settings.get("device"))
    tracker = _tracker(tracking_uri, experiment, model)
    name = run_name or (f"range_test {type(model).__name__} {type(optimizer).__name__.lower()} "
                        f"{settings.get('step_mode', 'exp')}")
    data = data_name or type(getattr(train_loader, "dataset", train_loader)).__name__
    ctx = layout.RunContext(_config(model, optimizer, train_loader, step_fn or criterion, data, "finder", settings,
                                    params), {}, [], COMMAND)
    with tracker, tracker.start_run(name, tags=ctx.tags(layout.STAGE_EXPLORE)) as run:  # delivered on leaving
        layout.log_config(run, ctx, layout.DataInfo(data, f"notebook loaders ({data})", False))
        result = run_range_test(model, optimizer, train_loader, criterion=criterion, step_fn=step_fn,
                                val_loader=val_loader, observer=run, progress=settings.pop("progress", False),
                                **settings)
        layout.log_range_test(run, result, chosen_rule=suggestion, title=name)
    log.info("range test logged: %s", _hint(tracker, run))
    return TrackedRangeTest(result, tracker.store_id(run.run_id), tracker.tracking_uri, tracker.experiment_name, suggestion)


def _bounds(range_test: TrackedRangeTest | None, max_lr: float | None, max_lr_rule: str | None,
            base_divisor: float) -> Any:
    from lrtrack.engine.schedules import MAX_LR_RULES, bounds_from_config, bounds_from_suggestions

    if range_test is not None and not isinstance(range_test, TrackedRangeTest):
        raise TypeError(f"range_test must be what tracked_range_test returned (a TrackedRangeTest); got "
                        f"{type(range_test).__name__} {range_test!r:.60}")
    if max_lr_rule is not None:
        if max_lr is not None:  # one or the other: the rule would be ignored without a word
            raise ValueError(f"give max_lr={max_lr!r} or max_lr_rule={max_lr_rule!r}, not both (max_lr sets the peak "
                             "itself; max_lr_rule picks it from the range test's suggestions)")
        if max_lr_rule not in MAX_LR_RULES:
            raise ValueError(f"max_lr_rule must be one of {', '.join(MAX_LR_RULES)}; got {max_lr_rule!r}")
    if max_lr is not None:
        return bounds_from_config(max_lr, base_divisor)
    if range_test is None:
        raise ValueError("tracked_training needs range_test=<a tracked_range_test result> or max_lr=<lr>")
    result = range_test.result
    return bounds_from_suggestions(result.suggestions, max_lr_rule=max_lr_rule or range_test.suggestion,
                                   base_divisor=base_divisor, min_loss_lr=result.min_loss_lr)


def tracked_training(
    model: nn.Module,
    optimizer: Any,
    train_loader: Iterable[Any],
    *,
    epochs: int,
    range_test: TrackedRangeTest | None = None,
    max_lr: float | None = None,
    max_lr_rule: str | None = None,
    base_divisor: float = 4.0,
    schedule: str = "onecycle",
    schedule_settings: Mapping[str, Any] | None = None,
    criterion: Any = None,
    step_fn: Any = None,
    val_loader: Iterable[Any] | None = None,
    metric: Any = "accuracy",
    tracking_uri: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    data_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    log_model: bool = True,
    **settings: Any,
) -> TrackedTraining:
    """:func:`lrtrack.engine.train.train` with a schedule in bounds from a range test, logged as the CLI's
    training (``final``) run and linked to that range test's run.

    Args:
        range_test: a :func:`tracked_range_test` result: the bounds come from its suggestion
            (``max_lr_rule``, default: its ``suggestion``), and the run is linked to it (same
            store and experiment unless given).
        max_lr: an explicit peak LR instead (then ``range_test`` is only linked, when given).
        base_divisor: ``base_lr = max_lr / base_divisor``.
        schedule: a :mod:`lrtrack.engine.schedules` factory name (onecycle, triangular2, cosine, ...),
            with ``schedule_settings`` for its own settings.
        metric: the validation metric (``"accuracy"``, None, a callable or a torchmetrics-style object).
        log_model: log the trained model as the run's MLflow logged model (``mlflow.pytorch.log_model``
            on delivery, the first batch's inputs as its example), as the CLI does.
        **settings: ``train``'s other settings (``accumulation_steps``, ``grad_clip_norm``,
            ``device``, ``amp``, ``seed``, ``checkpoint_dir``, ...).
    """
    from lrtrack.engine.schedules import make_schedule, optimizer_steps_per_epoch
    from lrtrack.engine.tasks import as_metric
    from lrtrack.engine.train import train

    bounds = _bounds(range_test, max_lr, max_lr_rule, base_divisor)
    metric = as_metric(metric)  # an unknown metric name is said now, before the run exists
    if range_test is not None:
        tracking_uri = tracking_uri or range_test.tracking_uri
        experiment = experiment or range_test.experiment
    tracker = _tracker(tracking_uri, experiment, model)
    steps_per_epoch = optimizer_steps_per_epoch(len(train_loader), settings.get("accumulation_steps", 1))  # type: ignore[arg-type]
    sched = make_schedule(schedule, optimizer, max_lr=bounds.max_lr, base_lr=bounds.base_lr,
                          steps_per_epoch=steps_per_epoch, epochs=epochs, **(schedule_settings or {}))
    name = run_name or f"train {type(model).__name__} {type(optimizer).__name__.lower()} {schedule}"
    data = data_name or type(getattr(train_loader, "dataset", train_loader)).__name__
    link = {layout.RANGE_TEST_LINK_TAG: range_test.run_id} if range_test is not None else {}
    train_settings = {"epochs": epochs, "schedule": schedule, **(schedule_settings or {}), **settings}
    ctx = layout.RunContext(_config(model, optimizer, train_loader, step_fn or criterion, data, "train",
                                    train_settings, params), {}, [], COMMAND)
    with tracker, tracker.start_run(name, tags=ctx.tags(layout.STAGE_FINAL, **link)) as run:  # delivered on leaving
        layout.log_config(run, ctx, layout.DataInfo(data, f"notebook loaders ({data})", False),
                          layout.bounds_params(bounds, steps_per_epoch))
        result = train(model, optimizer, train_loader, epochs=epochs, schedule=sched, criterion=criterion,
                       step_fn=step_fn, val_loader=val_loader, observer=run, metric=metric,
                       progress=settings.pop("progress", False), **settings)
        curve = RangeCurve.from_result(range_test.result, range_test.run_id) if range_test else None
        layout.log_training(run, result, bounds=bounds, steps_per_epoch=steps_per_epoch, curve=curve, title=name)
        if log_model:
            from lrtrack.data import peek

            layout.log_trained_model(run, model, peek(train_loader), name=type(model).__name__)
    same = range_test is not None and (range_test.tracking_uri, range_test.experiment) == (tracker.tracking_uri,
                                                                             tracker.experiment_name)
    runs = [range_test.run_id] if same else []  # type: ignore[union-attr]
    log.info("training run logged: %s", review_hint(tracker.tracking_uri, tracker.experiment_id,
                                                    [*runs, tracker.store_id(run.run_id)]))
    return TrackedTraining(result, bounds, tracker.store_id(run.run_id), tracker.tracking_uri, tracker.experiment_name,
                           layout.final_metrics(result))


__all__ = ["TrackedRangeTest", "TrackedTraining", "tracked_range_test", "tracked_training"]
