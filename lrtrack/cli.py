"""The Hydra entry point: compose, validate, run the stages.

``python -m lrtrack +model=mnist_cnn`` runs the range test (the exploratory run) and then a
training run whose schedule bounds come from it (the final run); each is an MLflow run,
nested under one parent run. Heavy modules (torch, MLflow, matplotlib) are imported only once
a job really runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lrtrack.config import ConfigError, register_configs, validate

log = logging.getLogger("lrtrack")

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
RANGE_TEST_HISTORY = "range_test/history.csv"


def config_dir() -> Path:
    """The YAML: ``lrtrack/conf`` inside an installed wheel, else ``conf/`` of the checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"lrtrack's config folder is missing (looked in {here / 'conf'} and {here.parent / 'conf'})")


class BadInput(Exception):
    """A user error found while running (a wrong run id, missing data): one line, exit 2."""


def fail(lines: str | list[str], code: int = EXIT_BAD_INPUT) -> None:
    """Print one line per problem to stderr and exit without a traceback."""
    for line in [lines] if isinstance(lines, str) else lines:
        print(f"lrtrack: error: {line}", file=sys.stderr)
    sys.exit(code)


# --------------------------------------------------------------------------- job context


@dataclass
class Job:
    """What every stage of one job needs to know about where and how it runs."""

    cfg: DictConfig
    choices: dict[str, str]
    overrides: list[str]
    command: str
    launch_dir: Path
    output_dir: Path
    sweep: Any = None  # lrtrack.sweep.SweepContext when this job belongs to a multirun sweep
    parent_run_id: str | None = None  # the job's pipeline run, once it exists

    @property
    def model_name(self) -> str:
        return self.choices.get("model") or str(self.cfg.model.get("_target_", "model")).rsplit(".", 1)[-1]

    def run_name(self, stage: str, *parts: str) -> str:
        return " ".join([stage, self.model_name, *parts])

    def tags(self, stage: str) -> dict[str, str]:
        tags = {f"hydra.choice.{group}": str(choice) for group, choice in self.choices.items()
                if not group.startswith("hydra/") and choice is not None}
        tags.update({"lrtrack.stage": stage, "lrtrack.command": self.command,
                     "lrtrack.overrides": " ".join(self.overrides)})
        return tags


def _job(cfg: DictConfig) -> Job:
    hc = HydraConfig.get()
    choices = {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if v is not None}
    overrides = list(hc.overrides.task)
    command = "python -m lrtrack " + " ".join(sys.argv[1:])
    from lrtrack.sweep import current_sweep

    sweep = current_sweep() if hc.mode == RunMode.MULTIRUN else None
    return Job(cfg, choices, overrides, command, Path(hc.runtime.cwd), Path(hc.runtime.output_dir), sweep)


# --------------------------------------------------------------------------- building blocks


def _seed(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _data(job: Job) -> Any:
    from lrtrack.data import DataUnavailableError, build_data

    d = job.cfg.data
    root = Path(d.root)
    if not root.is_absolute():
        root = job.launch_dir / root
    try:
        return build_data(d.name, root=root, batch_size=d.batch_size, val_batch_size=d.val_batch_size,
                          in_memory=d.in_memory, download=d.download, fallback=d.fallback,
                          num_workers=d.num_workers, seed=job.cfg.seed, fake_size=d.fake_size)
    except DataUnavailableError as err:
        raise BadInput(str(err)) from err


def _model_and_optimizer(job: Job) -> tuple[Any, Any, Any]:
    from hydra.utils import instantiate

    built: list[Any] = []
    for group in ("model", "optimizer", "criterion"):
        try:
            obj = instantiate(job.cfg[group])
            if group == "optimizer":
                obj = obj(built[0].parameters())
        except (ValueError, TypeError) as err:
            raise BadInput(f"{group} ({job.cfg[group].get('_target_')}): {err}; check the {group}.* settings") from err
        built.append(obj)
    model, optimizer, criterion = built
    return model, optimizer, criterion


def _tracker(job: Job) -> Any:
    from lrtrack.tracking import Tracker, resolve_tracking_uri

    t = job.cfg.tracking
    uri = resolve_tracking_uri(t.tracking_uri, job.launch_dir)
    name = t.experiment_name or f"lrtrack-{job.model_name}"
    if job.sweep is not None:  # the sweep's store and experiment, created before any job started
        uri, name = job.sweep.tracking_uri, job.sweep.experiment_name
    return Tracker(uri, name, flush_every=t.flush_every, flush_seconds=t.flush_seconds)


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _log_config(run: Any, job: Job, data: Any) -> None:
    from lrtrack.tracking import flatten

    params = flatten(_resolved(job.cfg))
    params["data.used"] = data.name
    run.log_params(params)
    run.set_tags({"lrtrack.data": data.name, "lrtrack.data_source": data.source,
                  "lrtrack.data_fallback": str(data.fell_back).lower()})
    run.log_dict(_resolved(job.cfg), "config/resolved.yaml")
    run.log_dict({"overrides": job.overrides, "choices": job.choices, "command": job.command},
                 "config/hydra_overrides.yaml")


# --------------------------------------------------------------------------- stages


def range_test_stage(job: Job, tracker: Any, parent_id: str | None, data: Any,
                     model: Any, optimizer: Any, criterion: Any) -> tuple[Any, str | None]:
    """The exploratory run: the range test, its suggestions, plot and history."""
    from lrtrack.finder import STOP_INTERRUPTED, run_range_test, summary
    from lrtrack.plots import range_test_figure

    f = job.cfg.finder
    name = job.run_name("range_test", job.choices.get("optimizer", ""), f.step_mode)
    run = tracker.start_run(name, tags=job.tags("explore"), parent_run_id=parent_id) if tracker else None
    try:
        if run:
            _log_config(run, job, data)
        result = run_range_test(
            model, optimizer, data.train, criterion=criterion,
            val_loader=data.val if f.val_batches > 0 else None, val_batches=f.val_batches or None,
            start_lr=f.start_lr, end_lr=f.end_lr, num_iter=f.num_iter, step_mode=f.step_mode,
            smoothing=f.smoothing, diverge_th=f.diverge_th, accumulation_steps=f.accumulation_steps,
            amp=f.amp, device=None if job.cfg.device == "auto" else job.cfg.device,
            observer=run, progress=job.cfg.progress,
        )
        chosen = result.suggestions.get(f.suggestion)
        log.info("range test: %d steps, %s (%s)", result.steps, result.stop_reason, result.stop_detail)
        for rule, s in result.suggestions.items():
            log.info("  %-8s %s", rule, f"{s.lr:.3e}" if s.lr is not None else f"no suggestion: {s.reason}")
        if run:
            run.log_summary(summary(result), step=max(result.steps - 1, 0))
            run.set_tags({"lrtrack.stop_reason": result.stop_reason, "lrtrack.stop_detail": result.stop_detail,
                          "lrtrack.suggestion_rule": f.suggestion,
                          **{f"lrtrack.suggestion.{r}": (s.reason if s.lr is None else f"{s.lr:.6g}")
                             for r, s in result.suggestions.items()}})
            if chosen is not None and chosen.lr is not None:
                run.log_summary({"suggested_lr": chosen.lr}, step=max(result.steps - 1, 0))
            run.log_figure(range_test_figure(result, title=name, chosen_rule=f.suggestion), "range_test/plot.png")
            run.log_rows_csv(result.history_rows(), RANGE_TEST_HISTORY)
            run.log_dict({rule: {"lr": s.lr, "index": s.index, "reason": s.reason}
                          for rule, s in result.suggestions.items()}, "range_test/suggestions.json")
            run.end("KILLED" if result.stop_reason == STOP_INTERRUPTED else "FINISHED")
        if result.stop_reason == STOP_INTERRUPTED:
            raise KeyboardInterrupt
        return result, run.run_id if run else None
    except BaseException as err:
        if run:
            run.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise


@dataclass
class RangeCurve:
    """The parts of a range test the training stage needs (from this job or a logged run)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestions: dict[str, Any]
    min_loss_lr: float | None
    run_id: str | None


def _curve_from_result(result: Any, run_id: str | None) -> RangeCurve:
    return RangeCurve(result.lrs, result.losses, result.smoothed_losses, result.suggestions,
                      result.min_loss_lr, run_id)


def _curve_from_run(tracker: Any, run_id: str) -> RangeCurve:
    """Read a logged range test back through the MLflow client (``train.lr_from``)."""
    import csv

    from lrtrack.suggest import RULES, Suggestion

    try:
        run = tracker.client.get_run(run_id)
    except Exception as err:
        raise BadInput(f"train.lr_from={run_id!r}: no such MLflow run in {tracker.tracking_uri} ({type(err).__name__}); "
                       "pass the run id of a range test (shown in the MLflow UI and logged at the end of a range test)") from err
    if run.data.tags.get("lrtrack.stage") != "explore":
        raise BadInput(f"train.lr_from={run_id!r} is not a range-test run (its lrtrack.stage tag is "
                       f"{run.data.tags.get('lrtrack.stage')!r}, expected 'explore')")
    metrics = run.data.metrics
    suggestions = {}
    for rule in RULES:
        lr = metrics.get(f"suggested_lr/{rule}")
        suggestions[rule] = Suggestion(rule, lr, None, "" if lr is not None else
                                       run.data.tags.get(f"lrtrack.suggestion.{rule}", "not logged"))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.client.download_artifacts(run_id, RANGE_TEST_HISTORY, tmp)
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    lrs.append(float(row["lr"]))
                    losses.append(float(row["loss"]))
                    smoothed.append(float(row["loss_smoothed"]))
        except Exception as err:  # the curve is only needed for the overlay figure
            log.warning("could not read the range-test history of run %s (%s); no overlay figure", run_id, err)
    return RangeCurve(lrs, losses, smoothed, suggestions, metrics.get("min_loss_lr"), run_id)


def train_stage(job: Job, tracker: Any, parent_id: str | None, data: Any, model: Any, optimizer: Any,
                criterion: Any, curve: RangeCurve | None) -> float | None:
    """The final run: a schedule with bounds from the range test (or the config), then training."""
    from hydra.utils import instantiate

    from lrtrack.plots import schedule_on_range_test_figure, training_figure
    from lrtrack.schedules import (
        bounds_from_config,
        bounds_from_suggestions,
        optimizer_steps_per_epoch,
    )
    from lrtrack.train import train

    s, t = job.cfg.schedule, job.cfg.train
    if s.max_lr is not None:
        bounds = bounds_from_config(s.max_lr, s.base_divisor)
    elif curve is None:
        raise BadInput("stage=train needs schedule.max_lr=<lr> or train.lr_from=<range-test run id>")
    else:
        bounds = bounds_from_suggestions(curve.suggestions, max_lr_rule=s.max_lr_rule,
                                         base_divisor=s.base_divisor, min_loss_lr=curve.min_loss_lr)
    steps_per_epoch = optimizer_steps_per_epoch(len(data.train), t.accumulation_steps)
    schedule = instantiate(s.scheduler)(optimizer, max_lr=bounds.max_lr, base_lr=bounds.base_lr,
                                        steps_per_epoch=steps_per_epoch, epochs=t.epochs)
    schedule_name = job.choices.get("schedule", schedule.name)
    name = job.run_name("train", job.choices.get("optimizer", ""), schedule_name)
    tags = job.tags("final")
    if curve is not None and curve.run_id:
        tags["lrtrack.range_test_run_id"] = curve.run_id
    run = tracker.start_run(name, tags=tags, parent_run_id=parent_id) if tracker else None
    log.info("training: %s, max_lr=%.3e base_lr=%.3e (%s), %d epochs x %d steps",
             schedule_name, bounds.max_lr, bounds.base_lr, bounds.rule, t.epochs, steps_per_epoch)
    try:
        if run:
            _log_config(run, job, data)
            run.log_params({"bounds.max_lr": bounds.max_lr, "bounds.base_lr": bounds.base_lr,
                            "bounds.rule": bounds.rule, "bounds.steps_per_epoch": steps_per_epoch})
        with tempfile.TemporaryDirectory() as ckpt_dir:
            result = train(
                model, optimizer, data.train, epochs=t.epochs, schedule=schedule, criterion=criterion,
                val_loader=data.val, device=None if job.cfg.device == "auto" else job.cfg.device,
                accumulation_steps=t.accumulation_steps, grad_clip_norm=t.grad_clip_norm,
                smoothing=t.smoothing, observer=run, checkpoint_dir=ckpt_dir if t.checkpoint else None,
                seed=job.cfg.seed, progress=job.cfg.progress, amp=t.amp,
            )
            if run and result.checkpoint_path is not None:
                run.log_artifact(result.checkpoint_path, "checkpoints")
        log.info("training done: val_loss=%s val_accuracy=%s", result.final_val_loss, result.final_val_accuracy)
        if run:
            final = {"final_val_loss": result.final_val_loss, "final_val_accuracy": result.final_val_accuracy}
            run.log_summary({k: v for k, v in final.items() if v is not None}, step=max(result.steps - 1, 0))
            # Epoch metrics are logged at the epoch's last optimizer step.
            epoch_steps = [(i + 1) * steps_per_epoch - 1 for i in range(len(result.epochs))]
            val_losses = [e["val_loss"] for e in result.epochs if "val_loss" in e]
            run.log_figure(training_figure(result.lrs, result.losses, result.smoothed_losses,
                                           epoch_steps=epoch_steps, val_losses=val_losses, title=name),
                           "train/lr_and_loss.png")
            if curve is not None and curve.lrs:
                run.log_figure(schedule_on_range_test_figure(
                    curve.lrs, curve.losses, curve.smoothed, result.lrs,
                    bounds=(bounds.base_lr, bounds.max_lr), title=f"{name}: LRs on the range test"),
                    "train/lr_on_range_test.png")
            run.log_rows_csv([{"step": i, "lr": lr, "loss": loss, "loss_smoothed": sm}
                              for i, (lr, loss, sm) in enumerate(zip(result.lrs, result.losses, result.smoothed_losses))],
                             "train/history.csv")
            run.end("FINISHED")
        return result.final_val_loss
    except BaseException as err:
        if run:
            run.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise


def run_job(job: Job) -> float | None:
    """Run the configured stages; returns the final validation loss (or the min range-test loss)."""
    cfg = job.cfg
    _seed(cfg.seed)
    data = _data(job)
    model, optimizer, criterion = _model_and_optimizer(job)
    tracker = _tracker(job) if cfg.tracking.enabled else None
    parent = None
    if tracker and (cfg.stage == "all" or job.sweep is not None):
        name = job.run_name("lrtrack", job.choices.get("optimizer", ""), job.choices.get("schedule", ""))
        tags = job.tags("pipeline")
        if job.sweep is not None:  # a child of the sweep's run, named by the job's swept overrides
            name = job.sweep.job_name(job.overrides)
            tags.update({"lrtrack.sweep_run_id": job.sweep.run_id,
                         "lrtrack.sweep_overrides": " ".join(job.sweep.swept(job.overrides)),
                         "lrtrack.job_num": str(HydraConfig.get().job.num)})
        parent = tracker.start_run(name, tags=tags, parent_run_id=job.sweep.run_id if job.sweep else None)
        job.parent_run_id = parent.run_id
        _log_config(parent, job, data)
    parent_id = parent.run_id if parent else None
    try:
        curve = None
        outcome: float | None = None
        if cfg.stage in ("all", "range_test"):
            result, run_id = range_test_stage(job, tracker, parent_id, data, model, optimizer, criterion)
            curve = _curve_from_result(result, run_id)
            outcome = result.min_loss
            if run_id:
                log.info("range-test run: %s", run_id)
        if cfg.stage == "train" and cfg.train.lr_from:
            if tracker is None:
                raise BadInput("train.lr_from needs tracking.enabled=true (it reads the run from MLflow)")
            curve = _curve_from_run(tracker, cfg.train.lr_from)
        if cfg.stage in ("all", "train"):
            outcome = train_stage(job, tracker, parent_id, data, model, optimizer, criterion, curve)
        if parent:
            if outcome is not None:
                parent.log_summary({"final_val_loss": outcome} if cfg.stage != "range_test" else {})
            parent.end("FINISHED")
        if tracker:
            log.info("MLflow: %s", tracker.ui_hint())
        return outcome
    except BaseException as err:
        if parent:
            parent.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise


# --------------------------------------------------------------------------- entry


def task(cfg: DictConfig) -> float | None:
    """What Hydra calls once per job; returns the metric a sweeper optimises."""
    if _stderr_gate is not None:
        _stderr_gate.release()
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return _sweep_task(cfg)
    try:
        validate(cfg, config_dir())
    except ConfigError as err:
        fail(err.errors)
    job = _job(cfg)
    from hydra.errors import InstantiationException

    try:
        return run_job(job)
    except KeyboardInterrupt:
        fail("interrupted; the runs so far are kept in MLflow (status KILLED)", EXIT_INTERRUPTED)
    except (BadInput, ValueError, TypeError, InstantiationException) as err:
        message = str(err).strip().splitlines()
        fail(" ".join(line.strip() for line in message) or type(err).__name__)
    return None


def _sweep_task(cfg: DictConfig) -> float:
    """One job of a multirun: a failure is logged and recorded in MLflow (the job's runs
    FAILED, an ``lrtrack.error`` tag), and NaN is returned so Hydra goes on with the other jobs
    (its basic sweeper would stop the sweep, and skip the sweep's summary, on an exception)."""
    job = _job(cfg)
    try:
        validate(cfg, config_dir())
        outcome = run_job(job)
        return float("nan") if outcome is None else float(outcome)
    except KeyboardInterrupt:
        raise
    except Exception as err:
        lines = err.errors if isinstance(err, ConfigError) else [str(err).strip() or type(err).__name__]
        log.error("job %s failed: %s", " ".join(job.overrides), " ".join(x.strip() for x in lines))
        if not isinstance(err, (ConfigError, BadInput, ValueError, TypeError)):
            log.debug("traceback", exc_info=True)
        if job.sweep is not None:
            from lrtrack.sweep import record_failure

            try:
                record_failure(job.sweep, job.overrides, ConfigError(lines) if isinstance(err, ConfigError) else err,
                               job.parent_run_id, tags=job.tags("pipeline"))
            except Exception:
                log.exception("could not record the failure in MLflow")
        return float("nan")


class _ComposeErrors:
    """Holds back what Hydra writes to stderr until the first job starts.

    Hydra reports a bad override (a typo, a wrong type, an unknown option) over several lines
    plus a hint about HYDRA_FULL_ERROR. If composition fails, :func:`main` condenses what was
    held back into one ``lrtrack: error:`` line; once a job starts, everything passes through.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.held: list[str] = []
        self.passing = False

    def write(self, text: str) -> int:
        if self.passing:
            return self.stream.write(text)
        self.held.append(text)
        return len(text)

    def release(self) -> None:
        if not self.passing:
            self.passing = True
            self.stream.write("".join(self.held))
            self.held = []

    def condensed(self) -> str:
        parts: list[str] = []
        skipping_paths = False
        for raw in "".join(self.held).splitlines():
            line = raw.strip()
            if line.startswith("Config search path"):
                skipping_paths = True
                continue
            if skipping_paths and line.startswith("provider="):
                continue
            skipping_paths = False
            if not line or "HYDRA_FULL_ERROR" in line or line.startswith(("reference_type=", "object_type=")):
                continue
            if parts and parts[-1].endswith(":") and raw.startswith("\t"):
                parts[-1] += " " + line  # the first of a list of options
            elif parts and raw.startswith("\t") and "Available options" in parts[-1]:
                parts[-1] += ", " + line
            else:
                parts.append(line.rstrip("."))
        return "; ".join(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


_stderr_gate: _ComposeErrors | None = None


def main() -> None:
    """``python -m lrtrack``: the Hydra application, with composition errors on one line."""
    global _stderr_gate
    register_configs()
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(task)
    _stderr_gate = gate = _ComposeErrors(sys.stderr)
    sys.stderr = gate
    try:
        app()
    except SystemExit as done:
        if not gate.passing and done.code not in (0, None):
            sys.stderr = gate.stream
            message = gate.condensed() or f"hydra exited with status {done.code}"
            gate.held = []
            print(f"lrtrack: error: {message}", file=sys.stderr)
        raise
    finally:
        gate.release()
        sys.stderr = gate.stream
