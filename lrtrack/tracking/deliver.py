"""``python -m lrtrack.deliver <spool>``: deliver the tracking writes a run could not deliver.

When the tracking store is away at the end of a run, lrtrack keeps the undelivered metrics,
params, tags, artifacts and run endings in a spool folder, exits 1 and prints this command.
Run it when the store is back: everything goes into the same runs, exactly once (see
:mod:`lrtrack.tracking.spool`), and runs left RUNNING get their final status. Running it again is
harmless ("already delivered").

    python -m lrtrack.deliver outputs/2026-01-01/12-00-00/tracking-spool/20260101-120500-4242-ab12cd
    python -m lrtrack.deliver outputs/                       # every spool under a folder
    python -m lrtrack.deliver <spool> --tracking-uri http://user:pass@host:5000   # URI had credentials
    python -m lrtrack.deliver <spool> --timeout 300          # wait longer for the store

Exit status: 0 everything delivered, 1 the store is still away (the spool is kept: run it
again later) or it rejected some writes, 2 bad input (not a spool, the wrong store).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lrtrack.tracking.redact import redact
from lrtrack.tracking.spool import (
    DELIVER_COMMAND,
    DELIVERED,
    META,
    REJECTED,
    DeliveryError,
    Spool,
    SpoolBusy,
    describe,
    is_transient,
    needs_uri,
    replay,
    summary_text,
)


def find_spools(path: str | Path) -> list[Path]:
    """``path`` itself when it is a spool, else every spool folder below it (oldest first)."""
    path = Path(path)
    if (path / META).is_file():
        return [path]
    return sorted(p.parent for p in path.rglob(META)) if path.is_dir() else []


def deliver_spool(path: str | Path, *, tracking_uri: str | None = None, timeout_s: float = 60.0) -> dict[str, int]:
    """Deliver one spool into its store, waiting at most ``timeout_s`` for the store to answer.

    Args:
        path: the spool folder.
        tracking_uri: the store, when not the one the spool recorded (it is needed when the
            recorded URI had credentials, which are never written to disk).
        timeout_s: how long to keep trying while the store is away.

    Returns:
        What was delivered (counts by kind); empty when it had been delivered already.

    Raises:
        ValueError: not a spool, or the store does not hold the spool's experiment.
        SpoolBusy: the process that wrote the spool is still delivering it.
        DeliveryError: the store is still away (the spool is kept), or it rejected writes.
    """
    spool = Spool.open(path)
    try:
        if not spool.has_pending():
            if not (spool.path / DELIVERED).is_file():
                spool.finish(keep_record=True)
            return {}
        uri = tracking_uri or spool.meta["tracking_uri"]
        if needs_uri(uri):
            raise ValueError(f"the spool's tracking URI had credentials, which are not stored ({uri}): give it "
                             f"again with --tracking-uri")
        counts = spool.summary()
        _replay_until(spool, uri, timeout_s, counts)
        rejected = spool.rejected()
        spool.finish(keep_record=True)
        if rejected:
            raise DeliveryError(f"{rejected} spooled writes were rejected by {redact(uri)}: see "
                                f"{spool.path / REJECTED}")
        return counts
    finally:
        spool.close()


def _replay_until(spool: Spool, uri: str, timeout_s: float, counts: dict[str, int]) -> None:
    from lrtrack.tracking.runs import TrackingUnavailable, open_store, preflight

    deadline = time.monotonic() + timeout_s
    delay, last = 0.5, "not tried"
    client = None
    while True:
        try:
            if client is None:
                preflight(uri, timeout_s=min(10.0, max(1.0, deadline - time.monotonic())))
                client = open_store(uri)
                _check_experiment(client, spool, uri)
            if replay(client, spool):
                return
        except TrackingUnavailable as err:
            last = str(err)
        except Exception as err:
            if not is_transient(err):
                raise
            last = describe(err)
        if time.monotonic() >= deadline:
            raise DeliveryError(f"tracking store {redact(uri)} is still unavailable after {timeout_s:g} s ({last}): "
                                f"{summary_text(spool.summary())} kept in {spool.path}; run "
                                f"{DELIVER_COMMAND} {spool.path} again when it is back", spool.path)
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 5.0)


def _check_experiment(client: object, spool: Spool, uri: str) -> None:
    """Refuse a store that does not hold the spool's experiment (a wrong --tracking-uri)."""
    from mlflow.exceptions import MlflowException

    experiment_id = spool.meta.get("experiment_id")
    if experiment_id is None:
        return
    try:
        client.get_experiment(experiment_id)  # type: ignore[attr-defined]
    except MlflowException as err:
        if is_transient(err):
            raise
        raise ValueError(f"tracking store {redact(uri)} has no experiment {experiment_id}, which the spool's runs "
                         f"belong to: give the store they were logged to with --tracking-uri") from err


def main(argv: list[str] | None = None) -> int:
    """The command; returns the exit status."""
    parser = argparse.ArgumentParser(prog=DELIVER_COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a spool folder, or a folder to search for spools")
    parser.add_argument("--tracking-uri", default=None, help="the store (default: the one the spool recorded)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the store (default 60)")
    args = parser.parse_args(argv)
    spools = find_spools(args.path)
    if not spools:
        print(f"lrtrack: error: no lrtrack spool at {args.path} (a spool folder holds {META})", file=sys.stderr)
        return 2
    status = 0
    for path in spools:
        status = max(status, _deliver_one(path, args.tracking_uri, args.timeout))
    return status


def _deliver_one(path: Path, tracking_uri: str | None, timeout_s: float) -> int:
    try:
        counts = deliver_spool(path, tracking_uri=tracking_uri, timeout_s=timeout_s)
    except (ValueError, SpoolBusy) as err:
        print(f"lrtrack: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    except DeliveryError as err:
        print(f"lrtrack: error: {err}", file=sys.stderr)
        return 1
    if counts:
        print(f"delivered {summary_text(counts)} from {path}")
    else:
        print(f"{path}: already delivered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
