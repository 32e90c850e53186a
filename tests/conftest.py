"""Shared fixtures: the real MNIST split (skipped where ../shared is absent), the CLI as a process
(``run_cli``) and in this process (``run_cli_here``), premade MLflow stores and a real MLflow server;
and, under pytest-xdist, the order in which the workers take the modules (heaviest first)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST_SPLIT = ROOT.parent / "shared" / "data" / "mnist-t10k-split"


# ---------------------------------------------------------------------- pytest-xdist: heaviest first

MODULE_SECONDS_KEY = "lrtrack/module_seconds"  # in pytest's cache: each module's seconds, last run


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core, plus one. Many tests wait on real processes (servers,
    torchrun, launchers, the tracking relay) and leave a core idle meanwhile; measured on 2 cores:
    230 s with 2 workers, 203 s with 3, 204 s with 4."""
    return (os.cpu_count() or 1) + 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadfile``: a worker takes one whole module at a time, in
    collection order), the heaviest modules first, so that no worker is left alone with a long one
    at the end. A module weighs the seconds it took in the last run (pytest's cache), else 8 per
    test marked slow (a real process, seconds of training) and 0.2 per other test. Each module's
    tests keep their order. In one process nothing is reordered."""
    if not hasattr(config, "workerinput"):
        return
    cache = getattr(config, "cache", None)
    measured = cache.get(MODULE_SECONDS_KEY, {}) if cache is not None else {}
    weight: dict[str, float] = {}
    for item in items:
        module = _module(item.nodeid)
        weight[module] = weight.get(module, 0.0) + (8.0 if item.get_closest_marker("slow") else 0.2)
    weight.update({module: float(seconds) for module, seconds in measured.items() if module in weight})
    items.sort(key=lambda item: -weight[_module(item.nodeid)])  # a stable sort: modules stay whole


_module_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add up each module's seconds (setup, call and teardown) for the next run's order."""
    _module_seconds[_module(report.nodeid)] = _module_seconds.get(_module(report.nodeid), 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Keep the seconds of a whole run (the controller's, or a single process's): the default
    test paths, no -k, no -m, not stopped early."""
    config = session.config
    cache = getattr(config, "cache", None)
    whole = (config.args_source == pytest.Config.ArgsSource.TESTPATHS and not config.option.keyword
             and not config.option.markexpr and not session.shouldstop)
    if cache is None or hasattr(config, "workerinput") or not whole or not _module_seconds:
        return
    seconds = dict(cache.get(MODULE_SECONDS_KEY, {}))
    seconds.update({module: round(value, 1) for module, value in _module_seconds.items()})
    cache.set(MODULE_SECONDS_KEY, seconds)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run 10-100x faster on one thread than on two competing ones here."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mnist_root() -> Path:
    if not (MNIST_SPLIT / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST split not found at {MNIST_SPLIT} (../shared/data is absent here)")
    return MNIST_SPLIT


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m lrtrack ARGS`` in ``cwd`` with the store at ``cwd/mlflow.db``: a real, fresh process.

    Use it where the process is the point (a fresh interpreter's output, signals, exit at the
    end); :func:`run_cli_here` runs the same command in this process, without the start-up.
    One torch thread, as in the tests' own process (two competing threads are much slower here).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "lrtrack", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


@dataclass
class CliRun:
    """What a test reads of a finished ``python -m lrtrack``, as from ``subprocess.run``."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


# Python's default warning filters (no -W, no PYTHONWARNINGS): what a user's terminal shows.
_DEFAULT_WARNING_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, None),
                            ("ignore", PendingDeprecationWarning, None), ("ignore", ImportWarning, None),
                            ("ignore", ResourceWarning, None)]


def run_cli_here(args: list[str], cwd: Path) -> CliRun:
    """``python -m lrtrack ARGS`` in ``cwd``, run in this process: ``lrtrack.app.cli.main()`` with ``sys.argv``.

    The same Hydra application, recipe and MLflow store as :func:`run_cli`, without paying the
    interpreter's start-up (torch, MLflow, Hydra imports: seconds per run). It keeps what a
    process would show: the exit code (``SystemExit``; an uncaught exception is exit 1 with its
    traceback on stderr, as the interpreter prints it), stdout and stderr (log lines included:
    Hydra's console handler writes to stdout), and the warnings a terminal would show (Python's
    default filters, printed on stderr); a Ctrl-C that lrtrack does not handle stops pytest, as it
    would stop both processes. Everything the run changes in this process is put back:
    working folder, ``sys.argv``, ``sys.path``, modules imported from the launch folder, the
    environment, logging handlers, the SIGTERM and SIGINT handlers and Hydra's global state.
    """
    import contextlib
    import io
    import logging
    import signal
    import traceback
    import warnings

    from hydra.core.global_hydra import GlobalHydra

    from lrtrack.app import cli

    cwd = Path(cwd).resolve()
    saved_env, saved_argv, saved_path, saved_cwd = dict(os.environ), sys.argv, list(sys.path), os.getcwd()
    saved_modules = set(sys.modules)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_term, saved_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    out, err = io.StringIO(), io.StringIO()
    code = 0

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "LRTRACK_"))]:  # a developer's settings
        del os.environ[key]
    os.environ.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")  # for the processes it starts, as run_cli
    GlobalHydra.instance().clear()
    cli._job_started = False
    try:
        os.chdir(cwd)
        sys.argv = [str(Path(cli.__file__).with_name("__main__.py")), *args]
        sys.path.insert(0, str(cwd))  # as `python -m` does: the launch folder's modules import (a user's _target_)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in reversed(_DEFAULT_WARNING_FILTERS):
                warnings.filterwarnings(action, category=category, module=module or "")
            warnings.showwarning = show
            try:
                cli.main()
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:  # sys.exit("message"): the interpreter prints it and exits 1
                    print(exc.code, file=sys.stderr)
                    code = 1
            except KeyboardInterrupt:  # not lrtrack's (it handles its own): a Ctrl-C stops pytest
                raise
            except BaseException:  # the interpreter: traceback on stderr, exit 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:  # the launch folder's own modules (a user model)
            path = getattr(sys.modules[name], "__file__", None) or ""
            if path and Path(path).resolve().is_relative_to(cwd):
                del sys.modules[name]
        os.environ.clear()
        os.environ.update(saved_env)
        for handler in root.handlers[:]:
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        signal.signal(signal.SIGTERM, saved_term)
        signal.signal(signal.SIGINT, saved_int)
        GlobalHydra.instance().clear()
    return CliRun(list(args), code, out.getvalue(), err.getvalue())


# ---------------------------------------------------------------------- a real MLflow server

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without MLFLOW_* settings (a developer's MLFLOW_TRACKING_URI must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with an sqlite backend and proxied artifacts in ``root``.

    Artifacts go through the server (``--artifacts-destination``), as with a remote server, so
    an upload fails while it is down. ``kill()`` is a crash (SIGKILL to its process group);
    ``start()`` again serves the same store on the same port.
    """

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.db = root / "server.db"
        self.artifacts = root / "artifacts"
        self.log = root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        if not self.db.exists():  # made as lrtrack makes one: a copy of the machine's empty store, no migrations
            _make_store(self.db)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend_uri(self) -> str:
        return f"sqlite:///{self.db}"

    def start(self, timeout: float = 90.0, wait: bool = True) -> MlflowServer:
        """Start it and (unless ``wait=False``) wait until it answers (about 5-10 s here)."""
        import time
        import urllib.request

        mlflow = Path(sys.executable).with_name("mlflow")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(mlflow), "server", "--backend-store-uri", self.backend_uri, "--artifacts-destination",
                 str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                env=clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.root)
        if not wait:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """Crash it: SIGKILL to the server and its worker."""
        import signal

        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 10 s)."""
        import signal

        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill()
        self.proc = None


def _make_store(db: Path) -> None:
    """A fresh MLflow store at ``db``, made as lrtrack makes one (:func:`lrtrack.tracking.store.open_store`:
    a copy of this machine's empty-store template once there is one), from ``db``'s folder, where
    MLflow puts the Default experiment's artifacts."""
    import contextlib

    from lrtrack.tracking.store import open_store

    with contextlib.chdir(db.parent):
        open_store(f"sqlite:///{db}")


@pytest.fixture(scope="session")
def premade_store() -> Any:
    """``premade_store(folder)`` puts a fresh MLflow store at ``folder/mlflow.db``, where
    ``python -m lrtrack`` finds it: for tests about something else than creating the store.
    Returns the folder."""

    def put(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        _make_store(folder / "mlflow.db")
        return folder

    return put


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A started ``mlflow server`` (see :class:`MlflowServer`), stopped after the test."""
    server = MlflowServer(tmp_path / "mlflow-server", free_port())
    try:
        yield server.start()
    finally:
        server.stop()


def composed(*overrides: str, model: str = "mnist_cnn", conf: Path | None = None) -> Any:
    """``python -m lrtrack [--config-dir CONF] +model=MODEL OVERRIDES`` composed in-process, as the CLI does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lrtrack.app.config import config_dir, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    search = [f"hydra.searchpath=[file://{conf}]"] if conf else []
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[*search, f"+model={model}", *overrides])


def errors_of(cfg: Any) -> list[str]:
    """What ``check_config`` (validation, then the dry run) reports: one line per problem."""
    from lrtrack.app.config import ConfigError, check_config

    try:
        check_config(cfg)
    except ConfigError as err:
        return err.errors
    return []


def runs_once_ended(folder: Path, timeout: float = 60) -> list[Any]:
    """Every run of ``folder/mlflow.db`` once none is RUNNING (the relay may deliver after the job exited)."""
    import time

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    deadline = time.monotonic() + timeout
    while True:
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        if runs and all(r.info.status != "RUNNING" for r in runs):
            return runs
        assert time.monotonic() < deadline, [(r.info.run_name, r.info.status) for r in runs]
        time.sleep(0.2)
