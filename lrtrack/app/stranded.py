"""Journals an earlier job left undelivered, delivered before the next job starts.

A job and its relay killed together (``kill -9`` of the process group, the OOM killer, a node
that lost power) leave their records in the job's journal, and a run that was never delivered
cannot be resumed or reviewed. The next ``python -m lrtrack`` in the same launch folder looks in
the places a journal lives (each job's ``tracking-spool``, a sweep's, ``tracking.spool_dir``),
delivers each journal nobody holds (a live job's relay holds its own), and says so. A store that
is away, or a URI whose credentials are not stored, leaves the journal where it is, with the
command that delivers it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

log = logging.getLogger("lrtrack")

#: Where jobs launched from a folder keep their journals (Hydra's default output folders).
JOURNAL_GLOBS = ("outputs/*/*/tracking-spool/*/journal.json", "multirun/*/*/tracking-spool/*/journal.json",
                 "multirun/*/*/*/tracking-spool/*/journal.json")
MAX_JOURNALS = 50  # a folder with more stranded journals than this is left to lrtrack.deliver
TIMEOUT_S = 10.0  # per journal: a store that does not answer leaves it for later


def stranded_journals(launch_dir: Path, spool_dir: Path | None) -> list[Path]:
    """Journal folders under ``launch_dir``'s output folders and ``spool_dir``, oldest first."""
    found = {p.parent for pattern in JOURNAL_GLOBS for p in launch_dir.glob(pattern)}
    if spool_dir is not None and spool_dir.is_dir():
        found |= {p.parent for p in spool_dir.glob("*/journal.json")}
    return sorted(found, key=lambda p: p.name)[:MAX_JOURNALS]


def deliver_stranded(launch_dir: Path, spool_dir: Path | None, tracking_uri: str) -> None:
    """Deliver every journal an earlier job left behind (see the module docstring); never raises
    for a journal it cannot deliver: it says why and how, and the job goes on."""
    from lrtrack.tracking.deliver import DELIVER_COMMAND, deliver_journal
    from lrtrack.tracking.journal import (
        OPS,
        DeliveryError,
        Journal,
        JournalBusy,
        JournalError,
        needs_uri,
        summary_text,
    )
    from lrtrack.tracking.redact import redact

    for path in stranded_journals(launch_dir, spool_dir):
        if not (path / OPS).is_file():  # delivered by hand already (deliver keeps the record)
            continue
        try:
            uri = _recorded_uri(path)
            given = tracking_uri if needs_uri(uri) and uri == redact(tracking_uri) else None
            counts = deliver_journal(path, tracking_uri=given, timeout_s=TIMEOUT_S)
        except JournalBusy:
            continue  # its job or its relay is alive and delivering it
        except (ValueError, DeliveryError, JournalError, OSError) as err:
            log.warning("an earlier job's records wait undelivered in %s (%s); deliver them with: %s %s",
                        path, redact(str(err)), DELIVER_COMMAND, path)
            continue
        if counts:
            log.warning("delivered what an earlier job left undelivered in %s (its job and relay were stopped "
                        "together): %s", path, summary_text(counts))
        with contextlib.suppress(JournalBusy, JournalError, OSError):
            Journal.open(path).remove()  # its work is done, as a relay removes its own journal


def _recorded_uri(path: Path) -> str:
    import json

    from lrtrack.tracking.journal import META

    return str(json.loads((path / META).read_text()).get("tracking_uri", ""))
