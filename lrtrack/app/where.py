"""Where a job's runs go (the tracking URI) and where to see them (MLflow's UI)."""

from __future__ import annotations

import os
from pathlib import Path


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


def ui_hint(tracking_uri: str, experiment_id: str | None, run_id: str | None = None) -> str:
    """The command that opens a store's runs, and the URL of an experiment's runs table (of one run
    when ``run_id`` is given; MLflow 3.x opens an experiment on another page)."""
    if tracking_uri.startswith(("http://", "https://")):
        base, command = tracking_uri.rstrip("/"), ""
    else:
        base, command = "http://127.0.0.1:5000", f"mlflow ui --backend-store-uri {tracking_uri}"
    url = f"{base}/#/experiments/{experiment_id}/runs" if experiment_id else f"{base}/#/experiments"
    if run_id and experiment_id:
        url += f"/{run_id}"
    return f"{command}\n  then open {url}" if command else f"open {url}"
