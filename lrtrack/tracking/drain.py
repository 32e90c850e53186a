"""Delivery: apply a journal's operations to the tracking store, in order, exactly once.

:func:`drain` is the one delivery loop: it opens the store, finds the experiment, applies what is
pending and backs off while the store is away. The relay (while the job runs) and
``python -m lrtrack.deliver`` (afterwards) are thin callers of it.

Exactly once even when an operation is applied twice (a reply lost when a server died, a deliverer
killed between applying and recording the offset): a run is found by its :data:`RUN_ID_TAG`
before it is created, metrics keep the timestamp they were logged with (MLflow drops an identical
``(key, step, timestamp, value)``), params are re-sent with the same value, and tags, artifacts
and run endings overwrite.

Runs never stay RUNNING: once the journal is complete (its job closed it, or died), every run it
opened and did not end is ended KILLED; and on opening a store, runs whose recorded owner process
(:data:`OWNER_TAG`) is gone from this host are ended KILLED, so a job and its relay killed together
are cleaned up by the next lrtrack command on the store.

A store that goes away mid-run is waited for, whatever its kind: a server down, an sqlite file
locked, read-only, or moved away (delivery never creates one: only the job's start may, see
:func:`~lrtrack.tracking.store.open_store`). After a failed call the store's pooled connections
are dropped (:func:`~lrtrack.tracking.store.reset_connections`), so the next try sees the store as
it is by then. A store that does not hold the runs this journal delivered (replaced, or restored
from an older copy) stops the delivery with one line (:class:`StoreMismatch`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lrtrack.tracking.journal import EXPERIMENT_REF, OWNER_TAG, RUN_ID_TAG, Journal, owner_alive
from lrtrack.tracking.layout import STAGE_FINAL, STAGE_TAG, STOP_REASON_TAG
from lrtrack.tracking.redact import redact
from lrtrack.tracking.store import (
    TrackingUnavailable,
    describe,
    ensure_experiment,
    is_transient,
    open_store,
    reset_connections,
)

log = logging.getLogger(__name__)

BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's log_batch limits
POLL_S = 0.25  # how often a growing journal is looked at
MAX_BACKOFF_S = 5.0


class NotYetThere(RuntimeError):
    """A run this operation refers to is not in the store yet (another job's deliverer creates it)."""


class StoreMismatch(ValueError):
    """The store does not hold a run this journal delivered into it: it is not the store the runs
    went to (replaced, or restored from an older copy), or the run was deleted for good. Delivering
    more would put its metrics nowhere (or into runs made anew, without what came before)."""


class _QuietStoreErrors(logging.Filter):
    """MLflow logs a traceback for every SQLAlchemy ``OperationalError`` (a locked or read-only
    sqlite file) before raising it as an ``MlflowException``, and a warning for each of its own
    tries to make an engine; delivery says the store is away in one line itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("SQLAlchemy database error", "SQLAlchemy engine could not be created"))


def _quiet_store_errors() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _QuietStoreErrors) for f in logger.filters):
        logger.addFilter(_QuietStoreErrors())


def log_batch(client: Any, run_id: str, kind: str, items: list[Any]) -> None:
    """``client.log_batch`` in chunks MLflow accepts (the one place that chunks)."""
    size = BATCH_LIMITS[kind]
    for lo in range(0, len(items), size):
        client.log_batch(run_id, **{kind: items[lo:lo + size]}, synchronous=True)


def _tagged_run(client: Any, run_id: str, experiment_ids: list[str]) -> str | None:
    """The store's id of the run tagged with lrtrack's id ``run_id`` in these experiments."""
    if not experiment_ids:
        return None
    found = client.search_runs(experiment_ids, filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=1)
    return str(found[0].info.run_id) if found else None


def find_run_id(client: Any, run_id: str, experiment_ids: list[str] | None = None) -> str | None:
    """The store's id of a run named by lrtrack's id (or by the store's own id); None when absent."""
    from mlflow.exceptions import MlflowException

    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    found = _tagged_run(client, run_id, experiment_ids)
    if found is not None:
        return found
    try:
        return str(client.get_run(run_id).info.run_id)
    except MlflowException as err:
        if is_transient(err):
            raise
        return None


@dataclass
class Delivery:
    """The store side of one journal: what is delivered, and the store's ids of its runs."""

    journal: Journal
    tracking_uri: str
    client: Any = None
    create_store: bool = False  # the job's start: its relay may create an sqlite store that is not there yet
    announce: bool = True  # say when the store goes away and comes back (the relay: the job goes on meanwhile)
    last_error: str | None = None
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = {"offset": 0, "ids": {}, "experiment_id": None, "open": [], **self.journal.load_state()}

    @property
    def pending(self) -> bool:
        return self.journal.size() > self.state["offset"]

    def attempt(self, final: bool = False) -> bool:
        """Open the store when not yet open, then deliver what is pending; True when nothing is left.
        ``final``: nobody writes the journal any more (a last line cut short is rejected, not awaited).
        A store that is away is recorded in :attr:`last_error`; a bug is raised."""
        try:
            if self.pending and self.last_error is not None and not self._answers():
                return False  # still away: no MLflow call (its HTTP retries take seconds)
            if self.pending:
                self._open()
                self._apply_pending(final)
            if self.last_error is not None and self.announce:
                log.warning("lrtrack: tracking store %s is back: the journal is being delivered",
                            redact(self.tracking_uri))
            self._set_error(None)
            return not self.pending
        except NotYetThere as err:
            self._set_error(str(err))
        except TrackingUnavailable as err:
            self.drop_client()
            self._set_error(str(err))
        except Exception as err:
            if not is_transient(err):
                raise
            self.drop_client()
            self._set_error(describe(err))
        return False

    def drop_client(self) -> None:
        """After a failed call: the next try opens the store anew, on new connections (a pooled
        sqlite connection keeps a file that was read-only, or moved away, as it found it)."""
        self.client = None
        reset_connections(self.tracking_uri)

    def _answers(self) -> bool:
        """A quick "does the server answer" before trying a store that was away (http only)."""
        if not self.tracking_uri.lower().startswith(("http://", "https://")):
            return True
        from lrtrack.tracking.store import http_answers

        return http_answers(self.tracking_uri, timeout_s=2.0)

    def _set_error(self, error: str | None) -> None:
        if error is not None and self.last_error is None and self.announce:
            log.warning("lrtrack: tracking store %s is unavailable (%s); the job goes on, its tracking writes "
                        "wait in %s and are delivered when the store is back", redact(self.tracking_uri), error,
                        self.journal.path)
        if error != self.last_error:
            self.last_error = error
            self.state["last_error"] = error
            self.journal.save_state(self.state)

    def _open(self) -> None:
        if self.client is not None:
            return
        client = open_store(self.tracking_uri, create=self.create_store)
        self.create_store = False  # it exists now: from here on, a missing sqlite file is an outage
        self._check_store(client)
        if not self.state["experiment_id"]:
            self.state["experiment_id"] = ensure_experiment(client, self.journal.meta["experiment_name"])
            self.journal.save_state(self.state)
        self.client = client
        end_orphaned_runs(client, keep=set(self.state["ids"].values()))

    def _check_store(self, client: Any) -> None:
        """The store holds the runs this journal delivered before (:class:`StoreMismatch` if not);
        an experiment that is gone while no run was delivered into it is found (or made) anew."""
        for run, store_id in self.state["ids"].items():
            if _absent(lambda store_id=store_id: client.get_run(store_id)):
                raise StoreMismatch(
                    f"tracking store {redact(self.tracking_uri)} does not hold run {store_id}, into which "
                    f"{self.journal.path} delivered its run {run} before: it is another store (replaced, or "
                    f"restored from an older copy), or the run was deleted for good; nothing more was delivered: "
                    f"deliver the journal into the store that holds its runs (--tracking-uri)")
        experiment_id = self.state["experiment_id"]
        if experiment_id and _absent(lambda: client.get_experiment(experiment_id)):
            self.state["experiment_id"] = None

    def _apply_pending(self, final: bool) -> None:
        """Apply every whole operation past the offset. Consecutive metric rows of one run go to the
        store as one ``log_batch`` (the job journals one line per step); the offset is recorded
        after each other operation and at the end."""
        rows: list[list[Any]] = []
        rows_run: str | None = None
        rows_end = self.state["offset"]
        for offset, op in self.journal.read(self.state["offset"], final=final):
            if op is not None and op.get("op") == "metrics" and (rows_run in (None, op["run"])) \
                    and len(rows) < BATCH_LIMITS["metrics"]:
                rows.extend(op["rows"])
                rows_run, rows_end = op["run"], offset
                continue
            self._apply_rows(rows_run, rows, rows_end)
            rows, rows_run = [], None
            if op is not None and op.get("op") == "metrics":  # another run's, or a full batch: start anew
                rows, rows_run, rows_end = list(op["rows"]), op["run"], offset
                continue
            self._apply_one(op)
            self.state["offset"] = offset
            self.journal.save_state(self.state)
            if op is not None and op.get("op") in ("artifact", "log_model"):
                self.journal.discard(op["file"] if op["op"] == "artifact" else op["folder"])  # no pile-up
        self._apply_rows(rows_run, rows, rows_end)

    def _apply_rows(self, run: str | None, rows: list[list[Any]], offset: int) -> None:
        if run is not None and rows:
            self._apply_one({"op": "metrics", "run": run, "rows": rows})
            self.state["offset"] = offset
            self.journal.save_state(self.state)

    def _apply_one(self, op: Mapping[str, Any] | None) -> None:
        """One operation; the store refusing it for good is recorded (rejected.jsonl), not retried."""
        if op is None:
            self.journal.reject(None, "a journal line cut short (the process died while writing it)")
            return
        try:
            self._apply(op)
        except (NotYetThere, TrackingUnavailable):
            raise
        except Exception as err:
            if is_transient(err):
                raise
            log.error("the tracking store rejected a %s write for run %s: %s", op.get("op"), op.get("run"),
                      describe(err))
            self.journal.reject(op, describe(err))

    def _store_id(self, run: str) -> str:
        if run in self.state["ids"]:
            return str(self.state["ids"][run])
        found = find_run_id(self.client, run, [self.state["experiment_id"]]) or find_run_id(self.client, run)
        if found is None:
            raise NotYetThere(f"run {run} is not in the tracking store yet")
        self.state["ids"][run] = found
        return found

    def _tags(self, tags: Mapping[str, Any]) -> dict[str, str]:
        return {k: self._tag_value(v) for k, v in tags.items()}

    def _tag_value(self, value: Any) -> str:
        """A tag value from the journal: a run link becomes the store's id; a text naming runs gets
        their store ids (and the experiment's, ``EXPERIMENT_REF``) in place of its placeholders."""
        if not isinstance(value, dict):
            return str(value)
        if "ref" in value:
            return self._store_id(value["ref"])
        text = str(value["text"]).replace(EXPERIMENT_REF, str(self.state["experiment_id"]))
        for placeholder, run in value.get("refs", {}).items():
            text = text.replace(placeholder, self._store_id(run))
        return text

    def _apply(self, op: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        kind, run = op["op"], op["run"]
        if kind == "create":
            self._create(op)
            return
        if kind == "reopen":
            self.state["ids"][run] = op["store_id"]
            self.client.update_run(op["store_id"], status="RUNNING")
            self._mark_open(run)
        run_id = self._store_id(run)
        if kind == "metrics":
            log_batch(self.client, run_id, "metrics", [Metric(k, float(v), int(t), int(s)) for k, v, t, s in op["rows"]])
        elif kind == "params":
            log_batch(self.client, run_id, "params", [Param(k, v) for k, v in op["params"].items()])
        elif kind in ("tags", "reopen"):
            log_batch(self.client, run_id, "tags", [RunTag(k, v) for k, v in self._tags(op["tags"]).items()])
        elif kind == "artifact":
            local = self.journal.path / op["file"]
            if not local.exists():
                # Its copy is deleted only once it is delivered (see _apply_pending): this is a replay
                # (the record of the offset was lost: a full disk, a deliverer killed between the two).
                # Uploading it would raise FileNotFoundError, an OSError that counts as "the store is
                # away", and the journal would never be delivered.
                log.info("lrtrack: artifact %s was delivered before (its copy is gone): skipped", op["file"])
                return
            if local.is_dir():
                self.client.log_artifacts(run_id, str(local), op.get("path"))
            else:
                self.client.log_artifact(run_id, str(local), op.get("path"))
        elif kind == "log_model":
            self._log_model(run_id, op)
        elif kind == "end":
            self.client.set_terminated(run_id, status=op["status"], end_time=op.get("end"))
            if run in self.state["open"]:
                self.state["open"].remove(run)
        else:
            raise ValueError(f"unknown journal operation {kind!r}")

    def _log_model(self, run_id: str, op: Mapping[str, Any]) -> None:
        from lrtrack.tracking.models import deliver_model

        folder = self.journal.path / op["folder"]
        if not folder.exists():  # delivered before, as an artifact's copy (see _apply)
            log.info("lrtrack: model %s was logged before (its copy is gone): skipped", op["folder"])
            return
        deliver_model(self.tracking_uri, self.state["experiment_id"], run_id, op, folder)

    def _create(self, op: Mapping[str, Any]) -> None:
        run = op["run"]
        if op.get("tags", {}).get(STAGE_TAG) == STAGE_FINAL:  # a training run: its model comes at the end
            from lrtrack.tracking.models import preload

            preload()
        if run not in self.state["ids"]:
            experiment_id = self.state["experiment_id"]
            found = _tagged_run(self.client, run, [experiment_id])
            if found is not None:  # created before, its reply (or our record of it) lost
                self.state["ids"][run] = found
            else:
                tags = {**self._tags(op.get("tags", {})), RUN_ID_TAG: run}
                created = self.client.create_run(experiment_id, start_time=op.get("start"), tags=tags,
                                                 run_name=op.get("name"))
                self.state["ids"][run] = created.info.run_id
        self._mark_open(run)

    def _mark_open(self, run: str) -> None:
        if run not in self.state["open"]:
            self.state["open"].append(run)

    def end_open_runs(self) -> None:
        """The journal is complete: runs it opened and never ended were cut short (KILLED)."""
        for run in list(self.state["open"]):
            run_id = self._store_id(run)
            self.client.set_tag(run_id, STOP_REASON_TAG, "killed: its job ended without ending it")
            self.client.set_terminated(run_id, status="KILLED")
            self.state["open"].remove(run)
            log.warning("lrtrack: run %s ended KILLED (its job stopped without ending it)", run)
        self.journal.save_state(self.state)


def _absent(call: Callable[[], Any]) -> bool:
    """True when ``call`` (a look-up by id) says there is no such thing; a store that is away raises."""
    from mlflow.exceptions import MlflowException

    try:
        call()
    except MlflowException as err:
        if is_transient(err):
            raise
        return err.error_code == "RESOURCE_DOES_NOT_EXIST"
    return False


def end_orphaned_runs(client: Any, keep: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """End KILLED every RUNNING run whose owner process (:data:`OWNER_TAG`) is gone from this host.

    Both a job and its relay killed at once leave their runs RUNNING; whoever opens the store next
    (a job's relay, ``deliver``, the report) ends them. Runs owned on another host are left alone.
    Returns the store ids it ended.
    """
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    running = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=1000)
    ended = []
    for run in running:
        owner = run.data.tags.get(OWNER_TAG)
        if owner and run.info.run_id not in keep and owner_alive(owner) is False:
            client.set_tag(run.info.run_id, STOP_REASON_TAG, "killed: its job and relay were gone")
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    if ended:
        log.warning("lrtrack: %d run(s) whose job was killed ended KILLED: %s", len(ended), ", ".join(ended))
    return ended


class Control:
    """When a drain is over: a fixed deadline, the journal complete from the start (``deliver``)."""

    def __init__(self, timeout_s: float) -> None:
        self._deadline = time.monotonic() + timeout_s

    def complete(self) -> bool:
        return True

    def deadline(self) -> float | None:
        return self._deadline

    def wait(self, seconds: float) -> None:
        time.sleep(max(0.0, min(seconds, self._deadline - time.monotonic())))


def drain(journal: Journal, tracking_uri: str, control: Control, *,
          on_attempt: Callable[[Delivery], None] | None = None, create_store: bool = False,
          announce: bool = True) -> Delivery:
    """Deliver ``journal`` until it is complete and delivered, or ``control``'s deadline passes.

    Polls a growing journal every :data:`POLL_S`; while the store is away, backs off from
    :data:`POLL_S` to :data:`MAX_BACKOFF_S`. When everything is delivered and the journal is
    complete, runs it left open end KILLED. Returns the delivery (``last_error``, ``pending``).
    ``create_store``: the job starts now (its relay), and may create an sqlite store not there yet,
    on its first open only. ``announce=False``: the caller says the outcome in its own line (deliver),
    not when the store goes away and comes back. Raises :class:`StoreMismatch` (a bug is raised too).
    """
    _quiet_store_errors()
    delivery = Delivery(journal, tracking_uri, create_store=create_store, announce=announce)
    delay = POLL_S
    while True:
        complete = control.complete()
        done = delivery.attempt(final=complete)
        if on_attempt is not None:
            on_attempt(delivery)
        if done and complete:
            if delivery.state["open"]:
                try:
                    delivery._open()
                    delivery.end_open_runs()
                except Exception as err:
                    if not is_transient(err) and not isinstance(err, (TrackingUnavailable, NotYetThere)):
                        raise
                    if not isinstance(err, NotYetThere):
                        delivery.drop_client()
                    delivery._set_error(describe(err))
                    done = False
            if done:
                return delivery
        deadline = control.deadline()
        if deadline is not None and time.monotonic() >= deadline:
            return delivery
        delay = min(delay * 2, MAX_BACKOFF_S) if delivery.last_error else POLL_S
        control.wait(delay if not complete or delivery.last_error else POLL_S / 10)
