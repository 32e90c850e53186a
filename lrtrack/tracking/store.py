"""The tracking store: check it before anything runs, open (or create) it, find the experiment.

- :func:`preflight` checks the store without importing MLflow, and raises :class:`TrackingUnavailable`:
  one line naming the URI, the problem and the fix.
- :func:`open_store` creates a fresh sqlite store under a file lock, so jobs and torchrun ranks may
  start at once on a new file, from an empty template when this machine has one (see below). Only
  a job's start may create one: delivery opens with ``create=False``, and an sqlite file that is
  missing then is an outage (:class:`StoreMissing`), never a new, empty store.
- :func:`reset_connections` drops this process's pooled connections to a database store, so that
  a retry after a failed write sees the store as it is now (writable again, put back).
- :func:`is_transient` tells "the store is away, try again later" from "this write is wrong".

MLflow's own HTTP retries take about 4 minutes a call against a dead server, so a client on an
``http(s)`` store bounds them (:data:`HTTP_LIMITS`, set in the process environment then, unless the
user set them; importing this module changes nothing). Delivery's own backoff does the rest.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lrtrack.tracking.redact import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# Error codes that mean "this write is wrong", not "the store is away": such a write is never retried.
PERMANENT_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
    "BAD_REQUEST", "ENDPOINT_NOT_FOUND", "MALFORMED_REQUEST", "NOT_IMPLEMENTED",
})
HTTP_LIMITS = {  # set (unless already set) when an http(s) store is opened
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
# sqlite's errors that mean its file is away for now (sqlite3.OperationalError is also a wrong statement)
SQLITE_AWAY = ("database is locked", "database table is locked", "unable to open database", "readonly database",
               "disk i/o error", "disk is full")
MAX_EXPERIMENT_NAME = 500  # mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH (tests/test_validation.py pins it)


class TrackingUnavailable(ValueError):
    """The tracking store cannot be used; the message names the URI, the problem and the fix."""


class StoreMissing(TrackingUnavailable):
    """An sqlite store's file is not there (moved away, deleted, on a disk not mounted) where a
    store must exist: delivery waits for it, it never makes an empty one in its place."""


# ---------------------------------------------------------------------- pre-flight


# How the messages' fixes name the URI's setting and the way to run without a store: the job's
# config by default; another command (the report) names its own flag while it checks.
_SETTING: contextvars.ContextVar[tuple[str, str | None]] = contextvars.ContextVar(
    "lrtrack_store_setting", default=("tracking.tracking_uri", "tracking.enabled=false"))


def preflight(uri: str, timeout_s: float = 10.0, *, setting: str = "tracking.tracking_uri",
              off_switch: str | None = "tracking.enabled=false") -> None:
    """Check that the tracking store at ``uri`` can be used, within about ``timeout_s`` seconds:
    sqlite, a writable folder with free space and no other kind of file there; http(s), an MLflow
    server answering its REST API (no retries); a database URI, a host that accepts a connection.
    Nothing is created. Raises :class:`TrackingUnavailable` (credentials masked in its message),
    whose fix names ``setting`` (and ``off_switch``, the way to run without a store, if any)."""
    token = _SETTING.set((setting, off_switch))
    try:
        _preflight(uri, timeout_s)
    finally:
        _SETTING.reset(token)


def _preflight(uri: str, timeout_s: float) -> None:
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    base = scheme.split("+", 1)[0]
    if base in ("http", "https", *DB_SCHEMES):
        _check_url_syntax(uri)
    if base == "sqlite":
        _check_sqlite(uri)
    elif base in ("http", "https"):
        _check_http(uri, timeout_s)
    elif base in DB_SCHEMES:
        _check_db_driver(uri)
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
                                  f"({_where(uri)}){_or_off(' to run without MLflow')}")


def _where(uri: str) -> str:
    """Which setting holds the URI, for the fix part of a message."""
    setting = _SETTING.get()[0]
    if os.environ.get("MLFLOW_TRACKING_URI") == uri:
        return f"fix MLFLOW_TRACKING_URI, which overrides {setting}"
    return f"set {setting}"


def _or_off(why: str = "", lead: str = "") -> str:
    """", or tracking.enabled=false" where the command can run without a store; else nothing."""
    off = _SETTING.get()[1]
    return f", or {lead}{off}{why}" if off else ""


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
    fix = f"{_where(uri)} to a file in a writable folder{_or_off()}"
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
    fix = f"start it (mlflow server --host {parts.hostname} --port {parts.port or 5000} ...), {_where(uri)}" \
          f"{_or_off(lead='run with ')}"
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


def _check_url_syntax(uri: str) -> None:
    """A port that is no number or out of range, a bracket left open: urllib raises on reading it."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - reading it is the check
        if "@" in uri.split("://", 1)[-1] and "@" not in parts.netloc and redact(uri) != uri:
            raise ValueError("the userinfo ends at a '/', '?' or '#' in it")  # bob:7731/pw@host: host "bob"
    except ValueError as err:
        # urllib's message quotes the piece it could not read: with a userinfo, a piece of the password
        why = (" (a password holding '/', '?', '#' or a space must be percent-encoded: %2F, %3F, %23, %20)"
               if "@" in uri else f" ({err})")
        raise TrackingUnavailable(f"tracking URI {redact(uri)!r} is not a valid URL{why}: "
                                  f"use {ALLOWED_FORMS} ({_where(uri)})") from None


def _check_db_driver(uri: str) -> None:
    """MLflow opens a database store through SQLAlchemy, which needs the database's Python driver:
    without it the job would run to its end and its records wait undelivered."""
    try:
        from sqlalchemy.engine import make_url

        make_url(uri).get_dialect().import_dbapi()
    except ImportError as err:
        missing = getattr(err, "name", None) or str(err)
        raise TrackingUnavailable(f"tracking database {redact(uri)}: its Python driver {missing!r} is not "
                                  f"installed: pip install it (e.g. psycopg[binary] for postgresql, mysqlclient "
                                  f"or pymysql with mysql+pymysql://), or {_where(uri)}") from None
    except Exception as err:  # SQLAlchemy cannot read the URL or knows no such dialect
        raise TrackingUnavailable(f"tracking database URI {redact(uri)!r} cannot be used ({redact(str(err))}): "
                                  f"use {ALLOWED_FORMS} ({_where(uri)})") from None


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


@contextlib.contextmanager
def store_lock(uri: str, timeout_s: float = 120.0) -> Iterator[None]:
    """Hold ``<db>.lock`` (``fcntl.flock``) for an sqlite store, nothing for other stores;
    :class:`TrackingUnavailable` when it cannot be had within ``timeout_s``."""
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


def open_store(uri: str, *, create: bool = True) -> MlflowClient:
    """A client for ``uri`` whose store exists: a fresh sqlite file is created under
    :func:`store_lock`, so several processes may open the same new store at once.

    ``create=False`` (delivery: the relay once the job's start is past, ``python -m lrtrack.deliver``):
    a missing sqlite file raises :class:`StoreMissing`, and this process never creates that file
    afterwards either (its connections open it read-write, without creating it: see
    :func:`_open_existing`). A store moved away for a moment and put back, or deleted, is an outage:
    a new, empty store made at its path would take the deliveries that the real one never sees."""
    path = sqlite_path(uri)
    if path is not None and not create:
        _MUST_EXIST.add(os.path.abspath(path))
        _install_connect_guard()
        if not path.is_file():
            raise StoreMissing(f"the database file {path} is missing")
        _engines_without_retry(uri)
        return read_client(uri)
    with store_lock(uri):
        fresh = path is not None and not path.exists()
        if fresh and path is not None:
            _MUST_EXIST.discard(os.path.abspath(path))  # this open may create it
        copied = fresh and path is not None and copy_template(path)
        client = read_client(uri)  # an sqlite store creates its tables here (unless copied)
        if fresh and not copied and path is not None:
            save_template(path)
    return client


# sqlite files this process must never create (see open_store): absolute paths
_MUST_EXIST: set[str] = set()
_GUARD_INSTALLED = False


def _install_connect_guard() -> None:
    """Every SQLAlchemy connection this process makes to a file in :data:`_MUST_EXIST` opens it
    read-write without creating it (once per process)."""
    global _GUARD_INSTALLED
    if _GUARD_INSTALLED:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "do_connect", _open_existing)
    _GUARD_INSTALLED = True


def _open_existing(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
    """SQLAlchemy's ``do_connect`` hook: sqlite's default mode creates a missing file, and MLflow
    would then migrate an empty store into it. ``mode=rw`` makes a missing file "unable to open
    database file" instead (an outage: :func:`is_transient`), checked and opened at once."""
    if dialect.name != "sqlite" or not cargs or not isinstance(cargs[0], str) or cargs[0].startswith("file:"):
        return
    if cargs[0] in ("", ":memory:") or os.path.abspath(cargs[0]) not in _MUST_EXIST:
        return
    from urllib.parse import quote

    cargs[0] = f"file:{quote(os.path.abspath(cargs[0]), safe='/')}?mode=rw"
    cparams["uri"] = True


def _engines_without_retry(uri: str) -> None:
    """Make MLflow's engines for the sqlite store ``uri`` (its tracking and model registry stores
    keep one per URI) unless made already, without MLflow's own retries: those sleep about 100 s
    in all when the file cannot be opened (moved away, locked), past the delivery's deadline, where
    delivery's own backoff tries again within seconds. Best effort: another MLflow makes its own."""
    try:
        from mlflow.store.db.utils import create_sqlalchemy_engine
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore
    except ImportError:  # pragma: no cover - another MLflow version
        return
    for store_class in (TrackingStore, RegistryStore):
        engines, lock = getattr(store_class, "_engine_map", None), getattr(store_class, "_engine_map_lock", None)
        if isinstance(engines, dict) and lock is not None:
            with lock:
                if uri not in engines:
                    engines[uri] = create_sqlalchemy_engine(uri)  # connects on first use, not here


def reset_connections(uri: str) -> None:
    """Close this process's pooled connections to the database store at ``uri``, so the next call
    connects anew. MLflow keeps one SQLAlchemy engine per URI for the process's life, and a
    connection keeps what it found when it opened: an sqlite file opened read-only (it was
    read-only then), or a file since moved away (``attempt to write a readonly database`` for
    good). Nothing for other stores, or before MLflow's stores are imported."""
    import sys

    if uri.split(":", 1)[0].split("+", 1)[0].lower() not in ("sqlite", *DB_SCHEMES):
        return
    for module in ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store"):
        store_class = getattr(sys.modules.get(module), "SqlAlchemyStore", None)
        engine = getattr(store_class, "_engine_map", {}).get(uri)
        if engine is not None:
            with contextlib.suppress(Exception):  # a connection that cannot even close is dropped all the same
                engine.dispose()


def read_client(uri: str) -> MlflowClient:
    """A client for ``uri``, to read a store that exists (the report, a sweep's summary); for an
    ``http(s)`` store, this process's MLflow HTTP retries are bounded first (user values win)."""
    from mlflow.tracking import MlflowClient

    if uri.lower().startswith(("http://", "https://")):
        for name, value in HTTP_LIMITS.items():
            os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=uri)


def store_errors() -> tuple[type[BaseException], ...]:
    """What reading a store can raise that is the store's problem, not a bug (the app layer catches
    these without importing MLflow): MLflow's own errors and :class:`TrackingUnavailable`."""
    from mlflow.exceptions import MlflowException

    return MlflowException, TrackingUnavailable


class DeletedExperiment(ValueError):
    """The experiment exists but was deleted: lrtrack does not undo the user's decision."""


def deleted_experiment_message(name: str, experiment_id: str, uri: str) -> str:
    """The one line for a deleted experiment: the two ways out."""
    return (f"tracking.experiment_name={name!r}: the experiment (id {experiment_id}) was deleted in "
            f"{redact(uri)}; restore it (mlflow experiments restore --experiment-id {experiment_id}, with "
            f"MLFLOW_TRACKING_URI={redact(uri)}) or choose another name with tracking.experiment_name=<name>")


def experiment_name_problem(name: str) -> str | None:
    """What MLflow would refuse in an experiment name (checked before any run); None when it is fine."""
    import unicodedata

    if not "".join(c for c in name if unicodedata.category(c) not in ("Cf", "Zs", "Zl", "Zp")).strip():
        return "an experiment name cannot be empty (or only spaces and invisible characters)"
    if len(name) > MAX_EXPERIMENT_NAME:
        return f"MLflow allows at most {MAX_EXPERIMENT_NAME} characters in an experiment name, this has {len(name)}"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):  # a newline, an escape: the UI's one-line list, a terminal
        return "an experiment name cannot hold control characters (a newline, a tab, an escape)"
    return None


def check_experiment(uri: str, name: str, timeout_s: float = 10.0) -> None:
    """Pre-flight for the experiment, without MLflow: its name within MLflow's limits, and not a
    deleted experiment (:class:`DeletedExperiment`; ``ensure_experiment`` refuses it too, so a
    race cannot restore it). A store that cannot be read here is left to :func:`preflight` and delivery."""
    problem = experiment_name_problem(name)
    if problem:
        shown = repr(name[:60]) + ("..." if len(name) > 60 else "")
        raise TrackingUnavailable(f"tracking.experiment_name={shown}: {problem}; choose another name with "
                                  "tracking.experiment_name=<name>")
    found = _find_experiment(uri, name, timeout_s)
    if found is not None and found[1] == "deleted":
        raise DeletedExperiment(deleted_experiment_message(name, found[0], uri))


def _find_experiment(uri: str, name: str, timeout_s: float) -> tuple[str, str] | None:
    """``(id, lifecycle_stage)`` of the experiment called ``name``, None when absent or unreadable."""
    path = sqlite_path(uri)
    if path is not None:
        if not path.is_file():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s)) as con:
                row = con.execute("select experiment_id, lifecycle_stage from experiments where name = ?",
                                  (name,)).fetchone()
        except sqlite3.Error:
            return None
        return (str(row[0]), str(row[1])) if row else None
    if uri.lower().startswith(("http://", "https://")):
        import requests

        try:
            reply = requests.get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name",
                                 params={"experiment_name": name}, timeout=(3.0, timeout_s), **_http_options())
            exp = reply.json().get("experiment") if reply.status_code == 200 else None
        except (requests.exceptions.RequestException, ValueError):
            return None
        return (str(exp["experiment_id"]), str(exp.get("lifecycle_stage"))) if exp else None
    return None


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it when missing (tolerating a concurrent creator); a deleted
    one is refused (:class:`DeletedExperiment`), never restored behind the user's back."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise DeletedExperiment(deleted_experiment_message(name, found.experiment_id, client.tracking_uri))
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another process created it between our look-up and our create
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


# ---------------------------------------------------------------------- errors


def is_transient(err: BaseException) -> bool:
    """True when ``err`` means the store is unreachable or unwell, so the write may succeed later:
    MLflow reports a refused connection, a timeout, a 5xx reply or a locked, read-only or full sqlite
    file as an ``MlflowException`` with a code not in :data:`PERMANENT_CODES`; file and socket errors
    are ``OSError`` (``requests``' included). Opening
    a database store (MLflow's ``SqlAlchemyStore``, before its calls wrap errors) raises the
    database's own errors: SQLAlchemy's ``OperationalError`` ("database is locked", "unable to open
    database file", "attempt to write a readonly database", "disk I/O error", a server that does not
    answer) and the pool's timeouts and lost connections, which are the store away too."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.error_code not in PERMANENT_CODES
    if isinstance(err, OSError):
        return True
    if isinstance(err, sqlite3.OperationalError):  # also a wrong statement, "no such table": not those
        return any(marker in str(err).lower() for marker in SQLITE_AWAY)
    try:
        from sqlalchemy import exc
    except ImportError:  # pragma: no cover - MLflow needs it
        return False
    if isinstance(err, exc.OperationalError):
        orig = getattr(err, "orig", None)
        return is_transient(orig) if isinstance(orig, sqlite3.Error) else True  # a server's: its connection
    return isinstance(err, (exc.TimeoutError, exc.DisconnectionError))


def describe(err: BaseException) -> str:
    """A short, credential-free account of an error: "connection refused", "HTTP 503", or its first line."""
    text = str(err).strip()
    lowered = text.lower()
    for marker, short in (("connection refused", "connection refused"), ("timed out", "timed out"),
                          ("name or service not known", "host not found"), ("nameresolutionerror", "host not found"),
                          ("connection reset", "connection reset"), ("remotedisconnected", "connection closed"),
                          ("connection aborted", "connection closed"), ("database is locked", "database is locked"),
                          ("readonly database", "read-only database"), ("disk is full", "disk full"),
                          ("unable to open database", "cannot open the database file"),
                          ("disk i/o error", "disk I/O error")):
        if marker in lowered:
            return short
    for code in ("500", "502", "503", "504"):
        if f"{code} error response" in lowered or f"error code {code}" in lowered:
            return f"HTTP {code}"
    first = text.splitlines()[0] if text else type(err).__name__
    return redact(first)[:160]


# ---------------------------------------------------------------------- fresh sqlite stores from a template
# MLflow creates a new sqlite store by running every schema migration since its first release:
# about 2 s of Python on a small CPU. The result does not depend on where the file is, except the
# Default experiment's artifact location, which MLflow writes when it finds no experiment. So the
# first store made on a machine is also saved, without its experiments, as a template for this
# MLflow version (~/.cache/lrtrack/, or $XDG_CACHE_HOME/lrtrack); later fresh stores are a copy,
# and MLflow adds their Default experiment as it would.


def template_path() -> Path | None:
    """Where this MLflow version's empty store is kept (``None``: no home folder to keep it in)."""
    from mlflow.version import VERSION

    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no HOME and no password entry
        return None
    return cache / "lrtrack" / f"mlflow-{VERSION}-empty-store.db"


def copy_template(path: Path) -> bool:
    """Make the store at ``path`` (which does not exist) from the template; False when there is
    none, or it is not a migrated store (it is then deleted: the caller lets MLflow make one)."""
    template = template_path()
    if template is None or not template.is_file():
        return False
    if not _is_empty_store(template):
        log.warning("the cached empty tracking store %s is not one; it is deleted", template)
        template.unlink(missing_ok=True)
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(template, tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


def _is_empty_store(db: Path) -> bool:
    """An sqlite file with MLflow's tables, a schema version, and no experiment."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
            (experiments,) = conn.execute("SELECT count(*) FROM experiments").fetchone()
            conn.execute("SELECT count(*) FROM runs").fetchone()
        return len(versions) == 1 and experiments == 0
    except sqlite3.Error:
        return False


def save_template(fresh_store: Path) -> None:
    """Keep a copy of a store MLflow has just created (nothing in it but its Default experiment),
    without its experiments, as the template. Best effort: a cache that cannot be written is skipped."""
    target = template_path()
    if target is None or target.is_file():
        return
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".template-", suffix=".db")
        os.close(fd)
        shutil.copyfile(fresh_store, tmp)
        with sqlite3.connect(tmp) as db:
            (runs,) = db.execute("SELECT count(*) FROM runs").fetchone()
            if runs:  # not fresh after all
                raise OSError("the store already holds runs")
            db.execute("DELETE FROM experiment_tags")
            db.execute("DELETE FROM experiments")
        os.replace(tmp, target)
    except (OSError, sqlite3.Error) as err:
        log.debug("no store template saved (%s)", err)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
