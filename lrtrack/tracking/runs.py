"""The job's side of tracking: a :class:`Tracker` starts runs, a :class:`TrackedRun` logs into one.

Neither talks to the store or imports MLflow: every write is appended to the tracker's journal
(:mod:`lrtrack.tracking.journal`) and delivered by the relay process the tracker starts
(:mod:`lrtrack.tracking.relay`). One mode for every caller (CLI, notebook, library, sweep): ``kill -9``
of the job loses nothing already logged, and the job never waits on the store until
:meth:`Tracker.close`, which waits at most ``delivery_timeout_s`` and raises :class:`DeliveryError`
(naming ``python -m lrtrack.deliver``) when something is still undelivered. A run's id is
lrtrack's own, known at once; the store's follows on delivery, and every reader accepts either.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrtrack.tracking.journal import (
    DELIVER_COMMAND,
    OWNER_TAG,
    PRIVATE_FILE,
    REJECTED,
    DeliveryError,
    Journal,
    JournalError,
    new_run_id,
    owner_id,
    summary_text,
)
from lrtrack.tracking.layout import MAX_PARAM_VALUE, PARENT_TAG, RUN_LINK_TAGS
from lrtrack.tracking.redact import redact, redact_tree

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient

__all__ = ["DeliveryError", "JournalError", "TrackedRun", "Tracker", "resume_lock"]

log = logging.getLogger(__name__)

RELAY_START_SLACK_S = 30.0  # a relay may still be importing MLflow and opening the store at the end
INTERRUPT_WAIT_S = 1.5  # a stopped job (Ctrl-C, SIGTERM) waits this long for its relay, then leaves it to deliver


def deliver_command(journal: Path, tracking_uri: str) -> str:
    """The command that delivers ``journal``, as it works when typed: the journal keeps its store's URI
    with the credentials masked, so a URI with credentials must be given again (never printed)."""
    import shlex

    from lrtrack.tracking.journal import needs_uri

    command = f"{DELIVER_COMMAND} {shlex.quote(str(journal))}"
    return command + " --tracking-uri <the store's URI, with its credentials>" if needs_uri(redact(tracking_uri)) \
        else command


def safe_key(key: str) -> str:
    """MLflow keys allow ``[\\w./ -]``; Hydra's ``+model`` style keys do not."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def _store_to_create(tracking_uri: str) -> bool:
    """True when ``tracking_uri`` is an sqlite store whose file is not there as the job starts: its
    relay creates it. Only then: a file missing later is the store away (moved, deleted), and a new,
    empty store in its place would take what the real one never sees."""
    from lrtrack.tracking.store import TrackingUnavailable, sqlite_path

    try:
        path = sqlite_path(tracking_uri)
    except TrackingUnavailable:
        return False
    return path is not None and not path.exists()


def _tag_values(tags: Mapping[str, Any]) -> dict[str, Any]:
    """Tag values as the journal holds them: a run link as ``{"ref": id}``, a text naming runs as
    ``{"text": ..., "refs": {placeholder: id}}`` (:class:`~lrtrack.tracking.layout.RunText`), else text."""
    return {safe_key(k): {"ref": str(v)} if k in RUN_LINK_TAGS else
            v.as_journal() if hasattr(v, "as_journal") else str(v) for k, v in tags.items()}


def _dump_dict(data: Any, path: Path) -> None:
    """What ``MlflowClient.log_dict`` writes: YAML for .yaml/.yml, else indented JSON."""
    with open(path, "w") as fh:
        if path.suffix in (".yml", ".yaml"):
            import yaml

            yaml.dump(data, fh, indent=2, default_flow_style=False)
        else:
            json.dump(data, fh, indent=2, default=str)


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as CSV with a header of ``columns`` (default: the first row's keys, then any new ones;
    keys not in ``columns`` are left out), None written empty."""
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class TrackedRun:
    """One run: its per-step metrics, params, tags, artifacts and how it ends, all journaled.

    Also a step observer (``on_step``, ``on_checkpoint``), so it can be handed to the engine.
    """

    enabled = True

    def __init__(self, journal: Journal, run_id: str) -> None:
        self.journal = journal
        self.run_id = run_id
        self._ended = False

    def _append(self, op: str, **fields: Any) -> None:
        self.journal.append(op, self.run_id, **fields)

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """One line per step: on disk (in the page cache) before the next step starts."""
        now = int(time.time() * 1000)
        self._append("metrics", rows=[[k, float(v), now, step] for k, v in metrics.items()])

    def log_summary(self, metrics: Mapping[str, float], step: int = 0) -> None:
        finite = {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}
        if finite:
            self.on_step(step, finite)

    # Every value written passes redact_tree (credentials masked, lrtrack.tracking.redact); metrics are numbers.
    def log_params(self, params: Mapping[str, Any]) -> None:
        if params:
            params = redact_tree(dict(params))
            self._append("params", params={safe_key(k): str(v)[:MAX_PARAM_VALUE] for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if tags:
            self._append("tags", tags=_tag_values(redact_tree(dict(tags))))

    def _log_file(self, artifact_file: str, write: Any) -> None:
        folder, _, name = artifact_file.replace("\\", "/").rpartition("/")
        with self._full_disk_is_journal_error():
            target, relative = self.journal.stash(name)
            write(target)
            target.chmod(PRIVATE_FILE)
        self._append("artifact", file=relative, path=folder or None)

    @contextlib.contextmanager
    def _full_disk_is_journal_error(self) -> Iterator[None]:
        """A file that cannot be written into the journal (a full disk, a read-only folder...): one line
        naming the folder, not OSError. An error about a file outside the journal (the source of a
        copy) is raised as it is."""
        from lrtrack.tracking.journal import FULL_DISK, unwritable_message

        try:
            yield
        except OSError as err:
            # shutil's copies name the source as filename and the copy (in the journal) as filename2
            named = [Path(os.path.abspath(f)) for f in (err.filename, err.filename2) if isinstance(f, (str, Path))]
            if named and err.errno not in FULL_DISK and not any(p.is_relative_to(self.journal.path) for p in named):
                raise
            raise JournalError(unwritable_message(self.journal.path, err)) from err

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        # lrtrack's figures are plain matplotlib Figures (no pyplot), so there is nothing to close.
        self._log_file(artifact_file, lambda path: figure.savefig(path))

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._log_file(artifact_file, lambda path: _dump_dict(redact_tree(data), path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._log_file(artifact_file, lambda path: path.write_text(redact(text)))

    def log_rows_csv(self, rows: Iterable[Mapping[str, Any]], artifact_file: str,
                     columns: Sequence[str] | None = None) -> None:
        """A list of dicts as CSV (:func:`csv_text`)."""
        self.log_text(csv_text(rows, columns), artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None, *, replaced_not_rewritten: bool = False
                     ) -> None:
        """A local file or folder; a copy waits in the journal until it is delivered.

        ``replaced_not_rewritten``: the file is only ever replaced whole (written aside, then
        ``os.replace``), so the journal may hard-link it instead of copying (a checkpoint: no
        second copy of the model written per epoch).
        """
        source = Path(path)
        with self._full_disk_is_journal_error():
            target, relative = self.journal.stash(source.name)
            if source.is_dir():
                shutil.copytree(source, target)
            elif replaced_not_rewritten:
                try:
                    os.link(source, target)
                except OSError:  # another file system, or one without hard links
                    shutil.copy2(source, target)
            else:  # it may change in place before it is delivered
                shutil.copy2(source, target)
            if target.is_file():
                target.chmod(PRIVATE_FILE)  # readable by this user only, as everything in the journal
        self._append("artifact", file=relative, path=artifact_path)

    def log_model(self, model: Any, *, name: str, input_example: Any = None,
                  registered_model_name: str | None = None) -> None:
        """The trained ``model`` as an MLflow logged model of this run (with ``input_example`` and a
        signature inferred from it), registered as ``registered_model_name`` when given. The job
        writes the module into the journal; the deliverer calls ``mlflow.pytorch.log_model``
        (:mod:`lrtrack.tracking.models`)."""
        import sys

        from lrtrack.tracking.models import save_model

        with self._full_disk_is_journal_error():
            target, relative = self.journal.stash("model")
            target.mkdir()
            save_model(model, input_example, target)
        self._append("log_model", folder=relative, name=name, registered_model_name=registered_model_name,
                     paths=[p for p in sys.path if p])

    def on_checkpoint(self, path: str | Path, step: int) -> None:
        """A checkpoint was written at ``step``; every metric before it is already journaled."""
        self.log_artifact(path, "checkpoints", replaced_not_rewritten=True)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED (delivered after everything logged before)."""
        if self._ended:
            return
        self._ended = True
        try:
            self._append("end", status=status, end=int(time.time() * 1000))
        except JournalError as err:  # the disk is full: the relay ends the run KILLED when the job stops
            log.error("%s", err)

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")


class Tracker:
    """A journal for one job, the relay that delivers it, and the runs logged into it.

    Args:
        tracking_uri, experiment_name: the store, and the experiment (created when missing).
        spool_dir: the folder the journal is made in (a sub-folder per tracker; default ``./lrtrack-spool``).
        delivery_timeout_s: how long :meth:`close` (or the relay, when the job died) waits for a
            store that is away.

    Raises:
        JournalError: the journal cannot be made in ``spool_dir`` (one line naming the folder).
    """

    enabled = True

    def __init__(self, tracking_uri: str, experiment_name: str, *, spool_dir: str | Path | None = None,
                 delivery_timeout_s: float = 60.0) -> None:
        from lrtrack.tracking.relay import start_relay

        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.delivery_timeout_s = float(delivery_timeout_s)
        self.journal = Journal.create(spool_dir or Path.cwd() / "lrtrack-spool", tracking_uri, experiment_name)
        self._experiment_id: str | None = None
        self._client: MlflowClient | None = None
        self._store_ids: dict[str, str] = {}
        self._closed = False
        self._relay: subprocess.Popen[bytes] | None = None
        try:
            self._relay = start_relay(self.journal, tracking_uri, self.delivery_timeout_s,
                                      create_store=_store_to_create(tracking_uri))
        except OSError as err:  # cannot start a process: the journal waits for python -m lrtrack.deliver
            log.error("the tracking relay could not start (%s): tracking writes are kept in %s", err, self.journal.path)
        atexit.register(self._close_at_exit)

    @property
    def experiment_id(self) -> str | None:
        """The experiment's id in the store, once the relay has opened it."""
        return self._experiment_id or self.journal.load_state().get("experiment_id")

    @property
    def client(self) -> MlflowClient:
        """A client of the store in this process, to read runs back (``train.lr_from``, resume)."""
        if self._client is None:
            from lrtrack.tracking.store import open_store

            self._client = open_store(self.tracking_uri)
        return self._client

    def start_run(self, name: str, *, tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None,
                  run_id: str | None = None) -> TrackedRun:
        """A new run, named by lrtrack's id at once (``run_id``, or a new one); the relay creates it
        in the store."""
        all_tags = {**(tags or {}), OWNER_TAG: owner_id()}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run_id = run_id or new_run_id()
        self.journal.append("create", run_id, name=redact(name), tags=_tag_values(redact_tree(all_tags)),
                            start=int(time.time() * 1000))
        return TrackedRun(self.journal, run_id)

    def run(self, run_id: str) -> TrackedRun:
        """A run started elsewhere (another job's journal), to log more into through this journal."""
        return TrackedRun(self.journal, run_id)

    def reopen_run(self, run_id: str, store_id: str) -> TrackedRun:
        """An existing run (lrtrack's id and the store's), set RUNNING again to log into (``train.resume``)."""
        self.journal.append("reopen", run_id, store_id=store_id, tags={OWNER_TAG: owner_id()})
        return TrackedRun(self.journal, run_id)

    def store_id(self, run_id: str) -> str:
        """The store's id of a run once :meth:`close` has delivered it (else lrtrack's id, which
        lrtrack's readers accept too)."""
        return self._store_ids.get(run_id, run_id)

    @property
    def undelivered(self) -> Path | None:
        """The journal folder while it holds writes not yet delivered, else ``None``."""
        return self.journal.path if self._pending(self.journal.load_state()) else None

    def _pending(self, state: Mapping[str, Any]) -> bool:
        return self.journal.size() > state["offset"] or bool(state["open"])

    def close(self, timeout_s: float | None = None) -> None:
        """Tell the relay the journal is complete and wait (at most ``timeout_s``, default
        ``delivery_timeout_s``) until it is delivered; then remove the journal. Idempotent. Raises
        :class:`DeliveryError` when something was not delivered: its message, the line to show, names
        the journal and the ``python -m lrtrack.deliver`` command."""
        if self._closed:
            return
        self._closed = True
        timeout_s = self.delivery_timeout_s if timeout_s is None else float(timeout_s)
        relay = self._relay
        if relay is not None:
            try:
                self._stop_relay(relay, timeout_s)
            except KeyboardInterrupt:  # stopped while waiting: the relay delivers on, then removes the journal
                self.journal.close()
                raise
        state = self.journal.load_state()
        self._experiment_id = state.get("experiment_id")
        self._store_ids = dict(state.get("ids", {}))
        pending = self._pending(state)
        rejected = self.journal.rejected() if self.journal.path.exists() else 0
        if not pending and not rejected:
            self.journal.remove()
            return
        self.journal.close()
        raise DeliveryError(self._failure(state, pending, rejected, relay, timeout_s),
                            self.journal.path if pending else None)

    def _stop_relay(self, relay: subprocess.Popen[bytes], timeout_s: float) -> None:
        assert relay.stdin is not None
        if not self.journal.started:  # nothing was logged: nothing to wait for, no store to make
            relay.kill()
        else:
            try:
                relay.stdin.write(f"close {timeout_s:g}\n".encode())
                relay.stdin.flush()
            except OSError:  # it is gone already: what it did not deliver is counted by the caller
                pass
        with contextlib.suppress(OSError):
            relay.stdin.close()
        try:
            relay.wait(timeout=timeout_s + RELAY_START_SLACK_S)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()

    def _failure(self, state: Mapping[str, Any], pending: bool, rejected: int, relay: Any, waited: float) -> str:
        where, path = redact(self.tracking_uri), self.journal.path
        parts = []
        if pending:
            what = summary_text(self.journal.summary(state["offset"])) if self.journal.size() > state["offset"] \
                else f"the ending of {len(state['open'])} run(s)"
            error = state.get("last_error")
            if error is None and relay is not None and relay.returncode not in (0, None):
                reason = f"the tracking relay stopped (exit status {relay.returncode})"
            elif error is None and relay is None:
                reason = "the tracking relay could not start"
            else:
                reason = f"tracking store {where} still unavailable ({error}) after waiting {waited:g} s"
            parts.append(f"{reason}: {what} not delivered, kept in {path}; deliver them with: "
                         f"{deliver_command(path, self.tracking_uri)}")
        if rejected:
            parts.append(f"{rejected} tracking writes rejected by the store (see the log and {path / REJECTED})")
        return "; ".join(parts)

    def _close_at_exit(self) -> None:
        if self._closed:
            return
        try:
            self.close()
        except DeliveryError as err:
            log.error("%s", err)

    def __enter__(self) -> Tracker:
        return self

    def hand_over(self, wait_s: float = INTERRUPT_WAIT_S) -> None:
        """The job stops now (Ctrl-C, SIGTERM): leave what it journaled to the relay, waiting at most
        ``wait_s`` for it. The relay, told the job is gone (end of its input), delivers everything,
        ends the runs left open KILLED and removes the journal, after this process has exited if
        need be (it runs in its own session, so the signal that stopped the job does not reach it)."""
        if self._closed:
            return
        self._closed = True
        relay = self._relay
        if not self.journal.started:  # nothing was logged: nothing to deliver
            if relay is not None:
                relay.kill()
                relay.wait()
            self.journal.remove()
            return
        if relay is None or relay.poll() is not None:  # it could not start, or it died (kill -9, a crash)
            self.journal.close()
            why = "could not start" if relay is None else f"stopped (exit status {relay.returncode})"
            log.error("the tracking relay %s: nothing more reaches the store (its runs stay RUNNING there, not "
                      "KILLED); their records wait in the journal %s; deliver them with: %s", why, self.journal.path,
                      deliver_command(self.journal.path, self.tracking_uri))
            return
        with contextlib.suppress(OSError):
            relay.stdin.close()  # type: ignore[union-attr]
        try:
            relay.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            log.info("the tracking relay (pid %d) goes on delivering the runs in the background", relay.pid)
        self.journal.close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.hand_over()  # stop within seconds: the relay delivers on
            return
        try:
            self.close()
        except DeliveryError as err:
            if exc_type is None:
                raise
            log.error("%s", err)  # do not hide the error that is already on its way


@contextlib.contextmanager
def resume_lock(tracking_uri: str, run_id: str) -> Iterator[None]:
    """Hold this host's lock on resuming ``run_id`` of ``tracking_uri``: a second ``train.resume`` of
    the same run gets a RuntimeError naming the holder instead of training into it at the same time."""
    import fcntl

    key = hashlib.sha1(f"{tracking_uri}\n{run_id}".encode()).hexdigest()[:20]
    folder = Path(tempfile.gettempdir()) / f"lrtrack-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(folder / f"resume-{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            raise RuntimeError(f"train.resume={run_id!r}: another lrtrack job ({holder}) is resuming this run now; "
                               f"wait for it to end") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        yield
    finally:
        os.close(fd)
