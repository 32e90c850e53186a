"""The relay: a child process that delivers a job's journal while the job writes it.

Every :class:`~lrtrack.tracking.runs.Tracker` starts one. Why a process and not a thread: MLflow's
imports (about 3 s) and a fresh sqlite store's migrations are Python that holds the GIL, and beside
a training loop on a machine with few cores the loop's short torch calls wait in line for it. In
its own process that work runs on another core, at a lower priority (``nice``), and the job never
imports MLflow.

The job talks to it through the child's stdin: a line ``close <seconds>`` says the journal is
complete and how long to keep trying a store that is away. End of file, or the relay being
re-parented, means the job died (``kill -9`` included): the relay delivers everything, ends the
runs the job left open as KILLED, and removes the journal. It inherits the journal's lock, so
``python -m lrtrack.deliver`` cannot deliver the same journal at once. Exit status: 0 everything
delivered, 1 not (the journal is kept for ``deliver``).

An sqlite store the job found missing at its start (``--create-store``) is created by the relay's
first open; from then on, and always otherwise, a missing file is the store away: it waits for it.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from lrtrack.tracking.drain import Control, StoreMismatch, drain
from lrtrack.tracking.journal import DELIVER_COMMAND, Journal
from lrtrack.tracking.redact import install_log_redaction, redact, register_url_credentials

log = logging.getLogger(__name__)

URI_ENV = "LRTRACK_RELAY_URI"  # the real URI (credentials included) never goes on a command line
NICENESS = 10


def start_relay(journal: Journal, tracking_uri: str, timeout_s: float, *,
                create_store: bool = False) -> subprocess.Popen[bytes]:
    """Start the relay for ``journal`` (which this process holds locked). ``create_store``: the job
    is starting and its sqlite store is not there yet: the relay's first open creates it."""
    assert journal.lock_fd is not None
    command = [sys.executable, "-m", "lrtrack.tracking.relay", str(journal.path), "--lock-fd", str(journal.lock_fd),
               "--parent", str(os.getpid()), "--timeout", f"{timeout_s:g}", *(["--create-store"] if create_store else [])]
    # lrtrack importable from wherever the job runs (a source checkout need not be installed).
    here = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    # Its own session: a Ctrl-C or a signal to the job's process group does not stop the delivery
    # of what was already logged (the job ends its runs, the relay delivers that).
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, pass_fds=(journal.lock_fd,),
                            env={**os.environ, URI_ENV: tracking_uri, "PYTHONPATH": path}, start_new_session=True)


class ParentControl(Control):
    """The drain runs until the job says ``close`` (or dies), then until its timeout."""

    def __init__(self, parent: int, timeout_s: float) -> None:
        self.parent = parent
        self.timeout_s = timeout_s
        self._deadline: float | None = None
        self.parent_gone = False

    def complete(self) -> bool:
        if self._deadline is None:
            self.wait(0.0)
        return self._deadline is not None

    def deadline(self) -> float | None:
        return self._deadline

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking for a line from the job or its death."""
        if self._deadline is not None:
            time.sleep(max(0.0, min(seconds, self._deadline - time.monotonic())))
            return
        ready, _, _ = select.select([sys.stdin.fileno()], [], [], seconds)
        if ready:
            line = os.read(sys.stdin.fileno(), 4096).decode(errors="replace")
            if not line:  # end of file: the job is gone
                self._gone()
            elif line.startswith("close"):
                parts = line.split()
                self._deadline = time.monotonic() + (float(parts[1]) if len(parts) > 1 else self.timeout_s)
        elif os.getppid() != self.parent:  # re-parented: the job died (a forked child may hold the pipe)
            self._gone()

    def _gone(self) -> None:
        self.parent_gone = True
        self._deadline = time.monotonic() + self.timeout_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lrtrack.tracking.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("journal", type=Path)
    parser.add_argument("--lock-fd", type=int, required=True, help="the journal's lock, inherited from the job")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=60.0, help="how long to try a store that is away at the end")
    parser.add_argument("--create-store", action="store_true",
                        help="the job found no sqlite store at its start: the first open creates it")
    args = parser.parse_args(argv)
    install_log_redaction()  # an error's message or traceback may quote a URI with its password
    # The job decides when delivery ends: a Ctrl-C, or the SIGTERM a cluster sends every process of
    # a job it preempts, must not stop the delivery of what the job logs as it stops.
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
    register_url_credentials(uri)  # a password holding a space or a quote: masked as a literal too
    journal = Journal.open(args.journal, lock_fd=args.lock_fd)
    import mlflow.tracking  # noqa: F401 - while the job imports torch, before there is anything to deliver

    control = ParentControl(args.parent, args.timeout)
    try:
        delivery = drain(journal, uri, control, create_store=args.create_store)
    except StoreMismatch as err:  # the store was replaced under the job: what waits is kept, not misdelivered
        log.error("lrtrack relay: %s; the writes wait in %s", err, journal.path)
        return 1
    if delivery.pending or delivery.state["open"]:
        if control.parent_gone:
            log.error("lrtrack relay: tracking store %s still unavailable (%s): the writes wait in %s; deliver "
                      "them with: %s %s", redact(uri), delivery.last_error, journal.path, DELIVER_COMMAND, journal.path)
        return 1
    job_gone = control.parent_gone or os.getppid() != args.parent  # also a job stopped while it waited for us
    if job_gone and not journal.rejected():  # nobody else will: the journal's work is done
        journal.remove()
    return 0


if __name__ == "__main__":
    status = main()
    logging.shutdown()
    sys.stderr.flush()
    os._exit(status)  # MLflow's module teardown takes most of a second that the job would wait for
