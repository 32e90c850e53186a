"""The configuration schema (structured-config dataclasses) and its validation.

Hydra merges the YAML under ``conf/`` onto these dataclasses, so a typo in a key or a value
of the wrong type is caught at composition time. The YAML files hold the defaults, each with
a comment (written once: the dataclasses only give the types). :func:`validate` then checks
the ranges and the relations between settings, and :func:`dry_run` builds the optimizer and
the schedule on a dummy parameter, collecting every problem so the user fixes them in one go
before anything starts. Importing this module stays cheap (no torch): ``--help`` imports it.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

STAGES = ("all", "range_test", "train")
STEP_MODES = ("exp", "linear")  # mirrors lrtrack.engine.finder.STEP_MODES without importing torch
SUGGESTION_RULES = ("confirmed", "steepest", "valley", "minimum", "slide")  # mirrors lrtrack.engine.suggest.RULES
MAX_LR_RULES = SUGGESTION_RULES + ("min_loss_div10",)
DATA_FALLBACKS = (None, "digits", "fake")
# Settings of the data builders (lrtrack.data) that must be whole numbers >= 1.
DATA_COUNTS = ("batch_size", "val_batch_size", "fake_size")


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
    probe_steps: Optional[int] = MISSING
    repeats: Optional[int] = MISSING


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
    resume: Optional[str] = MISSING
    allow_partial: bool = MISSING


@dataclass
class TrackingConfig:
    enabled: bool = MISSING
    tracking_uri: Optional[str] = MISSING
    experiment_name: Optional[str] = MISSING
    delivery_timeout_s: float = MISSING
    spool_dir: Optional[str] = MISSING


@dataclass
class LRTrackConfig:
    model: Any = MISSING
    optimizer: Any = MISSING
    criterion: Any = MISSING
    schedule: Any = None
    data: Any = MISSING  # a node with _target_ (conf/data/): lrtrack.data's builders or a user's own
    step: Any = None  # null: criterion(model(inputs), targets); else a _target_ (model, batch) -> loss
    metric: Any = None  # the validation metric (conf/metric/); null or empty (metric=none): validation loss only
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
    package = Path(__file__).resolve().parents[1]
    candidates = (package / "conf", package.parent / "conf")
    for candidate in candidates:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"lrtrack's config folder is missing (looked in {candidates[0]} and {candidates[1]})")


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

    def unknown(self, node: str, key: str, value: Any, owner: str, known: list[str]) -> None:
        """A key ``owner`` does not take (a typo, usually): the closest known one, else all of them."""
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {node}.{close[0]}?" if close else f"its settings: {', '.join(known)}"
        self.bad(f"{node}.{key}", value, f"{owner} has no setting {key!r}", hint)


def validate(cfg: DictConfig, conf_dir: str | Path | None = None) -> None:
    """Check every setting a user can get wrong; raise :class:`ConfigError` listing them all."""
    errors = _Errors()
    _check_unknown_keys(cfg, errors)
    _check_choices(cfg, errors, conf_dir)
    if cfg.stage not in STAGES:
        errors.bad("stage", cfg.stage, f"allowed: {', '.join(STAGES)}")
    for check in (_check_finder, _check_data, _check_train, _check_bounds, _check_tracking):
        check(cfg, errors)
    if errors.lines:
        raise ConfigError(errors.lines)


_TYPED_NODES = {"finder": FinderConfig, "bounds": BoundsConfig, "train": TrainConfig,
                "tracking": TrackingConfig}


def _check_unknown_keys(cfg: DictConfig, errors: _Errors) -> None:
    """``+finder.num_iters=5`` adds a key the schema does not have: a typo, not a setting."""
    from dataclasses import fields

    for node, schema in _TYPED_NODES.items():
        known = [f.name for f in fields(schema)]
        for key in cfg[node].keys() if cfg.get(node) is not None else []:
            if key not in known and not str(key).startswith("_"):
                errors.unknown(node, str(key), cfg[node][key], node, known)


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
    end_ok = _num(f.end_lr) and f.end_lr > 0  # else reported above, once
    if f.start_lr is not None and (not _num(f.start_lr) or f.start_lr < 0):
        errors.bad("finder.start_lr", f.start_lr, "must be a positive LR (or null: the optimizer's LR)")
    elif _num(start) and start >= 0:
        if f.step_mode == "exp" and start == 0:
            errors.bad(setting, start, "must be > 0 for finder.step_mode=exp (a log-spaced grid cannot start at 0)",
                       "set finder.start_lr=1e-7, or use finder=linear")
        elif end_ok and start >= f.end_lr and setting == "finder.start_lr":
            errors.bad(setting, start, f"must be smaller than finder.end_lr={f.end_lr!r}")
        elif end_ok and start >= f.end_lr:
            errors.bad("finder.end_lr", f.end_lr, f"must be larger than the start LR (optimizer.lr={start!r})",
                       "raise finder.end_lr or set finder.start_lr")
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
    if f.probe_steps is not None and f.probe_steps < 0:
        errors.bad("finder.probe_steps", f.probe_steps, "must be >= 0 (0: no confirmation probes) or null (auto)")
    elif f.probe_steps == 0:
        for setting, rule in (("finder.suggestion", f.suggestion), ("bounds.max_lr_rule", cfg.bounds.max_lr_rule)):
            if rule == "confirmed":
                errors.bad(setting, rule, "needs the confirmation probes, but finder.probe_steps=0",
                           "set finder.probe_steps=null (auto) or choose a curve rule (steepest, valley, minimum, "
                           "slide)")
    if f.repeats is not None and f.repeats < 1:
        errors.bad("finder.repeats", f.repeats, "must be >= 1 (the number of range tests to take the median of) "
                   "or null (auto: 3 for Adam-like optimizers, else 1)")


def _check_data(cfg: DictConfig, errors: _Errors) -> None:
    """The ``data`` node: a ``_target_``; for lrtrack's own builders, known settings in range."""
    d = cfg.data
    if not isinstance(d, DictConfig) or not d.get("_target_"):
        errors.add(f"data has no _target_: choose data=<name> (available: {', '.join(available_options('data'))}) "
                   "or write conf/data/<name>.yaml with _target_: <your loader factory, or lrtrack.data.datasets>")
        return
    target = str(d._target_)
    allowed = builtin_data_settings(target)
    if allowed is not None:
        for key in (k for k in d if not str(k).startswith("_")):
            if key == "seed":
                errors.bad("data.seed", d[key], "the data order follows the top-level seed", "set seed=<n> instead")
            elif key not in allowed:
                errors.unknown("data", str(key), d[key], target, allowed)
    _check_data_values(d, errors)
    for node in ("step", "metric"):
        value = cfg.get(node)
        if value is not None and not (isinstance(value, DictConfig) and (value.get("_target_") or not value)):
            errors.bad(node, value, f"must be null, empty or a node with _target_ (conf/{node}/ or your own YAML)")


def _check_data_values(d: DictConfig, errors: _Errors) -> None:
    for key in DATA_COUNTS:
        value = d.get(key)
        if value is not None and (not _int(value) or value < 1):
            errors.bad(f"data.{key}", value, "must be a whole number >= 1")
    if d.get("num_workers") is not None and (not _int(d.num_workers) or d.num_workers < 0):
        errors.bad("data.num_workers", d.num_workers, "must be a whole number >= 0 (0: load in the main process)")
    if "fallback" in d and d.fallback not in DATA_FALLBACKS:
        errors.bad("data.fallback", d.fallback, "allowed: digits, fake, null (no fallback)")
    if d.get("channels") is not None and d.channels not in (1, 3):
        errors.bad("data.channels", d.channels, "allowed: 1 (grayscale), 3 (RGB), null (as the images are)")
    size = d.get("size")
    if size is not None and not ((_int(size) and size > 0) or (OmegaConf.is_list(size) and len(size) == 2
                                                               and all(_int(v) and v > 0 for v in size))):
        errors.bad("data.size", size, "must be a side in pixels, [height, width], or null (keep the images' size)")
    if d.get("max_memory_mb") is not None and (not _num(d.max_memory_mb) or d.max_memory_mb <= 0):
        errors.bad("data.max_memory_mb", d.max_memory_mb, "must be a positive number of MiB")


def builtin_data_settings(target: str) -> list[str] | None:
    """The settings of one of lrtrack's data builders (``lrtrack.data.*``); None for any other target."""
    if not target.startswith("lrtrack.data."):
        return None
    return _data_builder_settings().get(target)


@functools.cache
def _data_builder_settings() -> dict[str, list[str]]:
    """``{"lrtrack.data.mnist": [its parameters but seed], ...}`` for the builders in
    ``lrtrack.data.BUILTINS``, read from the module's source: importing it imports torch, about
    1.5 s that checking a config would otherwise spend before the job's tracking relay starts
    (tests/test_config.py pins this against ``inspect.signature`` of the real functions)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("lrtrack.data")
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    builders: list[str] = []
    for node in tree.body:  # BUILTINS = {f"lrtrack.data.{fn.__name__}": fn for fn in (mnist, digits, ...)}
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "BUILTINS":
            builders = [name.id for name in ast.walk(node.value) if isinstance(name, ast.Name) and name.id in functions]
    settings = {}
    for name in builders:
        args = functions[name].args
        settings[f"lrtrack.data.{name}"] = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)
                                            if a.arg != "seed"]
    return settings


def import_hint(target: str) -> str | None:
    """Why ``_target_: target`` cannot be imported, and how to make it importable; None when it can."""
    import importlib
    import os

    module, _, attr = target.rpartition(".")
    if not module:
        return f"_target_ {target!r} is not a dotted path: write module.Name (e.g. mymodels.Net for mymodels.py)"
    here = os.getcwd()
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and (module == err.name or module.startswith(err.name + ".")):
            return (f"cannot import {target!r}: no module {err.name!r} on the Python path; put {err.name}.py (or "
                    f"the package folder) in the folder you launch from ({here}), pip install -e your project, "
                    "or add its folder to PYTHONPATH")
        return f"cannot import {target!r}: importing {module} needs {err.name!r}, which is not installed ({err})"
    except Exception as err:  # the user's module raised while importing
        return f"cannot import {target!r}: importing {module} raised {type(err).__name__}: {err}"
    if not hasattr(loaded, attr):
        return (f"cannot import {target!r}: module {module} ({getattr(loaded, '__file__', '?')}) has no "
                f"{attr!r}; check the spelling of _target_")
    return None


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
    if t.resume is not None and cfg.stage == "range_test":
        errors.bad("train.resume", t.resume, "continues a training run, so it needs stage=all or stage=train")
    if t.resume is not None and not t.checkpoint:
        errors.bad("train.checkpoint", t.checkpoint, "must be true with train.resume (it continues from checkpoints)")


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
    if tr.delivery_timeout_s < 0:
        errors.bad("tracking.delivery_timeout_s", tr.delivery_timeout_s,
                   "must be >= 0 (seconds to wait at the end for a tracking store that went away)")


def check_config(cfg: DictConfig) -> None:
    """Every check that needs no data: the settings (:func:`validate`), then :func:`dry_run`."""
    validate(cfg)
    dry_run(cfg)


def dry_run(cfg: DictConfig) -> None:
    """Build the optimizer and the schedule on a dummy parameter, so a bad ``optimizer.*`` or
    ``schedule.*`` value is reported before any data is loaded or any run is created.

    Raises:
        ConfigError: one line per component that cannot be built, naming its settings.
    """
    import torch

    errors: list[str] = []
    _check_device(str(cfg.device), errors)
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


def _check_device(device: str, errors: list[str]) -> None:
    """``device=cuda`` on a machine without CUDA fails now, not after the data is loaded."""
    import torch

    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        errors.append(f"device={device!r} is invalid: not a torch device; use auto, cpu, cuda or cuda:<index>")
        return
    if parsed.type == "cuda" and not torch.cuda.is_available():
        errors.append(f"device={device!r} is invalid: CUDA is not available on this machine; use device=auto or cpu")
    elif parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        errors.append(f"device={device!r} is invalid: this machine has {torch.cuda.device_count()} CUDA device(s)")


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
    located = re.search(r"Error locating target '([^']+)'", message)
    hint = import_hint(located.group(1)) if located else None
    if hint:
        return f"{group} ({node.get('_target_')}): {hint}"
    return f"{group} ({node.get('_target_')}): {message}; check the {group}.* settings"


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
