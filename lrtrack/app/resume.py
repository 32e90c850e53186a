"""``train.resume``: continue a killed training run, into the same MLflow run, from its last
checkpoint; steps it already logged are not logged again (:class:`SkipLogged`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lrtrack.app.components import Components, NullRun, UserError, recording_errors, store_client
from lrtrack.tracking import records
from lrtrack.tracking.layout import flatten
from lrtrack.tracking.redact import redact

if TYPE_CHECKING:
    from lrtrack.app.recipe import RangeTestRecipe

log = logging.getLogger("lrtrack")

#: Settings a resumed run may change (the rest must be the run's own).
FREE_SETTINGS = ("train.resume", "progress", "device", "stage", "tracking.", "hydra.")


class SkipLogged:
    """An observer that passes on only the metrics a resumed run has not logged yet.

    Args:
        inner: the run (or any observer) to pass them to.
        logged: metric key -> last step already logged.
    """

    def __init__(self, inner: Any, logged: Mapping[str, int]) -> None:
        self.inner = inner
        self.logged = dict(logged)

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        fresh = {k: v for k, v in metrics.items() if step > self.logged.get(k, -1)}
        if fresh:
            self.inner.on_step(step, fresh)

    def on_checkpoint(self, path: Any, step: int) -> None:
        on_checkpoint = getattr(self.inner, "on_checkpoint", None)
        if on_checkpoint is not None:
            on_checkpoint(path, step)


def resume(recipe: RangeTestRecipe, parts: Components) -> float | None:
    """Continue the training run ``train.resume`` names, holding this host's lock on it; returns
    the final validation loss."""
    from lrtrack.tracking.runs import resume_lock

    tracker, run_id = parts.tracker, str(recipe.cfg.train.resume)
    if not tracker.enabled:
        raise UserError("train.resume needs tracking.enabled=true (it continues an MLflow run)")
    try:
        with resume_lock(tracker.tracking_uri, run_id):
            return _resume(recipe, parts, run_id)
    except RuntimeError as err:
        if "is resuming this run now" not in str(err):
            raise
        raise UserError(str(err)) from err


def _resume(recipe: RangeTestRecipe, parts: Components, run_id: str) -> float | None:
    from lrtrack.engine.schedules import Bounds
    from lrtrack.tracking.journal import owner_alive
    tracker = parts.tracker
    client = store_client(tracker)
    try:
        record = records.read_training_run(client, run_id, where=redact(tracker.tracking_uri))
    except records.RunLookupError as err:
        raise UserError(str(err)) from err
    if record.status == "RUNNING" and record.owner and owner_alive(record.owner) is not False:
        raise UserError(f"train.resume={run_id!r}: the run is still RUNNING in another job ({record.owner}); "
                        f"resume it once that job has ended")
    check_same_config(recipe.context.config, record)
    folder = recipe.job.output_dir / "resume"
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint_path = records.download_checkpoint(client, record.run_id, str(folder))
    if checkpoint_path is None:
        raise UserError(f"train.resume={run_id!r}: the run has no checkpoint yet (it stopped in its first "
                        "epoch); start it again without train.resume")
    state = _loaded_checkpoint(run_id, checkpoint_path, parts.model)  # before the runs are reopened: statuses kept
    recipe.job.command = without_resume(recipe.job.command)  # the resume command adds it again
    recipe.job.final_run_id = record.lrtrack_id  # stopped from here on: the resume command is printed
    curve = None
    if record.range_test_run_id:
        curve = records.read_range_test(client, record.range_test_run_id, where=redact(tracker.tracking_uri))
    bounds = Bounds(record.max_lr, record.base_lr, record.rule)
    logged = records.last_logged_steps(client, record.run_id)
    parent = (tracker.reopen_run(record.parent_lrtrack_id, record.parent_run_id) if record.parent_run_id
              else NullRun())
    with recording_errors(parent), recording_errors(tracker.reopen_run(record.lrtrack_id, record.run_id)) as run:
        log.info("resuming training run %s from %s", record.lrtrack_id, checkpoint_path)
        title = client.get_run(record.run_id).info.run_name
        outcome = recipe.fit(parts, bounds, curve, run, SkipLogged(run, logged), title, state)
        parent.log_summary({"final_val_loss": outcome} if outcome is not None else {})
    return outcome


def without_resume(command: str) -> str:
    """``python -m lrtrack ... train.resume=ID`` without its ``train.resume`` override (a resumed
    job's command, to which the resume command appends ``train.resume=`` again)."""
    import shlex

    try:
        words = shlex.split(command)
    except ValueError:  # not a shell line (unbalanced quotes): left as it is
        return command
    kept = [w for w in words if w.lstrip("+~").partition("=")[0] != "train.resume"]
    return shlex.join(kept) if len(kept) < len(words) else command


def _loaded_checkpoint(run_id: str, path: str, model: Any) -> dict[str, Any]:
    """The run's checkpoint, loaded and checked against the model; a UserError (one line) when it cannot
    continue the training (truncated, another format, another model)."""
    from pathlib import Path

    from lrtrack.engine.train import checkpoint_problem, load_checkpoint

    try:
        state = load_checkpoint(path)
        problem = checkpoint_problem(state, model)
    except Exception as err:  # torch.load fails in many ways on a damaged file (EOFError, RuntimeError, ...)
        problem = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    if problem is not None:
        raise UserError(f"train.resume={run_id!r}: its checkpoint {Path(path).name} cannot be loaded ({problem}); "
                        "the run is left as it was: start the training again without train.resume")
    return state


def check_same_config(config: Mapping[str, Any], record: records.TrainingRecord) -> None:
    """A resumed run must continue the same training: refuse settings that changed."""
    now = flatten(config)
    changed = [f"{k}={now[k]} (the run has {record.params[k]})" for k in sorted(now)
               if k in record.params and now[k] != record.params[k] and not k.startswith(FREE_SETTINGS)]
    if changed:
        raise UserError(f"train.resume={record.run_id!r} continues a run with other settings: "
                        f"{', '.join(changed)}; resume with the overrides the run was started with")
