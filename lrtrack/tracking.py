"""MLflow: the store, runs, buffered step metrics, params, artifacts and run links.

Everything goes through ``MlflowClient`` with explicit run ids (no fluent "active run"
state), so nested runs and parallel sweep jobs never step on each other.

Per-step metrics are buffered and sent with ``log_batch`` from a background thread: a
``log_metrics`` call per step costs about 3 ms on sqlite and 50 ms over HTTP, more than a
training step of a small model.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000  # longer values are rejected/truncated by the store
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag (lrtrack's layout is in runlog.py)


def resolve_tracking_uri(configured: str | None, launch_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the configured URI, else ``<launch_dir>/mlflow.db``.

    A relative sqlite path would land in Hydra's per-run output folder, so the default is an
    absolute path in the folder the command was started from.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{Path(launch_dir).resolve() / 'mlflow.db'}"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}`` with string values (lists kept as text)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            text = "null" if value is None else str(value)
            out[name] = text[:MAX_PARAM_VALUE]
    return out


def safe_key(key: str) -> str:
    """MLflow keys allow ``[\\w./ -]``; Hydra's ``+model`` style keys do not."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


class MetricBuffer:
    """A :class:`~lrtrack.observers.StepObserver` that batches metrics into ``log_batch`` calls.

    Sends when ``flush_every`` steps or ``flush_seconds`` have passed since the last send, in
    a single background thread so the training loop never waits on the store; ``close()``
    sends the rest and waits. Non-finite values are sent as they are (MLflow stores NaN/inf).

    Flushed metrics go to one queue that the sender drains in ``log_batch`` calls of up to
    1,000 metrics, so when the store falls behind, waiting flushes are merged into fewer,
    larger calls. Memory stays flat however long the run: when more than ``max_queued``
    metrics wait to be sent, ``flush`` waits for the sender (backpressure) instead of
    queueing more.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        flush_every: int = 100,
        flush_seconds: float = 5.0,
        background: bool = True,
        max_queued: int = 10 * MAX_METRICS_PER_BATCH,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.flush_every = max(1, int(flush_every))
        self.flush_seconds = float(flush_seconds)
        self._pending: list[Metric] = []
        self._steps_pending = 0
        self._last_send = time.monotonic()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lrtrack-mlflow") if background else None
        self._futures: list[Future[None]] = []
        self._lock = threading.Lock()
        self._queue: list[Metric] = []  # flushed, not yet sent (guarded by _lock)
        self.max_queued = max(1, int(max_queued))
        self.sent = 0
        self.send_seconds = 0.0

    def add(self, step: int, metrics: Mapping[str, float]) -> None:
        """Queue metrics without counting a step (summary metrics)."""
        now_ms = int(time.time() * 1000)
        self._pending.extend(Metric(key, float(value), now_ms, step) for key, value in metrics.items())

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self.add(step, metrics)
        self._steps_pending += 1
        if self._steps_pending >= self.flush_every or time.monotonic() - self._last_send >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Hand everything pending to the sender (does not wait)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._steps_pending = 0
        self._last_send = time.monotonic()
        if self._executor is None:
            self._send(pending)
            return
        with self._lock:
            self._queue.extend(pending)
            queued = len(self._queue)
        self._futures = [f for f in self._futures if not f.done() or f.exception() is not None]
        # A drain that has not started yet will see what was just queued; else start one.
        if not any(not f.running() and not f.done() for f in self._futures):
            self._futures.append(self._executor.submit(self._drain))
        if queued > self.max_queued:  # the store is behind: wait rather than grow
            wait([f for f in self._futures if not f.done()])

    def _drain(self) -> None:
        """Send everything queued, in ``log_batch`` calls of up to 1,000 metrics."""
        while True:
            with self._lock:
                batch = self._queue[:MAX_METRICS_PER_BATCH]
                del self._queue[:MAX_METRICS_PER_BATCH]
            if not batch:
                return
            self._send(batch)

    def _send(self, metrics: list[Metric]) -> None:
        start = time.perf_counter()
        for lo in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[lo : lo + MAX_METRICS_PER_BATCH], synchronous=True)
        with self._lock:
            self.sent += len(metrics)
            self.send_seconds += time.perf_counter() - start

    def close(self) -> None:
        """Send everything and wait; re-raises the first send error."""
        self.flush()
        errors = []
        for future in self._futures:
            err = future.exception()
            if err is not None:
                errors.append(err)
        self._futures = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._lock:
            left, self._queue = self._queue, []
        if left and not errors:  # a drain that failed part-way leaves the rest here
            try:
                self._send(left)
            except Exception as err:  # noqa: BLE001 - reported below like the others
                errors.append(err)
        if errors:
            raise RuntimeError(f"could not log metrics to MLflow run {self.run_id}: {errors[0]}") from errors[0]


class TrackedRun:
    """One MLflow run: its metric buffer, params, tags, artifacts and how it ends."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, *, flush_every: int, flush_seconds: float) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.metrics = MetricBuffer(client, run_id, flush_every=flush_every, flush_seconds=flush_seconds)
        self._ended = False

    enabled = True

    # Observer interface, so a TrackedRun can be handed straight to the engine.
    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self.metrics.on_step(step, metrics)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(safe_key(k), str(v)[:MAX_PARAM_VALUE]) for k, v in params.items()]
        for lo in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[lo : lo + MAX_PARAMS_PER_BATCH], synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(safe_key(k), str(v)) for k, v in tags.items()]
        if items:
            self.client.log_batch(self.run_id, tags=items, synchronous=True)

    def log_summary(self, metrics: Mapping[str, float], step: int = 0) -> None:
        finite = {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}
        self.metrics.add(step, finite)

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        # lrtrack's figures are plain matplotlib Figures (no pyplot), so there is nothing to close.
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_rows_csv(self, rows: Iterable[Mapping[str, Any]], artifact_file: str) -> None:
        """A list of dicts as CSV (the columns of the first row, then any new ones)."""
        import csv
        import io

        rows = list(rows)
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        self.log_text(buf.getvalue(), artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        """Send every buffered metric, then mark the run FINISHED, FAILED or KILLED."""
        if self._ended:
            return
        self._ended = True
        try:
            self.metrics.close()
        except Exception:  # keep the status right even when the last send fails
            log.exception("could not send the last metrics of run %s", self.run_id)
            status = "FAILED"
        self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")


class NullRun:
    """A run that records nothing: what the recipe uses with ``tracking.enabled=false``."""

    run_id: str | None = None
    enabled = False

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_summary(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_dict(self, data: Any, artifact_file: str) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self) -> NullRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class NullTracker:
    """No tracking (``tracking.enabled=false``): its runs record nothing."""

    enabled = False

    def start_run(self, name: str, **kwargs: Any) -> NullRun:
        return NullRun()


class Tracker:
    """A tracking store and experiment; starts runs in it.

    Args:
        tracking_uri: e.g. ``sqlite:////abs/path/mlflow.db`` or ``http://127.0.0.1:5000``.
        experiment_name: created when missing.
        flush_every: steps between metric sends.
        flush_seconds: longest time between metric sends.
    """

    enabled = True

    def __init__(self, tracking_uri: str, experiment_name: str, *, flush_every: int = 100, flush_seconds: float = 5.0) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = ensure_experiment(self.client, experiment_name)
        self.experiment_name = experiment_name
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds

    def start_run(self, name: str, *, tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None) -> TrackedRun:
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()})
        return TrackedRun(self.client, run.info.run_id, self.experiment_id,
                          flush_every=self.flush_every, flush_seconds=self.flush_seconds)

    def ui_hint(self, run_id: str | None = None) -> str:
        """The command that opens these runs, and the URL of the runs table (MLflow 3.x)."""
        if self.tracking_uri.startswith(("http://", "https://")):
            base = self.tracking_uri.rstrip("/")
            command = ""
        else:
            base = "http://127.0.0.1:5000"
            command = f"mlflow ui --backend-store-uri {self.tracking_uri}"
        url = f"{base}/#/experiments/{self.experiment_id}/runs"
        if run_id:
            url += f"/{run_id}"
        return f"{command}\n  then open {url}" if command else f"open {url}"


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it when missing (tolerating a concurrent creator)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another process created it between our look-up and our create
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
