"""Files that fail: a checkpoint that does not load on resume, an output folder on a full disk (the
checkpoint, the plots), ``report --out`` naming a file. One line each, the runs' statuses right."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import clean_env, run_cli_here, runs_once_ended
from tests.test_faults_tracking import _tmpfs

pytestmark = pytest.mark.slow

TRAIN = ["+model=mnist_cnn", "+experiment=smoke", "stage=train", "bounds.max_lr=0.05"]




def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("lrtrack: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_resume_with_a_checkpoint_that_does_not_load_is_one_line_and_keeps_the_statuses(tmp_path: Path,
                                                                                      premade_store) -> None:
    premade_store(tmp_path)
    first = run_cli_here(TRAIN, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (final,) = runs_once_ended(tmp_path)
    assert final.info.status == "FINISHED"
    stored = Path(final.info.artifact_uri.removeprefix("file://")) / "checkpoints" / "last.pt"
    stored.write_bytes(stored.read_bytes()[:1000])  # truncated
    resumed = run_cli_here([*TRAIN, f"train.resume={final.info.run_id}"], tmp_path)
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    line = _one_error_line(resumed.stderr)
    assert f"train.resume={final.info.run_id!r}: its checkpoint last.pt cannot be loaded" in line
    (after,) = runs_once_ended(tmp_path)
    assert after.info.status == "FINISHED" and "lrtrack.error" not in after.data.tags


@pytest.fixture
def small_output(tmp_path: Path) -> Iterator[Path]:
    with _tmpfs(tmp_path / "out-disk", "300k") as mount:
        yield mount


def test_an_output_folder_on_a_full_disk_is_one_line_and_the_runs_fail_with_the_reason(
        tmp_path: Path, small_output: Path, premade_store) -> None:
    premade_store(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lrtrack", *TRAIN, "train.epochs=3", "data.fake_size=2048",
                           f"hydra.run.dir={small_output}/run"], cwd=tmp_path, env=clean_env(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert f"{small_output}/run" in line and "full" in line
    runs = runs_once_ended(tmp_path)
    assert runs and {r.info.status for r in runs} == {"FAILED"}, [(r.info.run_name, r.info.status) for r in runs]
    assert all("full" in r.data.tags.get("lrtrack.error", "") for r in runs)


def test_report_out_naming_a_file_is_one_line(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    (tmp_path / "taken").write_text("a file")
    proc = subprocess.run([sys.executable, "-m", "lrtrack.report", "lrtrack-mnist_cnn", "--out", "taken/report"],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lrtrack: error: --out 'taken/report'") and "is a file, not a folder" in line
