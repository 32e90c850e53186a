"""Output folders that cannot be written for another reason than a full disk (a read-only file system,
a file where a folder should be), and a job whose relay died: real processes, real mounts (root; the
mount cases skip elsewhere), the runs read back from the store.

Each failure is one ``lrtrack: error:`` line naming the folder and the reason, exit 1, every run
FAILED with an ``lrtrack.error`` tag, no traceback (full disks: tests/test_file_faults.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import clean_env, runs_once_ended
from tests.test_faults import _Process

pytestmark = pytest.mark.slow

BASE = ["+model=mnist_cnn", "+experiment=smoke"]
TRAIN = [*BASE, "stage=train", "bounds.max_lr=0.05"]
LONG_TRAIN = [*TRAIN, "train.epochs=50", "data.fake_size=2048"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lrtrack", *args], cwd=cwd, env=clean_env(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)


def _one_error_line(text: str) -> str:
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if line.startswith("lrtrack: error:")]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def _all_failed_with(folder: Path, words: str) -> None:
    runs = runs_once_ended(folder)
    assert runs and {r.info.status for r in runs} == {"FAILED"}, [(r.info.run_name, r.info.status) for r in runs]
    assert all(words in r.data.tags.get("lrtrack.error", "") for r in runs), [r.data.tags for r in runs]


def _mount(args: list[str], what: str) -> None:
    if subprocess.run(["mount", *args], capture_output=True).returncode != 0:
        pytest.skip(f"cannot mount {what} here (needs root)")


@contextmanager
def _read_only_tmpfs(folder: Path) -> Iterator[Path]:
    """An empty, read-only tmpfs at ``folder``: every write into it is EROFS, as root too."""
    folder.mkdir(parents=True, exist_ok=True)
    _mount(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], "a read-only tmpfs")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_file_where_the_checkpoints_folder_should_be_is_one_line_and_the_run_fails(tmp_path: Path,
                                                                                     premade_store) -> None:
    premade_store(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoints").write_text("not a folder")
    proc = _run([*TRAIN, f"hydra.run.dir={tmp_path}/out"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert f"cannot write the checkpoint to {tmp_path}/out/checkpoints (it is a file, not a folder)" in line, line
    assert "hydra.run.dir=" in line
    _all_failed_with(tmp_path, "cannot write the checkpoint")


def test_a_read_only_checkpoints_folder_is_one_line_and_the_run_fails(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    with _read_only_tmpfs(tmp_path / "out" / "checkpoints") as checkpoints:
        proc = _run([*TRAIN, f"hydra.run.dir={tmp_path}/out"], tmp_path)
        assert proc.returncode == 1, proc.stderr[-3000:]
        line = _one_error_line(proc.stderr)
        assert f"cannot write the checkpoint to {checkpoints} (Read-only file system)" in line, line
        _all_failed_with(tmp_path, "Read-only file system")


def test_a_journal_made_read_only_during_the_range_test_is_one_line_and_the_runs_fail(tmp_path: Path,
                                                                                       premade_store) -> None:
    premade_store(tmp_path)
    spool = tmp_path / "spool"
    proc = _Process([*BASE, "finder.num_iter=400", "finder.end_lr=0.01",
                     f"tracking.spool_dir={spool}"], tmp_path)
    proc.read_until(r"range test: \d+ steps from")
    (journal,) = spool.iterdir()
    files = journal / "files"
    files.mkdir(exist_ok=True)
    # A read-only bind mount of the journal's own files folder: what is in it is still read (delivered),
    # nothing new can be made in it (the range test's plots and history at its end).
    _mount(["--bind", str(files), str(files)], "a bind mount")
    try:
        _mount(["-o", "remount,bind,ro", str(files)], "a read-only bind mount")
        code, out = proc.finish(timeout=300)
        assert code == 1, out[-3000:]
        line = _one_error_line(out)
        assert f"cannot write into the tracking journal {journal} (Read-only file system)" in line, line
        assert f"python -m lrtrack.deliver {journal}" in line and "tracking.spool_dir" in line
        _all_failed_with(tmp_path, "Read-only file system")
    finally:
        subprocess.run(["umount", "-l", str(files)], check=False)


def _relay_pid(job_pid: int) -> int:
    children = Path(f"/proc/{job_pid}/task/{job_pid}/children").read_text().split()
    (relay,) = [int(pid) for pid in children
                if b"lrtrack.tracking.relay" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return relay


def test_a_job_stopped_after_its_relay_died_says_its_records_wait_and_how_to_deliver_them(
        tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    proc = _Process([*LONG_TRAIN, f"tracking.spool_dir={tmp_path}/spool"], tmp_path)
    proc.read_until(r"epoch 1/50: ")
    os.kill(_relay_pid(proc.proc.pid), signal.SIGKILL)
    proc.read_until(r"epoch 2/50: ")  # logged on, into the journal only
    proc.signal(signal.SIGTERM)
    code, out = proc.finish()
    assert code == 130 and "Traceback" not in out, out[-3000:]
    (journal,) = (tmp_path / "spool").iterdir()
    assert "the tracking relay stopped (exit status -9)" in out, out[-3000:]
    assert f"their records wait in the journal {journal}; deliver them with: python -m lrtrack.deliver {journal}" \
        in out, out[-3000:]

    deliver = subprocess.run([sys.executable, "-m", "lrtrack.deliver", str(journal)], cwd=tmp_path, env=clean_env(),
                             capture_output=True, text=True, timeout=120)  # the command as printed
    assert deliver.returncode == 0, deliver.stderr[-3000:]
    (run,) = runs_once_ended(tmp_path, timeout=5)
    assert run.info.status == "KILLED"
    from mlflow.tracking import MlflowClient

    epochs = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run.info.run_id,
                                                                                               "epoch")
    assert len(epochs) >= 2, "the epochs logged after the relay died arrived"


def test_the_deliver_command_asks_for_a_uri_with_credentials_instead_of_printing_it(tmp_path: Path) -> None:
    from lrtrack.tracking.runs import deliver_command

    assert deliver_command(tmp_path / "j 1", "sqlite:///x.db") == f"python -m lrtrack.deliver '{tmp_path}/j 1'"
    with_secret = deliver_command(tmp_path, "http://bob:s3cret@127.0.0.1:5000")
    assert "s3cret" not in with_secret and with_secret.endswith("--tracking-uri <the store's URI, with its credentials>")
