"""Against a real ``mlflow server`` (sqlite backend, proxied artifact root, 127.0.0.1, a free port).

One server for the module (started and stopped by the tests): a single pipeline, a 2-job sweep
and a 2-rank torchrun job log to it over HTTP; the runs are read back through the server's REST
API and the artifacts are looked for on the server's own artifact root on disk, where a remote
server keeps them (nothing may land in the job's folder). The pipeline and the sweep run in the
test's process (:func:`tests.conftest.run_cli_here`); the torchrun job is real processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MlflowServer, free_port, run_cli_here

FAST = ["+model=mlp", "data=fake", "data.fake_size=256", "train.epochs=1", "finder.num_iter=10",
        "finder.end_lr=1", "progress=false"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    srv = MlflowServer(tmp_path_factory.mktemp("server"), free_port())
    try:
        yield srv.start()
    finally:
        srv.stop()


def _run_here(args: list[str], cwd: Path) -> None:
    proc = run_cli_here(args, cwd)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def _run(args: list[str], cwd: Path, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LRTRACK_"))}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    command = [sys.executable, *(prefix or []), "-m", "lrtrack", *args]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _runs(server: MlflowServer, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} on the server"
    return list(client.search_runs([exp.experiment_id], max_results=100))


def _on_server_root(server: MlflowServer, run_id: str, path: str) -> bool:
    return any(server.artifacts.glob(f"**/{run_id}/artifacts/{path}"))


def _nothing_local(folder: Path) -> None:
    assert not (folder / "mlflow.db").exists() and not (folder / "mlruns").exists()


@pytest.mark.slow
def test_pipeline_logs_to_the_server(server: MlflowServer, tmp_path: Path) -> None:
    _run_here([*FAST, f"tracking.tracking_uri={server.uri}", "tracking.experiment_name=server-pipeline"], tmp_path)
    runs = _runs(server, "server-pipeline")
    by = {r.data.tags["lrtrack.stage"]: r for r in runs}
    assert sorted(by) == ["explore", "final", "pipeline"] and len(runs) == 3
    assert all(r.info.status == "FINISHED" for r in runs)
    explore, final = by["explore"], by["final"]
    assert final.data.tags["lrtrack.range_test_run_id"] == explore.info.run_id
    for path in ("range_test/history.csv", "range_test/plot.png", "config/resolved.yaml"):
        assert _on_server_root(server, explore.info.run_id, path), path
    for path in ("train/history.csv", "checkpoints/last.pt"):
        assert _on_server_root(server, final.info.run_id, path), path
    _nothing_local(tmp_path)


@pytest.mark.slow
def test_a_two_job_sweep_logs_to_the_server(server: MlflowServer, tmp_path: Path) -> None:
    _run_here(["-m", *FAST, "train.checkpoint=false", f"tracking.tracking_uri={server.uri}",
               "tracking.experiment_name=server-sweep", "seed=0,1"], tmp_path)
    runs = _runs(server, "server-sweep")
    (sweep,) = [r for r in runs if r.data.tags["lrtrack.stage"] == "sweep"]
    assert sweep.info.status == "FINISHED"
    jobs = [r for r in runs if r.data.tags["lrtrack.stage"] == "pipeline"]
    short = sweep.data.tags["lrtrack.run_id"][:6]  # lrtrack's id: the one the sweep prints
    assert sorted(r.info.run_name for r in jobs) == [f"seed=0 (sweep {short})", f"seed=1 (sweep {short})"]
    assert all(r.data.tags["mlflow.parentRunId"] == sweep.info.run_id for r in jobs)
    assert len([r for r in runs if r.data.tags["lrtrack.stage"] == "explore"]) == 2
    assert _on_server_root(server, sweep.info.run_id, "sweep/summary.csv")
    _nothing_local(tmp_path)


@pytest.mark.slow
def test_torchrun_rank_zero_logs_to_the_server(server: MlflowServer, tmp_path: Path) -> None:
    _run([*FAST, "data.batch_size=32", f"tracking.tracking_uri={server.uri}",
          "tracking.experiment_name=server-torchrun"], tmp_path,
         prefix=["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])
    runs = _runs(server, "server-torchrun")
    assert sorted(r.data.tags["lrtrack.stage"] for r in runs) == ["explore", "final", "pipeline"]
    (final,) = [r for r in runs if r.data.tags["lrtrack.stage"] == "final"]
    assert final.data.params["bounds.steps_per_epoch"] == "4"  # 256 samples / (2 ranks x 32)
    assert _on_server_root(server, final.info.run_id, "checkpoints/last.pt")
    _nothing_local(tmp_path)
