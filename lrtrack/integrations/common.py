"""What both integrations share: the settings they accept, the range test logged as lrtrack's
``explore`` run (through the journal, as the CLI and the notebook helpers log it), and the bounds.

Every rank runs the range test (its loss is averaged over the ranks by the engine); rank 0 alone
opens the tracking store and logs.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lrtrack.engine import distributed as dist
from lrtrack.engine.finder import check_grid, check_range_test_settings, run_range_test
from lrtrack.engine.observers import NullObserver
from lrtrack.engine.schedules import Bounds, bounds_from_suggestions
from lrtrack.engine.suggest import DEFAULT_RULE
from lrtrack.tracking import layout

log = logging.getLogger(__name__)

#: ``run_range_test`` settings an integration passes on (the model, optimizer, data, step, device,
#: accumulation and precision come from the framework).
RANGE_TEST_SETTINGS = frozenset({"start_lr", "end_lr", "num_iter", "step_mode", "smoothing", "diverge_th",
                                 "probe_steps", "probe_budget"})


def check_settings(settings: Mapping[str, Any], base_divisor: Any) -> None:
    """One-line ValueErrors for settings ``run_range_test`` would not take from an integration."""
    unknown = sorted(set(settings) - RANGE_TEST_SETTINGS)
    if unknown:
        raise ValueError(f"unknown range test setting(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(sorted(RANGE_TEST_SETTINGS))}")
    if isinstance(base_divisor, bool) or not isinstance(base_divisor, (int, float)) or base_divisor < 1:
        raise ValueError(f"base_divisor must be a number >= 1 (base_lr = max_lr / base_divisor); got {base_divisor!r}")
    # The grid settings on entry, by the engine's own check (its defaults for what is not given; the
    # start LR is the optimizer's, known only at fit: the smallest positive number stands in for it).
    defaults = {name: p.default for name, p in inspect.signature(run_range_test).parameters.items()}
    grid = {name: settings.get(name, defaults[name]) for name in ("start_lr", "end_lr", "num_iter", "step_mode")}
    grid["start_lr"] = 5e-324 if grid["start_lr"] is None else grid["start_lr"]
    if not any(isinstance(v, (list, tuple)) for v in grid.values()):  # per-group LRs: checked at fit, per group
        check_grid(**grid)
    check_range_test_settings(**{k: settings[k] for k in ("num_iter", "smoothing", "diverge_th", "probe_steps",
                                                          "probe_budget") if k in settings})


def tracking_uri_or_default(configured: str | None) -> str:
    """``configured``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``; a relative
    sqlite path made absolute (lrtrack's relay runs in another process)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/") and uri[len(prefix):] != ":memory:":
        uri = f"{prefix}{Path(uri[len(prefix):]).resolve()}"
    return uri


@dataclass(frozen=True)
class ExploreRun:
    """A range test run from a framework: the engine's result, its bounds and its run (rank 0).

    Attributes:
        result: the engine's :class:`lrtrack.engine.finder.RangeTestResult` (the same on every rank).
        bounds: ``max_lr`` (the default rule's suggestion) and ``base_lr = max_lr / base_divisor``.
        run_id: the ``explore`` run's MLflow id (None on ranks other than 0).
        tracking_uri, experiment: where it was logged.
    """

    result: Any
    bounds: Bounds
    run_id: str | None
    tracking_uri: str
    experiment: str

    @property
    def suggestion(self) -> float:
        return self.bounds.max_lr


def _config(model: nn.Module, optimizer: Any, loader: Any, framework: str, settings: Mapping[str, Any],
            extra: Mapping[str, Any]) -> dict[str, Any]:
    kind = type(dist.unwrap(model))
    group = {k: v for k, v in optimizer.defaults.items() if isinstance(v, (int, float, str, bool, tuple))}
    return {
        "model": {"_target_": f"{kind.__module__}.{kind.__qualname__}"},
        "optimizer": {"_target_": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}", **group,
                      "param_groups": len(optimizer.param_groups)},
        "data": {"name": type(getattr(loader, "dataset", loader)).__name__,
                 "batch_size": getattr(loader, "batch_size", None)},
        "finder": dict(settings),
        "integration": {"framework": framework, **extra},
    }


def explore(model: nn.Module, optimizer: Any, loader: Iterable[Any], *, framework: str, step_fn: Any,
            tracking_uri: str, experiment: str, run_name: str | None, base_divisor: float,
            settings: Mapping[str, Any], engine: Mapping[str, Any], extra: Mapping[str, Any]) -> ExploreRun:
    """:func:`lrtrack.engine.finder.run_range_test` with the default rule, logged by rank 0 as an
    ``explore`` run in lrtrack's layout; returns it with the bounds (every rank gets rank 0's).

    Args:
        framework: the ``lrtrack.command`` tag (``lightning``, ``transformers``).
        settings: the user's range test settings (the grid, smoothing, probes).
        engine: what the framework decides (device, accumulation_steps, amp).
        extra: more params to record under ``integration.``.
    """
    name = run_name or f"range_test {type(dist.unwrap(model)).__name__} {type(optimizer).__name__.lower()} {framework}"
    config = _config(model, optimizer, loader, framework, settings, extra)
    if not dist.is_main():
        result = run_range_test(model, optimizer, loader, step_fn=step_fn, observer=NullObserver(), progress=False,
                                **settings, **engine)
        return ExploreRun(result, _shared(None), None, tracking_uri, experiment)
    from lrtrack.tracking.runs import Tracker
    from lrtrack.tracking.store import experiment_name_problem, preflight

    problem = experiment_name_problem(experiment)
    if problem is not None:
        raise ValueError(f"experiment={experiment!r}: {problem}")
    preflight(tracking_uri, setting="tracking_uri", off_switch=None)  # now, not after the test and 60 s of delivery
    ctx = layout.RunContext(config, {}, [], framework)
    with Tracker(tracking_uri, experiment) as tracker:  # delivered on leaving
        with tracker.start_run(name, tags=ctx.tags(layout.STAGE_EXPLORE)) as run:
            layout.log_config(run, ctx, layout.DataInfo(config["data"]["name"], f"{framework} train dataloader",
                                                        False))
            result = run_range_test(model, optimizer, loader, step_fn=step_fn, observer=run, progress=False,
                                    **settings, **engine)
            layout.log_range_test(run, result, chosen_rule=DEFAULT_RULE, title=name)
            try:
                outcome: Bounds | str = _bounds(result, base_divisor)
            except ValueError as err:
                outcome = f"the range test gave no {DEFAULT_RULE} suggestion: {err}"
    bounds = _shared(outcome)
    run_id = tracker.store_id(run.run_id)
    log.info("range test logged as run %s in %s (experiment %s): max_lr %.4g, base_lr %.4g",
             run_id, tracking_uri, experiment, bounds.max_lr, bounds.base_lr)
    return ExploreRun(result, bounds, run_id, tracking_uri, experiment)


def _shared(outcome: Bounds | str | None) -> Bounds:
    """Rank 0's bounds on every rank; its error (a string) raised on every rank."""
    outcome = dist.broadcast_object(outcome)
    if isinstance(outcome, str):
        raise ValueError(outcome)
    assert outcome is not None
    return outcome


def _bounds(result: Any, base_divisor: float) -> Bounds:
    """The default rule's bounds; a ValueError naming why when the range test gave no suggestion."""
    return bounds_from_suggestions(result.suggestions, max_lr_rule=DEFAULT_RULE, base_divisor=base_divisor,
                                   min_loss_lr=result.min_loss_lr)


__all__ = ["ExploreRun", "RANGE_TEST_SETTINGS", "check_settings", "explore", "tracking_uri_or_default"]
