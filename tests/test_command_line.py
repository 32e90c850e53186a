"""The command line before Hydra: flags in any place, groups set to null, search paths, output
folders, tracking URIs that cannot be read, a sweep's store; each refusal one line, exit 2, no run."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrtrack.app.commandline import arranged
from tests.conftest import run_cli_here, runs_once_ended

SMOKE = ["+model=mnist_cnn", "+experiment=smoke"]


@pytest.mark.parametrize(("argv", "want"), [
    (["+model=x", "-m", "a=1,2"], ["-m", "+model=x", "a=1,2"]),
    (["+model=x", "--config-dir", "conf", "a=1"], ["--config-dir", "conf", "+model=x", "a=1"]),
    (["a=1", "--cfg", "job", "b=2", "--info=config"], ["--cfg", "job", "--info=config", "a=1", "b=2"]),
    (["-m", "+model=x", "a=1,2"], ["-m", "+model=x", "a=1,2"]),  # already in Hydra's order: unchanged
    (["+model=x", "--bogus"], ["+model=x", "--bogus"]),  # not Hydra's: left for Hydra to refuse
])
def test_hydra_flags_are_moved_before_the_overrides_in_their_order(argv: list[str], want: list[str]) -> None:
    assert arranged(argv) == want


def _one_line(proc) -> str:  # noqa: ANN001 - a CliRun
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lrtrack: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_flag_after_the_overrides_runs_the_command_it_names(tmp_path: Path) -> None:
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text("_target_: lrtrack.engine.models.MnistCNN\n")
    proc = run_cli_here(["+model=mine", "+experiment=smoke", "stage=range_test", "--config-dir", "conf"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = runs_once_ended(tmp_path)
    assert run.info.run_name.startswith("range_test mine sgd exp")  # the user's config folder was read


@pytest.mark.parametrize(("override", "line"), [
    ("finder=null", "lrtrack: error: finder=null is invalid: a config group takes one of its options (exp, "
                    "linear), not null; choose one, e.g. finder=exp"),
    ("hydra.searchpath=[file:///nonexistent-lrtrack]", "lrtrack: error: hydra.searchpath: no folder "
                                                       "/nonexistent-lrtrack"),
    ("hydra.run.dir=/proc/lrtrack-out", "lrtrack: error: cannot create the job's output folder /proc/lrtrack-out "
                                        "(No such file or directory): choose a folder you can write"),
    ("tracking.tracking_uri=http://127.0.0.1:99999", "lrtrack: error: tracking URI 'http://127.0.0.1:99999' is not "
                                                     "a valid URL (Port out of range 0-65535)"),
    ("tracking.tracking_uri=postgresql://bob:s3cret@127.0.0.1/db",
     "lrtrack: error: tracking database postgresql://***@127.0.0.1/db: its Python driver 'psycopg' is not "
     "installed"),
])
def test_what_composition_or_mlflow_would_fail_on_is_one_line_before_any_run(tmp_path: Path, override: str,
                                                                              line: str) -> None:
    proc = run_cli_here([*SMOKE, override], tmp_path)
    assert _one_line(proc).startswith(line)
    assert "s3cret" not in proc.stdout + proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_sweep_checks_its_store_before_its_run_exists(tmp_path: Path) -> None:
    proc = run_cli_here(["-m", *SMOKE, "stage=range_test", "seed=0,1", "tracking.tracking_uri=http://127.0.0.1:9"],
                        tmp_path)
    assert _one_line(proc).startswith("lrtrack: error: nothing answers at tracking server http://127.0.0.1:9 "
                                      "(connection refused)")
