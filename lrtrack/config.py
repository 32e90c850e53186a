"""The configuration schema (structured-config dataclasses) and its validation.

Hydra merges the YAML under ``conf/`` onto these dataclasses, so a typo in a key or a value
of the wrong type is caught at composition time. The YAML files hold the defaults, each with
a comment (written once: the dataclasses only give the types). :func:`validate` then checks
the ranges and the relations between settings, and :func:`dry_run` builds the optimizer and
the schedule on a dummy parameter, collecting every problem so the user fixes them in one go
before anything starts. Importing this module stays cheap (no torch): ``--help`` imports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

STAGES = ("all", "range_test", "train")
STEP_MODES = ("exp", "linear")  # mirrors lrtrack.finder.STEP_MODES without importing torch
SUGGESTION_RULES = ("steepest", "valley", "minimum", "slide")
MAX_LR_RULES = SUGGESTION_RULES + ("min_loss_div10",)
DATASETS = ("mnist", "digits", "fake")


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = "data"
    batch_size: int = MISSING
    val_batch_size: int = MISSING
    in_memory: bool = True
    download: bool = True
    fallback: Optional[str] = "digits"
    num_workers: int = 0
    fake_size: int = 1024


@dataclass
class FinderConfig:
    start_lr: Optional[float] = MISSING
    end_lr: float = MISSING
    num_iter: int = MISSING
    step_mode: str = MISSING
    smoothing: float = MISSING
    diverge_th: float = MISSING
    accumulation_steps: int = MISSING
    val_batches: int = MISSING
    amp: bool = MISSING
    suggestion: str = MISSING


@dataclass
class BoundsConfig:
    max_lr: Optional[float] = MISSING
    max_lr_rule: str = MISSING
    base_divisor: float = MISSING


@dataclass
class TrainConfig:
    epochs: int = MISSING
    lr_from: Optional[str] = MISSING
    accumulation_steps: int = MISSING
    grad_clip_norm: Optional[float] = MISSING
    smoothing: float = MISSING
    amp: bool = MISSING
    checkpoint: bool = MISSING


@dataclass
class TrackingConfig:
    enabled: bool = MISSING
    tracking_uri: Optional[str] = MISSING
    experiment_name: Optional[str] = MISSING
    flush_every: int = MISSING
    flush_seconds: float = MISSING


@dataclass
class LRTrackConfig:
    model: Any = MISSING
    optimizer: Any = MISSING
    criterion: Any = MISSING
    schedule: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    finder: FinderConfig = field(default_factory=FinderConfig)
    bounds: BoundsConfig = field(default_factory=BoundsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    stage: str = MISSING
    seed: int = MISSING
    device: str = MISSING
    progress: bool = MISSING


def register_configs() -> None:
    """Register the schema as ``lrtrack_schema`` (config.yaml puts it first in its defaults)."""
    ConfigStore.instance().store(name="lrtrack_schema", node=LRTrackConfig)


def config_dir() -> Path:
    """The YAML: ``lrtrack/conf`` inside an installed wheel, else ``conf/`` of the checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"lrtrack's config folder is missing (looked in {here / 'conf'} and {here.parent / 'conf'})")


class ConfigError(ValueError):
    """One or more settings are invalid; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


def available_options(group: str, conf_dir: str | Path | None = None) -> list[str]:
    """The option names of a config group (the YAML files in ``conf/<group>/``)."""
    folder = Path(conf_dir or config_dir()) / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


class _Errors:
    """Collects one line per problem: the setting, the bad value, what is allowed, the fix."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def bad(self, setting: str, value: Any, allowed: str, fix: str = "") -> None:
        self.lines.append(f"{setting}={value!r} is invalid: {allowed}" + (f"; {fix}" if fix else ""))

    def add(self, line: str) -> None:
        self.lines.append(line)


def validate(cfg: DictConfig, conf_dir: str | Path | None = None) -> None:
    """Check every setting a user can get wrong; raise :class:`ConfigError` listing them all."""
    errors = _Errors()
    _check_choices(cfg, errors, conf_dir)
    if cfg.stage not in STAGES:
        errors.bad("stage", cfg.stage, f"allowed: {', '.join(STAGES)}")
    for check in (_check_finder, _check_data, _check_train, _check_bounds, _check_tracking):
        check(cfg, errors)
    if errors.lines:
        raise ConfigError(errors.lines)


def _check_choices(cfg: DictConfig, errors: _Errors, conf_dir: str | Path | None) -> None:
    if OmegaConf.is_missing(cfg, "model"):
        errors.add(f"no model chosen: add +model=<name> (available: "
                   f"{', '.join(available_options('model', conf_dir))}), e.g. python -m lrtrack +model=mnist_cnn")
    if OmegaConf.is_missing(cfg, "optimizer"):
        errors.add(f"no optimizer chosen: add optimizer=<name> (available: "
                   f"{', '.join(available_options('optimizer', conf_dir))})")
    elif _num(cfg.optimizer.get("lr")) and cfg.optimizer.lr < 0:
        errors.bad("optimizer.lr", cfg.optimizer.lr, "must be >= 0")
    if cfg.stage in ("all", "train") and cfg.schedule is None:
        errors.add(f"no schedule chosen: add schedule=<name> (available: "
                   f"{', '.join(available_options('schedule', conf_dir))})")


def _start_lr(cfg: DictConfig) -> Any:
    """The range test's first LR: finder.start_lr, else the optimizer's LR."""
    if cfg.finder.start_lr is not None:
        return cfg.finder.start_lr
    return None if OmegaConf.is_missing(cfg, "optimizer") else cfg.optimizer.get("lr")


def _check_finder(cfg: DictConfig, errors: _Errors) -> None:
    f = cfg.finder
    if f.step_mode not in STEP_MODES:
        errors.bad("finder.step_mode", f.step_mode, f"allowed: {', '.join(STEP_MODES)}")
    if f.num_iter < 2:
        errors.bad("finder.num_iter", f.num_iter, "must be >= 2 (a curve needs two points)")
    if f.end_lr <= 0 or not math.isfinite(f.end_lr):
        errors.bad("finder.end_lr", f.end_lr, "must be a positive LR")
    start, setting = _start_lr(cfg), "finder.start_lr" if f.start_lr is not None else "optimizer.lr"
    if _num(start) and start >= 0:
        if f.step_mode == "exp" and start == 0:
            errors.bad(setting, start, "must be > 0 for finder.step_mode=exp (a log-spaced grid cannot start at 0)",
                       "set finder.start_lr=1e-7, or use finder=linear")
        elif start >= f.end_lr and setting == "finder.start_lr":
            errors.bad(setting, start, f"must be smaller than finder.end_lr={f.end_lr!r}")
        elif start >= f.end_lr:
            errors.bad("finder.end_lr", f.end_lr, f"must be larger than the start LR (optimizer.lr={start!r})",
                       "raise finder.end_lr or set finder.start_lr")
    elif f.start_lr is not None:
        errors.bad("finder.start_lr", f.start_lr, "must be a positive LR (or null: the optimizer's LR)")
    if not 0 <= f.smoothing < 1:
        errors.bad("finder.smoothing", f.smoothing, "must be in [0, 1) (EMA decay; 0 = no smoothing)")
    if f.diverge_th <= 1:
        errors.bad("finder.diverge_th", f.diverge_th, "must be > 1")
    if f.accumulation_steps < 1:
        errors.bad("finder.accumulation_steps", f.accumulation_steps, "must be >= 1")
    if f.val_batches < 0:
        errors.bad("finder.val_batches", f.val_batches, "must be >= 0 (0 = training loss, no validation)")
    if f.suggestion not in SUGGESTION_RULES:
        errors.bad("finder.suggestion", f.suggestion, f"allowed: {', '.join(SUGGESTION_RULES)}")


def _check_data(cfg: DictConfig, errors: _Errors) -> None:
    d = cfg.data
    if d.name not in DATASETS:
        errors.bad("data.name", d.name, f"allowed: {', '.join(DATASETS)}")
    for key in ("batch_size", "val_batch_size", "fake_size"):
        if d[key] < 1:
            errors.bad(f"data.{key}", d[key], "must be >= 1")
    if d.num_workers < 0:
        errors.bad("data.num_workers", d.num_workers, "must be >= 0")
    if d.fallback not in (None, "digits", "fake"):
        errors.bad("data.fallback", d.fallback, "allowed: digits, fake, null (no fallback)")


def _check_train(cfg: DictConfig, errors: _Errors) -> None:
    t = cfg.train
    if t.epochs < 1:
        errors.bad("train.epochs", t.epochs, "must be >= 1")
    if t.accumulation_steps < 1:
        errors.bad("train.accumulation_steps", t.accumulation_steps, "must be >= 1")
    if t.grad_clip_norm is not None and t.grad_clip_norm <= 0:
        errors.bad("train.grad_clip_norm", t.grad_clip_norm, "must be > 0 or null (no clipping)")
    if not 0 <= t.smoothing < 1:
        errors.bad("train.smoothing", t.smoothing, "must be in [0, 1)")


def _check_bounds(cfg: DictConfig, errors: _Errors) -> None:
    b = cfg.bounds
    if b.max_lr is not None and (not _num(b.max_lr) or b.max_lr <= 0):
        errors.bad("bounds.max_lr", b.max_lr, "must be a positive LR or null (from the range test)")
    if b.max_lr_rule not in MAX_LR_RULES:
        errors.bad("bounds.max_lr_rule", b.max_lr_rule, f"allowed: {', '.join(MAX_LR_RULES)}")
    if not b.base_divisor >= 1:
        errors.bad("bounds.base_divisor", b.base_divisor, "must be a number >= 1 (Smith: 3-4)")
    if cfg.stage == "train" and cfg.train.lr_from is None and b.max_lr is None:
        errors.add("stage=train needs an LR: set bounds.max_lr=<lr> or train.lr_from=<range-test run id>")


def _check_tracking(cfg: DictConfig, errors: _Errors) -> None:
    tr = cfg.tracking
    if tr.flush_every < 1:
        errors.bad("tracking.flush_every", tr.flush_every, "must be >= 1")
    if tr.flush_seconds <= 0:
        errors.bad("tracking.flush_seconds", tr.flush_seconds, "must be > 0")


def dry_run(cfg: DictConfig) -> None:
    """Build the optimizer and the schedule on a dummy parameter, so a bad ``optimizer.*`` or
    ``schedule.*`` value is reported before any data is loaded or any run is created.

    Raises:
        ConfigError: one line per component that cannot be built, naming its settings.
    """
    import torch

    errors: list[str] = []
    optimizer = _build(errors, "optimizer", cfg.optimizer,
                       lambda partial: partial([torch.nn.Parameter(torch.zeros(1))]))
    if optimizer is not None and cfg.stage in ("all", "train") and cfg.schedule is not None:
        max_lr = cfg.bounds.max_lr or 0.1
        base_lr = max_lr / max(float(cfg.bounds.base_divisor), 1.0)
        _build(errors, "schedule", cfg.schedule,
               lambda partial: partial(optimizer, max_lr=max_lr, base_lr=base_lr, steps_per_epoch=10,
                                       epochs=max(int(cfg.train.epochs), 1)))
    if errors:
        raise ConfigError(errors)


def _build(errors: list[str], group: str, node: DictConfig, finish: Callable[[Any], Any]) -> Any:
    """Instantiate ``node`` (a ``_partial_``) and ``finish`` it; on a user error add one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return finish(instantiate(node))
    except (InstantiationException, ValueError, TypeError) as err:
        errors.append(component_error(group, node, err))
        return None


def component_error(group: str, node: DictConfig, err: BaseException) -> str:
    """One line for a component that cannot be built: ``group (target): message; check ...``."""
    cause = err.__cause__ if err.__cause__ is not None and not str(err).strip() else err
    message = " ".join(line.strip() for line in str(cause).strip().splitlines()) or type(cause).__name__
    return f"{group} ({node.get('_target_')}): {message}; check the {group}.* settings"


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
