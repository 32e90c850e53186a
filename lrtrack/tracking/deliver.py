"""``python -m lrtrack.deliver <journal>``: deliver the tracking writes a job could not deliver.

When the tracking store is away at the end of a job (or the job and its relay were killed), its
metrics, params, tags, artifacts and run endings wait in its journal folder; the job exits 1 and
prints this command. Run it when the store is back: everything goes into the same runs, exactly
once, runs left open end KILLED, and runs of this host whose job is gone are ended too. Running it
again is harmless ("already delivered").

    python -m lrtrack.deliver outputs/2026-01-01/12-00-00/tracking-spool/20260101-120500-4242-ab12cd
    python -m lrtrack.deliver outputs/                       # every journal under a folder
    python -m lrtrack.deliver <journal> --tracking-uri http://user:pass@host:5000   # URI had credentials
    python -m lrtrack.deliver <journal> --timeout 300        # wait longer for the store

Exit status: 0 everything delivered, 1 the store is still away (the journal is kept: run it again
later) or it rejected some writes, 2 bad input (not a journal, the wrong store: one that does not
hold the runs the journal delivered before).

An sqlite file that is not there is the store away (moved, deleted, not mounted): it is waited
for as a server that is down (up to --timeout), then named in the one line that says the journal is
kept; it is never made anew in its place. The one exception: a store named with --tracking-uri, for
a journal that delivered nothing yet, is created (everything then goes there).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import NoReturn

from lrtrack.tracking.drain import Control, drain
from lrtrack.tracking.journal import (
    DELIVER_COMMAND,
    META,
    REJECTED,
    DeliveryError,
    Journal,
    JournalBusy,
    find_journals,
    needs_uri,
    summary_text,
)
from lrtrack.tracking.redact import install_log_redaction, redact, register_url_credentials


def deliver_journal(path: str | Path, *, tracking_uri: str | None = None, timeout_s: float = 60.0) -> dict[str, int]:
    """Deliver one journal into its store, waiting at most ``timeout_s`` for the store to answer.
    A missing sqlite file is waited for, and never created, unless ``tracking_uri`` names it and the
    journal has delivered nothing yet.

    Returns what was delivered (counts by kind); empty when it had been delivered already.

    Raises:
        ValueError: not a journal, or its URI had credentials and none was given, or the store does
            not hold the runs it delivered before (:class:`~lrtrack.tracking.drain.StoreMismatch`).
        JournalBusy: its job (or that job's relay) is still delivering it.
        DeliveryError: the store is still away, its sqlite file not there included (the journal is
            kept), or it rejected writes.
    """
    journal = Journal.open(path)
    try:
        uri = tracking_uri or journal.meta["tracking_uri"]
        if needs_uri(uri):
            raise ValueError(f"the journal's tracking URI had credentials, which are never stored ({uri}): give it "
                             f"again with --tracking-uri")
        state = journal.load_state()
        counts = journal.summary(state["offset"])
        # A new store only where the user names one (--tracking-uri) for a journal that delivered
        # nothing yet: everything goes there, and no run is split between two stores.
        create = tracking_uri is not None and not state.get("ids") and not state.get("experiment_id")
        delivery = drain(journal, uri, Control(timeout_s), create_store=create, announce=False)  # one line, below
        if delivery.pending or delivery.state["open"]:
            raise DeliveryError(f"tracking store {redact(uri)} is still unavailable after {timeout_s:g} s "
                                f"({delivery.last_error}): {summary_text(journal.summary(delivery.state['offset']))} "
                                f"kept in {journal.path}; run {DELIVER_COMMAND} {journal.path} again when it is back",
                                journal.path)
        if journal.rejected():
            raise DeliveryError(f"{journal.rejected()} journal writes were rejected by {redact(uri)}: see "
                                f"{journal.path / REJECTED}")
        journal.finish()
        return counts
    finally:
        journal.close()


class OneLineParser(argparse.ArgumentParser):
    """A command's bad arguments as one ``lrtrack: error:`` line (argparse prints its usage block
    first), naming ``--help`` for the rest; exit 2 as argparse does."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"lrtrack: error: {self.prog}: {message}; see {self.prog} --help\n")


def _seconds(text: str) -> float:
    """``--timeout``: a finite number of seconds >= 0 (argparse turns the error into one line, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0; e.g. --timeout 300")
    return value


def main(argv: list[str] | None = None) -> int:
    """The command; returns the exit status."""
    parser = OneLineParser(prog=DELIVER_COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a journal folder, or a folder to search for journals")
    parser.add_argument("--tracking-uri", default=None, help="the store (default: the one the journal recorded)")
    parser.add_argument("--timeout", type=_seconds, default=60.0, help="seconds to wait for the store (default 60)")
    args = parser.parse_args(argv)
    install_log_redaction()  # an error's message or traceback may quote a URI with its password
    register_url_credentials(args.tracking_uri)
    if not args.path.strip():  # '' would search the current folder
        print("lrtrack: error: the journal path is empty; name a journal folder (or a folder to search)",
              file=sys.stderr)
        return 2
    journals = find_journals(args.path)
    if not journals:
        print(f"lrtrack: error: no lrtrack tracking journal at {args.path} (a journal folder holds {META})",
              file=sys.stderr)
        return 2
    status = 0
    for path in journals:
        try:
            counts = deliver_journal(path, tracking_uri=args.tracking_uri, timeout_s=args.timeout)
        except (ValueError, JournalBusy, DeliveryError) as err:
            print(f"lrtrack: error: {redact(str(err))}", file=sys.stderr)
            status = max(status, 2 if isinstance(err, ValueError) else 1)
            continue
        print(f"delivered {summary_text(counts)} from {path}" if any(counts.values()) else f"{path}: already delivered")
    return status


if __name__ == "__main__":
    sys.exit(main())
