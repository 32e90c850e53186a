"""Tracking faults against real processes: a real ``mlflow server`` killed mid-run (restarted and
not), and two processes creating a fresh sqlite store at once. Nothing here mocks MLflow.

The "training" process is a small script that drives :class:`lrtrack.tracking.runs.Tracker` the way
the recipe does: a pipeline run, a range-test run, then a training run that logs a metric per
step, params, tags and artifacts, every run closed by its context manager, then
``Tracker.close()``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, MlflowServer, clean_env

pytestmark = pytest.mark.slow

JOB = r'''
import json, logging, sys, time
from pathlib import Path
from lrtrack.tracking.runs import DeliveryError, Tracker

uri, spool, steps, step_s, timeout, go = sys.argv[1:7]
steps, step_s, timeout, go = int(steps), float(step_s), float(timeout), Path(go)
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
tracker = Tracker(uri, "faults", spool_dir=spool, delivery_timeout_s=timeout)
with tracker.start_run("pipeline") as pipeline:
    pipeline.log_params({"seed": 0})
    with tracker.start_run("range_test", parent_run_id=pipeline.run_id) as rt:
        for i in range(50):
            rt.on_step(i, {"loss": 2.0 - i / 50, "lr": 1e-4 * 1.2 ** i})
        rt.log_text("range test", "notes/range_test.txt")
    print("PHASE1", json.dumps({"pipeline": pipeline.run_id, "range_test": rt.run_id}), flush=True)
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    start = time.monotonic()
    with tracker.start_run("train", parent_run_id=pipeline.run_id,
                           tags={"lrtrack.range_test_run_id": rt.run_id}) as run:
        run.log_params({"lr": 0.1})
        for i in range(steps):
            run.on_step(i, {"loss": 1.0 / (i + 1), "lr": 1e-3 * (i + 1)})
            time.sleep(step_s)
        train_s = time.monotonic() - start
        run.log_text("done", "notes/done.txt")
        run.log_dict({"steps": steps}, "config/run.json")
        run.log_summary({"final_val_loss": 0.5}, step=steps - 1)
    pipeline.log_summary({"final_val_loss": 0.5})
print("TRAIN", json.dumps({"train_s": train_s}), flush=True)
start, code, info = time.monotonic(), 0, {}
try:
    tracker.close()
except DeliveryError as err:
    code, info = 3, {"spool": str(err.journal), "command": err.command, "message": str(err)}
info.update(close_s=time.monotonic() - start, train=run.run_id)
print("CLOSE", json.dumps(info), flush=True)
sys.exit(code)
'''


class Job:
    """The training script as a real process; ``line(tag)`` waits for one of its report lines."""

    def __init__(self, tmp: Path, uri: str, *, steps: int, step_s: float, timeout: float) -> None:
        script = tmp / "job.py"
        script.write_text(JOB)
        self.go = tmp / "go"
        self.spool = tmp / "spool"
        self.stderr = tmp / "job.err"
        self.proc = subprocess.Popen(
            [sys.executable, str(script), uri, str(self.spool), str(steps), str(step_s), str(timeout), str(self.go)],
            cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=open(self.stderr, "w"), text=True)
        self.lines: dict[str, Any] = {}

    def line(self, tag: str, timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while tag not in self.lines:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {tag} line within {timeout} s")
            raw = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not raw:
                raise RuntimeError(f"job exited {self.proc.wait()} before {tag}: {self.stderr.read_text()[-3000:]}")
            name, _, payload = raw.partition(" ")
            if name in ("PHASE1", "TRAIN", "CLOSE"):  # MLflow prints "View run ..." lines too
                self.lines[name] = json.loads(payload)
        return self.lines[tag]

    def finish(self, timeout: float = 120) -> int:
        self.line("CLOSE", timeout)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _client(server: MlflowServer) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.backend_uri)  # read the server's store directly


def _steps(client: Any, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _artifacts(server: MlflowServer, run_id: str) -> set[str]:
    return {str(p.relative_to(server.artifacts)).split(f"{run_id}/artifacts/", 1)[-1]
            for p in server.artifacts.rglob("*") if p.is_file() and run_id in str(p)}


def _runs(client: Any) -> dict[str, Any]:
    experiment = client.get_experiment_by_name("faults")
    runs = client.search_runs([experiment.experiment_id])
    names = [r.info.run_name for r in runs]
    assert sorted(names) == ["pipeline", "range_test", "train"], names  # each run exactly once
    return {r.info.run_name: r for r in runs}


def _check_everything_arrived_once(server: MlflowServer, steps: int) -> dict[str, Any]:
    client = _client(server)
    runs = _runs(client)
    for name in runs:
        assert runs[name].info.status == "FINISHED", (name, runs[name].info.status)
    pipeline, rt, train = runs["pipeline"].info.run_id, runs["range_test"].info.run_id, runs["train"].info.run_id
    assert _steps(client, rt, "loss") == list(range(50))
    assert _steps(client, train, "loss") == list(range(steps))  # every step, each exactly once
    assert _steps(client, train, "lr") == list(range(steps))
    assert runs["train"].data.metrics["final_val_loss"] == 0.5
    assert runs["pipeline"].data.metrics["final_val_loss"] == 0.5
    assert runs["train"].data.params == {"lr": "0.1"}
    assert runs["train"].data.tags["mlflow.parentRunId"] == pipeline
    assert runs["train"].data.tags["lrtrack.range_test_run_id"] == rt
    assert _artifacts(server, train) == {"notes/done.txt", "config/run.json"}
    assert _artifacts(server, rt) == {"notes/range_test.txt"}
    return runs


def _delivered_phase1(server: MlflowServer, timeout: float = 60) -> None:
    """Wait until the relay has delivered the range test (FINISHED, all 50 points) to the server."""
    client = _client(server)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        experiment = client.get_experiment_by_name("faults")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        done = [r for r in runs if r.info.run_name == "range_test" and r.info.status == "FINISHED"]
        if done and len(client.get_metric_history(done[0].info.run_id, "loss")) == 50:
            return
        time.sleep(0.05)
    raise AssertionError("the range test was not delivered")


def test_server_killed_mid_training_and_restarted_everything_arrives_once(tmp_path: Path,
                                                                          mlflow_server: MlflowServer) -> None:
    steps, step_s = 300, 0.02
    job = Job(tmp_path, mlflow_server.uri, steps=steps, step_s=step_s, timeout=60)
    try:
        job.line("PHASE1")
        job.go.touch()
        time.sleep(1.0)  # about 50 steps in
        mlflow_server.kill()
        killed = time.monotonic()
        mlflow_server.start()
        print(f"server down for {time.monotonic() - killed:.1f} s")
        assert job.finish() == 0, job.stderr.read_text()[-3000:]
    finally:
        job.kill()
    train_s = job.lines["TRAIN"]["train_s"]
    assert train_s < steps * step_s + 6.0, f"training stalled: {train_s:.1f} s for {steps * step_s:.0f} s of steps"
    _check_everything_arrived_once(mlflow_server, steps)
    assert "is unavailable" in job.stderr.read_text() and "is back" in job.stderr.read_text()
    assert not any(job.spool.rglob("ops.jsonl")), "the journal is removed once delivered"


def test_server_killed_and_not_restarted_then_deliver_sends_everything_once(tmp_path: Path,
                                                                            mlflow_server: MlflowServer) -> None:
    steps, step_s, timeout = 150, 0.02, 3.0
    job = Job(tmp_path, mlflow_server.uri, steps=steps, step_s=step_s, timeout=timeout)
    try:
        job.line("PHASE1")
        _delivered_phase1(mlflow_server)
        mlflow_server.kill()  # before the training run is created: it is created when delivered
        job.go.touch()
        assert job.finish() == 3, job.stderr.read_text()[-3000:]
    finally:
        job.kill()
    closing = job.lines["CLOSE"]
    assert job.lines["TRAIN"]["train_s"] < steps * step_s + 6.0, "training stalled"
    assert closing["close_s"] < timeout + 3.0, f"waited {closing['close_s']:.1f} s for a store that is gone"
    spool = Path(closing["spool"])
    assert closing["command"] == f"python -m lrtrack.deliver {spool}"
    assert closing["command"] in closing["message"] and "not delivered" in closing["message"]
    assert (spool / "ops.jsonl").is_file() and spool.is_relative_to(job.spool)

    client = _client(mlflow_server)  # the server's own store, read while the server is down
    experiment = client.get_experiment_by_name("faults")
    left = {r.info.run_name: r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert left == {"pipeline": "RUNNING", "range_test": "FINISHED"}, left

    mlflow_server.start(wait=False)  # the deliver command waits for it to answer
    deliver = subprocess.run([sys.executable, "-m", "lrtrack.deliver", str(spool), "--timeout", "90"], cwd=ROOT,
                             env=clean_env(), capture_output=True, text=True, timeout=120)
    assert deliver.returncode == 0, deliver.stderr
    assert "delivered " in deliver.stdout and "1 run to create" in deliver.stdout, deliver.stdout
    _check_everything_arrived_once(mlflow_server, steps)

    from lrtrack.tracking.deliver import main

    assert main([str(job.spool)]) == 0  # again, in-process this time: "already delivered", nothing sent twice
    _check_everything_arrived_once(mlflow_server, steps)


RACE = r'''
import sys, time
from pathlib import Path
import mlflow.tracking, lrtrack.tracking.runs  # imported before the start line, so both really race
uri, go = sys.argv[1], Path(sys.argv[2])
Path(sys.argv[3] + ".ready").touch()
while not go.exists():
    time.sleep(0.005)
tracker = lrtrack.tracking.runs.Tracker(uri, "race", spool_dir=sys.argv[3])
with tracker.start_run("plain run") as run:
    for i in range(20):
        run.on_step(i, {"loss": 1.0 / (i + 1)})
tracker.close()
'''


def test_two_processes_start_at_once_on_a_fresh_sqlite_store(tmp_path: Path) -> None:
    script, go, db = tmp_path / "race.py", tmp_path / "go", tmp_path / "store" / "mlflow.db"
    script.write_text(RACE)
    db.parent.mkdir()
    procs = [subprocess.Popen([sys.executable, str(script), f"sqlite:///{db}", str(go), str(tmp_path / f"spool{i}")],
                              cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"spool{i}.ready").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.02)  # both have imported MLflow and wait for the start line
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 20 for r in runs)


@contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``folder`` (root only; the test skips where it cannot mount)."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): no disk-full test")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1.2 MB tmpfs: room for an MLflow store and little else."""
    with _tmpfs(tmp_path / "small-disk", "1200k") as mount:
        yield mount


def test_a_full_disk_under_the_store_loses_nothing(tmp_path: Path, small_disk: Path, premade_store) -> None:
    from lrtrack.tracking.runs import Tracker
    from lrtrack.tracking.store import read_client

    premade_store(small_disk)
    uri = f"sqlite:///{small_disk}/mlflow.db"
    tracker = Tracker(uri, "disk", spool_dir=tmp_path / "spool")
    run = tracker.start_run("train")
    for i in range(10):
        run.on_step(i, {"loss": float(i)})
    client = read_client(uri)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the relay delivered the first steps
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) == 10:
            break
        time.sleep(0.05)
    filler = small_disk / "filler"
    with open(filler, "wb") as fh, pytest.raises(OSError):  # fill the disk
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    start = time.monotonic()
    for i in range(10, 300):
        run.on_step(i, {"loss": float(i)})
    run.log_params({"lr": 0.1})
    assert time.monotonic() - start < 5, "a full store must not stall training"
    time.sleep(1.0)
    assert tracker.undelivered is not None  # waiting in the journal, not lost
    filler.unlink()  # space again
    run.end()
    tracker.close(timeout_s=30)
    store_id = tracker.store_id(run.run_id)
    assert sorted(m.step for m in client.get_metric_history(store_id, "loss")) == list(range(300))
    assert client.get_run(store_id).info.status == "FINISHED"
    assert client.get_run(store_id).data.params == {"lr": "0.1"}


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB tmpfs: a tracking journal that runs out of room mid-job."""
    with _tmpfs(tmp_path / "tiny-disk", "256k") as mount:
        yield mount


def test_a_full_disk_under_the_journal_stops_the_job_in_one_line_and_ends_its_runs(
        tmp_path: Path, tiny_disk: Path, premade_store) -> None:
    from mlflow.tracking import MlflowClient

    premade_store(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lrtrack", "+model=mnist_cnn", "+experiment=smoke", "stage=train",
                           "bounds.max_lr=0.05", "train.epochs=20", f"tracking.spool_dir={tiny_disk}"],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lrtrack: error: the disk holding the tracking journal ") and str(tiny_disk) in last
    assert "python -m lrtrack.deliver" in last
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status in ("FAILED", "KILLED") for r in runs), [r.info.status for r in runs]
    (final,) = [r for r in runs if r.data.tags.get("lrtrack.stage") == "final"]
    assert len(client.get_metric_history(final.info.run_id, "loss")) > 0  # what was journaled arrived
