"""Hydra launchers run lrtrack's sweeps: submitit (local; SLURM takes the same settings) and Ray.

joblib is tested in ``test_sweep.py``. Each test runs a 2-job sweep with its own ``mlflow.db``
(submitit: ``python -m lrtrack -m`` in the test's process, :func:`tests.conftest.run_cli_here`, the
launcher runs each job in a process of its own; Ray: in a subprocess) and checks the MLflow layout: one sweep run, the two jobs' pipeline runs nested
under it, each with its range test, every run FINISHED, the launcher recorded on the sweep run.
The Ray test runs only where ``hydra-ray-launcher`` is installed (``pip install
hydra-ray-launcher``: local Ray on this machine; see docs/scale_out.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli_here

FAST = ["+model=mlp", "data=fake", "data.fake_size=256", "train.epochs=1", "finder.num_iter=10",
        "finder.end_lr=1", "progress=false", "train.checkpoint=false"]


def _sweep(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LRTRACK_"))}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-m", "lrtrack", "-m", *FAST, f"tracking.tracking_uri={uri}", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _sweep_here(args: list[str], cwd: Path) -> None:
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    proc = run_cli_here(["-m", *FAST, f"tracking.tracking_uri={uri}", *args], cwd)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def _check_nested(folder: Path, launcher: str) -> list:
    """One sweep run; the two jobs nested under it, each with one explore and one final run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = list(client.search_runs(exp_ids, max_results=100))
    (sweep,) = [r for r in runs if r.data.tags["lrtrack.stage"] == "sweep"]
    assert sweep.data.tags["lrtrack.launcher"] == launcher
    assert sweep.info.status == "FINISHED"
    jobs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id
            and r.data.tags["lrtrack.stage"] == "pipeline"]
    short = sweep.data.tags["lrtrack.run_id"][:6]  # lrtrack's id: the one the sweep prints
    assert sorted(r.info.run_name for r in jobs) == [f"seed=0 (sweep {short})", f"seed=1 (sweep {short})"]
    for job in jobs:
        stages = sorted(r.data.tags["lrtrack.stage"] for r in runs
                        if r.data.tags.get("mlflow.parentRunId") == job.info.run_id)
        assert stages == ["explore", "final"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len(runs) == 1 + 2 * 3
    return jobs


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path: Path, premade_store) -> None:
    """The SLURM launcher's local twin: each job a separate process submitted through submitit."""
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401 - a hard dependency: fail, never skip

    premade_store(tmp_path)  # the sweep's store (creating one is the CLI tests' business)
    _sweep_here(["seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                 "hydra.launcher.cpus_per_task=1"], tmp_path)
    _check_nested(tmp_path, "submitit_local")
    logs = list(tmp_path.glob("multirun/*/*/.submitit/*/*_log.out"))
    assert len(logs) == 2  # submitit ran the two jobs, each leaving its own log


@pytest.mark.slow
def test_ray_launcher(tmp_path: Path) -> None:
    """Hydra's Ray launcher with a local Ray (started by the launcher, 2 CPUs)."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher is not installed")
    _sweep(["seed=0,1", "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
            "+hydra.launcher.ray.init.include_dashboard=false"], tmp_path, timeout=300)
    _check_nested(tmp_path, "ray")
