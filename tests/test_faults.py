"""Real processes killed mid-run: what is kept, how the runs end, and resuming a killed run.

A job killed with SIGKILL cannot end its runs; its relay (a child process, which the kill does not
reach) sees it gone, delivers everything the job had journaled and ends the job's open runs KILLED.

The process that is killed (SIGKILL) or stopped (SIGTERM) is a real ``python -m lrtrack``; what
runs after it (the resumed run, the uninterrupted reference, the refused and allowed commands)
runs the same command in the test's process (:func:`tests.conftest.run_cli_here`), as does the
range test that a Ctrl-C interrupts. Each folder starts with a premade MLflow store: creating one
is not what these tests are about.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_cli_here, runs_once_ended

pytestmark = pytest.mark.slow

# 3 epochs of 32 steps; the process is killed as soon as the first epoch's checkpoint is uploaded,
# so inside the second epoch (see _checkpoint_uploaded).
LONG = ["+model=mnist_cnn", "+experiment=smoke", "stage=train", "bounds.max_lr=0.05", "train.epochs=3",
        "data.fake_size=2048"]


class _Process:
    """A real ``python -m lrtrack`` process whose output is read line by line, with timeouts."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")  # one torch thread, as the test process has
        self.proc = subprocess.Popen([sys.executable, "-m", "lrtrack", *args], cwd=cwd, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line)
        self.lines.put(None)

    def read_until(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                line = None
            if line is None:
                self.proc.kill()
                raise AssertionError(f"{pattern!r} never appeared:\n{''.join(self.seen)}")
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        self.proc.wait(timeout=timeout)
        while (line := self.lines.get(timeout=10)) is not None:
            self.seen.append(line)
        return self.proc.returncode, "".join(self.seen)


def _client(folder: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


def _run(client: MlflowClient, run_id: str) -> Any:
    """A run by the id lrtrack printed (its own) or the store's."""
    from lrtrack.tracking.records import get_run

    return get_run(client, run_id)


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(_run(client, run_id).info.run_id, key))


def _ended(client: MlflowClient, run_id: str, timeout: float = 90) -> Any:
    """The run once it is no longer RUNNING (the killed job's relay ends it), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            run = _run(client, run_id)
        except LookupError:
            run = None
        if run is not None and run.info.status != "RUNNING":
            return run
        assert time.monotonic() < deadline, f"run {run_id} still RUNNING after {timeout} s"
        time.sleep(0.2)


def _checkpoint_uploaded(proc: _Process, folder: Path, run_id: str, timeout: float = 120) -> None:
    """Wait until the first epoch's checkpoint is safe: in the run's artifacts whole (the size of the
    job's own file), or journaled (its operation in the job's journal, which the relay delivers even
    after the job dies). The process is then inside the second epoch. Waiting on the journal too keeps
    this from depending on how fast the relay (niced) runs on a loaded machine."""
    proc.read_until(r"epoch 1/\d+: ")  # the epoch's checkpoint is written and journaled next
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("checkpoints" in ops.read_text() and "last.pt" in ops.read_text()
               for ops in folder.glob("outputs/*/*/tracking-spool/*/ops.jsonl")):
            return
        try:
            artifact_dir = Path(_run(_client(folder), run_id).info.artifact_uri.removeprefix("file://"))
        except LookupError:  # the relay creates the run in the store a moment after the job journaled it
            artifact_dir = None
        uploaded = artifact_dir / "checkpoints" / "last.pt" if artifact_dir else None
        local = next(folder.glob("outputs/*/*/checkpoints/last.pt"), None)
        if local is not None and uploaded is not None and uploaded.is_file() \
                and 0 < local.stat().st_size == uploaded.stat().st_size:
            return
        assert proc.proc.poll() is None, "".join(proc.seen)
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint journaled or uploaded within {timeout} s:\n{''.join(proc.seen)}")


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path: Path, premade_store) -> None:
    killed_dir, clean_dir = premade_store(tmp_path / "killed"), premade_store(tmp_path / "clean")
    proc = _Process(LONG, killed_dir)
    run_id = proc.read_until(r"training run (\w+) started").group(1)
    _checkpoint_uploaded(proc, killed_dir, run_id)  # inside the second epoch
    proc.signal(signal.SIGKILL)
    proc.finish()
    client = _client(killed_dir)
    killed = _ended(client, run_id)  # its relay ended it
    assert killed.info.status == "KILLED"
    assert [a.path for a in client.list_artifacts(killed.info.run_id, "checkpoints")] == ["checkpoints/last.pt"]

    resumed = run_cli_here([*LONG, f"train.resume={run_id}"], killed_dir)
    assert resumed.returncode == 0, resumed.stderr
    clean = run_cli_here(LONG, clean_dir)
    assert clean.returncode == 0, clean.stderr

    (reference,) = [r for r in _client(clean_dir).search_runs(["1"]) if r.data.tags["lrtrack.stage"] == "final"]
    run = _run(client, run_id)
    assert run.info.status == "FINISHED"
    for key in ("lr", "loss", "loss_smoothed", "val_loss", "train_loss_epoch"):
        got, want = _history(client, run_id, key), _history(_client(clean_dir), reference.info.run_id, key)
        steps = [s for s, _ in got]
        assert steps == sorted(set(steps)), f"{key}: a step was logged twice"  # each step exactly once
        assert steps == [s for s, _ in want], key
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-7), key
    assert run.data.metrics["final_val_loss"] == pytest.approx(reference.data.metrics["final_val_loss"], rel=1e-6)
    # A killed run that no longer exists, or a run of another kind, is refused in one line.
    wrong = run_cli_here([*LONG, "train.resume=0123456789abcdef"], killed_dir)
    assert wrong.returncode == 2 and "train.resume='0123456789abcdef': no such MLflow run" in wrong.stderr


def test_sigterm_stops_like_ctrl_c_keeping_runs_metrics_and_checkpoint(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    # 5 epochs: however late the signal lands on a loaded machine, it lands inside the training.
    proc = _Process([*LONG, "stage=all", "train.epochs=5"], tmp_path)
    run_id = proc.read_until(r"training run (\w+) started").group(1)
    _checkpoint_uploaded(proc, tmp_path, run_id)  # the first epoch done and its checkpoint safe
    proc.signal(signal.SIGTERM)
    code, out = proc.finish()
    assert code == 130, out
    assert f"train.resume={run_id}" in out and "Traceback" not in out
    client = _client(tmp_path)
    # A stopped job waits 1.5 s for its relay, then leaves it to deliver: read the runs once they ended.
    runs = {r.data.tags["lrtrack.stage"]: r for r in runs_once_ended(tmp_path)}
    assert runs["final"].info.status == "KILLED" and runs["pipeline"].info.status == "KILLED"
    assert runs["explore"].info.status == "FINISHED"
    # The finished epochs' metrics and their checkpoint are kept; the training stopped before its end.
    assert 1 <= len(_history(client, run_id, "val_loss")) < 5
    assert [a.path for a in client.list_artifacts(runs["final"].info.run_id, "checkpoints")] == ["checkpoints/last.pt"]
    assert (next(tmp_path.glob("outputs/*/*/checkpoints/last.pt"))).is_file()


def test_lr_from_refuses_an_interrupted_range_test_unless_allowed(tmp_path: Path, premade_store,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from lrtrack.tracking.runs import TrackedRun

    premade_store(tmp_path)
    on_step = TrackedRun.on_step

    def ctrl_c_at_step_20(self: TrackedRun, step: int, metrics: dict) -> None:
        on_step(self, step, metrics)
        if step == 20 and "loss" in metrics:
            raise KeyboardInterrupt  # what SIGTERM (or Ctrl-C) raises in the main thread mid-test

    # The range test is interrupted in this process (a real process stopped by SIGTERM: the test above).
    monkeypatch.setattr(TrackedRun, "on_step", ctrl_c_at_step_20)
    proc = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "stage=range_test", "finder.num_iter=200000",
                         "finder.end_lr=0.002"], tmp_path)
    monkeypatch.undo()
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert "range test interrupted after 21 steps" in proc.stdout + proc.stderr
    (explore,) = runs_once_ended(tmp_path)  # the relay may deliver after the job exited
    assert explore.info.status == "KILLED" and explore.data.tags["lrtrack.stop_reason"] == "interrupted"
    refused = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "stage=train",
                            f"train.lr_from={explore.info.run_id}", "bounds.max_lr_rule=minimum"], tmp_path)
    assert refused.returncode == 2
    assert "was interrupted after" in refused.stderr and "train.allow_partial=true" in refused.stderr
    allowed = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "stage=train", "train.allow_partial=true",
                            f"train.lr_from={explore.info.run_id}", "bounds.max_lr_rule=minimum"], tmp_path)
    assert allowed.returncode == 0, allowed.stderr


def test_a_nan_training_loss_is_one_line_exit_1_and_the_run_says_why(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    proc = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "stage=train", "bounds.max_lr=1e6"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lrtrack: error: training loss became ") and "bounds.max_lr" in last
    (final,) = [r for r in _client(tmp_path).search_runs(["1"]) if r.data.tags["lrtrack.stage"] == "final"]
    assert final.info.status == "FAILED"
    assert final.data.tags["lrtrack.error"].startswith("RunFailure: training loss became ")
    assert len(_client(tmp_path).get_metric_history(final.info.run_id, "loss")) >= 1  # the steps before it


def _relay_of(proc: _Process) -> int:
    """The pid of the job's relay (its child running lrtrack.tracking.relay)."""
    children = Path(f"/proc/{proc.proc.pid}/task/{proc.proc.pid}/children").read_text().split()
    for pid in children:
        if "lrtrack.tracking.relay" in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "):
            return int(pid)
    raise AssertionError(f"no relay among {children}")


def _all_runs(client: MlflowClient) -> list[Any]:
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_kill_9_in_the_range_test_ends_the_runs_killed_with_every_point_delivered(tmp_path: Path,
                                                                                 premade_store) -> None:
    premade_store(tmp_path)
    proc = _Process(["+model=mnist_cnn", "+experiment=smoke", "finder.num_iter=200000", "finder.end_lr=0.002",
                     "progress=false"], tmp_path)
    proc.read_until(r"range test: \d+ steps from")
    time.sleep(2.0)  # 2 s into the range test
    proc.signal(signal.SIGKILL)
    proc.finish()
    client = _client(tmp_path)
    deadline = time.monotonic() + 90
    while not (runs := _all_runs(client)) or any(r.info.status == "RUNNING" for r in runs):
        assert time.monotonic() < deadline, [(r.info.run_name, r.info.status) for r in runs]
        time.sleep(0.2)
    by_stage = {r.data.tags["lrtrack.stage"]: r for r in runs}
    assert set(by_stage) == {"pipeline", "explore"}
    assert {r.info.status for r in runs} == {"KILLED"}
    steps = [m.step for m in client.get_metric_history(by_stage["explore"].info.run_id, "loss")]
    assert len(steps) > 5 and sorted(steps) == list(range(len(steps)))  # every step up to the kill, once
    assert not list(tmp_path.glob("outputs/*/*/tracking-spool"))  # the relay removed the journal and its folder


def test_job_and_relay_killed_together_deliver_ends_their_runs_killed(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    proc = _Process([*LONG, "train.epochs=50"], tmp_path)
    run_id = proc.read_until(r"training run (\w+) started").group(1)
    proc.read_until(r"epoch 1/50: ")
    deadline = time.monotonic() + 60
    while True:  # the relay has created the run in the store (it is RUNNING there)
        try:
            _run(_client(tmp_path), run_id)
            break
        except LookupError:
            assert time.monotonic() < deadline, "the relay never created the run"
            time.sleep(0.05)
    relay = _relay_of(proc)
    os.kill(relay, signal.SIGKILL)
    proc.signal(signal.SIGKILL)
    proc.finish()
    (journal,) = tmp_path.glob("outputs/*/*/tracking-spool/*")
    client = _client(tmp_path)
    assert _run(client, run_id).info.status == "RUNNING"  # nobody was left to end it
    # The next lrtrack command on the store, launched from another folder (one in this folder delivers
    # the journal first: tests/test_stranded.py), ends it: its owner process is gone from this host.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    nxt = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "stage=range_test",
                        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"], elsewhere)
    assert nxt.returncode == 0, nxt.stderr
    killed = _run(client, run_id)
    assert killed.info.status == "KILLED" and "gone" in killed.data.tags["lrtrack.stop_reason"]
    delivered = subprocess.run([sys.executable, "-m", "lrtrack.deliver", str(journal), "--timeout", "60"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert delivered.returncode == 0, delivered.stderr
    client = _client(tmp_path)
    run = _run(client, run_id)
    assert run.info.status == "KILLED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert len(steps) >= 32 and sorted(steps) == list(range(len(steps)))  # the first epoch at least, once each
    assert all(r.info.status != "RUNNING" for r in _all_runs(client))


def test_two_resumes_of_one_run_at_once_the_second_is_refused_in_one_line(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    args = [*LONG, "train.epochs=50"]
    proc = _Process(args, tmp_path)
    run_id = proc.read_until(r"training run (\w+) started").group(1)
    proc.read_until(r"epoch 2/50: ")  # epoch 1's checkpoint is journaled
    proc.signal(signal.SIGKILL)
    proc.finish()
    assert _ended(_client(tmp_path), run_id).info.status == "KILLED"
    first = _Process([*args, f"train.resume={run_id}"], tmp_path)
    first.read_until(r"resuming training run")
    second = run_cli_here([*args, f"train.resume={run_id}"], tmp_path)
    assert first.proc.poll() is None, "the first resume ended before the second was tried"
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    (line,) = [x for x in second.stderr.splitlines() if x.startswith("lrtrack: error:")]
    assert f"train.resume={run_id!r}" in line and "is resuming this run now" in line
    first.signal(signal.SIGTERM)  # the first goes on until stopped: it is not disturbed
    code, out = first.finish(timeout=120)
    assert code == 130, out
    assert _ended(_client(tmp_path), run_id).info.status == "KILLED"
