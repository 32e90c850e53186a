"""A job and its relay killed together (kill -9 of both): the next command in the launch folder
delivers the journal they left, so the run is in MLflow whole, ended KILLED, and can be resumed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import run_cli_here
from tests.test_faults import (
    LONG,
    _checkpoint_uploaded,
    _client,
    _history,
    _Process,
    _relay_of,
    _run,
)

pytestmark = pytest.mark.slow


def test_the_next_command_delivers_what_a_job_killed_with_its_relay_left(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    proc = _Process([*LONG, "train.epochs=4"], tmp_path)
    run_id = proc.read_until(r"training run (\w+) started").group(1)
    _checkpoint_uploaded(proc, tmp_path, run_id)  # epoch 1's checkpoint journaled
    relay = _relay_of(proc)
    os.kill(relay, signal.SIGSTOP)  # the relay delivers nothing more: what follows is in the journal only
    proc.read_until(r"epoch 2/4: ")
    os.kill(proc.proc.pid, signal.SIGKILL)
    os.kill(relay, signal.SIGKILL)
    proc.finish()
    (stranded,) = tmp_path.glob("outputs/*/*/tracking-spool/*/journal.json")  # nobody will deliver it

    # The next command (any stage) delivers it first, and says so.
    nxt = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "stage=range_test"], tmp_path)
    assert nxt.returncode == 0, nxt.stderr
    assert "delivered what an earlier job left undelivered in" in nxt.stdout + nxt.stderr
    assert not stranded.exists(), nxt.stdout + nxt.stderr  # delivered, then removed
    client = _client(tmp_path)
    run = _run(client, run_id)
    assert run.info.status == "KILLED"
    assert len(_history(client, run_id, "val_loss")) == 2  # both finished epochs
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/last.pt"]
    # ... so the run can be continued as printed.
    resumed = run_cli_here([*LONG, "train.epochs=4", f"train.resume={run_id}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _run(client, run_id).info.status == "FINISHED"
