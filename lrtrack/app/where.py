"""Where a job's runs go (the tracking URI) and where to see them (MLflow's UI)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from lrtrack.tracking.layout import compare_fragment


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


def _ui(tracking_uri: str) -> tuple[str, str]:
    """The UI's base URL and the command that starts it (none for a tracking server)."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/"), ""
    return "http://127.0.0.1:5000", f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"


def _hint(command: str, url: str) -> str:
    return f"{command}\n  then open {url}" if command else f"open {url}"


def ui_hint(tracking_uri: str, experiment_id: str | None, run_id: str | None = None) -> str:
    """The command that opens a store's runs, and the URL of an experiment's runs table (of one run
    when ``run_id`` is given; MLflow 3.x opens an experiment on another page)."""
    base, command = _ui(tracking_uri)
    url = f"{base}/#/experiments/{experiment_id}/runs" if experiment_id else f"{base}/#/experiments"
    if run_id and experiment_id:
        url += f"/{run_id}"
    return _hint(command, url)


def review_hint(tracking_uri: str, experiment_id: str | None, run_ids: Sequence[str]) -> str:
    """The end of a command: how to open the UI, and one URL showing its runs side by side
    (MLflow's compare page: the range test and the training run), or its one run."""
    if not experiment_id or len(run_ids) < 2:
        return ui_hint(tracking_uri, experiment_id, run_ids[0] if run_ids else None)
    base, command = _ui(tracking_uri)
    return _hint(command, f"{base}/{compare_fragment(run_ids, [experiment_id])}")
