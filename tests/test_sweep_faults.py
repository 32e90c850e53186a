"""A sweep's own failures, end to end in real processes: jobs that all fail with tracking off, and a
store that goes away before the sweep's summary is delivered. Either way one ``lrtrack: error:`` line
and exit 1 (Hydra would turn the callback's exception into a warning and exit 0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MlflowServer, clean_env, free_port

pytestmark = pytest.mark.slow

FAST = ["+model=mlp", "data=fake", "data.fake_size=256", "train.epochs=1", "finder.num_iter=10", "finder.end_lr=1",
        "progress=false", "train.checkpoint=false"]

# A Hydra callback added after lrtrack's: Hydra calls on_multirun_end in reverse order, so it kills
# the MLflow server after every job was delivered and before the sweep's summary is.
KILLER = '''
import os, signal
from hydra.experimental.callback import Callback

class KillServer(Callback):
    def on_multirun_end(self, config, **kwargs):
        os.killpg(int(os.environ["KILL_PGID"]), signal.SIGKILL)
'''


def _sweep(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lrtrack", "-m", *args], cwd=cwd, capture_output=True, text=True,
                          env=clean_env(OMP_NUM_THREADS="1", **env), timeout=300)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "UserWarning" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("lrtrack: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_a_sweep_whose_jobs_all_fail_without_tracking_exits_1(tmp_path: Path) -> None:
    proc = _sweep([*FAST, "tracking.enabled=false", "model.num_classes=3", "seed=0,1",
                   f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert "2 sweep job(s) failed" in line and f"{tmp_path}/sweep" in line
    assert not list((tmp_path / "sweep").glob(".lrtrack-*")), "the failure notes are removed"


def test_a_store_gone_before_the_sweeps_summary_is_one_line_with_the_deliver_command(tmp_path: Path) -> None:
    (tmp_path / "killer.py").write_text(KILLER)
    server = MlflowServer(tmp_path / "server", free_port()).start()
    try:
        proc = _sweep([*FAST, f"tracking.tracking_uri={server.uri}", "tracking.delivery_timeout_s=3", "seed=0",
                       "+hydra.callbacks.killer._target_=killer.KillServer", f"hydra.sweep.dir={tmp_path}/sweep"],
                      tmp_path, KILL_PGID=str(server.proc.pid), PYTHONPATH=str(tmp_path))  # type: ignore[union-attr]
    finally:
        server.kill()
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    (journal,) = (tmp_path / "sweep" / "tracking-spool").iterdir()
    assert f"python -m lrtrack.deliver {journal}" in line, line
    assert "waiting 3 s" in line, line  # the sweep's tracker has the config's delivery_timeout_s

    server.start()  # the store back: the command as printed delivers the sweep's run, ended FAILED
    try:
        deliver = subprocess.run([sys.executable, "-m", "lrtrack.deliver", str(journal)], cwd=tmp_path,
                                 env=clean_env(), capture_output=True, text=True, timeout=120)
        assert deliver.returncode == 0, deliver.stderr[-3000:]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=server.uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        sweep = [r for r in runs if r.data.tags.get("lrtrack.stage") == "sweep"]
        assert [r.info.status for r in sweep] == ["FAILED"], [(r.info.run_name, r.info.status) for r in runs]
    finally:
        server.stop()
