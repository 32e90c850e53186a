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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

STAGES = ("all", "range_test", "train")
STEP_MODES = ("exp", "linear")  # mirrors lrtrack.engine.finder.STEP_MODES without importing torch
SUGGESTION_RULES = ("confirmed", "steepest", "valley", "minimum", "slide")  # mirrors lrtrack.engine.suggest.RULES
MAX_LR_RULES = SUGGESTION_RULES + ("min_loss_div10",)
#: The curve rule ``finder.probe_steps=0`` uses in place of ``confirmed`` (which needs the probes):
#: the curve rule closest to the best fixed LR on the suggestion benchmark (docs/suggestions.md).
NO_PROBES_RULE = "minimum"
DATA_FALLBACKS = (None, "digits", "fake")


@dataclass(frozen=True)
class Rule:
    """What a numeric setting allows, kept on its schema field (``metadata={"rule": ...}``), so
    :func:`check_numbers` checks every setting the same way: finite (floats: NaN passes ``x > 1``),
    inside ``[lo, hi]`` (``lo_open``/``hi_open``: the end itself excluded), an integer in
    ``[lo, hi]`` with ``hi`` at most int64's; ``allowed`` is the phrase the error line shows."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    allowed: str = ""
    cost: str | None = None  # a count whose upper bound is an estimate (check_costs): "steps" | "memory"
    min_positive: float | None = None  # a positive value below this is refused (an LR too small to move a weight)
    integer: bool = False  # a count given in a node without a schema (an optimizer's warmup_steps): no fraction

    def admits(self, value: float) -> bool:
        if self.min_positive is not None and 0 < value < self.min_positive:
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or not (value >= self.hi if self.hi_open else value > self.hi)


def rule(**kw: Any) -> Any:
    """A schema field with a :class:`Rule` (its default stays in the YAML)."""
    return field(default=MISSING, metadata={"rule": Rule(**kw)})


MAX_LR = 1e6  # no model trains at a larger LR: one step sends the loss to infinity
# A float32 weight near 1 moves by at least its spacing, 1.2e-7: an update lr * grad with lr below 1e-12
# changes no weight for any gradient a model produces, and 1e-300 is 0 in float32 (the curve is flat noise).
MIN_LR = 1e-12
FLOAT32_MAX = 3.4028234663852886e38  # torch computes in float32: a larger number overflows (a traceback)
FLOAT32_TINY = 1.1754943508222875e-38  # float32's smallest normal number: a smaller eps is 0 (or subnormal) there
INT64_MAX = 2**63 - 1  # torch's and numpy's integers: a larger one overflows with a traceback
SEED_MAX = 2**32 - 1  # numpy.random.seed's range


@dataclass
class FinderConfig:
    start_lr: Optional[float] = rule(lo=0, hi=MAX_LR, min_positive=MIN_LR,
                                     allowed=f"0 (linear grids) or an LR in [{MIN_LR:g}, {MAX_LR:g}] (or null: the "
                                     "optimizer's LR)")
    end_lr: float = rule(lo=0, lo_open=True, hi=MAX_LR, min_positive=MIN_LR,
                         allowed=f"an LR in [{MIN_LR:g}, {MAX_LR:g}]")
    num_iter: int = rule(lo=2, allowed=">= 2 (a curve needs two points)", cost="steps")
    step_mode: str = MISSING
    smoothing: float = rule(lo=0, hi=1, hi_open=True, allowed="in [0, 1) (EMA decay; 0 = no smoothing)")
    diverge_th: float = rule(lo=1, lo_open=True, allowed="> 1 (stop when the loss exceeds this x the best; a huge "
                             "one such as 1e9 turns the stop off, NaN never does)")
    accumulation_steps: int = rule(lo=1, allowed=">= 1", cost="steps")
    val_batches: int = rule(lo=0, allowed=">= 0 (0 = training loss, no validation)", cost="steps")
    amp: bool = MISSING
    suggestion: str = MISSING
    probe_steps: Optional[int] = rule(lo=0, allowed=">= 0 (0: no confirmation probes) or null (auto)", cost="steps")
    repeats: Optional[int] = rule(lo=1, allowed=">= 1 (the number of range tests to take the median of) or null "
                                  "(auto: 3 for Adam-like optimizers, else 1)", cost="steps")


@dataclass
class BoundsConfig:
    max_lr: Optional[float] = rule(lo=0, lo_open=True, hi=MAX_LR, min_positive=MIN_LR,
                                   allowed=f"an LR in [{MIN_LR:g}, {MAX_LR:g}] or "
                                   "null (from the range test)")
    max_lr_rule: Optional[str] = MISSING
    base_divisor: float = rule(lo=1, hi=1e4, allowed="a number in [1, 10000] (Smith: 3-4; beyond, the base LR is "
                                                   "no LR at all)")


@dataclass
class TrainConfig:
    epochs: int = rule(lo=1, allowed=">= 1", cost="steps")
    lr_from: Optional[str] = MISSING
    accumulation_steps: int = rule(lo=1, allowed=">= 1", cost="steps")
    grad_clip_norm: Optional[float] = rule(lo=0, lo_open=True, allowed="> 0 or null (no clipping)")
    smoothing: float = rule(lo=0, hi=1, hi_open=True, allowed="in [0, 1)")
    amp: bool = MISSING
    checkpoint: bool = MISSING
    resume: Optional[str] = MISSING
    allow_partial: bool = MISSING
    allow_other_setup: bool = MISSING


@dataclass
class TrackingConfig:
    enabled: bool = MISSING
    tracking_uri: Optional[str] = MISSING
    experiment_name: Optional[str] = MISSING
    delivery_timeout_s: float = rule(lo=0, hi=7 * 86400, allowed="seconds in [0, 604800] (a week) to wait at the "
                                     "end for a tracking store that went away")
    spool_dir: Optional[str] = MISSING
    log_model: bool = MISSING
    register_model: Optional[str] = MISSING


@dataclass
class LimitsConfig:
    max_hours: float = rule(lo=1 / 3600, allowed="a number of hours, at least 1/3600 (one second)")
    max_memory_gb: Optional[float] = rule(lo=0, lo_open=True, allowed="a positive number of GB or null "
                                          "(this machine's memory)")


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
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    stage: str = MISSING
    seed: int = rule(lo=0, hi=SEED_MAX, allowed=f"a whole number in [0, {SEED_MAX}] (numpy's seed range)")
    device: str = MISSING
    progress: bool = MISSING


# The numeric settings of lrtrack's data builders (the data node is a _target_, not a typed node).
DATA_RULES: dict[str, tuple[type, Rule]] = {
    "batch_size": (int, Rule(lo=1, allowed="a whole number >= 1", cost="memory")),
    "val_batch_size": (int, Rule(lo=1, allowed="a whole number >= 1", cost="memory")),
    "fake_size": (int, Rule(lo=16, allowed="a whole number >= 16 (validation gets a quarter as many: fewer make "
                                           "a meaningless curve)", cost="memory")),
    "num_workers": (int, Rule(lo=0, allowed="a whole number >= 0 (0: load in the main process)", cost="memory")),
    "max_memory_mb": (float, Rule(lo=0, lo_open=True, allowed="a positive number of MiB", cost="memory")),
}


# Every number outside the typed schema (optimizer, schedule, model, criterion, data, a user's nodes).
UNTYPED = Rule(lo=-FLOAT32_MAX, hi=FLOAT32_MAX, allowed=f"within +-{FLOAT32_MAX:.3g} (torch computes in float32)")
# The optimizer's hyperparameters by name, whatever the optimizer class (torch checks some, not these bounds).
OPTIMIZER_RULES: dict[str, Rule] = {
    "lr": Rule(lo=0, hi=MAX_LR, min_positive=MIN_LR,
               allowed=f"0 or in [{MIN_LR:g}, {MAX_LR:g}] (the range test's start LR)"),
    "momentum": Rule(lo=0, hi=1, allowed="in [0, 1] (above 1 every step grows)"),
    "dampening": Rule(lo=0, hi=1, allowed="in [0, 1]"),
    "betas": Rule(lo=0, hi=1, hi_open=True, allowed="in [0, 1) each (moment decays)"),
    "eps": Rule(lo=0, lo_open=True, hi=1, min_positive=FLOAT32_TINY,
                allowed=f"in [{FLOAT32_TINY:.3g}, 1] (it keeps a division by a moment finite; smaller is 0 in float32)"),
    "weight_decay": Rule(lo=0, hi=FLOAT32_MAX, allowed=f">= 0 and at most {FLOAT32_MAX:.3g} (torch computes in float32)"),
    # schedule-free's and Prodigy's: a warm-up counts steps; Prodigy's estimate and its factor are step sizes.
    "warmup_steps": Rule(lo=0, hi=INT64_MAX, integer=True, allowed="a whole number of steps >= 0"),
    "d0": Rule(lo=0, lo_open=True, hi=MAX_LR, min_positive=MIN_LR,
               allowed=f"in [{MIN_LR:g}, {MAX_LR:g}] (the first step-size estimate)"),
    "d_coef": Rule(lo=0, lo_open=True, hi=MAX_LR, allowed="> 0 (0 makes every step zero)"),
    "growth_rate": Rule(lo=1, allowed=">= 1 (how fast the estimate may grow per step; inf: no limit)"),
}
# Other components' settings by name, whatever the class: a probability is one, a smoothing below 1.
NAMED_RULES: dict[str, dict[str, Rule]] = {
    "optimizer": OPTIMIZER_RULES,
    "model": {"dropout": Rule(lo=0, hi=1, hi_open=True, allowed="in [0, 1) (1 drops every activation)"),
              "num_classes": Rule(lo=1, hi=INT64_MAX, integer=True, allowed="a whole number >= 1")},
    "criterion": {"label_smoothing": Rule(lo=0, hi=1, allowed="in [0, 1]")},
}
# The optimizer's hyperparameters that are a fixed number of values (torch indexes them without a check).
OPTIMIZER_LENGTHS: dict[str, tuple[int, str]] = {"betas": (2, "[0.9,0.999]")}


def register_configs() -> None:
    """Register the schema as ``lrtrack_schema`` (config.yaml puts it first in its defaults), and the
    ``lrtrack_conf_dir`` resolver (``--help`` names the real folder of the YAML files)."""
    ConfigStore.instance().store(name="lrtrack_schema", node=LRTrackConfig)
    if not OmegaConf.has_resolver("lrtrack_conf_dir"):
        OmegaConf.register_new_resolver("lrtrack_conf_dir", lambda: str(config_dir()))


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
    for first in (_check_schema_present, _check_expansion, _check_resolvable, _check_component_nodes):  # read below
        first(cfg, errors)
        if errors.lines:
            raise ConfigError(errors.lines)
    _check_unknown_keys(cfg, errors)
    _check_choices(cfg, errors, conf_dir)
    if cfg.stage not in STAGES:
        errors.bad("stage", cfg.stage, f"allowed: {', '.join(STAGES)}")
    check_numbers(cfg, errors)
    check_empty_strings(cfg, errors)
    check_flag_overrides(_task_overrides(), errors)
    for check in (_check_finder, _check_data, _check_train, _check_bounds, _check_tracking, check_costs,
                  check_param_names, _check_unread_settings, _check_schedule_free):
        check(cfg, errors)
    if errors.lines:
        raise ConfigError(errors.lines)


_TYPED_NODES = {"finder": FinderConfig, "bounds": BoundsConfig, "train": TrainConfig,
                "tracking": TrackingConfig, "limits": LimitsConfig}


def allowed_text(setting: str) -> str:
    """The schema's words for what a typed ``setting`` allows (its :class:`Rule`), "" when it has none."""
    from dataclasses import fields

    node, _, name = setting.rpartition(".")
    schema = _TYPED_NODES.get(node) if node else LRTrackConfig
    for f in fields(schema) if schema else []:
        if f.name == name and f.metadata.get("rule"):
            return str(f.metadata["rule"].allowed)
    return ""


def _check_schema_present(cfg: DictConfig, errors: _Errors) -> None:
    """``~finder`` (or ``~train.epochs``) deletes what lrtrack reads: a node of the schema, or a setting
    whose schema default is ``???``. One line each, naming the deletion to drop."""
    from dataclasses import fields

    deletions = [o for o in _task_overrides() if o.startswith("~")]

    def deleted(settings: list[str]) -> None:
        by = [o for o in deletions for s in settings if s == o[1:].split("=")[0] or s.startswith(o[1:].split("=")[0] + ".")]
        how = f"{by[0]} deleted {'it' if len(settings) == 1 else 'them'}: drop that override" if by else "a config deleted it"
        shown = ", ".join(settings[:4]) + (f" (and {len(settings) - 4} more)" if len(settings) > 4 else "")
        errors.add(f"{shown} {'is' if len(settings) == 1 else 'are'} missing: lrtrack needs "
                   f"{'it' if len(settings) == 1 else 'them'} ({how}; to change a setting, write <setting>=<value>)")

    for f in fields(LRTrackConfig):  # (no model or optimizer chosen: _check_choices says what to add)
        if f.name not in ("model", "optimizer") and (f.name not in cfg or OmegaConf.is_missing(cfg, f.name)):
            deleted([f.name])
    for node in _TYPED_NODES:
        section = cfg.get(node) if node in cfg and not OmegaConf.is_missing(cfg, node) else None
        gone = [f"{node}.{name}" for name in [f.name for f in fields(_TYPED_NODES[node])]
                if isinstance(section, DictConfig) and (name not in section or OmegaConf.is_missing(section, name))]
        if gone:  # (conf/<node>/ gives every value: a ??? left is a deletion)
            deleted(gone)


def _interpolations(node: Any) -> Iterator[str]:
    """Every string holding a ``${...}`` in an unresolved container (keys and values)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _interpolations(key)
            yield from _interpolations(value)
    elif isinstance(node, list):
        for value in node:
            yield from _interpolations(value)
    elif isinstance(node, str) and "${" in node:
        yield node


def _schema_keys() -> dict[str, list[str]]:
    """Every typed setting's name, by node ("" for the top level)."""
    from dataclasses import fields

    return {"": [f.name for f in fields(LRTrackConfig)],
            **{node: [f.name for f in fields(schema)] for node, schema in _TYPED_NODES.items()}}


def _check_unknown_keys(cfg: DictConfig, errors: _Errors) -> None:
    """``+finder.num_iters=5`` adds a key the schema does not have: a typo, not a setting. A top-level
    key lrtrack does not know (``+epochs=5``) is a typo too, unless a ``${...}`` reads it (a user's own
    node that other settings interpolate): nothing else would ever read it."""
    schema = _schema_keys()
    for node, known in schema.items():
        if not node:
            continue
        for key in cfg[node].keys() if cfg.get(node) is not None else []:
            if key not in known and not str(key).startswith("_"):
                errors.unknown(node, str(key), cfg[node][key], node, known)
    text = " ".join(_interpolations(OmegaConf.to_container(cfg, resolve=False)))
    for key in cfg.keys():
        key = str(key)
        if key in schema[""] or key.startswith("_") or re.search(r"\$\{[^}]*\b" + re.escape(key) + r"\b", text):
            continue
        everywhere = {f"{n}.{k}" if n else k: k for n, ks in schema.items() for k in ks}
        close = difflib.get_close_matches(key, list(everywhere), n=1) or [
            full for full, short in everywhere.items() if difflib.get_close_matches(key, [short], n=1, cutoff=0.75)][:1]
        hint = (f"did you mean {close[0]}?" if close else
                f"the top-level settings: {', '.join(schema[''])}")
        errors.bad(key, _shown(OmegaConf.to_container(cfg[key], resolve=False)
                               if isinstance(cfg[key], (DictConfig, ListConfig)) else cfg._get_node(key)._value()),
                   "lrtrack has no top-level setting of that name and no ${...} reads it", hint)


def check_numbers(cfg: DictConfig, errors: _Errors) -> None:
    """Every number in the config, from the schema: each typed setting by its field's :class:`Rule`
    (finite, in range, an integer within its bounds), and every other number anywhere in the
    config (optimizer, schedule, model, data, a user's own nodes) finite and within int64."""
    import typing
    from dataclasses import fields

    checked: set[str] = set()
    for node, schema in (("", LRTrackConfig), *_TYPED_NODES.items()):
        hints = typing.get_type_hints(schema)
        section = cfg if not node else cfg.get(node)
        for f in fields(schema):
            kind = _scalar_type(hints[f.name])
            if kind in (int, float) and section is not None and section.get(f.name) is not None:
                setting = f"{node}.{f.name}" if node else f.name
                checked.add(setting)
                _check_value(setting, section.get(f.name), kind, f.metadata.get("rule", Rule()), errors)
    if isinstance(cfg.get("data"), DictConfig):
        checked.update(f"data.{key}" for key in DATA_RULES)
    for setting, value in _leaves(cfg):
        if setting not in checked and setting.split(".", 1)[0] not in _TYPED_NODES:
            name = re.sub(r"\[\d+\]$", "", setting)  # optimizer.betas[0]: the rule of optimizer.betas
            group, _, key = name.partition(".")
            known = NAMED_RULES.get(group, {}).get(key)
            _check_value(setting, value, float if isinstance(value, float) else int, known or UNTYPED, errors)
    optimizer = cfg.get("optimizer")
    for key, (length, example) in OPTIMIZER_LENGTHS.items():
        value = optimizer.get(key) if isinstance(optimizer, DictConfig) else None
        if value is not None and (not isinstance(value, ListConfig) or len(value) != length):
            errors.bad(f"optimizer.{key}", _shown(value), f"must be {length} numbers", f"e.g. optimizer.{key}={example}")


def check_empty_strings(cfg: DictConfig, errors: _Errors) -> None:
    """Every free-text setting of the schema (an optional string: a run id, a URI, a folder, a name)
    refuses an empty value: ``train.resume=$RUN_ID`` with the variable unset would otherwise start
    a fresh run in silence. The rule's allowed values and the experiment name (MLflow's rules) say
    so in their own checks."""
    import typing
    from dataclasses import fields

    for node, schema in _TYPED_NODES.items():
        hints, section = typing.get_type_hints(schema), cfg.get(node)
        for f in fields(schema):
            value = section.get(f.name) if section is not None else None
            setting = f"{node}.{f.name}"
            if (str in typing.get_args(hints[f.name]) and isinstance(value, str) and not value.strip()
                    and setting not in ("tracking.experiment_name", "bounds.max_lr_rule")):
                errors.bad(setting, value, "must not be empty (an unset shell variable?)",
                           f"give a value, or leave {setting} out (null: its default)")


def check_flag_overrides(overrides: list[str], errors: _Errors) -> None:
    """A flag of the schema given on the command line takes true or false: OmegaConf reads ``2``,
    ``yes`` and ``on`` as true, so ``train.amp=2`` would turn AMP on without a word."""
    import typing
    from dataclasses import fields

    flags = set()
    for node, schema in (("", LRTrackConfig), *_TYPED_NODES.items()):
        hints = typing.get_type_hints(schema)
        flags.update(f"{node}.{f.name}" if node else f.name for f in fields(schema) if hints[f.name] is bool)
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if sep and key.lstrip("+") in flags and value.strip().lower() not in ("true", "false"):
            errors.bad(key.lstrip("+"), _Short(value), "must be true or false", f"set {key}=true or {key}=false")


def _task_overrides() -> list[str]:
    """The command line's overrides of this job (none outside a Hydra job: a library call)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    # As typed: an override holding ${...} is text here (resolving it would fail on what it refers to).
    return [str(o) for o in OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)]


def _scalar_type(hint: Any) -> type | None:
    """``int`` for ``int`` and ``Optional[int]``, likewise float; None for anything else."""
    import typing

    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return options[0] if len(options) == 1 and options[0] in (int, float) else None


def _check_value(setting: str, value: Any, kind: type, limits: Rule, errors: _Errors) -> None:
    """One number against its rule: type, finiteness, range (integers: at most int64's)."""
    allowed = f"must be {limits.allowed}" if limits.allowed else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and isinstance(value, float)):
        what = "a whole number" if kind is int else "a number"
        errors.bad(setting, _shown(value), f"must be {what}" + (f"; {allowed}" if allowed else ""))
    elif not math.isfinite(value):
        errors.bad(setting, value, f"must be finite and {limits.allowed}" if limits.allowed else "must be finite",
                   "NaN and infinity are never valid here: set a number")
    elif isinstance(value, float) and 0 < abs(value) < FLOAT32_TINY and limits.min_positive is None:
        own = limits.allowed if limits is not UNTYPED else ""
        errors.bad(setting, value, f"is 0 in float32, where torch computes (its smallest normal number is "
                   f"{FLOAT32_TINY:.3g})" + (f"; it must be {own}" if own else ""),
                   "use 0 or a larger number" if limits.admits(0.0) else "use a larger number")
    elif limits.integer and isinstance(value, float) and not value.is_integer():
        errors.bad(setting, value, allowed if "whole number" in allowed else "must be a whole number")
    elif isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        own = allowed if limits.hi is not None and limits.hi < INT64_MAX else ""  # the seed's range, say
        errors.bad(setting, _shown(value), own or "must fit in a 64-bit integer (torch and numpy refuse larger)",
                   "" if own else f"use a whole number between {-INT64_MAX - 1} and {INT64_MAX}")
    elif not limits.admits(value):
        errors.bad(setting, _shown(value), allowed)


def _shown(value: Any) -> Any:
    """A value for an error line: a huge integer or a long string shortened, so the line stays one line."""
    text = repr(value)
    if len(text) <= 80:
        return value
    count = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} digits"
    return _Short(f"{text[:40]}...{text[-20:]} ({count})")


class _Short(str):
    def __repr__(self) -> str:
        return str(self)


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``("optimizer.betas[0]", 0.9)``: every number in the config (interpolations resolved;
    one that cannot be resolved is skipped: it is reported when it is used)."""
    from omegaconf.errors import OmegaConfBaseException

    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for key, _ in items:
        name = f"{prefix}[{key}]" if not isinstance(node, DictConfig) else (f"{prefix}.{key}" if prefix else str(key))
        try:
            value = node[key]
        except (OmegaConfBaseException, ValueError):
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            yield from _leaves(value, name)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, value


# What the upper bounds of the counts (Rule.cost) are derived from: a floor on the time of one
# batch and what each step, sample and worker costs in memory. A setting past the limits.* budget
# with these optimistic figures cannot be meant; limits.max_hours / limits.max_memory_gb raise it.
MIN_BATCH_SECONDS = 1e-4  # a tiny model's forward, backward and step on a GPU: no batch runs faster
STEP_RECORD_BYTES = 256  # what each step keeps: its LR, losses, smoothed loss, metrics on the way to MLflow
WORKER_BYTES = 256 * 2**20  # one DataLoader worker process (Python, torch)
SAMPLE_BYTES = {f"lrtrack.data.{name}": 28 * 28 * 4 + 8 for name in ("mnist", "digits", "fake")}  # 1x28x28 + label
TRAIN_SIZE = {"lrtrack.data.mnist": 60000, "lrtrack.data.digits": 1438}  # fake: data.fake_size


def check_costs(cfg: DictConfig, errors: _Errors) -> None:
    """The upper bound of every count: the time and memory the settings imply, at the optimistic
    figures above, against ``limits.max_hours`` and ``limits.max_memory_gb`` (this machine's
    memory by default). Settings already reported out of range are left out."""
    reported = {line.split("=", 1)[0] for line in errors.lines}
    if reported & {"limits.max_hours", "limits.max_memory_gb"}:  # the limit itself is wrong: nothing to blame
        return
    budget = _Budget.of(cfg)
    if budget is None:
        return
    counts = {name: value for name, value in _counts(cfg).items() if name not in reported}
    f, d = counts.get, cfg.data if isinstance(cfg.data, DictConfig) else {}
    if cfg.stage in ("all", "range_test") and all(f(k) is not None for k in ("finder.num_iter", "finder.repeats",
                                                                             "finder.accumulation_steps",
                                                                             "finder.val_batches")):
        probes = f("finder.probe_steps")
        per_repeat = f("finder.num_iter") + (0 if probes == 0 else max(probes or 30, f("finder.num_iter")))
        steps = f("finder.repeats") * per_repeat
        batches = steps * f("finder.accumulation_steps") * (1 + f("finder.val_batches"))
        factors = {k: counts[k] for k in ("finder.num_iter", "finder.repeats", "finder.accumulation_steps",
                                          "finder.val_batches", "finder.probe_steps") if counts.get(k)}
        budget.steps(errors, "the range test", batches, steps, factors)
    target = str(d.get("_target_", ""))
    sample = SAMPLE_BYTES.get(target, 12)  # else at least a float32 input and an int64 label
    for key, each, what in (("data.batch_size", sample, "a batch"), ("data.val_batch_size", sample, "a batch"),
                            ("data.fake_size", sample * 5 // 4, "the data set (training and validation)"),
                            ("data.num_workers", WORKER_BYTES, "the worker processes"),
                            ("data.max_memory_mb", 2**20, "the decoded images it allows")):
        if f(key) is not None and budget.memory(errors, key, f(key), f(key) * each, what):
            counts.pop(key)
    pixels = _image_pixels(d.get("size"))
    if pixels and "data.size" not in reported:  # a resized image: channels x height x width float32, a batch of them at once
        budget.memory(errors, "data.size", d.get("size"), pixels * (d.get("channels") or 3) * 4
                      * (f("data.batch_size") or 1), "a batch of images resized to it")
    if cfg.stage in ("all", "train") and all(f(k) is not None for k in ("train.epochs", "train.accumulation_steps",
                                                                         "data.batch_size")):
        _check_training_cost(errors, budget, counts, TRAIN_SIZE.get(target) or f("data.fake_size"))


def _image_pixels(size: Any) -> int:
    """Pixels of an image resized to ``data.size`` (a side: at least side x side), 0 when not valid."""
    if _int(size) and size > 0:
        return size * size
    if OmegaConf.is_list(size) and len(size) == 2 and all(_int(v) and v > 0 for v in size):
        return int(size[0]) * int(size[1])
    return 0


def _check_training_cost(errors: _Errors, budget: _Budget, counts: dict[str, Any], size: int | None) -> None:
    """The training run: epochs x batches per epoch (known for lrtrack's data sets), and at least one
    optimizer step's worth of batches (``train.accumulation_steps``) however small the data."""
    epochs, accumulation = counts["train.epochs"], counts["train.accumulation_steps"]
    per_epoch = -(-size // counts["data.batch_size"]) if size else 1
    if size and accumulation > epochs * per_epoch:
        errors.bad("train.accumulation_steps", _shown(accumulation), f"must be at most the {epochs * per_epoch} "
                   f"batches of the whole training run (train.epochs={epochs} x {per_epoch} per epoch), else no "
                   "optimizer step is taken", "lower it")
        return
    batches = max(epochs * per_epoch, accumulation)
    factors = {k: counts[k] for k in ("train.epochs", "train.accumulation_steps", "data.fake_size") if k in counts}
    budget.steps(errors, "the training run", batches, batches // accumulation or 1, factors)


def _counts(cfg: DictConfig) -> dict[str, Any]:
    """The counts an estimate multiplies, valid ones only (``finder.repeats`` null: 3, the most auto takes)."""
    out: dict[str, Any] = {}
    for node, schema in _TYPED_NODES.items():
        from dataclasses import fields

        for fld in fields(schema):
            value = cfg[node].get(fld.name) if cfg.get(node) is not None else None
            if fld.metadata.get("rule") and fld.metadata["rule"].cost and _int(value):
                out[f"{node}.{fld.name}"] = value
    if "finder.repeats" not in out and cfg.finder.get("repeats") is None:
        out["finder.repeats"] = 3
    if cfg.finder.get("probe_steps") is None:
        out["finder.probe_steps"] = None
    d = cfg.get("data")
    for key, (_, data_rule) in DATA_RULES.items():
        value = d.get(key) if isinstance(d, DictConfig) else None
        if _num(value) and not isinstance(value, bool) and data_rule.admits(value):
            out[f"data.{key}"] = value
    return out


@dataclass
class _Budget:
    seconds: float
    bytes: float
    memory_from: str  # where the memory limit comes from, for the message

    @classmethod
    def of(cls, cfg: DictConfig) -> _Budget | None:
        lim = cfg.get("limits")
        hours, gb = (lim.get("max_hours"), lim.get("max_memory_gb")) if lim is not None else (24.0, None)
        if not (_num(hours) and hours > 0) or (gb is not None and not (_num(gb) and gb > 0)):
            return None  # reported by check_numbers
        if gb is None:
            return cls(hours * 3600, _machine_memory(), "this machine's memory; limits.max_memory_gb=<GB> raises it")
        return cls(hours * 3600, gb * 1e9, f"limits.max_memory_gb={gb:g}")

    def steps(self, errors: _Errors, stage: str, batches: float, steps: float, factors: dict[str, int]) -> None:
        """Too long (at MIN_BATCH_SECONDS a batch) or too much history: name the largest factor."""
        seconds, memory = batches * MIN_BATCH_SECONDS, steps * STEP_RECORD_BYTES
        if not factors or (seconds <= self.seconds and memory <= self.bytes):
            return
        setting = max(factors, key=lambda k: factors[k] / _TYPICAL.get(k, 1))
        if seconds > self.seconds:
            errors.bad(setting, _shown(factors[setting]),
                       f"{stage} would take at least {_duration(seconds)} ({batches:.3g} batches at >= "
                       f"{MIN_BATCH_SECONDS * 1e3:g} ms each), more than limits.max_hours={self.seconds / 3600:g}",
                       "lower it, or raise limits.max_hours if you really mean it")
        else:
            errors.bad(setting, _shown(factors[setting]),
                       f"{stage} would keep at least {_size(memory)} of history ({steps:.3g} steps), more than "
                       f"{_size(self.bytes)} ({self.memory_from})", "lower it")

    def memory(self, errors: _Errors, setting: str, value: Any, need: float, what: str) -> bool:
        """Report ``setting`` when ``need`` bytes exceed the memory limit; True when it did."""
        if need > self.bytes:
            errors.bad(setting, _shown(value), f"{what} would need at least {_size(need)} of memory, more than "
                       f"{_size(self.bytes)} ({self.memory_from})", "lower it")
        return need > self.bytes


TRAINING_COPIES = 4  # weights, gradients, one optimizer slot (Adam keeps two), the range test's saved copy


def model_memory_problem(cfg: DictConfig, param_bytes: int) -> str | None:
    """The model's parameters, built: training keeps at least :data:`TRAINING_COPIES` of them; one
    line when that exceeds the memory limit (``model.*`` sizes a user chose), else None."""
    budget = _Budget.of(cfg)
    need = param_bytes * TRAINING_COPIES
    if budget is None or need <= budget.bytes:
        return None
    return (f"model ({cfg.model.get('_target_')}): its parameters take {_size(param_bytes)}, and training keeps at "
            f"least {TRAINING_COPIES} copies ({_size(need)}: weights, gradients, optimizer state, the range test's "
            f"saved copy), more than {_size(budget.bytes)} ({budget.memory_from}); make it smaller (the model.* "
            "settings)")


_TYPICAL = {"finder.num_iter": 100, "finder.repeats": 3, "finder.probe_steps": 30, "train.epochs": 10,
            "data.fake_size": 60000}


def _machine_memory() -> float:
    import os

    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1e12


def _duration(seconds: float) -> str:
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _size(nbytes: float) -> str:
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{nbytes:.3g} bytes"


MAX_PARAM_KEY = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
_PARAM_KEY = re.compile(r"^[/\w.\- :]*$")  # mlflow.utils.validation.validate_param_and_metric_name (POSIX)


def check_param_names(cfg: DictConfig, errors: _Errors) -> None:
    """Every setting becomes an MLflow param named by its path (``model.hidden``): a name MLflow
    would refuse (too long, other characters, a path that normalises to another) is reported now,
    not after the range test as a delivery failure."""
    import posixpath

    def keys(node: Any, prefix: str) -> Iterator[str]:
        for key in node.keys() if isinstance(node, DictConfig) else []:
            name = f"{prefix}{key}"
            value = node._get_node(key)
            if isinstance(value, DictConfig) and not value._is_missing() and not value._is_none() and len(value):
                yield from keys(value, f"{name}.")
            else:
                yield name

    for name in keys(cfg, ""):
        if len(name) > MAX_PARAM_KEY:
            errors.bad(_Short(name[:60] + "..."), _Short(f"({len(name)} characters)"), f"MLflow allows at most "
                       f"{MAX_PARAM_KEY} characters in a param name (each setting's path)", "use shorter keys")
        elif not _PARAM_KEY.match(name) or posixpath.normpath(name) != name or name.startswith("/"):
            errors.add(f"setting {name!r} is invalid: MLflow logs each setting as a param named by its path, and "
                       "allows only letters, digits, _ - . / : and spaces there (and no '//' or '..'); rename the key")


MAX_RESOLVED_CHARS = 1_000_000  # the text one setting may resolve to (a doubling ${a}${a} chain: gigabytes)
_REFERENCE = re.compile(r"\$\{([^${}]+)\}")


def _check_expansion(cfg: DictConfig, errors: _Errors) -> None:
    """What each ``${...}`` would expand to, counted on the unresolved config (memoised, so a chain
    of ``b: ${a}${a}`` that doubles 30 times costs 30 steps, not 2**30 characters): a setting past
    :data:`MAX_RESOLVED_CHARS` is refused before anything resolves it."""
    import os

    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
        if items is None:
            flat[prefix] = node
            return
        for key, value in items:
            walk(value, f"{prefix}[{key}]" if isinstance(node, list) else f"{prefix}.{key}" if prefix else str(key))

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    sizes: dict[str, float] = {}

    def size(key: str, seen: frozenset[str]) -> float:
        if key in sizes:
            return sizes[key]
        if key in seen:
            return math.inf  # a cycle: OmegaConf would recurse until it gives up
        if key not in flat:  # a node: the sum of its leaves
            return sum(size(k, seen) for k in flat if k.startswith((key + ".", key + "[")))
        value = flat[key]
        if not isinstance(value, str) or "${" not in value:
            return len(str(value))
        total: float = len(value)
        for ref in _REFERENCE.finditer(value):
            inner = ref.group(1).strip()
            total -= len(ref.group(0))
            if inner.startswith("oc.env:"):
                total += len(os.environ.get(inner[len("oc.env:"):].split(",")[0].strip(), ""))
            elif ":" in inner:
                total += len(ref.group(0))  # another resolver: its own text, as an estimate
            else:
                parent = key.rsplit(".", inner.count(".", 0, len(inner) - len(inner.lstrip("."))))[0]
                target = f"{parent}.{inner.lstrip('.')}" if inner.startswith(".") else inner
                total += size(target, seen | {key})
        sizes[key] = total
        return total

    for key in flat:
        if size(key, frozenset()) > MAX_RESOLVED_CHARS:
            shown = "infinitely many" if math.isinf(sizes.get(key, math.inf)) else f"{sizes[key]:.3g}"
            errors.add(f"{key}={_shown(flat[key])!r} expands to {shown} characters through its ${{...}} references, "
                       f"more than the {MAX_RESOLVED_CHARS} a setting may hold: write the value out")
            return


def _check_resolvable(cfg: DictConfig, errors: _Errors, node: Any = None, prefix: str = "") -> None:
    """Every ``${...}`` resolves (an unset ``${oc.env:NAME}``, a key that does not exist), one line each."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    node = cfg if node is None else node
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        name = f"{prefix}[{key}]" if isinstance(node, ListConfig) else f"{prefix}{'.' if prefix else ''}{key}"
        try:
            value = node[key]
        except MissingMandatoryValue:
            continue  # ??? : the checks that need it say what to choose
        except (OmegaConfBaseException, ValueError) as err:  # InterpolationResolutionError and kin
            raw = node._get_node(key)._value() if isinstance(node, (DictConfig, ListConfig)) else "?"
            cause = " ".join(str(err).split("\n")[0].split()) or type(err).__name__
            errors.add(f"{name}={raw!r} cannot be resolved: {cause}; set what it refers to (an environment "
                       "variable: export it) or write the value")
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            _check_resolvable(cfg, errors, value, name)


def _check_component_nodes(cfg: DictConfig, errors: _Errors) -> None:
    """model, optimizer, criterion (and schedule, when set) are nodes with a ``_target_`` (a config
    file of a group may hold anything: a list, nothing at all)."""
    for group in ("model", "optimizer", "criterion", "schedule"):
        if OmegaConf.is_missing(cfg, group) or (group == "schedule" and cfg.get(group) is None):
            continue
        value = cfg.get(group)
        if not isinstance(value, DictConfig) or not value.get("_target_"):
            shown = _shown(OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value)
            errors.bad(group, shown, f"must be a node with _target_ (the class or factory to build; see conf/{group}/)",
                       f"write _target_: <module.Name> in your conf/{group}/<name>.yaml")


def _check_choices(cfg: DictConfig, errors: _Errors, conf_dir: str | Path | None) -> None:
    if OmegaConf.is_missing(cfg, "model"):
        errors.add(f"no model chosen: add +model=<name> (available: "
                   f"{', '.join(available_options('model', conf_dir))}), e.g. python -m lrtrack +model=mnist_cnn")
    if OmegaConf.is_missing(cfg, "optimizer"):
        errors.add(f"no optimizer chosen: add optimizer=<name> (available: "
                   f"{', '.join(available_options('optimizer', conf_dir))})")
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
    start, setting = _start_lr(cfg), "finder.start_lr" if f.start_lr is not None else "optimizer.lr"
    end_ok = _num(f.end_lr) and MIN_LR <= f.end_lr <= MAX_LR  # else reported by check_numbers, once
    # A start outside its rule is reported by check_numbers (finder.start_lr) or _check_choices, once.
    if _num(start) and (start == 0 or MIN_LR <= start) and start <= MAX_LR:
        if f.step_mode == "exp" and start == 0:
            errors.bad(setting, start, "must be > 0 for finder.step_mode=exp (a log-spaced grid cannot start at 0)",
                       "set finder.start_lr=1e-7, or use finder=linear")
        elif start == 0:  # a linear grid may start at 0, but the suggestions read the curve on a log-LR axis
            errors.bad(setting, start, "must be > 0 (the suggestions and the divergence edge read the curve on a "
                       "log-LR axis, where LR 0 has no place)", f"set finder.start_lr={f.end_lr / 100:g}")
        elif end_ok and start >= f.end_lr and setting == "finder.start_lr":
            errors.bad(setting, start, f"must be smaller than finder.end_lr={f.end_lr!r}")
        elif end_ok and start >= f.end_lr:
            errors.bad("finder.end_lr", f.end_lr, f"must be larger than the start LR (optimizer.lr={start!r})",
                       "raise finder.end_lr or set finder.start_lr")
    if f.suggestion not in SUGGESTION_RULES:
        errors.bad("finder.suggestion", f.suggestion, f"allowed: {', '.join(SUGGESTION_RULES)}")
    if f.probe_steps == 0 and cfg.bounds.max_lr_rule == "confirmed":  # finder.suggestion: see suggestion_rule
        errors.bad("bounds.max_lr_rule", "confirmed", "needs the confirmation probes, but finder.probe_steps=0",
                   "set finder.probe_steps=null (auto), or bounds.max_lr_rule=null (finder.suggestion's rule) or a "
                   "curve rule (steepest, valley, minimum, slide)")


def suggestion_rule(cfg: DictConfig) -> tuple[str, str | None]:
    """The rule the range test chooses: ``finder.suggestion``, but with ``finder.probe_steps=0``
    (no probes) ``confirmed`` becomes :data:`NO_PROBES_RULE`; returns the rule and the one-line
    notice to show when it was replaced (else None)."""
    f = cfg.finder
    if f.suggestion == "confirmed" and f.probe_steps == 0:
        return NO_PROBES_RULE, (f"finder.probe_steps=0: no confirmation probes, so the suggestion is the "
                                f"{NO_PROBES_RULE!r} curve rule (set finder.suggestion to choose another)")
    return str(f.suggestion), None


def max_lr_rule(cfg: DictConfig) -> str:
    """The rule the training bounds use: ``bounds.max_lr_rule`` when set, else the range test's
    (:func:`suggestion_rule`)."""
    chosen = cfg.bounds.max_lr_rule
    return str(chosen) if chosen is not None else suggestion_rule(cfg)[0]


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
    for key, (kind, data_rule) in DATA_RULES.items():
        if d.get(key) is not None:
            _check_value(f"data.{key}", d.get(key), kind, data_rule, errors)
    if "fallback" in d and d.fallback not in DATA_FALLBACKS:
        errors.bad("data.fallback", d.fallback, "allowed: digits, fake, null (no fallback)")
    if d.get("channels") is not None and d.channels not in (1, 3):
        errors.bad("data.channels", d.channels, "allowed: 1 (grayscale), 3 (RGB), null (as the images are)")
    size = d.get("size")
    if size is not None and not ((_int(size) and size > 0) or (OmegaConf.is_list(size) and len(size) == 2
                                                               and all(_int(v) and v > 0 for v in size))):
        errors.bad("data.size", size, "must be a side in pixels, [height, width], or null (keep the images' size)")
    std = d.get("std")
    for i, value in enumerate(std if OmegaConf.is_list(std) else [] if std is None else [std]):
        if _num(value) and value <= 0:
            setting = f"data.std[{i}]" if OmegaConf.is_list(std) else "data.std"
            errors.bad(setting, value, "must be > 0 (the inputs are divided by it)", "or null: measured on the data")


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
    except SystemExit as err:  # a script's top-level code ran on import (it would end lrtrack silently)
        return (f"cannot import {target!r}: importing {module} called sys.exit({err.code!r}); put the module's "
                "script code under `if __name__ == \"__main__\":`")
    if not hasattr(loaded, attr):
        return (f"cannot import {target!r}: module {module} ({getattr(loaded, '__file__', '?')}) has no "
                f"{attr!r}; check the spelling of _target_")
    return None


# Settings a run never reads, by what the run does (train.resume and train.lr_from have their own lines).
_TRAINING_ONLY = ("bounds.", "train.", "schedule.", "schedule=")
_RANGE_TEST_ONLY = ("finder.", "finder=")
_OWN_LINES = ("train.resume", "train.lr_from", "finder.suggestion")  # (the suggestion picks lr_from's rule too)


def _unread(cfg: DictConfig, setting: str) -> str | None:
    """Why this run never reads ``setting`` (given on the command line), None when it does."""
    t, b = cfg.train, cfg.bounds
    if cfg.stage == "range_test" and setting.startswith(_TRAINING_ONLY) and setting not in _OWN_LINES:
        return "is read only by the training run, and stage=range_test runs the range test alone"
    if cfg.stage == "train" and setting.startswith(_RANGE_TEST_ONLY) and setting not in _OWN_LINES:
        return "is read only by a range test, and stage=train runs none (it takes the LR from the bounds)"
    if setting == "finder.suggestion" and cfg.stage == "train" and b.max_lr is not None:
        return f"picks the suggestion that gives max_lr, and bounds.max_lr={b.max_lr} sets max_lr itself"
    if setting == "bounds.max_lr_rule" and b.max_lr is not None:
        return f"picks the suggestion that gives max_lr, and bounds.max_lr={b.max_lr} sets max_lr itself"
    if setting == "bounds.max_lr" and t.lr_from and cfg.stage == "train":
        return "sets max_lr itself, so train.lr_from's range test would not be used"
    if setting in ("train.allow_partial", "train.allow_other_setup") and not t.lr_from:
        return "allows a kind of train.lr_from run, and no train.lr_from is given"
    return None


def _check_unread_settings(cfg: DictConfig, errors: _Errors) -> None:
    """A setting given on the command line that this run never reads would be ignored without a word
    (``stage=range_test bounds.max_lr=0.1``, ``bounds.max_lr_rule=valley bounds.max_lr=0.1``). A sweep's
    jobs may share settings across stages, so only a single run is held to it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return
    for override in _task_overrides():
        setting = override.lstrip("+~").split("=", 1)[0]
        why = _unread(cfg, override.lstrip("+~") if "." not in setting else setting)
        if why is not None:
            value = override.split("=", 1)[1] if "=" in override else None
            errors.bad(setting, value, why, f"drop {setting}" + (
                ", or run stage=all (range test, then training)" if cfg.stage != "all" else ""))


def _check_schedule_free(cfg: DictConfig, errors: _Errors) -> None:
    """A schedule-free optimizer replaces the LR schedule with averaging: another schedule on top of it
    fights it (its authors: use a constant LR after warm-up)."""
    if cfg.stage == "range_test" or OmegaConf.is_missing(cfg, "optimizer") or not isinstance(cfg.schedule, DictConfig):
        return
    target, schedule = str(cfg.optimizer.get("_target_", "")), str(cfg.schedule.get("_target_", ""))
    if target.startswith("schedulefree.") and schedule != "lrtrack.engine.schedules.constant":
        errors.bad("schedule", schedule, f"optimizer {target} replaces the LR schedule (it averages the weights "
                   "instead), so it trains with a constant LR", "use schedule=constant (warm-up: "
                   "optimizer.warmup_steps)")


def _check_train(cfg: DictConfig, errors: _Errors) -> None:
    t = cfg.train
    if t.resume is not None and cfg.stage == "range_test":
        errors.bad("train.resume", t.resume, "continues a training run, so it needs stage=all or stage=train")
    if t.lr_from is not None and str(t.lr_from).strip() and cfg.stage != "train":  # (empty: its own line)
        errors.bad("train.lr_from", t.lr_from, f"takes the bounds from an earlier range test, so it needs "
                   f"stage=train (stage={cfg.stage} runs its own range test)",
                   "add stage=train, or drop train.lr_from")
    if t.resume is not None and not t.checkpoint:
        errors.bad("train.checkpoint", t.checkpoint, "must be true with train.resume (it continues from checkpoints)")


def _check_bounds(cfg: DictConfig, errors: _Errors) -> None:
    b = cfg.bounds
    if b.max_lr_rule is not None and b.max_lr_rule not in MAX_LR_RULES:
        errors.bad("bounds.max_lr_rule", b.max_lr_rule, f"allowed: null (finder.suggestion's rule), "
                   f"{', '.join(MAX_LR_RULES)}")
    if cfg.stage == "train" and cfg.train.lr_from is None and b.max_lr is None:
        errors.add("stage=train needs an LR: set bounds.max_lr=<lr> or train.lr_from=<range-test run id>")
    if (_num(b.max_lr) and MIN_LR <= b.max_lr <= MAX_LR and _num(b.base_divisor) and b.base_divisor >= 1
            and b.max_lr / b.base_divisor < MIN_LR):  # (a max_lr outside its own rule is said by it, once)
        errors.bad("bounds.max_lr", b.max_lr, f"with bounds.base_divisor={b.base_divisor:g} the base LR is "
                   f"{b.max_lr / b.base_divisor:.3g}, below {MIN_LR:g} (no LR at all)", "raise bounds.max_lr")
    optimizer = cfg.get("optimizer") if not OmegaConf.is_missing(cfg, "optimizer") else None
    if isinstance(optimizer, DictConfig) and optimizer.get("maximize") is True:
        errors.bad("optimizer.maximize", True, "a range test and its training lower the loss; maximize=true climbs "
                   "it (every LR would look like a divergence)", "drop optimizer.maximize (to raise a score, "
                   "minimise its negative)")


def _check_tracking(cfg: DictConfig, errors: _Errors) -> None:
    registered = cfg.tracking.register_model
    if isinstance(registered, str) and registered.strip():
        # MLflow's registry refuses these at the end of the job, after the training: say so now.
        if any(c in registered for c in "/:") or any(ord(c) < 32 or ord(c) == 127 for c in registered):
            errors.bad("tracking.register_model", _shown(registered), "a registered model's name cannot hold '/', "
                       "':' or control characters (MLflow's registry refuses them)", "e.g. mnist-cnn")
        elif not cfg.tracking.enabled:
            errors.bad("tracking.register_model", _shown(registered), "registers the logged model in MLflow, so it "
                       "needs tracking.enabled=true", "drop tracking.register_model, or enable tracking")
        elif not cfg.tracking.log_model:
            errors.bad("tracking.register_model", _shown(registered), "registers the logged model, so it needs "
                       "tracking.log_model=true", "set tracking.log_model=true, or drop tracking.register_model")
    name = cfg.tracking.experiment_name
    if name is not None:
        from lrtrack.tracking.store import experiment_name_problem

        problem = experiment_name_problem(str(name))
        if problem:
            errors.bad("tracking.experiment_name", _shown(name), problem,
                       "choose another name (tracking.experiment_name=<name>, or null: lrtrack-<model>)")


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

    from lrtrack.app.signatures import argument_problems

    errors: list[str] = []
    _check_device(str(cfg.device), errors)
    for group in ("model", "optimizer", "criterion", "schedule", "data", "metric", "step"):
        node = cfg.get(group)
        if isinstance(node, DictConfig) and node.get("_target_"):
            errors += argument_problems(group, node)
    if errors:  # a flag given a string, a number given a boolean: building would accept it
        raise ConfigError(errors)
    optimizer = _build(errors, "optimizer", cfg.optimizer,
                       lambda partial: partial([torch.nn.Parameter(torch.zeros(1))]))
    if optimizer is not None:  # a factory that built something else: said as such, not by the schedule
        from lrtrack.app.kinds import optimizer_problem

        problem = optimizer_problem(str(cfg.optimizer.get("_target_")), optimizer) or _step_problem(optimizer,
                                                                                                      cfg.optimizer)
        if problem:
            errors.append(problem)
            optimizer = None
    if optimizer is not None and cfg.stage in ("all", "train") and cfg.schedule is not None:
        max_lr = cfg.bounds.max_lr or 0.1  # (the range test's LR is checked again once known: schedule_problems)
        errors += schedule_problems(cfg, max_lr, max_lr / max(float(cfg.bounds.base_divisor), 1.0), 10, optimizer)
    if errors:
        raise ConfigError(errors)


def _step_problem(optimizer: Any, node: DictConfig) -> str | None:
    """One step of the dummy parameter's optimizer: some settings fail only there (``capturable=true``
    off CUDA, a ``foreach`` the device lacks), after the runs were created."""
    import torch

    try:
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        if callable(getattr(optimizer, "train", None)):
            optimizer.train()  # schedule-free optimizers step in train mode only
        optimizer.step()
    except Exception as err:  # noqa: BLE001 - the optimizer's own words, on one line
        why = " ".join(str(err).split()) or type(err).__name__
        return f"optimizer ({node.get('_target_')}): its first step fails: {type(err).__name__}: {why}; check the optimizer.* settings"
    return None


def schedule_problems(cfg: DictConfig, max_lr: float, base_lr: float, steps_per_epoch: int,
                      optimizer: Any = None) -> list[str]:
    """The ``schedule`` built with these bounds on a stand-in parameter (the real optimizer keeps its
    LRs): one line per problem, as :func:`dry_run`'s. Called again with the range test's bounds,
    before the training run starts (``schedule.eta_min`` above the suggested max_lr)."""
    import torch

    errors: list[str] = []
    if optimizer is None:
        optimizer = _build(errors, "optimizer", cfg.optimizer, lambda partial: partial([torch.nn.Parameter(torch.zeros(1))]))
    if optimizer is not None:
        _build(errors, "schedule", cfg.schedule,
               lambda partial: partial(optimizer, max_lr=max_lr, base_lr=base_lr, steps_per_epoch=steps_per_epoch,
                                       epochs=max(int(cfg.train.epochs), 1)))
    return errors


def _check_device(device: str, errors: list[str]) -> None:
    """``device=cuda`` on a machine without CUDA fails now, not after the data is loaded."""
    from lrtrack.engine.steps import device_problem

    problem = None if device == "auto" else device_problem(device)
    if problem is not None:
        errors.append(f"device={device!r} is invalid: {problem}")


def _build(errors: list[str], group: str, node: DictConfig, finish: Callable[[Any], Any]) -> Any:
    """Instantiate ``node`` (a ``_partial_``) and ``finish`` it; on a user error add one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return finish(instantiate(node))
    # IndexError/KeyError: a component indexing a setting of the wrong shape (a list too short).
    except (InstantiationException, ValueError, TypeError, IndexError, KeyError) as err:
        errors.append(component_error(group, node, err))
        return None


def component_error(group: str, node: DictConfig, err: BaseException) -> str:
    """One line for a component that cannot be built: ``group (target): message; check ...``."""
    if isinstance(err, SystemExit):  # a module or constructor that ends the process would end lrtrack silently
        hint = import_hint(str(node.get("_target_")))
        return f"{group} ({node.get('_target_')}): " + (hint or (
            f"building it called sys.exit({err.code!r}); a component must raise an exception to refuse its settings"))
    located = re.search(r"Error locating target '([^']+)'", str(err))
    # Hydra wraps what the target raised in "Error in call to target ...: FileNotFoundError(2, '...')
    # full_key: ..." (a repr that drops an OSError's file name): the target's own exception says it better.
    cause = err.__cause__ if err.__cause__ is not None and not located else err
    text = " ".join(line.strip() for line in str(cause).strip().splitlines())
    message = (f"{type(cause).__name__}: {text}" if cause is not err and text else text) or type(cause).__name__
    hint = import_hint(located.group(1)) if located else None
    if hint:
        return f"{group} ({node.get('_target_')}): {hint}"
    if "required positional argument" in message and not node.get("_partial_") and group in ("optimizer", "schedule"):
        what = "the model's parameters" if group == "optimizer" else "the optimizer and the bounds"
        return (f"{group} ({node.get('_target_')}): {message}; add _partial_: true to the {group}'s config (lrtrack "
                f"passes {what} when it builds it)")
    return f"{group} ({node.get('_target_')}): {message}; check the {group}.* settings"


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
