"""MLflow: the store, runs, buffered step metrics, params, artifacts and run links.

Everything goes through ``MlflowClient`` with explicit run ids (no fluent "active run"
state), so nested runs and parallel sweep jobs never step on each other.

Per-step metrics are buffered and sent with ``log_batch`` from a background thread (or, for a
``Tracker(background=True)``, as ``python -m lrtrack`` makes it, from the relay process of
:mod:`lrtrack.tracking.relay`, so that the job never imports MLflow): a ``log_metrics`` call per step
costs about 3 ms on sqlite and 50 ms over HTTP, more than a training step of a small model.

When the store fails, nothing is lost and training does not wait:

- :func:`preflight` checks the store before anything is loaded (a writable sqlite folder, an
  MLflow server that answers within a short timeout, a supported URI) and raises
  :class:`TrackingUnavailable`, one line naming the URI, the problem and the fix.
- :func:`open_store` creates a fresh sqlite store under a file lock (``<db>.lock``), so plain
  runs, sweep jobs and torchrun ranks may start at once on a new file.
- A :class:`Tracker` hands its writes to a :class:`~lrtrack.tracking.spool.Courier`: while the store is
  away they go to a local spool (``spool_dir``) and are delivered when it is back; at the end
  :meth:`Tracker.close` waits at most ``delivery_timeout_s`` and raises
  :class:`~lrtrack.tracking.spool.DeliveryError` (with the ``python -m lrtrack.deliver <spool>`` command)
  when something is still undelivered.

MLflow's own HTTP retries are unbounded in practice (7 retries with a backoff factor of 2: about
4 minutes a call against a dead server). Creating a :class:`Tracker` (or calling
:func:`open_store`) for an ``http(s)`` URI therefore sets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=2``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` in the process
environment unless they are already set (a value the user set wins); importing this module
changes nothing. lrtrack's own retries and the spool do the rest.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lrtrack.tracking.redact import redact
from lrtrack.tracking.spool import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_PER_BATCH,
    Courier,
    DeliveryError,
    MetricRow,
    Spool,
    describe,
    is_pending,
    is_transient,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient

__all__ = [
    "DeliveryError", "MetricBuffer", "NullRun", "NullTracker", "TrackedRun", "Tracker", "TrackingUnavailable",
    "ensure_experiment", "flatten", "open_store", "preflight", "resolve_tracking_uri",
]

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000  # longer values are rejected/truncated by the store
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag (lrtrack's layout is in runlog.py)
HTTP_LIMITS = {  # set (unless already set) when a Tracker for an http(s) store is created
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # MLflow prints "View run ... at: <URL>" when a run ends: the URL may carry credentials, and
    # lrtrack prints its own (redacted) hint once per command.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
DB_SCHEMES = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
ALLOWED_FORMS = ("sqlite:////absolute/path/mlflow.db, http://host:port or https://host (an MLflow server), "
                 "or a database URI (postgresql://, mysql://, mssql://)")
SQLITE_HEADER = b"SQLite format 3\x00"


class TrackingUnavailable(ValueError):
    """The tracking store cannot be used; the message names the URI, the problem and the fix."""


def resolve_tracking_uri(configured: str | None, launch_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the configured URI, else ``<launch_dir>/mlflow.db``.

    A relative sqlite path would land in Hydra's per-run output folder, so the default is an
    absolute path in the folder the command was started from.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{Path(launch_dir).resolve() / 'mlflow.db'}"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}`` with string values (lists kept as text)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            text = "null" if value is None else str(value)
            out[name] = text[:MAX_PARAM_VALUE]
    return out


def safe_key(key: str) -> str:
    """MLflow keys allow ``[\\w./ -]``; Hydra's ``+model`` style keys do not."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


# ---------------------------------------------------------------------- pre-flight


def preflight(uri: str, timeout_s: float = 10.0) -> None:
    """Check that the tracking store at ``uri`` can be used, within about ``timeout_s`` seconds.

    sqlite: the folder exists and is writable, the disk is not full, an existing file is
    writable and is an SQLite database. http(s): an MLflow server answers its REST API (one
    request with a short connect timeout, no retries). Database URIs: the host accepts a TCP
    connection. Nothing is created and MLflow is not imported.

    Raises:
        TrackingUnavailable: one line naming the URI (credentials masked), the problem and the fix.
    """
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    base = scheme.split("+", 1)[0]
    if base == "sqlite":
        _check_sqlite(uri)
    elif base in ("http", "https"):
        _check_http(uri, timeout_s)
    elif base in DB_SCHEMES:
        _check_socket(uri, DB_SCHEMES[base], timeout_s)
    elif base == "databricks":
        return
    elif base == "file" or (not scheme and uri.startswith(("/", "."))) or len(scheme) == 1:
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
            raise TrackingUnavailable(
                f"tracking URI {redact(uri)!r} is a file store, which MLflow 3 refuses: use "
                f"sqlite:///{Path(uri.removeprefix('file://')).resolve() / 'mlflow.db'} instead ({_where(uri)})")
    else:
        raise TrackingUnavailable(f"tracking URI {redact(uri)!r} is not supported: use {ALLOWED_FORMS} "
                                  f"({_where(uri)}), or tracking.enabled=false to run without MLflow")


def _where(uri: str) -> str:
    """Which setting holds the URI, for the fix part of a message."""
    if os.environ.get("MLFLOW_TRACKING_URI") == uri:
        return "fix MLFLOW_TRACKING_URI, which overrides tracking.tracking_uri"
    return "set tracking.tracking_uri"


def sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI (absolute), ``None`` for other schemes."""
    if not uri.lower().startswith("sqlite"):
        return None
    rest = uri.split(":", 1)[1]
    path = rest[3:].split("?", 1)[0] if rest.startswith("///") else ""
    if not path or path == ":memory:":
        raise TrackingUnavailable(f"tracking URI {redact(uri)!r} names no database file: use "
                                  f"sqlite:////absolute/path/mlflow.db ({_where(uri)})")
    return Path(path) if Path(path).is_absolute() else Path.cwd() / path


def _check_sqlite(uri: str) -> None:
    path = sqlite_path(uri) or Path()
    folder = path.parent
    fix = f"{_where(uri)} to a file in a writable folder, or tracking.enabled=false"
    if not folder.is_dir():
        raise TrackingUnavailable(f"tracking store {uri}: the folder {folder} does not exist: "
                                  f"create it (mkdir -p {folder}) or {fix}")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".lrtrack-probe-"):
            pass
    except OSError as err:
        raise TrackingUnavailable(f"tracking store {uri}: cannot write in {folder} ({err.strerror}); sqlite "
                                  f"writes the database and its journal there: make it writable or {fix}") from err
    free = shutil.disk_usage(folder).free
    if free < 1 << 20:
        raise TrackingUnavailable(f"tracking store {uri}: the disk holding {folder} is full ({free} bytes free): "
                                  f"free some space or {fix}")
    if path.is_dir():
        raise TrackingUnavailable(f"tracking store {uri}: {path} is a folder, not a database file: {fix}")
    if path.exists():
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as err:
            raise TrackingUnavailable(f"tracking store {uri}: cannot write {path} ({err.strerror}): "
                                      f"make it writable (chmod u+w {path}) or {fix}") from err
        with os.fdopen(fd, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise TrackingUnavailable(f"tracking store {uri}: {path} is not an SQLite database: {fix}")


def _http_options() -> dict[str, Any]:
    """requests' auth and TLS options from MLflow's own environment variables."""
    options: dict[str, Any] = {}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        options["headers"] = {"Authorization": f"Bearer {token}"}
    elif user and password:
        options["auth"] = (user, password)
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        options["verify"] = False
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        options["verify"] = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    return options


def _check_http(uri: str, timeout_s: float) -> None:
    import requests

    shown = redact(uri)
    parts = urlsplit(uri)
    if not parts.hostname:
        raise TrackingUnavailable(f"tracking URI {shown!r} names no host: use {ALLOWED_FORMS} ({_where(uri)})")
    connect = min(3.0, timeout_s)
    read = max(0.5, timeout_s - connect)
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search"
    fix = f"start it (mlflow server --host {parts.hostname} --port {parts.port or 5000} ...), {_where(uri)}, " \
          f"or run with tracking.enabled=false"
    try:
        reply = requests.get(url, params={"max_results": 1}, timeout=(connect, read), **_http_options())
    except requests.exceptions.ConnectTimeout as err:
        raise TrackingUnavailable(f"tracking server {shown} did not accept a connection within {connect:g} s: "
                                  f"{fix}") from err
    except requests.exceptions.ReadTimeout as err:
        raise TrackingUnavailable(f"tracking server {shown} accepted the connection but did not answer within "
                                  f"{read:g} s: check that it is an MLflow server and not overloaded, {_where(uri)}"
                                  ) from err
    except requests.exceptions.SSLError as err:
        raise TrackingUnavailable(f"tracking server {shown}: TLS failed ({describe(err)}): set "
                                  f"MLFLOW_TRACKING_SERVER_CERT_PATH, or MLFLOW_TRACKING_INSECURE_TLS=true") from err
    except requests.exceptions.RequestException as err:
        reason = "connection refused" if "refused" in str(err).lower() else describe(err)
        raise TrackingUnavailable(f"nothing answers at tracking server {shown} ({reason}): {fix}") from err
    _check_http_reply(shown, reply.status_code, reply.text, uri)


def _check_http_reply(shown: str, status: int, text: str, uri: str) -> None:
    if status in (401, 403):
        raise TrackingUnavailable(f"tracking server {shown} refused access (HTTP {status}): set "
                                  f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
    if status == 404:
        raise TrackingUnavailable(f"{shown} answers but is not an MLflow tracking server (HTTP 404 for "
                                  f"/api/2.0/mlflow/experiments/search): {_where(uri)} to the server's base URL")
    if status != 200:
        raise TrackingUnavailable(f"tracking server {shown} answered HTTP {status} ({redact(text.strip()[:120])}): "
                                  f"check the server's log, or {_where(uri)}")
    try:
        json.loads(text)
    except ValueError as err:
        raise TrackingUnavailable(f"{shown} answers but is not an MLflow tracking server (its reply is not JSON): "
                                  f"{_where(uri)} to the server's base URL") from err


def _check_socket(uri: str, default_port: int, timeout_s: float) -> None:
    parts = urlsplit(uri)
    host, port = parts.hostname, parts.port or default_port
    if not host:
        return  # a unix socket or a driver-specific form: MLflow will say
    try:
        socket.create_connection((host, port), timeout=min(timeout_s, 5.0)).close()
    except OSError as err:
        raise TrackingUnavailable(f"tracking database {redact(uri)}: nothing answers at {host}:{port} "
                                  f"({err.strerror or err}): start the database, or {_where(uri)}") from err


def http_answers(uri: str, timeout_s: float = 3.0) -> bool:
    """True when the MLflow server at ``uri`` answers within ``timeout_s`` (no retries)."""
    try:
        _check_http(uri, timeout_s)
    except TrackingUnavailable:
        return False
    return True


# ---------------------------------------------------------------------- the store


def bound_http_retries() -> None:
    """Bound MLflow's HTTP retries for this process (see the module docstring); user values win."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def store_lock(uri: str, timeout_s: float = 120.0) -> Iterator[None]:
    """Hold ``<db>.lock`` (``fcntl.flock``) for an sqlite store; nothing for other stores.

    Raises:
        TrackingUnavailable: the lock could not be taken within ``timeout_s``.
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl  # POSIX; imported here so that importing lrtrack never needs it

    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise TrackingUnavailable(f"tracking store {uri}: cannot create the lock file {lock_path} "
                                  f"({err.strerror}): make {path.parent} writable or {_where(uri)}") from err
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TrackingUnavailable(
                        f"tracking store {uri}: another process has held {lock_path} for {timeout_s:g} s while "
                        f"creating the store; if none is running, delete {lock_path}") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def open_store(uri: str) -> MlflowClient:
    """An ``MlflowClient`` for ``uri`` whose store exists.

    A fresh sqlite file is created under :func:`store_lock`, so several processes may open the
    same new store at once: copied from an empty template when this machine has one for this
    MLflow version, else by MLflow's migrations (and then saved as that template; see
    :mod:`lrtrack.tracking.store_template`). For ``http(s)`` the process's MLflow HTTP retries are bounded
    first (:func:`bound_http_retries`).
    """
    from mlflow.tracking import MlflowClient

    from lrtrack.tracking import store_template

    if uri.lower().startswith(("http://", "https://")):
        bound_http_retries()
    path = sqlite_path(uri)
    with store_lock(uri):
        fresh = path is not None and not path.exists()
        copied = fresh and path is not None and store_template.copy_template(path)
        client = MlflowClient(tracking_uri=uri)  # an sqlite store creates its tables here (unless copied)
        if fresh and not copied and path is not None:
            store_template.save_template(path)
    return client


# ---------------------------------------------------------------------- runs


class MetricBuffer:
    """A :class:`~lrtrack.engine.observers.StepObserver` that batches metrics into ``log_batch`` calls.

    Hands the buffered metrics to the courier's sender thread when ``flush_every`` steps or
    ``flush_seconds`` have passed since the last hand-over, so the training loop never waits
    on the store; ``close()`` sends the rest and waits. Non-finite values are sent as they are
    (MLflow stores NaN/inf). While the store is away the courier spools them to disk.

    Args:
        sink: the tracker's :class:`~lrtrack.tracking.spool.Courier`, or an ``MlflowClient`` (the buffer
            then has a courier of its own, spooling to ``./lrtrack-spool`` if the store fails).
        run_id: the run the metrics belong to.
        flush_every: steps between hand-overs.
        flush_seconds: longest time between hand-overs.
        max_queued: metric values waiting in memory before a hand-over waits (store slow, not down).
    """

    def __init__(self, sink: Courier | MlflowClient, run_id: str, *, flush_every: int = 100,
                 flush_seconds: float = 5.0, max_queued: int = 10 * MAX_METRICS_PER_BATCH) -> None:
        if isinstance(sink, Courier):
            self.courier, self._own_courier = sink, False
        else:
            self.courier = Courier(sink, str(getattr(sink, "tracking_uri", "")), None,
                                   spool_dir=Path.cwd() / "lrtrack-spool", max_queued=max_queued)
            self._own_courier = True
        self.run_id = run_id
        self.flush_every = max(1, int(flush_every))
        self.flush_seconds = float(flush_seconds)
        self._pending: list[Any] = []
        self._steps_pending = 0
        self._last_send = time.monotonic()

    @property
    def sent(self) -> int:
        """Metric values delivered from memory so far (by this buffer's courier)."""
        return self.courier.sent

    @property
    def send_seconds(self) -> float:
        return self.courier.send_seconds

    def add(self, step: int, metrics: Mapping[str, float]) -> None:
        """Queue metrics without counting a step (summary metrics)."""
        now_ms = int(time.time() * 1000)
        self._pending.extend(MetricRow(key, float(value), now_ms, step) for key, value in metrics.items())

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self.add(step, metrics)
        self._steps_pending += 1
        if self._steps_pending >= self.flush_every or time.monotonic() - self._last_send >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Hand everything pending to the sender (does not wait)."""
        pending, self._pending = self._pending, []
        self._steps_pending = 0
        self._last_send = time.monotonic()
        self.courier.submit(self.run_id, pending)

    def close(self, timeout_s: float = 60.0) -> None:
        """Send everything and wait until it is delivered or spooled.

        Raises:
            DeliveryError: with its own courier only: metrics still undelivered after ``timeout_s``.
        """
        self.flush()
        self.courier.wait_sent()
        if self._own_courier:
            self.courier.close(timeout_s)


def _dump_dict(data: Any, path: Path) -> None:
    """What ``MlflowClient.log_dict`` writes: YAML for .yaml/.yml, else indented JSON."""
    with open(path, "w") as fh:
        if path.suffix in (".yml", ".yaml"):
            import yaml

            yaml.dump(data, fh, indent=2, default_flow_style=False)
        else:
            json.dump(data, fh, indent=2, default=str)


def _split(artifact_file: str) -> tuple[str, str | None]:
    """``"a/b/c.png"`` -> ``("c.png", "a/b")``: the file name and the artifact folder."""
    folder, _, name = artifact_file.replace("\\", "/").rpartition("/")
    return name, folder or None


class TrackedRun:
    """One MLflow run: its metric buffer, params, tags, artifacts and how it ends.

    Every write goes through the tracker's courier: straight to the store while it answers,
    to the local spool while it does not (then ``run_id`` may be a placeholder until the run
    is created in the store; it resolves to the store's id once delivered).
    """

    enabled = True

    def __init__(self, courier: Courier, run_id: str, experiment_id: str, *, flush_every: int = 100,
                 flush_seconds: float = 5.0) -> None:
        self.courier = courier
        self._run_id = run_id
        self.experiment_id = experiment_id
        self.metrics = MetricBuffer(courier, run_id, flush_every=flush_every, flush_seconds=flush_seconds)
        self._ended = False

    @property
    def client(self) -> Any:
        """The store's client (``None`` while the store is still being opened: writes are spooled)."""
        return self.courier.client

    @property
    def run_id(self) -> str:
        """The store's id of this run; a placeholder (``pending-...``) while the run waits to be created."""
        return self.courier.resolve(self._run_id)

    def stored_run_id(self, timeout_s: float = 30.0) -> str:
        """The store's id of this run, waiting (at most ``timeout_s``) for the relay to create it;
        for ids a user is told (a resume command), which a placeholder would not serve."""
        deadline = time.monotonic() + timeout_s
        while is_pending(self.run_id) and self.courier.connecting and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.run_id

    # Observer interface, so a TrackedRun can be handed straight to the engine.
    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self.metrics.on_step(step, metrics)

    def log_params(self, params: Mapping[str, Any]) -> None:
        values = {safe_key(k): str(v)[:MAX_PARAM_VALUE] for k, v in params.items()}

        def send(run_id: str) -> None:
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in values.items()]
            for lo in range(0, len(items), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=items[lo:lo + MAX_PARAMS_PER_BATCH], synchronous=True)

        if values:
            self.courier.call(self._run_id, send, lambda spool: {"op": "params", "params": values})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        values = {safe_key(k): str(v) for k, v in tags.items()}

        def send(run_id: str) -> None:
            from mlflow.entities import RunTag

            items = [RunTag(k, self.courier.resolve(v)) for k, v in values.items()]
            for lo in range(0, len(items), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run_id, tags=items[lo:lo + MAX_PARAMS_PER_BATCH], synchronous=True)

        if values:
            self.courier.call(self._run_id, send, lambda spool: {"op": "tags", "tags": values})

    def log_summary(self, metrics: Mapping[str, float], step: int = 0) -> None:
        finite = {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}
        self.metrics.add(step, finite)

    def _log_file(self, artifact_file: str, send: Any, write: Any) -> None:
        """Send an artifact now, or write it into the spool (``write(path)``) to send later."""
        name, folder = _split(artifact_file)

        def spooled(spool: Spool) -> dict[str, Any]:
            target, relative = spool.stash(name)
            write(target)
            return {"op": "artifact", "file": relative, "path": folder}

        self.courier.call(self._run_id, send, spooled)

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        # lrtrack's figures are plain matplotlib Figures (no pyplot), so there is nothing to close.
        self._log_file(artifact_file, lambda rid: self.client.log_figure(rid, figure, artifact_file),
                       lambda path: figure.savefig(path))

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._log_file(artifact_file, lambda rid: self.client.log_dict(rid, data, artifact_file),
                       lambda path: _dump_dict(data, path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._log_file(artifact_file, lambda rid: self.client.log_text(rid, text, artifact_file),
                       lambda path: path.write_text(text))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None, *, replaced_not_rewritten: bool = False
                     ) -> None:
        """A local file or folder; while the store is away (or the relay delivers) a copy waits in the spool.

        ``replaced_not_rewritten``: the file is only ever replaced whole (written aside, then
        ``os.replace``), never rewritten in place, so the spool may hard-link it instead of copying
        (a checkpoint: no second copy of the model written per epoch).
        """
        source = Path(path)

        def spooled(spool: Spool) -> dict[str, Any]:
            target, relative = spool.stash(source.name)
            if source.is_dir():
                shutil.copytree(source, target)
            elif replaced_not_rewritten:
                try:
                    os.link(source, target)
                except OSError:  # another file system, or one without hard links
                    shutil.copy2(source, target)
            else:  # it may change in place before it is delivered
                shutil.copy2(source, target)
            return {"op": "artifact", "file": relative, "path": artifact_path}

        self.courier.call(self._run_id, lambda rid: self.client.log_artifact(rid, str(source), artifact_path),
                          spooled)

    def log_rows_csv(self, rows: Iterable[Mapping[str, Any]], artifact_file: str) -> None:
        """A list of dicts as CSV (the columns of the first row, then any new ones)."""
        import csv
        import io

        rows = list(rows)
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        self.log_text(buf.getvalue(), artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        """Hand over every buffered metric, then mark the run FINISHED, FAILED or KILLED.

        Never waits for a store that is away: the ending is spooled after the run's metrics
        and delivered with them (:meth:`Tracker.close` waits for that, bounded).
        """
        if self._ended:
            return
        self._ended = True
        self.metrics.flush()
        self.courier.wait_sent()
        end_ms = int(time.time() * 1000)
        self.courier.call(self._run_id,
                          lambda rid: self.client.set_terminated(rid, status=status, end_time=end_ms),
                          lambda spool: {"op": "end", "status": status, "end": end_ms})

    def on_checkpoint(self, path: str | Path, step: int) -> None:
        """A checkpoint was written at ``step``: every metric up to it is delivered (or spooled)
        before the file is uploaded, so a resumed run finds both and a killed one loses neither."""
        self.metrics.flush()
        self.courier.wait_sent()
        self.log_artifact(path, "checkpoints", replaced_not_rewritten=True)  # lrtrack.engine.train writes it aside, then replaces

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")


class NullRun:
    """A run that records nothing: what the recipe uses with ``tracking.enabled=false``."""

    run_id: str | None = None
    enabled = False

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_summary(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_dict(self, data: Any, artifact_file: str) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_rows_csv(self, rows: Iterable[Mapping[str, Any]], artifact_file: str) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self) -> NullRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class NullTracker:
    """No tracking (``tracking.enabled=false``): its runs record nothing."""

    enabled = False
    undelivered: Path | None = None

    def start_run(self, name: str, **kwargs: Any) -> NullRun:
        return NullRun()

    def close(self, timeout_s: float | None = None) -> None:
        pass

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class Tracker:
    """A tracking store and experiment; starts runs in it.

    Args:
        tracking_uri: e.g. ``sqlite:////abs/path/mlflow.db`` or ``http://127.0.0.1:5000``.
        experiment_name: created when missing.
        flush_every: steps between metric sends.
        flush_seconds: longest time between metric sends.
        spool_dir: where writes the store does not take wait (a sub-folder per tracker, created
            only when needed); default ``./lrtrack-spool``. The recipe passes the job's output folder.
        delivery_timeout_s: how long :meth:`close` waits for a store that is away.
        background: never talk to the store from this process: every write goes to a spool
            that a child process, the relay (:mod:`lrtrack.tracking.relay`), delivers as it is written.
            Importing MLflow and opening (or creating) the store take seconds that this
            process then neither waits for nor shares its cores' time with; runs have
            placeholder ids until the relay created them (:meth:`TrackedRun.stored_run_id`
            waits for the real one). Run :func:`preflight` first: a store that cannot be opened
            then shows up at :meth:`close`, as undelivered writes. :attr:`client` (to read runs
            back) opens the store in this process when asked for.

    Raises:
        TrackingUnavailable: the store cannot be opened (run :func:`preflight` first for a
            faster, clearer answer; with ``background=True``, :attr:`client` raises it).
    """

    enabled = True

    def __init__(self, tracking_uri: str, experiment_name: str, *, flush_every: int = 100, flush_seconds: float = 5.0,
                 spool_dir: str | Path | None = None, delivery_timeout_s: float = 60.0, background: bool = False) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.delivery_timeout_s = float(delivery_timeout_s)
        http = tracking_uri.lower().startswith(("http://", "https://"))
        client, experiment_id = (None, None) if background else self._open()
        self.courier = Courier(client, tracking_uri, experiment_id,
                               spool_dir=Path(spool_dir) if spool_dir else Path.cwd() / "lrtrack-spool",
                               probe=(lambda: http_answers(tracking_uri)) if http else None,
                               relay=background, experiment_name=experiment_name,
                               relay_timeout_s=self.delivery_timeout_s)
        self._client: MlflowClient | None = client
        if background and not self.courier.relaying and self.courier.spool is None:
            self.courier.attach(*self._open())  # no spool folder for a relay: send from here
        self._closed = False
        atexit.register(self._close_at_exit)

    def _open(self) -> tuple[MlflowClient, str]:
        """Open the store and the experiment (creating either when missing)."""
        try:
            client = open_store(self.tracking_uri)
            return client, ensure_experiment(client, self.experiment_name)
        except TrackingUnavailable:
            raise
        except Exception as err:
            if not is_transient(err):
                raise
            raise TrackingUnavailable(f"tracking store {redact(self.tracking_uri)} cannot be used ({describe(err)}): "
                                      f"{_where(self.tracking_uri)} to a store that answers, or tracking.enabled=false"
                                      ) from err

    @property
    def client(self) -> MlflowClient:
        """The store's client, to read runs back (a background tracker opens the store in this
        process the first time it is asked for; its writes still go through the relay).

        Raises:
            TrackingUnavailable: the store cannot be opened.
        """
        if self._client is None:
            self._client = self.courier.client or self._open()[0]
        return self._client

    @property
    def experiment_id(self) -> str | None:
        """The experiment's id (``None`` while the relay has not opened the store yet)."""
        return self.courier.refresh_experiment()

    def start_run(self, name: str, *, tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None) -> TrackedRun:
        """A new run (created in the store now, or when it is back if it is away)."""
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[PARENT_TAG] = str(parent_run_id)

        def create(resolved: dict[str, str]) -> str:  # only called once the store is open
            return self.courier.client.create_run(self.experiment_id, run_name=name, tags=resolved).info.run_id

        run_id = self.courier.create_run(self.experiment_id, name, all_tags, create)
        return TrackedRun(self.courier, run_id, self.experiment_id,
                          flush_every=self.flush_every, flush_seconds=self.flush_seconds)

    def reopen_run(self, run_id: str) -> TrackedRun:
        """An existing run, set RUNNING again, to continue logging into (``train.resume``)."""
        self.client.update_run(run_id, status="RUNNING")
        return TrackedRun(self.courier, run_id, self.experiment_id,
                          flush_every=self.flush_every, flush_seconds=self.flush_seconds)

    @property
    def undelivered(self) -> Path | None:
        """The spool folder while it holds writes not yet delivered, else ``None``."""
        return self.courier.undelivered

    def close(self, timeout_s: float | None = None) -> None:
        """Deliver what is left (waiting at most ``timeout_s``, default ``delivery_timeout_s``).

        Call it once, after the last run ended. Idempotent.

        Raises:
            DeliveryError: something was not delivered; ``str(err)`` is the line to show (it
                names the spool and the ``python -m lrtrack.deliver`` command), ``err.spool``
                the folder, ``err.command`` the command. Exit non-zero.
        """
        self._closed = True
        self.courier.close(self.delivery_timeout_s if timeout_s is None else timeout_s)

    def _close_at_exit(self) -> None:
        if self._closed:
            return
        try:
            self.close()
        except DeliveryError as err:
            log.error("%s", err)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.close()
        except DeliveryError as err:
            if exc_type is None:
                raise
            log.error("%s", err)  # do not hide the error that is already on its way

    def ui_hint(self, run_id: str | None = None) -> str:
        """The command that opens these runs, and the URL of the runs table (MLflow 3.x)."""
        if self.tracking_uri.startswith(("http://", "https://")):
            base = self.tracking_uri.rstrip("/")
            command = ""
        else:
            base = "http://127.0.0.1:5000"
            command = f"mlflow ui --backend-store-uri {self.tracking_uri}"
        url = f"{base}/#/experiments/{self.experiment_id}/runs"
        if run_id:
            url += f"/{run_id}"
        return f"{command}\n  then open {url}" if command else f"open {url}"


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it when missing (tolerating a concurrent creator)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another process created it between our look-up and our create
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
