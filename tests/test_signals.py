"""SIGTERM (a cluster's preemption) and SIGINT (Ctrl-C) in every stage of a real ``python -m lrtrack``:
exit 130 within 5 s, the runs KILLED in the store (read back with MlflowClient), the resume command
printed once a training run exists. Each case waits for its stage's marker in the job's output,
then sends the signal; nothing is mocked.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import runs_once_ended
from tests.test_faults import _Process

pytestmark = pytest.mark.slow

SMOKE = ["+model=mnist_cnn", "+experiment=smoke"]
STOP_WITHIN_S = 5.0




def _stop(proc: _Process, signum: int) -> tuple[int, str, float]:
    start = time.monotonic()
    proc.signal(signum)
    proc.proc.wait(timeout=30)
    took = time.monotonic() - start  # the job's own exit (its relay may deliver on)
    code, out = proc.finish(timeout=30)
    return code, out, took


CASES = {
    # stage: (extra overrides, the marker that says the stage is running, seconds to wait after it, signal)
    "sweep": (["finder.num_iter=100000", "finder.end_lr=0.002"], r"range test: \d+ steps from", 0.5,
              signal.SIGTERM),
    "repeats": (["optimizer=adam", "finder.num_iter=400", "finder.end_lr=0.01", "finder.probe_steps=4"],
                r"repeat 1: ", 0.0, signal.SIGTERM),
    "probes": (["finder.num_iter=60", "finder.end_lr=1", "finder.probe_steps=5000"],
               r"confirmation probes: ", 0.3, signal.SIGINT),
    "training": (["stage=train", "bounds.max_lr=0.05", "train.epochs=50", "data.fake_size=2048"],
                 r"epoch 1/50: ", 0.0, signal.SIGINT),
}


@pytest.mark.parametrize("stage", list(CASES))
def test_a_signal_in_each_stage_ends_the_job_with_130_and_its_runs_killed(stage: str, tmp_path: Path,
                                                                          premade_store) -> None:
    extra, marker, delay, signum = CASES[stage]
    premade_store(tmp_path)
    proc = _Process([*SMOKE, *extra], tmp_path)
    proc.read_until(marker)
    time.sleep(delay)
    code, out, took = _stop(proc, signum)
    assert code == 130, out[-3000:]
    assert took < STOP_WITHIN_S, f"{took:.1f} s to stop"
    assert "Traceback" not in out, out[-3000:]
    assert "lrtrack: error: interrupted" in out
    assert "training done" not in out  # the job did not go on to train
    runs = runs_once_ended(tmp_path)
    assert runs and {r.info.status for r in runs} == {"KILLED"}, [(r.info.run_name, r.info.status) for r in runs]
    if stage == "training":
        assert "continue training with: " in out and "train.resume=" in out.split("continue training with: ")[-1]
    assert not list(tmp_path.glob("outputs/*/*/tracking-spool/*"))  # the relay delivered and removed the journal


def test_a_signal_in_a_sweeps_job_ends_the_sweep_with_130_and_every_run_killed(tmp_path: Path,
                                                                              premade_store) -> None:
    premade_store(tmp_path)
    proc = _Process(["-m", *SMOKE, "finder.num_iter=100000", "finder.end_lr=0.002", "seed=0,1"], tmp_path)
    proc.read_until(r"range test: \d+ steps from")
    time.sleep(0.5)
    code, out, took = _stop(proc, signal.SIGTERM)
    assert code == 130, out[-3000:]
    assert took < STOP_WITHIN_S, f"{took:.1f} s to stop"
    assert "Traceback" not in out and "lrtrack: error: interrupted" in out, out[-3000:]
    runs = runs_once_ended(tmp_path)
    stages = sorted(r.data.tags.get("lrtrack.stage", "") for r in runs)
    assert "sweep" in stages and "explore" in stages, stages
    assert {r.info.status for r in runs} == {"KILLED"}, [(r.info.run_name, r.info.status) for r in runs]
    assert "seed=1" not in " ".join(r.info.run_name for r in runs)  # the second job never started


def test_a_signal_while_the_job_waits_for_delivery_leaves_the_relay_to_finish(tmp_path: Path, premade_store) -> None:
    """Ctrl-C in Tracker.close (the job waits for its relay, here still importing MLflow): the job
    stops at once, the relay delivers everything (the run FINISHED, as the job ended it). (It removes
    the journal when it ends after the job, as a stopped CLI job does; this test's "job" lives on.)"""
    from lrtrack.tracking.runs import Tracker

    premade_store(tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "delivery", spool_dir=tmp_path / "spool")
    with tracker.start_run("train") as run:
        for i in range(50):
            run.on_step(i, {"loss": 1.0 / (i + 1)})

    def ctrl_c(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, ctrl_c)
    start = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt):
            tracker.close()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - start < 2
    (stored,) = runs_once_ended(tmp_path)
    assert stored.info.status == "FINISHED"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.get_metric_history(stored.info.run_id, "loss")) == 50  # everything delivered


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for ``signum`` (the kernel's SigCgt mask)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("after_s", [0.0, 0.3])
def test_a_signal_while_the_command_starts_is_exit_130_without_a_traceback(tmp_path: Path, signum: int,
                                                                           after_s: float) -> None:
    proc = _Process(SMOKE, tmp_path)
    deadline = time.monotonic() + 10
    while not _catches(proc.proc.pid, signal.SIGTERM):  # lrtrack's first lines ran: from here on it is ours
        assert time.monotonic() < deadline and proc.proc.poll() is None
        time.sleep(0.002)
    time.sleep(after_s)  # 0: during the imports; 0.3 s: usually still importing, or composing the config
    code, out, took = _stop(proc, signum)
    assert code == 130, out
    assert "Traceback" not in out and out.strip().splitlines()[-1].startswith("lrtrack: error: interrupted"), out
    assert took < STOP_WITHIN_S
    if (tmp_path / "mlflow.db").exists():  # stopped after the store was opened: no run is left RUNNING
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        deadline = time.monotonic() + 60
        while any(r.info.status == "RUNNING" for r in client.search_runs(
                [e.experiment_id for e in client.search_experiments()])):
            assert time.monotonic() < deadline, "a run was left RUNNING"
            time.sleep(0.2)


def test_a_stop_swallowed_where_python_ignores_exceptions_still_stops_the_next_step() -> None:
    """A KeyboardInterrupt raised inside a ``__del__`` is printed and dropped by Python; the stop the
    signal handler also requested is seen by the next optimizer step (lrtrack.engine.stopping)."""
    import torch

    from lrtrack.app.guard import _terminate, stop_on_signals
    from lrtrack.engine.steps import supervised_step, train_step

    class Dropped:
        def __del__(self) -> None:
            _terminate(signal.SIGTERM, None)  # the signal lands while Python runs a finaliser

    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        stop_on_signals()
        Dropped()  # "Exception ignored in: <function Dropped.__del__ ...>": the interruption is lost
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        batch = (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
        with pytest.raises(KeyboardInterrupt):
            train_step(model, optimizer, lambda: batch, supervised_step(torch.nn.CrossEntropyLoss()),
                       device=torch.device("cpu"))
    finally:
        stop_on_signals()  # forget the stop for the tests after this one
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])


@pytest.mark.parametrize(("marker", "delay"), [(r"training done: ", 0.05), (r"review in MLflow: ", 0.0)])
def test_a_signal_after_training_is_exit_130_and_never_lost_nor_a_traceback(marker: str, delay: float,
                                                                            tmp_path: Path, premade_store) -> None:
    """After the last step the job logs its plots and model and waits for delivery: a KeyboardInterrupt
    raised there inside a __del__ or an atexit hook is dropped by Python ("Exception ignored"), and the
    job used to go on and exit 0. The stop is kept: exit 130, one line, no traceback, and the runs are
    KILLED (stopped before they ended) or FINISHED (stopped while the last records were delivered)."""
    premade_store(tmp_path)
    proc = _Process(SMOKE, tmp_path)
    proc.read_until(marker)
    time.sleep(delay)
    code, out, took = _stop(proc, signal.SIGTERM)
    assert "Traceback" not in out and "Exception ignored" not in out, out[-3000:]
    if code == 0 and marker.startswith("review"):  # the job had exited (its last line is the review) before the
        assert "lrtrack: error" not in out  # signal reached it: a finished job, whose runs are FINISHED
        assert {r.info.status for r in runs_once_ended(tmp_path)} == {"FINISHED"}
        return
    assert code == 130, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("lrtrack: error: interrupted"), last
    assert took < STOP_WITHIN_S, f"{took:.1f} s to stop"
    statuses = {r.data.tags.get("lrtrack.stage"): r.info.status for r in runs_once_ended(tmp_path)}
    if "FINISHED" in statuses.values() and "KILLED" not in statuses.values():
        assert last == "lrtrack: error: interrupted after the job's runs ended FINISHED; the relay delivers what is " \
                       "left of them", last
    else:
        assert statuses["final"] == "KILLED" and "train.resume=" in last, (statuses, last)
