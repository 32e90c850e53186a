"""The relay: a child process that delivers a spool to the tracking store while it is written.

A tracker started with ``background=True`` (what ``python -m lrtrack`` uses) never talks to
MLflow itself: every write goes to its spool's journal (:mod:`lrtrack.tracking.spool`), and this
process, started at once beside it, imports MLflow, opens (or creates) the store and delivers
the journal as it grows. Why a process and not a thread: MLflow's imports (about 3 s) and a
fresh sqlite store's migrations (about 2 s) are Python that holds the GIL, and beside a
training loop on a machine with few cores the loop's short torch calls wait in line for it
(measured: a 100-step range test took 5-15 s instead of 2.3 s). In its own process that work
runs on another core while the training process imports torch, and at a lower priority
(``nice``) so that it yields the CPU to training when both want it.

The parent talks to it through the child's stdin: a line ``close <seconds>`` says the journal
is complete and how long to keep trying a store that is away; end of file (the parent died,
``kill -9`` included) means the same with the parent's delivery timeout. The child shares the
spool's lock (it inherits the locked descriptor), so ``python -m lrtrack.deliver`` cannot
deliver the same spool twice at once. What it has delivered is recorded in the spool
(``delivered.offset``, ``run_ids.json``), and ``relay.json`` says whether the store is open
and the last error, for the parent's messages. Exit status: 0 everything delivered, 1 not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lrtrack.tracking.redact import redact
from lrtrack.tracking.spool import Spool, describe, is_transient, replay

log = logging.getLogger("lrtrack.tracking.relay")

URI_ENV = "LRTRACK_RELAY_URI"  # the real URI (credentials included) never goes on a command line
STATUS = "relay.json"
POLL_S = 0.25  # how often the journal is looked at while the parent writes it
CLOSING_POLL_S = 0.02
NICENESS = 10


def start_relay(spool: Spool, tracking_uri: str, *, experiment_name: str, timeout_s: float) -> subprocess.Popen[bytes]:
    """Start the relay for ``spool`` (which this process holds locked); see the module docstring."""
    lock_fd = spool.lock_fd
    assert lock_fd is not None
    command = [sys.executable, "-m", "lrtrack.tracking.relay", str(spool.path), "--lock-fd", str(lock_fd),
               "--parent", str(os.getpid()), "--timeout", f"{timeout_s:g}", "--experiment", experiment_name]
    # lrtrack importable from wherever the job runs (a source checkout need not be installed).
    here = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    # Its own session: a Ctrl-C or a signal to the parent's process group does not stop delivery
    # of what was already logged (the parent ends its runs, the relay delivers that).
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, pass_fds=(lock_fd,),
                            env={**os.environ, URI_ENV: tracking_uri, "PYTHONPATH": path}, start_new_session=True)


def read_status(spool_path: Path) -> dict[str, Any]:
    """What the relay last wrote about the store (``{}`` before it wrote anything)."""
    try:
        return json.loads((spool_path / STATUS).read_text())
    except (OSError, ValueError):
        return {}


class _Relay:
    def __init__(self, spool: Spool, uri: str, experiment_name: str, parent: int, timeout_s: float) -> None:
        self.spool = spool
        self.uri = uri
        self.experiment_name = experiment_name
        self.parent = parent
        self.timeout_s = timeout_s
        self.client: Any = None
        self.last_error: str | None = None
        self.deadline: float | None = None  # set when the journal is complete: the parent closed or died
        self.parent_gone = False
        self._status: dict[str, Any] = {}

    def run(self) -> int:
        # The imports first, while the parent imports torch: the store is opened when there is
        # something to deliver (a job that fails in its set-up leaves no empty store behind).
        import mlflow.tracking  # noqa: F401

        if self.uri.lower().startswith("sqlite:"):
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
        delay = POLL_S
        while True:
            delivered = self._deliver()
            if self.deadline is not None:
                if delivered:
                    if self.parent_gone:  # nobody else will: the spool's work is done
                        self.spool.remove()
                    return 0
                if time.monotonic() >= self.deadline:
                    if not self.parent_gone:
                        return 1  # the parent says so, with the same command
                    log.error("lrtrack.tracking.relay: tracking store %s still unavailable (%s): the writes wait in %s; "
                              "deliver them with: python -m lrtrack.deliver %s", redact(self.uri), self.last_error,
                              self.spool.path, self.spool.path)
                    return 1
            failing = self.last_error is not None and not delivered
            delay = min(delay * 2, 5.0) if failing else POLL_S
            self._wait(CLOSING_POLL_S if self.deadline is not None and not failing else delay)

    def _deliver(self) -> bool:
        """Open the store when not yet open, then deliver what is pending; True when nothing is left."""
        try:
            if not self.spool.has_pending():
                return True
            if self.client is None:
                self._open()
            replay(self.client, self.spool, should_stop=self._past_deadline)
            self._set_status(open=True, error=None)
            return not self.spool.has_pending()
        except Exception as err:
            from lrtrack.tracking.runs import TrackingUnavailable

            first = self.last_error is None
            bug = not (is_transient(err) or isinstance(err, TrackingUnavailable))
            self._set_status(open=self.client is not None, error=str(err) if isinstance(err, TrackingUnavailable)
                             else describe(err))
            if first and bug:
                log.error("lrtrack.tracking.relay: delivering %s failed", self.spool.path, exc_info=err)  # its traceback, once
            elif first:
                log.warning("lrtrack: tracking store %s is unavailable (%s); training goes on, its tracking writes "
                            "are kept in %s and delivered when the store is back", redact(self.uri), self.last_error,
                            self.spool.path)
            return False

    def _open(self) -> None:
        from lrtrack.tracking.runs import ensure_experiment, open_store

        client = open_store(self.uri)
        experiment_id = self.spool.meta.get("experiment_id") or ensure_experiment(client, self.experiment_name)
        self.spool.set_experiment(str(experiment_id))
        self.client = client

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _set_status(self, *, open: bool, error: str | None) -> None:
        if error is None and self.last_error is not None:
            log.warning("lrtrack: tracking store %s is back: the spooled writes are being delivered",
                        redact(self.uri))
        self.last_error = error
        status = {"open": open, "last_error": error, "pid": os.getpid()}
        if status != self._status:
            self._status = status
            tmp = self.spool.path / f".{STATUS}.tmp"
            tmp.write_text(json.dumps(status))
            os.replace(tmp, self.spool.path / STATUS)

    def _wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking for a line from the parent or its death."""
        if self.deadline is not None:
            time.sleep(seconds)
            return
        ready, _, _ = select.select([sys.stdin.fileno()], [], [], seconds)
        if ready:
            line = os.read(sys.stdin.fileno(), 4096).decode(errors="replace")
            if not line:  # end of file: the parent is gone
                self.parent_gone = True
                self.deadline = time.monotonic() + self.timeout_s
            elif line.startswith("close"):
                parts = line.split()
                self.deadline = time.monotonic() + (float(parts[1]) if len(parts) > 1 else self.timeout_s)
        elif os.getppid() != self.parent:  # reparented: the parent died (a forked child may hold the pipe)
            self.parent_gone = True
            self.deadline = time.monotonic() + self.timeout_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lrtrack.tracking.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("spool", type=Path)
    parser.add_argument("--lock-fd", type=int, required=True, help="the spool's lock, inherited from the parent")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=60.0, help="how long to try a store that is away at the end")
    parser.add_argument("--experiment", required=True, help="the experiment's name (created when missing)")
    args = parser.parse_args(argv)
    # The parent decides when delivery ends: a Ctrl-C, or the SIGTERM a cluster sends every process
    # of a job it preempts, must not stop the delivery of what the job logs as it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.nice(NICENESS)
    except OSError:
        pass
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # "Creating tables ...": not news
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uri = os.environ.pop(URI_ENV)
    spool = Spool(args.spool.resolve(), args.lock_fd)
    return _Relay(spool, uri, args.experiment, args.parent, args.timeout).run()


if __name__ == "__main__":
    status = main()
    logging.shutdown()
    sys.stderr.flush()
    os._exit(status)  # MLflow's module teardown takes most of a second that the parent would wait for
