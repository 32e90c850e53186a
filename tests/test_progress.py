"""Progress that reaches log files (issue 22): with stderr not a terminal, one log line every 10%
of a stage or every 30 s, whichever comes first; terminals keep tqdm's bars."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lrtrack.engine import progress
from lrtrack.engine.progress import LogProgress, progress_bar
from tests.conftest import clean_env


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lrtrack.progress"]


def test_a_line_every_tenth_of_the_stage_with_lr_loss_elapsed_and_eta(monkeypatch, caplog) -> None:
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    caplog.set_level(logging.INFO, logger="lrtrack.progress")
    bar = LogProgress(50, "range test")
    for step in range(50):
        clock.now += 0.2
        bar.update(1)
        bar.set_postfix(lr=f"{1e-3 * (step + 1):.2e}", smoothed_loss=f"{2.0 - step / 100:.4f}", refresh=False)
    bar.close()
    lines = _lines(caplog)
    assert len(lines) == 10  # 5, 10, ... 50: the last step's line is the closing one
    assert lines[0] == "range test: step 5/50 (10%), lr=5.00e-03, smoothed_loss=1.9600, elapsed 0:01, ETA 0:09"
    assert lines[-1] == "range test: step 50/50 (100%), lr=5.00e-02, smoothed_loss=1.5100, elapsed 0:10"


def test_a_slow_stage_gets_a_line_every_30_seconds_and_an_unknown_total_no_eta(monkeypatch, caplog) -> None:
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    caplog.set_level(logging.INFO, logger="lrtrack.progress")
    bar = LogProgress(1000, "training")
    bar.set_description("epoch 1/2")
    for _ in range(40):  # 4% of the stage, 12 s a step: 480 s
        clock.now += 12
        bar.update(1)
        bar.set_postfix(lr="0.1", smoothed_loss="0.5")
    assert len(_lines(caplog)) == 13  # every 30 s: every 3rd step (36 s), 3 to 39
    assert _lines(caplog)[0] == ("training (epoch 1/2): step 3/1000 (0%), lr=0.1, smoothed_loss=0.5, "
                                 "elapsed 0:36, ETA 3:19:24")
    caplog.clear()
    unknown = LogProgress(None, "training")
    clock.now += 31
    unknown.update(1)
    unknown.set_postfix(lr="0.1")
    assert _lines(caplog) == ["training: step 1, lr=0.1, elapsed 0:31"]


def test_progress_false_is_silent_and_a_file_gets_lines(tmp_path: Path) -> None:
    assert not isinstance(progress_bar(10, "x", enabled=False), LogProgress)
    with open(tmp_path / "err", "w") as fh:
        saved, sys.stderr = sys.stderr, fh
        try:
            assert isinstance(progress_bar(10, "x"), LogProgress)
        finally:
            sys.stderr = saved


@pytest.mark.slow
def test_a_job_with_output_to_a_file_logs_its_progress(tmp_path: Path) -> None:
    """The real command, stdout and stderr into one file as under nohup or a cluster scheduler:
    the range test's and the training's progress lines are there, and in Hydra's job log."""
    env = clean_env(OMP_NUM_THREADS="1")
    with open(tmp_path / "job.log", "w") as out:
        proc = subprocess.run([sys.executable, "-m", "lrtrack", "+model=mnist_cnn", "+experiment=smoke",
                               "progress=true"],
                              cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    text = (tmp_path / "job.log").read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text  # no bar redrawn in the file
    rt = re.findall(r"range test: step (\d+)/12 \(\d+%\), lr=\S+, smoothed_loss=\S+, elapsed \S+", text)
    assert [int(s) for s in rt] == [2, 3, 4, 5, 6, 8, 9, 10, 11, 12]  # the first step past each 10%
    assert re.search(r"confirmation probes: step \d+/12 \(\d+%\), probe=1, lr=\S+, loss=\S+, elapsed", text)
    train = re.findall(r"training \(epoch 1/1\): step (\d+)/16 \(\d+%\), lr=\S+, smoothed_loss=\S+, "
                       r"elapsed \S+(?:, ETA \S+)?\n", text)
    assert len(train) == 10 and train[-1] == "16"
    job_logs = [p for p in tmp_path.rglob("*.log") if p.name != "job.log"]
    assert job_logs and "range test: step 12/12 (100%)" in job_logs[0].read_text()
