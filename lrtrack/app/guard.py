"""What guards a job from its first line: signals and secrets.

- :func:`stop_on_signals`: SIGTERM (a cluster's preemption) and SIGINT (Ctrl-C) raise one
  ``KeyboardInterrupt`` in the job, whatever stage it is in; every stage (the range test's sweep,
  repeats and probes, training, the final delivery, a sweep's jobs) lets it through to the CLI,
  which ends the job with exit 130 and the runs KILLED. A second signal during that clean-up is
  not raised into it; one that comes after :data:`HARD_STOP_AFTER_S` ends the process at once.
- :func:`protect`: credentials masked in every log line, the values a config takes from the
  environment (``${oc.env:NAME}``) registered as secrets, and the job's log file and Hydra's
  saved config made readable by this user only, with credentials masked in them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

EXIT_INTERRUPTED = 130
#: A signal that comes this long after the first, while the job still stops, ends the process at
#: once (the relay, in its own session, still delivers what was journaled and ends open runs KILLED).
HARD_STOP_AFTER_S = 4.0
_stopping_since: float | None = None


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM and SIGINT: stop the job (one KeyboardInterrupt), exit 130."""
    global _stopping_since
    if _stopping_since is None:
        _stopping_since = time.monotonic()
        from lrtrack.engine.stopping import request_stop

        request_stop()  # every later step raises too: an interruption swallowed in a __del__ is not lost
        # A cluster signals every process of the job: DataLoader workers die with it, and torch's SIGCHLD
        # handler would raise "worker killed" into the stop. Expected now: not an error of the run.
        with contextlib.suppress(AttributeError, ValueError, OSError):
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        raise KeyboardInterrupt(f"signal {signum}")
    if time.monotonic() - _stopping_since > HARD_STOP_AFTER_S:
        print("lrtrack: error: interrupted again while stopping; exiting now (the tracking relay delivers "
              "what was logged)", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(EXIT_INTERRUPTED)


def stop_on_signals() -> None:
    """Install the handler for SIGTERM and SIGINT (see the module docstring); main thread only."""
    global _stopping_since
    from lrtrack.engine.stopping import clear_stop

    _stopping_since = None
    clear_stop()
    _finished.clear()  # (a process that runs several commands: a test)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    if sys.unraisablehook is not _quiet_dropped_stop:
        _hooks.append(sys.unraisablehook)
        sys.unraisablehook = _quiet_dropped_stop


_hooks: list[Any] = []


def _quiet_dropped_stop(unraisable: Any) -> None:
    """The signal's KeyboardInterrupt raised inside a ``__del__``, a weakref callback or an atexit hook
    is dropped by Python with an "Exception ignored" traceback: the stop itself is kept (it was
    requested, and the next step or the end of the job raises it again), so the traceback is noise."""
    from lrtrack.engine.stopping import stop_requested

    if issubclass(unraisable.exc_type, KeyboardInterrupt) and stop_requested():
        return
    _hooks[0](unraisable)
    if not _FORK_HOOK:  # a forked child (a DataLoader worker) leaves the stop to the job, which ends it
        os.register_at_fork(after_in_child=_children_leave_signals_to_the_job)
        _FORK_HOOK.append(True)


_FORK_HOOK: list[bool] = []


def _children_leave_signals_to_the_job() -> None:
    """A cluster's preemption signals every process of the job: a DataLoader worker that stopped on
    it would fail the job's next batch ("worker exited unexpectedly") before the job saw its own."""
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def guard_process() -> None:
    """What ``python -m lrtrack`` sets up first: :func:`stop_on_signals`, and credentials masked in every
    log line (Hydra's own included: a sweep logs each job's overrides before the job starts)."""
    from lrtrack.tracking.redact import install_log_redaction

    stop_on_signals()
    install_log_redaction()
    _quiet_interrupted_tracebacks()
    register_command_line(sys.argv[1:])
    for name in ("stdout", "stderr"):  # what is printed, not logged: Hydra's --cfg and its job errors, tracebacks
        stream = getattr(sys, name)
        if not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))


def _quiet_interrupted_tracebacks() -> None:
    """A library that logs an error while the stop unwinds it (SQLAlchemy's "Error closing cursor" when the
    signal lands in a query) would print the interrupt's traceback: during a stop, a log record whose
    exception is (or came from) the KeyboardInterrupt keeps its line and loses the traceback."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "lrtrack_quiet_interrupts", False):
        return

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        from lrtrack.engine.stopping import stop_requested

        made = factory(*args, **kwargs)
        if made.exc_info and made.exc_info[1] is not None and stop_requested() and _from_interrupt(made.exc_info[1]):
            made.exc_info, made.exc_text = None, None
        return made

    record.lrtrack_quiet_interrupts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(record)


def _from_interrupt(err: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class RedactingStream:
    """A text stream that masks credentials (:func:`lrtrack.tracking.redact.redact`) in what is
    written to it; everything else (``isatty``, ``fileno``, ``encoding``) is the stream's own."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def write(self, text: Any) -> int:
        from lrtrack.tracking.redact import redact

        try:
            self._inner.write(redact(text) if isinstance(text, str) else text)
        except BrokenPipeError:  # `python -m lrtrack --info | head`: the reader left; the rest goes nowhere
            self._inner = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        return len(text)

    def flush(self) -> None:
        try:
            self._inner.flush()
        except BrokenPipeError:
            self._inner = open(os.devnull, "w")  # noqa: SIM115

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def register_command_line(argv: list[str]) -> None:
    """The credentials a command line holds, registered as secrets before Hydra logs it (a sweep logs
    each job's overrides): a URL's userinfo, a secret-named setting's value."""
    from lrtrack.tracking.redact import (
        holds_secret_value,
        register_secret,
        register_url_credentials,
    )

    register_url_credentials(os.environ.get("MLFLOW_TRACKING_URI"))
    for arg in argv:
        key, sep, value = arg.partition("=")
        register_url_credentials(value if sep else arg)
        if sep and holds_secret_value(key.rsplit(".", 1)[-1]):
            register_secret(value.strip("'\""))


def stop_line(err: BaseException) -> tuple[str, int]:
    """The line and exit status for what ended the command outside a job's own handling: a sweep stopped
    by a signal (its run ends KILLED), or a full disk (Hydra saving the config, a log file). Anything
    else is raised again (a bug keeps its traceback)."""
    import errno

    if isinstance(err, KeyboardInterrupt):
        from lrtrack.app.sweep import interrupt_sweep

        return interrupt_sweep(), EXIT_INTERRUPTED
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = Path(err.filename).parent if err.filename else _folder_of(err) or "the output folder"
        return (f"the disk holding {where} is full ({err.strerror}): free some space, or run with "
                "hydra.run.dir=<a folder on another disk>"), 1
    if isinstance(err, OSError) and _in_hydra_setup(err):  # the output folder cannot be made: before any run
        where = err.filename or _folder_of(err) or "the output folder"
        return (f"cannot create the job's output folder {where} ({err.strerror or err}): choose a "
                "folder you can write, hydra.run.dir=<folder> (hydra.sweep.dir=<folder> with -m)"), 2
    raise err


def _in_hydra_setup(err: BaseException) -> bool:
    """Raised by Hydra itself (making the output folder, saving the config), not inside a job's task."""
    tb, hydra_frames = err.__traceback__, False
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "task" and code.co_filename.endswith(str(Path("lrtrack", "app", "cli.py"))):
            return False
        hydra_frames = hydra_frames or f"{os.sep}hydra{os.sep}" in code.co_filename
        tb = tb.tb_next
    return hydra_frames


def _folder_of(err: BaseException) -> str | None:
    """The folder a failed write went to, when the error does not say (Hydra's ``_save_config(cfg,
    filename, output_dir)`` fails at write, without a file name): the innermost ``output_dir``."""
    tb, found = err.__traceback__, None
    while tb is not None:
        value = tb.tb_frame.f_locals.get("output_dir")
        found = str(value) if value is not None else found
        tb = tb.tb_next
    return found


_ENV_REF = re.compile(r"\$\{oc\.env:\s*([^,}\s]+)")
#: Environment variables a config may interpolate that hold no credential (masking them would mask paths).
PLAIN_ENV = frozenset({"HOME", "USER", "LOGNAME", "PWD", "TMPDIR", "TMP", "TEMP", "SHELL", "HOSTNAME", "SCRATCH"})


def protect(cfg: DictConfig, output_dir: Path) -> None:
    """Before the job writes anything: mask credentials in every log line, register the values the
    config takes from the environment (``${oc.env:NAME}``) as secrets
    (:func:`lrtrack.tracking.redact.register_secret`), and make the job's log file and Hydra's saved
    config readable by this user only, credentials masked in them."""
    from lrtrack.tracking.redact import (
        clear_secrets,
        install_log_redaction,
        register_secret,
        register_secret_settings,
    )

    install_log_redaction()
    clear_secrets()  # this job's own (a process that runs several jobs, a sweep, a test, does not carry them over)
    logging.raiseExceptions = False  # a log file on a full disk: no "--- Logging error ---" traceback per line

    def walk(node: Any) -> None:
        if isinstance(node, (dict, list)):
            for value in node.values() if isinstance(node, dict) else node:
                walk(value)
        elif isinstance(node, str) and "oc.env" in node:
            for name in _ENV_REF.findall(node):
                if name not in PLAIN_ENV and not name.startswith(("SLURM_", "PBS_")):
                    register_secret(os.environ.get(name))

    walk(OmegaConf.to_container(cfg, resolve=False))
    register_command_line(sys.argv[1:])
    # Secret-named settings as their values (an interpolation copies them), URLs' userinfo whole; only
    # those are resolved here: the whole config may hold an interpolation bomb, refused by validation.
    raw = OmegaConf.to_container(cfg, resolve=False)
    register_secret_settings(raw)
    for path in _secret_paths(raw):
        with contextlib.suppress(Exception):  # one that cannot be resolved: validation names it
            register_secret_settings({path.rsplit(".", 1)[-1]: OmegaConf.to_container(
                OmegaConf.create({"v": OmegaConf.select(cfg, path)}), resolve=True)["v"]})
    private = [Path(h.baseFilename) for h in logging.getLogger().handlers if hasattr(h, "baseFilename")]
    for path in [*private, *(output_dir / ".hydra").glob("*.yaml"), *_sweep_records()]:
        with contextlib.suppress(OSError):
            path.chmod(0o600)
            if path.suffix == ".yaml":  # Hydra saved the config and the overrides as given
                _redact_yaml(path)


def _secret_paths(node: Any, prefix: str = "") -> list[str]:
    """The dotted paths of the secret-named settings in a config tree."""
    from lrtrack.tracking.redact import is_secret_name

    paths = []
    for key, value in node.items() if isinstance(node, dict) else []:
        path = f"{prefix}.{key}" if prefix else str(key)
        if is_secret_name(str(key)):
            paths.append(path)
        elif isinstance(value, dict):
            paths += _secret_paths(value, path)
    return paths


def _sweep_records() -> list[Path]:
    """A sweep's ``multirun.yaml`` (Hydra saves it in the sweep folder before the first job starts)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or str(HydraConfig.get().mode) != "RunMode.MULTIRUN":
        return []
    return [p for p in [Path(HydraConfig.get().sweep.dir) / "multirun.yaml"] if p.is_file()]


def _redact_yaml(path: Path) -> None:
    import yaml

    from lrtrack.tracking.redact import redact, redact_tree

    text = path.read_text()
    loaded = yaml.safe_load(text)
    masked = yaml.safe_dump(redact_tree(loaded), sort_keys=False)
    if redact(text) != text or masked != yaml.safe_dump(loaded, sort_keys=False):
        path.write_text(masked)


def discard_refused_job_folder(folder: Path, cwd: Path) -> None:
    """A job refused before anything started leaves nothing behind: Hydra's record of its config
    (``.hydra/``) and its still-empty log go, then each folder left empty, up to (not including)
    the working directory. Only what Hydra wrote is removed and ``rmdir`` refuses a folder that is
    not empty, so a ``hydra.run.dir`` pointing into a user's own folder keeps everything else."""
    record = folder / ".hydra"
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (record / name).unlink(missing_ok=True)
    for log_file in folder.glob("*.log"):
        if log_file.stat().st_size == 0:
            log_file.unlink()
    for empty in (record, folder, *folder.parents):
        if empty == cwd or cwd not in empty.parents:
            break
        try:
            empty.rmdir()
        except OSError:  # not empty (or not ours to remove): stop here
            break


# --------------------------------------------------------------------------- the end of the command

_finished: list[bool] = []  # the job returned (and whether it tracked): a stop now finds its runs FINISHED


def job_done(tracked: bool) -> None:
    """The job returned with its runs ended FINISHED; a stop after this has nothing left to end KILLED."""
    _finished[:] = [tracked]


def finished_job() -> bool | None:
    """Whether the finished job tracked its runs; None while no job has finished."""
    return _finished[0] if _finished else None


def after_the_runs(tracked: bool) -> str:
    """The line for a stop that came after the job's runs ended."""
    return "interrupted after the job's runs ended FINISHED" + ("; the relay delivers what is left of them"
                                                               if tracked else "")


def exit_without_teardown(code: int) -> None:
    """End the process after a finished command, skipping the interpreter's module teardown:
    with torch loaded it takes about a second, spent after everything was written. atexit
    handlers still run and every stream and log file is flushed first; the tracker was closed
    (its runs delivered) before. Only ``python -m lrtrack`` calls this, never the library."""
    import atexit
    import signal

    from lrtrack.engine.stopping import request_stop, stop_requested

    def note_stop(*_: Any) -> None:
        request_stop()

    try:  # from here a signal is noted, not raised into the clean-up
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, note_stop)
    except KeyboardInterrupt:  # one came while the handlers were switched: _terminate noted it before raising
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, note_stop)
    atexit._run_exitfuncs()
    if code == 0 and stop_requested():
        print(f"lrtrack: error: {after_the_runs(bool(finished_job()))}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
