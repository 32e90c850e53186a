"""The journal: every tracking write of a job, appended to a file in order, delivered by someone else.

A job never talks to the tracking store. It appends typed operations to its journal and a relay
process (:mod:`lrtrack.tracking.relay`) delivers them as they are written; whatever is left when
both are gone, ``python -m lrtrack.deliver <journal>`` delivers. One mode for every caller (CLI,
notebook, library, sweep callback): what was appended survives ``kill -9`` of the job (each line is
one ``write``, in the kernel's page cache at once) and an outage of the store.

A journal is a folder::

    journal.json     the format version, the store (credentials masked), the experiment's name,
                     the owner (host, pid, process start time)
    ops.jsonl        one operation per line, in order (see :data:`OPS`)
    delivered.json   how far delivery got: the byte offset, lrtrack id -> the store's run id, the
                     experiment's id, the runs still open (written by the deliverer only)
    files/NNNNNN/    artifact files waiting to be delivered (a hard link for a checkpoint), or a
                     trained model waiting to be logged (``log_model``)
    rejected.jsonl   operations the store refused for good (a deleted run, a changed param)
    lock             flock'ed by the job, and by the relay it started, which inherits the lock
    reserve          room kept for the end of a job on a disk that fills up (:data:`RESERVE_BYTES`):
                     released on the first full-disk write, so the runs' error tag and FAILED still
                     fit in the journal

Runs are named by lrtrack's own ids (16 hex digits, :func:`new_run_id`), known at once and tagged
on the run (:data:`RUN_ID_TAG`), so the job never waits for the store to learn an id and a user is
shown one id that works everywhere (``train.resume``, ``train.lr_from``, the report). A tag value
that names another run is written as ``{"ref": id}`` and resolved to the store's id on delivery;
a text naming runs (a pipeline run's description with links) as ``{"text": ..., "refs":
{placeholder: id}}``, each placeholder (and :data:`EXPERIMENT_REF`) replaced on delivery (format 2).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lrtrack.tracking.redact import MASK, redact

FORMAT = 2  # the journal's format version, written in journal.json: a deliverer refuses a journal it does not know
#: The formats this lrtrack delivers: 2 added the ``log_model`` operation, so every format-1 journal
#: is a valid format-2 one; an older lrtrack refuses a format-2 journal at once (it names the format)
#: instead of rejecting its model.
READS = (1, 2)
META = "journal.json"
OPS = "ops.jsonl"
STATE = "delivered.json"
FILES = "files"
REJECTED = "rejected.jsonl"
LOCK = "lock"
RUN_ID_TAG = "lrtrack.run_id"  # on every run: lrtrack's id for it
OWNER_TAG = "lrtrack.owner"  # on every open run: host:pid:start of the process writing it
DELIVER_COMMAND = "python -m lrtrack.deliver"
#: In a tag value ``{"text": ..., "refs": {placeholder: run}}`` (format 2): replaced by the
#: experiment's id in the store, as each placeholder by its run's store id, on delivery.
EXPERIMENT_REF = "@experiment@"
#: The operations and their fields (besides ``op`` and ``run``).
KINDS = {
    "create": ("name", "tags", "start"),  # a new run (tags may hold {"ref": id})
    "reopen": ("tags",),  # an existing run set RUNNING again (train.resume)
    "metrics": ("rows",),  # [[key, value, timestamp_ms, step], ...]
    "params": ("params",),
    "tags": ("tags",),
    "artifact": ("file", "path"),  # file: relative to the journal folder; path: the artifact folder
    # folder: relative to the journal folder, holding model.pt (the whole module, torch.save) and
    # input_example.pt; delivered with mlflow.pytorch.log_model as a logged model of the run
    # (lrtrack.tracking.models), registered as registered_model_name unless it is null; paths: the
    # job's sys.path, where the model's class is imported from.
    "log_model": ("folder", "name", "registered_model_name", "paths"),
    "end": ("status", "end"),
}
FULL_DISK = {errno.ENOSPC, errno.EDQUOT}
RESERVE = "reserve"
RESERVE_BYTES = 32 * 1024
#: What may still be journaled in the reserve once the disk is full: how the runs end and why.
ENDINGS = ("tags", "end", "params")


def _read_meta(path: Path) -> dict[str, Any]:
    """The journal's ``META`` file, or a ValueError naming it (a file cut short, edited, not an object)."""
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path / META} cannot be read as a journal's description ({err}): the journal is "
                         "damaged; its records (journal.jsonl) are kept as they are") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path / META} holds a JSON {type(meta).__name__}, not a journal's description: the "
                         "journal is damaged; its records (journal.jsonl) are kept as they are")
    return meta


class JournalError(RuntimeError):
    """The journal cannot be written; the message names the folder and the fix."""


class DeliveryError(RuntimeError):
    """Writes were not delivered; they wait in ``journal`` (``err.command`` delivers them)."""

    def __init__(self, message: str, journal: Path | None = None) -> None:
        super().__init__(message)
        self.journal = journal
        self.command = f"{DELIVER_COMMAND} {journal}" if journal is not None else None


class JournalBusy(RuntimeError):
    """Another live process (the job, or its relay) holds the journal."""


def new_run_id() -> str:
    """lrtrack's id for a new run: 16 hex digits (MLflow's own ids have 32)."""
    return uuid.uuid4().hex[:16]


def process_start(pid: int) -> str:
    """When ``pid`` started (clock ticks since boot, from /proc), so a reused pid is not taken for
    the process that owned a run; ``""`` where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def owner_id(pid: int | None = None) -> str:
    """``host:pid:start`` of this (or another) process: the value of :data:`OWNER_TAG`."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{process_start(pid)}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process an :data:`OWNER_TAG` names still runs: ``None`` when it is on another host."""
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    return not start or process_start(pid) == start


def full_disk_message(folder: Path, err: OSError) -> str:
    return (f"the disk holding the tracking journal {folder} is full ({err.strerror}): free some space, or set "
            f"tracking.spool_dir to a folder on another disk; what was logged so far is kept there and "
            f"{DELIVER_COMMAND} {folder} delivers it")


def unwritable_message(folder: Path, err: OSError) -> str:
    """The line for a journal that cannot be written for another reason than a full disk (a
    read-only file system, a file where a folder should be...); a full disk has :func:`full_disk_message`."""
    if err.errno in FULL_DISK:
        return full_disk_message(folder, err)
    return (f"cannot write into the tracking journal {folder} ({err.strerror or type(err).__name__}): make that "
            f"folder writable, or set tracking.spool_dir to a writable folder; what was logged before is kept "
            f"there and {DELIVER_COMMAND} {folder} delivers it")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with private_open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


PRIVATE_FILE = 0o600  # the journal's files: params, tags, checkpoints (readable by this user only)
PRIVATE_DIR = 0o700


def private_open(path: Path, mode: str, **kwargs: Any) -> Any:
    """``open(path, mode)``, a new file created readable by this user only (whatever the umask)."""
    flags = os.O_CREAT | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    flags |= os.O_APPEND if "a" in mode else (os.O_TRUNC if "w" in mode else 0)
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def _reserve(path: Path) -> None:
    """Keep :data:`RESERVE_BYTES` on the journal's disk for the job's last writes (none when it is full already)."""
    try:
        with private_open(path, "wb") as fh:
            fh.write(b"\0" * RESERVE_BYTES)
    except OSError:
        path.unlink(missing_ok=True)


def _lock(path: Path, *, blocking: bool) -> int:
    import fcntl  # POSIX; imported here so that importing lrtrack never needs it

    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


class Journal:
    """One journal folder (see the module docstring). :meth:`create` a new one to write (the job),
    :meth:`open` one to deliver (the relay gets the job's lock; ``deliver`` takes it)."""

    def __init__(self, path: Path, lock_fd: int | None) -> None:
        self.path = path
        self.lock_fd = lock_fd
        self._ops = path / OPS
        self._fh: Any = None
        self._files = 0
        self.made_parent = False

    # ------------------------------------------------------------------ open / close
    @classmethod
    def create(cls, parent: str | Path, tracking_uri: str, experiment_name: str) -> Journal:
        """A new, empty journal in a unique sub-folder of ``parent`` (created as needed), readable
        by this user only (it holds tag values, params and checkpoints).

        Raises:
            JournalError: the folder cannot be made (``parent`` is a file, read-only, full...).
        """
        parent = Path(parent).resolve()
        made_parent = not parent.exists()
        path = parent / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        meta = {"format": FORMAT, "tracking_uri": redact(tracking_uri), "experiment_name": experiment_name,
                "owner": owner_id(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "made_parent": made_parent}  # whoever removes the journal removes an emptied parent too
        try:
            if made_parent:  # the spool folder: private too (a user's existing folder is left as it is)
                parent.mkdir(parents=True, mode=PRIVATE_DIR)
            path.mkdir(parents=True, mode=PRIVATE_DIR)
            fd = _lock(path, blocking=True)
            _write_atomic(path / META, json.dumps(meta, indent=1))
            _reserve(path / RESERVE)
        except OSError as err:
            where = parent if not parent.is_dir() or not os.access(parent, os.W_OK) else path
            if err.errno in FULL_DISK:
                raise JournalError(full_disk_message(where, err)) from err
            raise JournalError(f"tracking.spool_dir={str(parent)!r}: cannot create the tracking journal there "
                               f"({err.strerror}): set tracking.spool_dir to a writable folder") from err
        journal = cls(path, fd)
        journal.made_parent = made_parent
        return journal

    @classmethod
    def open(cls, path: str | Path, *, lock_fd: int | None = None) -> Journal:
        """An existing journal; locked for this process unless ``lock_fd`` is the lock it inherited.

        Raises:
            ValueError: not a journal, or one of a format this lrtrack does not read.
            JournalBusy: a live process holds it.
        """
        path = Path(path).resolve()
        if not (path / META).is_file():
            raise ValueError(f"{path} is not an lrtrack tracking journal (no {META} in it)")
        meta = _read_meta(path)
        version = meta.get("format")
        if version not in READS:
            raise ValueError(f"{path} is a tracking journal of format {version!r}; this lrtrack reads formats "
                             f"{', '.join(map(str, READS))}: deliver it with the lrtrack version that wrote it")
        if lock_fd is None:
            try:
                lock_fd = _lock(path, blocking=False)
            except BlockingIOError as err:
                raise JournalBusy(f"{path} is in use by another process (its job or that job's relay is still "
                                  f"delivering it): wait for it to end, then run this again") from err
        journal = cls(path, lock_fd)
        journal.made_parent = bool(meta.get("made_parent"))
        return journal

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / META).read_text())

    def close(self) -> None:
        """Stop writing and release the lock (the folder stays)."""
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def remove(self) -> None:
        """Delete the folder (everything was delivered), and its parent when :meth:`create` made it
        and it is now empty."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        if self.made_parent:
            try:
                self.path.parent.rmdir()
            except OSError:
                pass

    # ------------------------------------------------------------------ writing (the job)
    def append(self, op: str, run: str, **fields: Any) -> None:
        """Append one operation (one ``write``: a reader never sees half a line).

        Raises:
            JournalError: the disk is full (the message names the folder and what to do).
        """
        data = (json.dumps({"op": op, "run": run, **fields}, separators=(",", ":"), default=str) + "\n").encode()
        written = 0
        try:
            if self._fh is None:
                self._fh = private_open(self._ops, "ab", buffering=0)  # held for the job's life
            # An unbuffered write may be short (a disk that fills up takes what fits and says so only
            # on the next write): write the rest, and on an error take back the part that was written,
            # or the next line would be glued to half a line and both be lost to the deliverer.
            while written < len(data):
                written += self._fh.write(data[written:])
        except OSError as err:
            if written:
                self._take_back(written)
            if err.errno in FULL_DISK:
                released = self._release_reserve()
                if released and op in ENDINGS:  # how the runs end, and why, into the room kept for it
                    return self.append(op, run, **fields)
            raise JournalError(unwritable_message(self.path, err)) from err

    def _release_reserve(self) -> bool:
        """Free the room kept for the job's last writes; True when there was some."""
        try:
            (self.path / RESERVE).unlink()
            return True
        except OSError:
            return False

    def _take_back(self, written: int) -> None:
        """Cut the last ``written`` bytes (half a line) off the operations file."""
        try:
            fd = self._fh.fileno()
            os.ftruncate(fd, os.fstat(fd).st_size - written)
        except OSError:  # left as it is: the deliverer rejects that line (rejected.jsonl)
            pass

    def stash(self, name: str) -> tuple[Path, str]:
        """A fresh slot for an artifact file: its absolute path, and the path the journal records.

        Raises:
            JournalError: the slot cannot be made (a full disk, a read-only folder...: the message names it).
        """
        while True:
            self._files += 1
            folder = self.path / FILES / f"{self._files:06d}"
            if not folder.exists():
                break
        try:
            (self.path / FILES).mkdir(mode=PRIVATE_DIR, exist_ok=True)
            folder.mkdir(mode=PRIVATE_DIR)
        except OSError as err:
            raise JournalError(unwritable_message(self.path, err)) from err
        target = folder / (Path(name).name or "artifact")
        return target, str(target.relative_to(self.path))

    @property
    def started(self) -> bool:
        """Anything was ever appended."""
        return self._ops.is_file()

    # ------------------------------------------------------------------ reading (the deliverer)
    def read(self, offset: int, *, final: bool = False) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """``(offset after the line, operation)`` for each whole line from ``offset`` on; a line
        that is not valid JSON (cut short by a crash) is yielded as ``None``. An unfinished last
        line is being written: it is left for the next pass, unless ``final`` (its writer is gone)."""
        if not self._ops.is_file():
            return
        with open(self._ops, "rb") as fh:
            fh.seek(offset)
            for raw in fh:
                if not raw.endswith(b"\n") and not final:  # being written now: the next pass gets it
                    return
                offset += len(raw)
                try:
                    yield offset, json.loads(raw)
                except ValueError:
                    yield offset, None

    def size(self) -> int:
        return self._ops.stat().st_size if self._ops.is_file() else 0

    def load_state(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / STATE).read_text())
        except (OSError, ValueError):
            return {"offset": 0, "ids": {}, "experiment_id": None, "open": []}

    def save_state(self, state: Mapping[str, Any]) -> None:
        try:
            _write_atomic(self.path / STATE, json.dumps(state))
        except OSError:  # a full disk: delivery is idempotent, the next pass redoes what it must
            pass

    def reject(self, op: Mapping[str, Any] | None, reason: str) -> None:
        with private_open(self.path / REJECTED, "a") as fh:
            fh.write(json.dumps({"error": reason, "op": op}) + "\n")

    def rejected(self) -> int:
        f = self.path / REJECTED
        return sum(1 for _ in open(f)) if f.is_file() else 0

    def finish(self) -> None:
        """Everything was delivered: drop the operations and files, keep the record (a second
        ``deliver`` then says "already delivered")."""
        self._ops.unlink(missing_ok=True)
        shutil.rmtree(self.path / FILES, ignore_errors=True)
        state = self.load_state()
        state["offset"] = 0
        self.save_state(state)

    def discard(self, relative: str) -> None:
        """Delete an artifact's copy once it is delivered."""
        target = (self.path / relative).resolve()
        if target.is_relative_to((self.path / FILES).resolve()):
            shutil.rmtree(target.parent, ignore_errors=True)  # its own numbered folder

    def summary(self, offset: int) -> dict[str, int]:
        """What is still undelivered past ``offset``: counts by kind."""
        counts = {"metric values": 0, "params": 0, "tags": 0, "artifacts": 0, "models": 0, "runs to create": 0,
                  "run endings": 0}
        for _, op in self.read(offset):
            kind = op.get("op") if op else None
            if kind == "metrics":
                counts["metric values"] += len(op["rows"])  # type: ignore[index]
            elif kind in ("params", "tags"):
                counts[kind] += len(op[kind])  # type: ignore[index]
            elif kind in ("artifact", "log_model", "create", "end"):
                counts[{"artifact": "artifacts", "log_model": "models", "create": "runs to create",
                        "end": "run endings"}[kind]] += 1
        return counts


SINGULAR = {"metric values": "metric value", "params": "param", "tags": "tag", "artifacts": "artifact", "models": "model",
            "runs to create": "run to create", "run endings": "run ending"}


def summary_text(counts: Mapping[str, int]) -> str:
    """``{"metric values": 3, "runs to create": 1}`` -> ``"3 metric values, 1 run to create"``."""
    parts = [f"{n} {SINGULAR.get(what, what) if n == 1 else what}" for what, n in counts.items() if n]
    return ", ".join(parts) if parts else "nothing"


def needs_uri(meta_uri: str) -> bool:
    """The journal's URI had credentials (masked on disk): delivery needs the real URI given again."""
    return f"{MASK}@" in meta_uri


def find_journals(path: str | Path) -> list[Path]:
    """``path`` itself when it is a journal, else every journal folder below it (oldest first)."""
    path = Path(path)
    if (path / META).is_file():
        return [path]
    return sorted(p.parent for p in path.rglob(META)) if path.is_dir() else []
