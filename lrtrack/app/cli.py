"""``python -m lrtrack``: compose the config, validate it, call the recipe, report user errors.

Exit codes: 0 done, 2 bad input (composition and validation errors, missing data, a wrong run
id: one ``lrtrack: error:`` line each, no traceback, nothing started), 1 a runtime failure
(a bug keeps its traceback), 130 interrupted. The pipeline itself is :mod:`lrtrack.app.recipe`.
Heavy modules (torch, MLflow, matplotlib) are imported only once a job really runs, so
``--help`` stays fast.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lrtrack.app.commandline import arranged, condensed, override_problems
from lrtrack.app.config import ConfigError, config_dir, register_configs, validate
from lrtrack.app.guard import (
    after_the_runs,
    discard_refused_job_folder,
    finished_job,
    guard_process,
    job_done,
    protect,
    stop_line,
)
from lrtrack.tracking.redact import redact

log = logging.getLogger("lrtrack")

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def fail(lines: str | list[str], code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print one line per problem to stderr and exit without a traceback."""
    for problem in [lines] if isinstance(lines, str) else lines:
        line = redact(" ".join(part.strip() for part in str(problem).splitlines() if part.strip()))
        print(f"lrtrack: error: {line}", file=sys.stderr)
    sys.exit(code)


def job_info() -> Any:
    """Where this job runs, from Hydra's runtime config."""
    from lrtrack.app.recipe import JobInfo
    from lrtrack.app.sweep import current_sweep

    hc = HydraConfig.get()
    choices = {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if v is not None}
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = [str(o) for o in OmegaConf.to_container(hc.overrides.task, resolve=False)]  # ${..} as typed
    # A sweep job's own command is its overrides (a launcher's worker has another command line),
    # quoted for the shell where needed so that the printed command works as printed.
    command = "python -m lrtrack " + shlex.join(overrides if multirun else sys.argv[1:])
    return JobInfo(choices, overrides, command,
                   Path(hc.runtime.cwd), Path(hc.runtime.output_dir),
                   sweep=current_sweep() if multirun else None, job_num=hc.job.num if multirun else None)


def task(cfg: DictConfig) -> float | None:
    """What Hydra calls once per job; returns the metric a sweeper optimises."""
    global _job_started
    _job_started = True
    from lrtrack.app.recipe import RangeTestRecipe, RunFailure, UserError, run_sweep_job
    from lrtrack.engine.stopping import check_stop
    from lrtrack.tracking.journal import DeliveryError, JournalError

    job = job_info()
    protect(cfg, job.output_dir)
    if job.sweep is not None or HydraConfig.get().mode == RunMode.MULTIRUN:
        return run_sweep_job(cfg, job)
    try:
        validate(cfg)  # the settings (no torch); the recipe checks the rest once its tracker started
        outcome = RangeTestRecipe(cfg, job).run()
        check_stop()  # a signal whose KeyboardInterrupt Python dropped (raised in a __del__ or an atexit hook)
        job_done(cfg.tracking.enabled)
        return outcome
    except ConfigError as err:
        discard_refused_job_folder(job.output_dir, job.launch_dir)
        fail(err.errors)
    except UserError as err:
        fail(str(err))
    except RunFailure as err:  # the run ended FAILED and its lrtrack.error tag says why
        fail(str(err), EXIT_FAILED)
    except (DeliveryError, JournalError) as err:  # the records wait in the journal (the message says how to send them)
        fail(str(err), EXIT_FAILED)
    except KeyboardInterrupt:
        if job.runs_ended:  # stopped while the last records were delivered: nothing is lost, nothing to resume
            fail(after_the_runs(cfg.tracking.enabled), EXIT_INTERRUPTED)
        resume = f"; continue training with: {job.command} train.resume={job.final_run_id}" if job.final_run_id else ""
        kept = ("what it logged is kept: its runs end KILLED in MLflow once delivered" if cfg.tracking.enabled
                else "nothing was logged (tracking.enabled=false)")
        fail(f"interrupted; {kept}{resume if cfg.tracking.enabled else ''}", EXIT_INTERRUPTED)


_job_started = False


def job_started() -> bool:
    """Whether Hydra called the job (a stop before that has started nothing)."""
    return _job_started


def main() -> None:
    """``python -m lrtrack``: the Hydra application; a composition error is one line, exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    register_configs()
    guard_process()  # SIGTERM (a cluster's preemption) as Ctrl-C, exit 130; credentials masked in log lines
    # Let composition errors reach us as exceptions (Hydra would print them over many lines).
    os.environ["HYDRA_FULL_ERROR"] = "1"
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(task)
    from lrtrack.app.conffiles import config_file_problems
    sys.argv[1:] = arranged(sys.argv[1:])  # Hydra's flags first: `+model=x -m` means what it says
    problems = override_problems(sys.argv[1:], config_dir()) + config_file_problems(sys.argv[1:])
    problems and fail(problems)  # a group set to null, YAML errors, alias bombs: before Hydra
    try:
        app()
    except (HydraException, OmegaConfBaseException, YAMLError, ValueError) as err:  # (a missing config: OSError)
        if _job_started:
            raise  # raised while a job ran: a bug, keep the traceback
        fail(condensed(err))
    except (KeyboardInterrupt, OSError) as err:  # a stopped sweep, a full disk: one line (guard.stop_line)
        if isinstance(err, KeyboardInterrupt) and finished_job() is not None:
            fail(after_the_runs(bool(finished_job())), EXIT_INTERRUPTED)
        fail(*stop_line(err))
