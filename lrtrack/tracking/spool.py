"""The local spool: tracking writes that could not reach the store wait on disk until it is back.

A :class:`Courier` carries one tracker's writes to the MLflow store. While the store answers,
step metrics go through it from a background thread (``log_batch``) and params, tags,
artifacts and run endings are sent at once from the caller's thread. When a write fails
with a transient error (connection refused, timeout, HTTP 5xx, a locked or full sqlite file)
after a few bounded retries, the courier goes *offline*: that write and every later one is
appended to a journal on disk (artifacts are copied next to it), training goes on untouched,
and the background thread replays the journal with backoff until the store is back; then it
goes online again. Nothing is held only in memory while the store is down. A courier made with
``relay=True`` (what ``python -m lrtrack`` uses) journals every write from the start, and a child
process (:mod:`lrtrack.tracking.relay`) delivers the journal as it grows.

A spool is a folder::

    spool.json        the tracking URI (credentials masked) and experiment id
    journal.jsonl     one write per line, in order: create, metrics, params, tags, artifact, end
    delivered.offset  how far the journal has been delivered (bytes)
    run_ids.json      runs created while offline: their placeholder id -> the store's id
    files/            copies of the artifacts logged while offline
    rejected.jsonl    writes the store refused for good (a deleted run, a changed param)
    lock              held (flock) by the process that owns the spool

Delivery is exactly once in the store even when a write is sent twice (a reply lost when the
server died, a process killed between a send and the offset update): metrics keep the
timestamp they were logged with and MLflow drops an identical (key, step, timestamp, value),
params are re-sent with the same value, tags, artifacts and run endings overwrite, and a run
carries :data:`CREATE_ID_TAG` so a second delivery (or a creation whose reply was lost) finds it
instead of creating another. ``python -m lrtrack.deliver <spool>`` (:mod:`lrtrack.tracking.deliver`) delivers what
a process left behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from lrtrack.tracking.redact import MASK, redact

log = logging.getLogger(__name__)

T = TypeVar("T")

JOURNAL = "journal.jsonl"
OFFSET = "delivered.offset"
META = "spool.json"
IDS = "run_ids.json"
REJECTED = "rejected.jsonl"
DELIVERED = "delivered.json"
FILES = "files"
LOCK = "lock"
PENDING_PREFIX = "pending-"  # the id of a run created while the store was down, until it is delivered
# On every run lrtrack creates: the id lrtrack gave it before the store did. A creation whose reply
# was lost (the server died after committing it) is then found by this tag instead of made twice.
CREATE_ID_TAG = "lrtrack.create_id"
DELIVER_COMMAND = "python -m lrtrack.deliver"
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
MAX_PARAMS_PER_BATCH = 100
# Error codes that mean "this write is wrong", not "the store is away": such a write is never retried.
PERMANENT_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
    "BAD_REQUEST", "ENDPOINT_NOT_FOUND", "MALFORMED_REQUEST", "NOT_IMPLEMENTED",
})


class DeliveryError(RuntimeError):
    """Tracking writes could not be delivered; they are kept in ``spool`` (``None``: they are lost).

    Attributes:
        spool: the spool folder to deliver later with :attr:`command`.
        command: ``python -m lrtrack.deliver <spool>``.
    """

    def __init__(self, message: str, spool: Path | None = None) -> None:
        super().__init__(message)
        self.spool = spool
        self.command = f"{DELIVER_COMMAND} {spool}" if spool is not None else None


class SpoolBusy(RuntimeError):
    """Another live process owns the spool (it is still delivering it)."""


def is_transient(err: BaseException) -> bool:
    """True when ``err`` means the store is unreachable or unwell, so the write may succeed later.

    MLflow reports a refused connection, a timeout and a 5xx reply as ``MlflowException``
    (``INTERNAL_ERROR``, ``TEMPORARILY_UNAVAILABLE``); a locked, read-only or full sqlite file
    as ``TEMPORARILY_UNAVAILABLE``; file and socket errors are ``OSError`` (``requests``'
    errors included). A write the store rejects (``INVALID_PARAMETER_VALUE``...) is permanent.
    """
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.error_code not in PERMANENT_CODES
    return isinstance(err, OSError)


def describe(err: BaseException) -> str:
    """A short, credential-free account of an error: "connection refused", "HTTP 503", or its first line."""
    text = str(err).strip()
    lowered = text.lower()
    for marker, short in (("connection refused", "connection refused"), ("timed out", "timed out"),
                          ("name or service not known", "host not found"), ("nameresolutionerror", "host not found"),
                          ("connection reset", "connection reset"), ("remotedisconnected", "connection closed"),
                          ("connection aborted", "connection closed"), ("database is locked", "database is locked"),
                          ("readonly database", "read-only database"), ("disk is full", "disk full"),
                          ("unable to open database", "cannot open the database file")):
        if marker in lowered:
            return short
    for code in ("500", "502", "503", "504"):
        if f"{code} error response" in lowered or f"error code {code}" in lowered:
            return f"HTTP {code}"
    first = text.splitlines()[0] if text else type(err).__name__
    return redact(first)[:160]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def is_pending(run_id: str | None) -> bool:
    return bool(run_id) and str(run_id).startswith(PENDING_PREFIX)


class Spool:
    """One spool folder (see the module docstring), locked by the process that uses it.

    Use :meth:`create` for a new spool and :meth:`open` for one left behind.
    """

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd
        self._journal = path / JOURNAL
        self._file_count = 0
        self.made_parent = False  # remove() also removes the parent folder when create() made it
        ids = path / IDS
        self.ids: dict[str, str] = json.loads(ids.read_text()) if ids.is_file() else {}

    # ------------------------------------------------------------------ open / close
    @classmethod
    def create(cls, parent: Path, tracking_uri: str, experiment_id: str | None,
               experiment_name: str | None = None) -> Spool:
        """A new, empty spool in a unique sub-folder of ``parent`` (created as needed).

        ``experiment_id`` is ``None`` while the store is still being opened; runs created
        before then find their experiment by ``experiment_name`` (see :meth:`set_experiment`)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        parent = Path(parent).resolve()
        made_parent = not parent.exists()
        path = parent / f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        fd = _lock(path, blocking=True)
        meta = {"tracking_uri": redact(tracking_uri), "experiment_id": experiment_id,
                "experiment_name": experiment_name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "pid": os.getpid(), "host": socket.gethostname()}
        _write_atomic(path / META, json.dumps(meta, indent=1))
        spool = cls(path, fd)
        spool.made_parent = made_parent
        return spool

    @classmethod
    def open(cls, path: str | Path) -> Spool:
        """An existing spool, locked for this process.

        Raises:
            ValueError: ``path`` is not a spool folder.
            SpoolBusy: a live process owns it.
        """
        path = Path(path).resolve()
        if not (path / META).is_file():
            raise ValueError(f"{path} is not an lrtrack spool (no {META} in it)")
        try:
            fd = _lock(path, blocking=False)
        except BlockingIOError as err:
            owner = json.loads((path / META).read_text()).get("pid")
            raise SpoolBusy(f"{path} is in use by another process (pid {owner} created it): it is still "
                            f"delivering; wait for it to end, then run this again") from err
        return cls(path, fd)

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / META).read_text())

    def set_experiment(self, experiment_id: str) -> None:
        """Record the experiment once the store is open (the spool may be older than that)."""
        meta = self.meta
        if meta.get("experiment_id") != experiment_id:
            meta["experiment_id"] = experiment_id
            _write_atomic(self.path / META, json.dumps(meta, indent=1))

    def close(self) -> None:
        """Release the lock (the folder stays)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def remove(self) -> None:
        """Delete the whole folder (everything was delivered), and its parent if this spool made it
        and it is now empty."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        if self.made_parent:
            try:
                self.path.parent.rmdir()
            except OSError:
                pass

    # ------------------------------------------------------------------ writing
    def append(self, op: Mapping[str, Any]) -> None:
        """Add one write at the end of the journal (one ``write`` call, so a reader sees whole lines)."""
        line = json.dumps(op, separators=(",", ":")) + "\n"
        with open(self._journal, "ab") as fh:
            fh.write(line.encode())

    def stash(self, name: str) -> tuple[Path, str]:
        """A fresh slot for an artifact file: its absolute path and the path the journal records."""
        self._file_count += 1
        folder = self.path / FILES / f"{self._file_count:06d}"
        while folder.exists():
            self._file_count += 1
            folder = self.path / FILES / f"{self._file_count:06d}"
        folder.mkdir(parents=True)
        target = folder / (Path(name).name or "artifact")
        return target, str(target.relative_to(self.path))

    def discard(self, relative: str) -> None:
        """Delete an artifact's copy once its write is delivered and the offset is past it."""
        target = (self.path / relative).resolve()
        if target.is_relative_to((self.path / FILES).resolve()):
            shutil.rmtree(target.parent, ignore_errors=True)  # its own numbered folder

    def save_id(self, pending_id: str, run_id: str) -> None:
        self.ids[pending_id] = run_id
        _write_atomic(self.path / IDS, json.dumps(self.ids, indent=1))

    def resolve(self, run_id: str) -> str:
        return self.ids.get(run_id, run_id)

    def reload_ids(self) -> None:
        """Read the run ids again (another process, the relay, delivers this spool)."""
        ids = self.path / IDS
        if ids.is_file():
            try:
                self.ids = json.loads(ids.read_text())
            except ValueError:  # cannot happen with _write_atomic; keep what we had
                pass

    @property
    def lock_fd(self) -> int | None:
        """The descriptor holding the spool's lock (the relay inherits it)."""
        return self._lock_fd

    # ------------------------------------------------------------------ reading
    def offset(self) -> int:
        f = self.path / OFFSET
        return int(f.read_text()) if f.is_file() else 0

    def advance(self, offset: int) -> None:
        _write_atomic(self.path / OFFSET, str(offset))

    def journal_started(self) -> bool:
        """Anything was ever written to the journal."""
        return self._journal.is_file()

    def has_pending(self) -> bool:
        return self._journal.is_file() and self._journal.stat().st_size > self.offset()

    def pending(self) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """``(offset after the line, write)`` for each whole line not yet delivered, in order.

        A line that is not valid JSON is yielded as ``None`` (a write cut short by a crash).
        """
        if not self._journal.is_file():
            return
        offset = self.offset()
        with open(self._journal, "rb") as fh:
            fh.seek(offset)
            for raw in fh:
                if not raw.endswith(b"\n"):  # being written right now: the next pass gets it
                    return
                offset += len(raw)
                try:
                    yield offset, json.loads(raw)
                except ValueError:
                    yield offset, None

    def summary(self) -> dict[str, int]:
        """What is still undelivered: counts of metric values, params, tags, artifacts, runs, endings."""
        counts = {"metric values": 0, "params": 0, "tags": 0, "artifacts": 0, "runs to create": 0,
                  "run endings": 0}
        key = {"params": "params", "tags": "tags", "artifact": "artifacts", "create": "runs to create",
               "end": "run endings"}
        for _, op in self.pending():
            if op is None:
                continue
            kind = op.get("op")
            if kind == "metrics":
                counts["metric values"] += len(op["metrics"])
            elif kind in ("params", "tags"):
                counts[key[kind]] += len(op[kind])
            elif kind in key:
                counts[key[kind]] += 1
        return counts

    def reject(self, op: Mapping[str, Any] | None, err: BaseException | str) -> None:
        with open(self.path / REJECTED, "a") as fh:
            fh.write(json.dumps({"error": describe(err) if isinstance(err, BaseException) else err, "op": op}) + "\n")

    def rejected(self) -> int:
        f = self.path / REJECTED
        return sum(1 for _ in open(f)) if f.is_file() else 0

    def finish(self, *, keep_record: bool = False) -> None:
        """Everything was delivered: drop the journal and the artifact copies (the lock is kept).

        Args:
            keep_record: leave a ``delivered.json`` marker, so delivering again says so.
        """
        for name in (JOURNAL, OFFSET):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / FILES, ignore_errors=True)
        if keep_record:
            _write_atomic(self.path / DELIVERED, json.dumps({"delivered": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))


def _lock(path: Path, *, blocking: bool) -> int:
    import fcntl  # POSIX; imported here so that importing lrtrack never needs it

    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


# ---------------------------------------------------------------------- replay


def apply_op(client: Any, spool: Spool, op: Mapping[str, Any]) -> None:
    """Send one journal write to the store (idempotent: see the module docstring)."""
    from mlflow.entities import Metric, Param, RunTag

    kind = op["op"]
    run_id = spool.resolve(op["run"])
    if is_pending(run_id) and kind != "create":
        raise ValueError(f"run {run_id} was never created (its create write is missing from the journal)")
    if kind == "create":
        _create_run(client, spool, op)
    elif kind == "metrics":
        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in op["metrics"]]
        for lo in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[lo:lo + MAX_METRICS_PER_BATCH], synchronous=True)
    elif kind == "params":
        params = [Param(k, v) for k, v in op["params"].items()]
        for lo in range(0, len(params), MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[lo:lo + MAX_PARAMS_PER_BATCH], synchronous=True)
    elif kind == "tags":
        tags = [RunTag(k, spool.resolve(v)) for k, v in op["tags"].items()]
        for lo in range(0, len(tags), MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, tags=tags[lo:lo + MAX_PARAMS_PER_BATCH], synchronous=True)
    elif kind == "artifact":
        local = spool.path / op["file"]
        if local.is_dir():
            client.log_artifacts(run_id, str(local), op.get("path"))
        else:
            client.log_artifact(run_id, str(local), op.get("path"))
    elif kind == "end":
        client.set_terminated(run_id, status=op["status"], end_time=op.get("end"))
    else:
        raise ValueError(f"unknown journal write {kind!r}")


def _create_run(client: Any, spool: Spool, op: Mapping[str, Any]) -> None:
    pending_id = op["run"]
    if pending_id in spool.ids:
        return
    experiment_id = op.get("experiment") or _spool_experiment(client, spool)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{CREATE_ID_TAG}` = '{pending_id}'",
                               max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        tags = {k: spool.resolve(v) for k, v in op.get("tags", {}).items()}
        tags[CREATE_ID_TAG] = pending_id
        run_id = client.create_run(experiment_id, start_time=op.get("start"), tags=tags,
                                   run_name=op.get("name")).info.run_id
    spool.save_id(pending_id, run_id)
    log.info("created run %s (logged offline as %s)", run_id, pending_id)


def _spool_experiment(client: Any, spool: Spool) -> str:
    """The experiment of runs created before the store was open: the one the spool recorded
    (by id once known, else by name, created when missing)."""
    meta = spool.meta
    if meta.get("experiment_id"):
        return str(meta["experiment_id"])
    name = meta.get("experiment_name")
    if not name:
        raise ValueError("the spool records no experiment for its runs")
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(name)
    spool.set_experiment(experiment_id)
    return str(experiment_id)


def replay(client: Any, spool: Spool, *, should_stop: Callable[[], bool] = lambda: False) -> bool:
    """Deliver the spool's undelivered writes in order; True when none is left.

    A write the store rejects for good is recorded in ``rejected.jsonl`` and skipped.

    Raises:
        Exception: the first transient error (the store is still away); the offset keeps what
            was delivered before it.
    """
    for offset, op in spool.pending():
        if should_stop():
            return False
        if op is None:
            spool.reject(None, "a journal line cut short (the process died while writing it)")
        else:
            try:
                apply_op(client, spool, op)
            except Exception as err:
                if is_transient(err):
                    raise
                log.error("the tracking store rejected a spooled %s write for run %s: %s",
                          op.get("op"), op.get("run"), describe(err))
                spool.reject(op, err)
        spool.advance(offset)
        if op is not None and op.get("op") == "artifact":
            spool.discard(op["file"])  # delivered (and recorded so): a long run's checkpoints do not pile up
    return not spool.has_pending()


class MetricRow(NamedTuple):
    """One metric value as lrtrack queues it. MLflow's ``Metric`` is made only when it is sent, so
    the training loop never imports MLflow (it may still be importing in the background)."""

    key: str
    value: float
    timestamp: int
    step: int


def metric_rows(metrics: list[Any]) -> list[list[Any]]:
    """Metric values (:class:`MetricRow` or MLflow ``Metric``) as journal rows ``[key, value, timestamp, step]``."""
    return [[m.key, m.value, m.timestamp, m.step] for m in metrics]


SINGULAR = {"metric values": "metric value", "params": "param", "tags": "tag", "artifacts": "artifact",
            "runs to create": "run to create", "run endings": "run ending"}


def summary_text(counts: Mapping[str, int]) -> str:
    """``{"metric values": 3, "runs to create": 1}`` -> ``"3 metric values, 1 run to create"``."""
    parts = [f"{n} {SINGULAR.get(what, what) if n == 1 else what}" for what, n in counts.items() if n]
    return ", ".join(parts) if parts else "nothing"


def needs_uri(meta_uri: str) -> bool:
    """The spool's URI had credentials (masked on disk): delivery needs the real URI given again."""
    return f"{MASK}@" in meta_uri


# ---------------------------------------------------------------------- the courier

JOIN_SLACK_S = 5.0  # how long close() waits past its deadline for a send already in flight
RELAY_START_SLACK_S = 30.0  # and for a relay, which may still be importing MLflow and opening the store
_REPLAY = object()


class Courier:
    """Carries one tracker's writes to the store, and spools them while the store is away.

    Args:
        client: the store's ``MlflowClient``.
        tracking_uri: where the store is (for messages and the spool's record).
        experiment_id: recorded in the spool.
        spool_dir: where a spool folder is created the first time a write cannot be delivered.
        retry_delays: the pauses between the tries of one metric batch before going offline
            (each try is one ``log_batch`` with MLflow's own, bounded, HTTP retries).
        probe_max_s: the longest pause between two delivery attempts while offline (the pause
            starts at 0.5 s and doubles).
        max_queued: metric values waiting in memory before :meth:`submit` waits for the sender
            (only while the store answers: offline, metrics go straight to disk).
        probe: a quick "does the store answer" check tried before replaying (for HTTP, a short
            GET), so an unreachable server costs no MLflow retries; ``None`` to just try.
        relay: deliver from a child process (:mod:`lrtrack.tracking.relay`) instead: every write goes to
            the spool, which is created at once, and the relay, started at once, opens the
            store (``client`` is ``None``) and delivers the journal as it grows. Nobody in
            this process waits for MLflow's import or a fresh store's creation, and its
            Python never competes with the training loop for the GIL.
        experiment_name: recorded in the spool: its runs' experiment until the store gives an id.
        relay_timeout_s: with ``relay``: how long the relay keeps trying a store that is away
            after this process died without :meth:`close`.
    """

    def __init__(self, client: Any, tracking_uri: str, experiment_id: str | None, *, spool_dir: str | Path,
                 retry_delays: tuple[float, ...] = (0.5, 1.0), probe_max_s: float = 10.0,
                 max_queued: int = 10 * MAX_METRICS_PER_BATCH, probe: Callable[[], bool] | None = None,
                 relay: bool = False, experiment_name: str | None = None, relay_timeout_s: float = 60.0) -> None:
        self.client = client
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.experiment_name = experiment_name  # recorded in the spool: runs spooled before the store opened
        self.spool_dir = Path(spool_dir)
        self.retry_delays = tuple(retry_delays)
        self.probe_min_s = 0.5
        self.probe_max_s = float(probe_max_s)
        self.max_queued = max(1, int(max_queued))
        self.probe = probe
        self.spool: Spool | None = None
        self.online = True
        self.last_error: str | None = None
        self.sent = 0  # metric values delivered straight from memory
        self.send_seconds = 0.0
        self.lost = 0  # writes that could not even be spooled (the spool folder is not writable)
        self.rejected = 0  # metric values the store refused for good
        self._spool_failed = False
        self._cond = threading.Condition()
        self._queue: deque[tuple[str, list[Any]]] = deque()
        self._queued = 0
        self._inflight = False
        self._closing = False
        self._closed = False
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._relay: subprocess.Popen[bytes] | None = None
        self._relay_stopped: int | None = None  # its exit status when it died without a store error
        if relay:
            self._start_relay(relay_timeout_s)

    # ------------------------------------------------------------------ what callers use
    def resolve(self, run_id: str) -> str:
        """The store's id of a run (a run created offline has a placeholder id until delivered)."""
        spool = self.spool
        if spool is None:
            return run_id
        if self._relay is not None and is_pending(run_id) and run_id not in spool.ids:
            spool.reload_ids()  # the relay records the ids of the runs it created
        return spool.resolve(run_id)

    @property
    def undelivered(self) -> Path | None:
        """The spool folder while it holds writes not yet delivered, else ``None``."""
        with self._cond:
            spool = self.spool
            return spool.path if spool is not None and spool.has_pending() else None

    def submit(self, run_id: str, metrics: list[Any]) -> None:
        """Hand metric values to the sender (never waits on a store that is down)."""
        if not metrics:
            return
        with self._cond:
            rid = self.resolve(run_id)
            if not self.online or is_pending(rid):
                self._journal({"op": "metrics", "run": rid, "metrics": metric_rows(metrics)}, len(metrics))
                return
            self._queue.append((rid, metrics))
            self._queued += len(metrics)
            self._ensure_thread()
            self._cond.notify_all()
            while self.online and self._queued > self.max_queued and not self._closing:
                self._cond.wait(timeout=1.0)  # the store is slow: wait rather than grow

    @property
    def relaying(self) -> bool:
        """A relay process delivers this courier's writes (see ``relay``)."""
        return self._relay is not None

    @property
    def connecting(self) -> bool:
        """Spooling is the plan, not news: a live relay delivers what is written."""
        return self._relay is not None and self._relay.poll() is None

    def refresh_experiment(self) -> str | None:
        """With a relay: the experiment's id once the relay has opened the store (``None`` until then)."""
        if self.experiment_id is None and self._relay is not None and self.spool is not None:
            try:
                self.experiment_id = self.spool.meta.get("experiment_id")
            except (OSError, ValueError):
                pass
        return self.experiment_id

    def wait_sent(self) -> None:
        """Wait until every metric submitted so far is delivered or spooled."""
        with self._cond:
            while (self._queue or self._inflight) and self._thread is not None:
                self._cond.wait(timeout=1.0)

    def call(self, run_id: str, action: Callable[[str], T], make_op: Callable[[Spool], dict[str, Any]]) -> T | None:
        """Do one write now (``action(run_id)``), or spool it (``make_op(spool)``) when the store is away.

        Returns ``action``'s result, or ``None`` when the write was spooled. Errors that are not
        transient (a rejected value, a bug) are raised as they are.
        """
        with self._cond:
            rid = self.resolve(run_id)
            if not self.online or is_pending(rid):
                self._journal_with(make_op, rid)
                return None
        try:
            return action(rid)
        except Exception as err:
            if not is_transient(err):
                raise
            with self._cond:
                self._go_offline(err)
                self._journal_with(make_op, rid)
            return None

    def create_run(self, experiment_id: str, name: str, tags: Mapping[str, str],
                   create: Callable[[dict[str, str]], str]) -> str:
        """The id of a new run: ``create(tags)`` now, or a placeholder id when the store is away."""
        start = int(time.time() * 1000)
        pending_id = f"{PENDING_PREFIX}{uuid.uuid4().hex}"
        with self._cond:
            resolved = {k: self.resolve(v) for k, v in tags.items()}
            direct = self.online and not any(is_pending(v) for v in resolved.values())
        op = {"op": "create", "run": pending_id, "experiment": experiment_id, "name": name, "tags": resolved,
              "start": start}
        if direct:
            try:
                return create({**resolved, CREATE_ID_TAG: pending_id})
            except Exception as err:
                if not is_transient(err):
                    raise
                with self._cond:  # one hold: the sender must not find the new spool empty and go online
                    self._go_offline(err)
                    self._journal(op)
        else:
            with self._cond:
                self._journal(op)
        if self._relay is None:
            log.warning("run %r will be created in the tracking store when it is back (until then: %s)", name,
                        pending_id)
        return pending_id

    def close(self, timeout_s: float) -> None:
        """Deliver what is left, waiting at most ``timeout_s`` for a store that is away.

        Removes the spool when everything arrived; otherwise keeps it and raises.

        Raises:
            DeliveryError: writes are still undelivered (kept in the spool: ``err.command``
                delivers them later), could not be spooled, or were rejected by the store.
        """
        timeout_s = max(0.0, float(timeout_s))
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._deadline = time.monotonic() + timeout_s
            self._cond.notify_all()
            thread = self._thread
        if self._relay is not None:
            self._close_relay(timeout_s)
        elif thread is not None:
            if not self.online:
                log.warning("waiting up to %g s for tracking store %s to deliver the spooled writes",
                            timeout_s, redact(self.tracking_uri))
            thread.join(timeout=timeout_s + JOIN_SLACK_S)
        with self._cond:
            self._closed = True
            if self._queue:
                self._go_offline(RuntimeError(f"not delivered within {timeout_s:g} s"))
            spool = self.spool
            pending = spool is not None and spool.has_pending()
            counts = spool.summary() if pending and spool is not None else {}
            rejected = self.rejected + (spool.rejected() if spool is not None else 0)
        if spool is not None and not pending and not rejected:
            spool.remove()
        elif spool is not None:
            spool.close()
        if pending or self.lost or rejected:
            raise DeliveryError(self._failure(counts, rejected, timeout_s), spool.path if pending and spool else None)

    # ------------------------------------------------------------------ the relay
    def _start_relay(self, timeout_s: float) -> None:
        """Create the spool and start the relay; without a spool folder, stay as a plain courier
        (the caller then opens the store itself: :meth:`attach`)."""
        from lrtrack.tracking.relay import start_relay

        self.online = False  # every write goes to the spool; the relay delivers it
        spool = self._ensure_spool()
        if spool is None:
            self.online = True
            return
        try:
            self._relay = start_relay(spool, self.tracking_uri, experiment_name=self.experiment_name or "Default",
                                      timeout_s=timeout_s)
        except OSError as err:  # cannot start a process: the spool waits for python -m lrtrack.deliver
            self.last_error = f"the tracking relay could not start ({err})"
            log.error("%s: tracking writes are kept in %s", self.last_error, spool.path)

    def attach(self, client: Any, experiment_id: str) -> None:
        """Send straight to this store from now on (no spool folder could be made for a relay)."""
        with self._cond:
            self.client, self.experiment_id, self.online = client, experiment_id, True

    def _close_relay(self, timeout_s: float) -> None:
        """Tell the relay the journal is complete and wait for it to deliver it (it gives up on a
        store that is away after ``timeout_s``; a relay still importing MLflow gets more time)."""
        from lrtrack.tracking.relay import read_status

        relay = self._relay
        assert relay is not None and relay.stdin is not None and self.spool is not None
        if not self.spool.journal_started():  # nothing was logged: nothing to wait for
            relay.kill()
        else:
            try:
                relay.stdin.write(f"close {timeout_s:g}\n".encode())
                relay.stdin.flush()
            except OSError:  # it is gone already: what it did not deliver is counted below
                pass
        try:
            relay.stdin.close()
        except OSError:
            pass
        try:
            relay.wait(timeout=timeout_s + RELAY_START_SLACK_S)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()
        status = read_status(self.spool.path)
        self.last_error = status.get("last_error") or self.last_error
        if relay.returncode != 0 and not self.last_error:  # not the store: the relay itself stopped
            self._relay_stopped = relay.returncode
        self.spool.reload_ids()
        self.refresh_experiment()  # before the spool (where the relay recorded it) is removed

    # ------------------------------------------------------------------ going offline
    def _ensure_spool(self) -> Spool | None:
        if self.spool is None and not self._spool_failed:
            try:
                self.spool = Spool.create(self.spool_dir, self.tracking_uri, self.experiment_id, self.experiment_name)
            except OSError as err:
                self._spool_failed = True
                log.error("cannot create a tracking spool in %s (%s): writes the store does not take are lost",
                          self.spool_dir, err)
        return self.spool

    def _journal(self, op: dict[str, Any], count: int = 1) -> None:
        self._journal_with(lambda spool: op, op["run"], count)

    def _journal_with(self, make_op: Callable[[Spool], dict[str, Any]], run_id: str, count: int = 1) -> None:
        spool = self._ensure_spool()
        if spool is None:
            self.lost += count
            return
        try:
            op = make_op(spool)
            op["run"] = run_id
            spool.append(op)
        except OSError as err:
            self.lost += count
            log.error("could not spool a %s write to %s (%s): it is lost", "tracking", spool.path, err)

    def _go_offline(self, err: BaseException) -> None:
        """Called with the lock held: switch to the spool and move queued metrics into it."""
        self.last_error = describe(err)
        if self.online:
            self.online = False
            spool = self._ensure_spool()
            log.warning("tracking store %s is unavailable (%s); training goes on, tracking writes are kept in %s "
                        "and delivered when the store is back", redact(self.tracking_uri), self.last_error,
                        spool.path if spool is not None else "(nowhere: the spool folder is not writable)")
            self._ensure_thread()
        while self._queue:
            rid, metrics = self._queue.popleft()
            self._queued -= len(metrics)
            self._journal({"op": "metrics", "run": rid, "metrics": metric_rows(metrics)}, len(metrics))
        self._cond.notify_all()

    def _failure(self, counts: Mapping[str, int], rejected: int, timeout_s: float) -> str:
        where = redact(self.tracking_uri)
        parts = []
        if counts and self._relay_stopped is not None:  # the store may be fine: the relay died
            parts.append(f"the tracking relay stopped (exit status {self._relay_stopped}) before delivering "
                         f"{summary_text(counts)}, kept in {self.spool.path if self.spool else '?'}; deliver them "
                         f"with: {DELIVER_COMMAND} {self.spool.path if self.spool else '?'}")
        elif counts:
            parts.append(f"tracking store {where} still unavailable ({self.last_error}) after waiting {timeout_s:g} s: "
                         f"{summary_text(counts)} not delivered, kept in {self.spool.path if self.spool else '?'}; "
                         f"deliver them when the store is back: {DELIVER_COMMAND} "
                         f"{self.spool.path if self.spool else '?'}")
        if self.lost:
            parts.append(f"{self.lost} tracking writes lost: the spool folder {self.spool_dir} is not writable")
        if rejected:
            parts.append(f"{rejected} tracking writes rejected by the store (see the log"
                         + (f" and {self.spool.path / REJECTED}" if self.spool else "") + ")")
        return "; ".join(parts)

    # ------------------------------------------------------------------ the sender thread
    def _ensure_thread(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="lrtrack-tracking", daemon=True)
            self._thread.start()

    def _past_deadline(self) -> bool:
        return self._closing and time.monotonic() >= self._deadline

    def _run(self) -> None:
        delay = self.probe_min_s
        try:
            while True:
                job = self._next_job()
                if job is None:
                    return
                if job is not _REPLAY:
                    self._send(*job)
                elif self._replay_once():
                    delay = self.probe_min_s
                else:
                    with self._cond:
                        pause = min(delay, 1.0) if self._closing else delay
                        self._cond.wait(timeout=max(0.0, min(pause, self._deadline - time.monotonic())))
                    delay = min(delay * 2, self.probe_max_s)
        except Exception:  # a bug: keep what is queued, and let close() report it
            log.exception("the tracking delivery thread failed")
        finally:
            with self._cond:
                self._thread = None
                self._inflight = False
                if self._queue:
                    self._go_offline(RuntimeError("the delivery thread stopped"))
                self._cond.notify_all()

    def _next_job(self) -> Any:
        with self._cond:
            while True:
                if self._past_deadline():
                    if self._queue:
                        self._go_offline(RuntimeError("not delivered before the end"))
                    return None
                if not self.online:
                    return _REPLAY
                if self._queue:
                    self._inflight = True
                    return self._take()
                if self._closing:
                    return None
                self._cond.wait()

    def _take(self) -> tuple[str, list[Any]]:
        rid, first = self._queue.popleft()
        batch = list(first)
        while self._queue and self._queue[0][0] == rid and len(batch) + len(self._queue[0][1]) <= MAX_METRICS_PER_BATCH:
            batch.extend(self._queue.popleft()[1])
        self._queued -= len(batch)
        self._cond.notify_all()  # a producer may be waiting for room
        return rid, batch

    def _send(self, run_id: str, batch: list[Any]) -> None:
        from mlflow.entities import Metric

        batch = [Metric(m.key, m.value, m.timestamp, m.step) for m in batch]
        start = time.perf_counter()
        error: Exception | None = None
        for pause in (*self.retry_delays, None):
            try:
                for lo in range(0, len(batch), MAX_METRICS_PER_BATCH):
                    self.client.log_batch(run_id, metrics=batch[lo:lo + MAX_METRICS_PER_BATCH], synchronous=True)
                error = None
                break
            except Exception as err:
                error = err
                if not is_transient(err) or pause is None or self._past_deadline():
                    break
                if self.probe is not None and not self.probe():
                    break  # the server is gone (not just busy): spool now rather than retry
                log.debug("log_batch to %s failed (%s); retrying in %.1f s", redact(self.tracking_uri),
                          describe(err), pause)
                time.sleep(pause)
        with self._cond:
            self._inflight = False
            if error is None:
                self.sent += len(batch)
                self.send_seconds += time.perf_counter() - start
            elif not is_transient(error):
                self.rejected += len(batch)
                log.error("the tracking store rejected %d metric values of run %s: %s", len(batch), run_id,
                          describe(error))
            else:
                self._go_offline(error)
                self._journal({"op": "metrics", "run": run_id, "metrics": metric_rows(batch)}, len(batch))
            self._cond.notify_all()

    def _replay_once(self) -> bool:
        """One delivery attempt of the spool; True when it is empty and the courier is online again."""
        if self.probe is not None and not self.probe():
            return False
        spool = self.spool
        if spool is None:  # nothing spooled (or nothing could be): send to the store directly
            with self._cond:
                self.online = True
                self._cond.notify_all()
            return True
        try:
            while True:
                replay(self.client, spool, should_stop=self._past_deadline)
                with self._cond:
                    if not spool.has_pending():
                        self.online = True
                        spool.finish()
                        log.warning("tracking store %s is back: the spooled writes were delivered",
                                    redact(self.tracking_uri))
                        self._cond.notify_all()
                        return True
                if self._past_deadline():
                    return False
        except Exception as err:
            if not is_transient(err):
                log.exception("delivering the tracking spool %s failed", spool.path)
            with self._cond:
                self.last_error = describe(err)
            return False
