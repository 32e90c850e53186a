"""The configuration schema (structured-config dataclasses) and its validation.

Hydra merges the YAML under ``conf/`` onto these dataclasses, so a typo in a key or a value
of the wrong type is caught at composition time. :func:`validate` then checks the ranges and
the relations between settings, collecting every problem so the user fixes them in one go.
Importing this module must stay cheap (no torch): ``python -m lrtrack --help`` imports it.
"""

from __future__ import annotations

import math
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
    name: str = "mnist"
    root: str = "data"
    batch_size: int = 256
    val_batch_size: int = 1000
    in_memory: bool = True
    download: bool = True
    fallback: Optional[str] = "digits"
    num_workers: int = 0
    fake_size: int = 1024


@dataclass
class FinderConfig:
    start_lr: Optional[float] = None
    end_lr: float = 10.0
    num_iter: int = 100
    step_mode: str = "exp"
    smoothing: float = 0.95
    diverge_th: float = 5.0
    accumulation_steps: int = 1
    val_batches: int = 0
    amp: bool = False
    suggestion: str = "valley"


@dataclass
class TrainConfig:
    epochs: int = 3
    lr_from: Optional[str] = None
    accumulation_steps: int = 1
    grad_clip_norm: Optional[float] = None
    smoothing: float = 0.95
    amp: bool = False
    checkpoint: bool = True


@dataclass
class TrackingConfig:
    enabled: bool = True
    tracking_uri: Optional[str] = None
    experiment_name: Optional[str] = None
    flush_every: int = 100
    flush_seconds: float = 5.0


@dataclass
class LRTrackConfig:
    model: Any = MISSING
    optimizer: Any = MISSING
    criterion: Any = field(default_factory=lambda: {"_target_": "torch.nn.NLLLoss"})
    schedule: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    finder: FinderConfig = field(default_factory=FinderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    stage: str = "all"
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def register_configs() -> None:
    """Register the schema as ``lrtrack_schema`` (config.yaml puts it first in its defaults)."""
    ConfigStore.instance().store(name="lrtrack_schema", node=LRTrackConfig)


class ConfigError(ValueError):
    """One or more settings are invalid; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


def available_options(group: str, conf_dir: str | Path) -> list[str]:
    """The option names of a config group (the YAML files in ``conf/<group>/``)."""
    folder = Path(conf_dir) / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def validate(cfg: DictConfig, conf_dir: str | Path) -> None:
    """Check every setting a user can get wrong; raise :class:`ConfigError` listing them all."""
    errors: list[str] = []

    def bad(setting: str, value: Any, allowed: str, fix: str = "") -> None:
        line = f"{setting}={value!r} is invalid: {allowed}"
        errors.append(line + (f"; {fix}" if fix else ""))

    if OmegaConf.is_missing(cfg, "model"):
        models = ", ".join(available_options("model", conf_dir))
        errors.append(
            f"no model chosen: add +model=<name> (available: {models}), "
            f"e.g. python -m lrtrack +model=mnist_cnn"
        )
    if OmegaConf.is_missing(cfg, "optimizer"):
        errors.append(f"no optimizer chosen: add optimizer=<name> (available: "
                      f"{', '.join(available_options('optimizer', conf_dir))})")
    elif cfg.optimizer.get("lr") is not None and _num(cfg.optimizer.lr) and cfg.optimizer.lr < 0:
        bad("optimizer.lr", cfg.optimizer.lr, "must be >= 0")

    if cfg.stage not in STAGES:
        bad("stage", cfg.stage, f"allowed: {', '.join(STAGES)}")

    f = cfg.finder
    if f.step_mode not in STEP_MODES:
        bad("finder.step_mode", f.step_mode, f"allowed: {', '.join(STEP_MODES)}")
    if f.num_iter < 2:
        bad("finder.num_iter", f.num_iter, "must be >= 2 (a curve needs two points)")
    if f.end_lr <= 0 or not math.isfinite(f.end_lr):
        bad("finder.end_lr", f.end_lr, "must be a positive LR")
    if f.start_lr is not None:
        if f.start_lr < 0 or not math.isfinite(f.start_lr):
            bad("finder.start_lr", f.start_lr, "must be a positive LR (or null: the optimizer's LR)")
        elif f.step_mode == "exp" and f.start_lr == 0:
            bad("finder.start_lr", f.start_lr, "must be > 0 with step_mode=exp", "use e.g. 1e-7")
        if f.start_lr >= f.end_lr:
            bad("finder.start_lr", f.start_lr, f"must be smaller than finder.end_lr={f.end_lr!r}")
    elif not OmegaConf.is_missing(cfg, "optimizer") and _num(cfg.optimizer.get("lr")):
        if cfg.optimizer.lr >= f.end_lr:
            bad("finder.end_lr", f.end_lr,
                f"must be larger than the start LR (optimizer.lr={cfg.optimizer.lr!r})",
                "raise finder.end_lr or set finder.start_lr")
    if not 0 <= f.smoothing < 1:
        bad("finder.smoothing", f.smoothing, "must be in [0, 1) (EMA decay; 0 = no smoothing)")
    if f.diverge_th <= 1:
        bad("finder.diverge_th", f.diverge_th, "must be > 1")
    if f.accumulation_steps < 1:
        bad("finder.accumulation_steps", f.accumulation_steps, "must be >= 1")
    if f.val_batches < 0:
        bad("finder.val_batches", f.val_batches, "must be >= 0 (0 = training loss, no validation)")
    if f.suggestion not in SUGGESTION_RULES:
        bad("finder.suggestion", f.suggestion, f"allowed: {', '.join(SUGGESTION_RULES)}")

    d = cfg.data
    if d.name not in DATASETS:
        bad("data.name", d.name, f"allowed: {', '.join(DATASETS)}")
    for key in ("batch_size", "val_batch_size", "fake_size"):
        if d[key] < 1:
            bad(f"data.{key}", d[key], "must be >= 1")
    if d.num_workers < 0:
        bad("data.num_workers", d.num_workers, "must be >= 0")
    if d.fallback not in (None, "digits", "fake"):
        bad("data.fallback", d.fallback, "allowed: digits, fake, null (no fallback)")

    t = cfg.train
    if t.epochs < 1:
        bad("train.epochs", t.epochs, "must be >= 1")
    if t.accumulation_steps < 1:
        bad("train.accumulation_steps", t.accumulation_steps, "must be >= 1")
    if t.grad_clip_norm is not None and t.grad_clip_norm <= 0:
        bad("train.grad_clip_norm", t.grad_clip_norm, "must be > 0 or null (no clipping)")
    if not 0 <= t.smoothing < 1:
        bad("train.smoothing", t.smoothing, "must be in [0, 1)")

    if cfg.stage in ("all", "train"):
        s = cfg.schedule
        if s is None:
            errors.append(f"no schedule chosen: add schedule=<name> (available: "
                          f"{', '.join(available_options('schedule', conf_dir))})")
        else:
            if s.get("max_lr") is not None and (not _num(s.max_lr) or s.max_lr <= 0):
                bad("schedule.max_lr", s.max_lr, "must be a positive LR or null (from the range test)")
            if s.get("max_lr_rule") not in MAX_LR_RULES:
                bad("schedule.max_lr_rule", s.get("max_lr_rule"), f"allowed: {', '.join(MAX_LR_RULES)}")
            if not _num(s.get("base_divisor")) or s.base_divisor < 1:
                bad("schedule.base_divisor", s.get("base_divisor"), "must be a number >= 1 (Smith: 3-4)")
        if cfg.stage == "train" and t.lr_from is None and s is not None and s.get("max_lr") is None:
            errors.append(
                "stage=train needs an LR: set schedule.max_lr=<lr> or train.lr_from=<range-test run id>"
            )

    tr = cfg.tracking
    if tr.flush_every < 1:
        bad("tracking.flush_every", tr.flush_every, "must be >= 1")
    if tr.flush_seconds <= 0:
        bad("tracking.flush_seconds", tr.flush_seconds, "must be > 0")

    if errors:
        raise ConfigError(errors)


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
