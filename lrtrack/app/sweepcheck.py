"""A sweep's jobs validated before the sweep starts (``python -m lrtrack -m ...``).

Hydra composes a batch's job configs just before launching it, after the sweep callback has
created the sweep's MLflow run, and lrtrack validates each job inside it: a bad value in one
swept list (``finder.diverge_th=2,nan``) used to end as FAILED runs under a FAILED sweep, after the
good jobs had run. :func:`sweep_job_problems` composes every job of Hydra's basic sweeper the way
it will (its config loader, its way of splitting the overrides) and validates each one, so the
command stops with one line per problem before anything starts. Other sweepers choose their
jobs as they go; their jobs are validated when they run.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

MAX_JOBS_CHECKED = 500  # composing a job takes ~50 ms: a larger sweep has its first 500 checked up front


def sweep_job_problems(config: DictConfig) -> list[str]:
    """One line per problem of each job of the sweep ``config`` describes (basic sweeper only)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lrtrack.app.config import ConfigError, validate

    sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
    if not sweeper.endswith("BasicSweeper") or not GlobalHydra.instance().is_initialized():
        return []
    loader = GlobalHydra.instance().config_loader()
    arguments = [f"{key}={value}" for key, value in (_raw(config, "hydra.sweeper.params") or {}).items()]
    arguments += [str(a) for a in _raw(config, "hydra.overrides.task") or []]
    parser = OverridesParser.create(config_loader=loader)
    try:
        jobs = [job for batch in BasicSweeper.split_arguments(parser.parse_overrides(arguments), None) for job in batch]
    except Exception:  # noqa: BLE001 - Hydra's own words, for the one argument that has the problem
        return [_expansion_problem(parser, BasicSweeper, arguments)]
    if not jobs:
        return [f"the sweep has no jobs: {' '.join(a for a in arguments if '(' in a) or ' '.join(arguments)} "
                "expands to no value; check the range or list"]
    problems: dict[str, list[str]] = {}  # a problem -> the jobs that have it
    for job in jobs[:MAX_JOBS_CHECKED]:
        cfg = loader.load_sweep_config(config, list(job))
        with open_dict(cfg):
            del cfg["hydra"]
        try:
            validate(cfg)
        except ConfigError as err:
            swept = " ".join(o for o in job if o in _swept(arguments, job)) or " ".join(job)
            for line in err.errors:
                problems.setdefault(line, []).append(swept)
    return [f"{line} (sweep job {names[0]}" + (f", and {len(names) - 1} more)" if len(names) > 1 else ")")
            for line, names in problems.items()]


def _expansion_problem(parser: Any, sweeper: Any, arguments: list[str]) -> str:
    """The first argument the basic sweeper cannot expand, with why and what it takes."""
    for argument in arguments:
        try:
            sweeper.split_arguments(parser.parse_overrides([argument]), None)
        except Exception as err:  # noqa: BLE001 - (a range with step 0, interval() or a bad sweep syntax)
            why = " ".join(str(err).split()) or type(err).__name__
            return (f"{argument} cannot be swept: {why}; the basic sweeper takes lists (a,b,c), range(start, stop[, "
                    "step]) with a non-zero step, and glob(); interval() and tag() need a sweeper that samples "
                    "(e.g. hydra/sweeper=optuna)")
    return f"the sweep {' '.join(arguments)} cannot be expanded; check its lists and ranges"


def _raw(config: DictConfig, key: str) -> Any:
    """``key``'s value as written (``${...}`` unresolved)."""
    node = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
    if node is None:
        return None
    return OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node


def _swept(arguments: list[str], job: list[str]) -> set[str]:
    """The job's overrides that came from a swept list (``key=a,b``), to name the job shortly."""
    swept_keys = {a.split("=", 1)[0] for a in arguments if "," in a.split("=", 1)[-1]}
    return {o for o in job if o.split("=", 1)[0] in swept_keys}
