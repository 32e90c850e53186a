"""``python -m lrtrack``: compose the config, validate it, call the recipe, report user errors.

Exit codes: 0 done, 2 bad input (composition and validation errors, missing data, a wrong run
id: one ``lrtrack: error:`` line each, no traceback, nothing started), 1 a runtime failure
(a bug keeps its traceback), 130 interrupted. The pipeline itself is :mod:`lrtrack.recipe`.
Heavy modules (torch, MLflow, matplotlib) are imported only once a job really runs, so
``--help`` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lrtrack.config import ConfigError, config_dir, dry_run, register_configs, validate

log = logging.getLogger("lrtrack")

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def fail(lines: str | list[str], code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print one line per problem to stderr and exit without a traceback."""
    for problem in [lines] if isinstance(lines, str) else lines:
        line = " ".join(part.strip() for part in str(problem).splitlines() if part.strip())
        print(f"lrtrack: error: {line}", file=sys.stderr)
    sys.exit(code)


def job_info() -> Any:
    """Where this job runs, from Hydra's runtime config."""
    from lrtrack.recipe import JobInfo
    from lrtrack.sweep import current_sweep

    hc = HydraConfig.get()
    choices = {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if v is not None}
    multirun = hc.mode == RunMode.MULTIRUN
    return JobInfo(choices, list(hc.overrides.task), "python -m lrtrack " + " ".join(sys.argv[1:]),
                   Path(hc.runtime.cwd), Path(hc.runtime.output_dir),
                   sweep=current_sweep() if multirun else None, job_num=hc.job.num if multirun else None)


def check(cfg: DictConfig) -> None:
    """Every check that needs no data: the settings, then building the optimizer and schedule."""
    validate(cfg, config_dir())
    dry_run(cfg)


def task(cfg: DictConfig) -> float | None:
    """What Hydra calls once per job; returns the metric a sweeper optimises."""
    global _job_started
    _job_started = True
    from lrtrack.recipe import RangeTestRecipe, UserError

    job = job_info()
    if job.sweep is not None or HydraConfig.get().mode == RunMode.MULTIRUN:
        return sweep_job(cfg, job)
    try:
        check(cfg)
        return RangeTestRecipe(cfg, job).run()
    except ConfigError as err:
        fail(err.errors)
    except UserError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted; the runs so far are kept in MLflow (status KILLED)", EXIT_INTERRUPTED)


def sweep_job(cfg: DictConfig, job: Any) -> float:
    """One job of a multirun: a failure is logged and recorded in MLflow (the job's runs FAILED,
    an ``lrtrack.error`` tag), and NaN is returned so Hydra goes on with the other jobs (its
    basic sweeper would stop the sweep, and skip the sweep's summary, on an exception)."""
    from lrtrack.recipe import RangeTestRecipe, UserError
    from lrtrack.runlog import STAGE_PIPELINE, RunContext, record_failure

    try:
        check(cfg)
        outcome = RangeTestRecipe(cfg, job).run()
        return float("nan") if outcome is None else float(outcome)
    except KeyboardInterrupt:
        raise
    except Exception as err:
        lines = err.errors if isinstance(err, ConfigError) else [str(err).strip() or type(err).__name__]
        expected = isinstance(err, (ConfigError, UserError))
        log.error("job %s failed: %s", " ".join(job.overrides), " ".join(x.strip() for x in lines),
                  exc_info=not expected)  # a bug keeps its traceback in the job's log
        if job.sweep is not None:
            try:
                tags = RunContext({}, job.choices, job.overrides, job.command).tags(STAGE_PIPELINE)
                record_failure(job.sweep, job.overrides, err, job.pipeline_run_id, tags=tags)
            except Exception:
                log.exception("could not record the failure in MLflow")
        return float("nan")


def condensed(error: BaseException) -> str:
    """Hydra's multi-line composition error (and its cause) as one line."""
    parts: list[str] = []
    text = str(error) + ("\n" + str(error.__cause__) if error.__cause__ is not None else "")
    skipping_paths = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Config search path"):
            skipping_paths = True
            continue
        if (skipping_paths and line.startswith("provider=")) or not line:
            continue
        skipping_paths = False
        if line.startswith(("reference_type=", "object_type=")) or "HYDRA_FULL_ERROR" in line:
            continue
        if parts and raw.startswith("\t") and ("Available options" in parts[-1]):
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
        else:
            parts.append(line.rstrip("."))
    return "; ".join(parts)


_job_started = False


def main() -> None:
    """``python -m lrtrack``: the Hydra application; a composition error is one line, exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    # Let composition errors reach us as exceptions (Hydra would print them over many lines).
    os.environ["HYDRA_FULL_ERROR"] = "1"
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(task)
    try:
        app()
    except (HydraException, OmegaConfBaseException) as err:
        if _job_started:
            raise  # raised while a job ran: a bug, keep the traceback
        fail(condensed(err))
