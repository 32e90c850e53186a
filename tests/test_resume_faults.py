"""``train.resume`` as a user meets it, in real processes: a resumed job logs the checkpoint's path (not
the loaded checkpoint: tensors, RNG state, history), and a resumed job that is stopped at once
prints the resume command, with ``train.resume=`` once."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.conftest import runs_once_ended
from tests.test_faults import _Process

pytestmark = pytest.mark.slow

LONG_TRAIN = ["+model=mnist_cnn", "+experiment=smoke", "stage=train", "bounds.max_lr=0.05", "train.epochs=50",
              "data.fake_size=2048"]


def _stop_line(out: str) -> str:
    assert "Traceback" not in out, out[-3000:]
    (line,) = [line for line in out.splitlines() if line.startswith("lrtrack: error:")]
    return line


def test_a_resumed_job_logs_the_checkpoint_path_and_a_stop_prints_the_resume_command_once(
        tmp_path: Path, premade_store) -> None:
    from lrtrack.app.resume import without_resume

    premade_store(tmp_path)
    first = _Process(LONG_TRAIN, tmp_path)
    first.read_until(r"epoch 2/50: ")  # the checkpoint of epoch 1 journaled
    first.signal(signal.SIGINT)
    code, out = first.finish()
    assert code == 130, out[-3000:]
    (run_id,) = re.findall(r"train\.resume=(\w+)", _stop_line(out))

    resumed = _Process([*LONG_TRAIN, f"train.resume={run_id}", f"hydra.run.dir={tmp_path}/resumed"], tmp_path)
    match = resumed.read_until(r"resuming training run (\w+) from (\S+)$")
    resumed.signal(signal.SIGTERM)  # at once: before the training starts
    code, out = resumed.finish()
    assert code == 130, out[-3000:]
    assert match.group(1) == run_id and match.group(2).endswith("last.pt"), match.group(0)
    log_file = next((tmp_path / "resumed").glob("*.log")).read_text()
    for text in (out, log_file):
        assert "tensor(" not in text and "'optimizer':" not in text, text[-3000:]
    assert len(out) < 20_000, f"{len(out)} characters of output"
    line = _stop_line(out)
    assert line.count("train.resume=") == 1 and line.endswith(f"continue training with: python -m lrtrack "
                                                              f"{' '.join(LONG_TRAIN)} hydra.run.dir={tmp_path}/resumed "
                                                              f"train.resume={run_id}"), line
    (run,) = runs_once_ended(tmp_path)
    assert run.info.status == "KILLED"

    assert without_resume("python -m lrtrack a=1 train.resume=x 'b=two words'") == \
        "python -m lrtrack a=1 'b=two words'"
    assert without_resume("python -m lrtrack a=1") == "python -m lrtrack a=1"
