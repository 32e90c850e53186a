"""Review without clicks, and every printed command working as printed (issue 22): the last line
of a job is one URL with its range test and training run side by side (MLflow's compare page);
the pipeline run's description summarises it with links; a sweep into another store prints a
report command that runs as printed; ``--help`` names real folders; no ``pending-`` id anywhere."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
from mlflow.tracking import MlflowClient

from lrtrack.app.where import review_hint
from tests.conftest import ROOT, clean_env, run_cli, run_cli_here

SMOKE = ["+experiment=smoke"]
URL = re.compile(r"then open (http://\S+)")


def _compare_ids(url: str) -> tuple[list[str], list[str]]:
    match = re.fullmatch(r"http://127\.0\.0\.1:5000/#/compare-runs\?runs=(\S+)&experiments=(\S+)", url)
    assert match, url
    return re.findall(r'"(\w+)"', unquote(match[1])), re.findall(r'"(\w+)"', unquote(match[2]))


def test_review_hint_is_the_compare_page_or_the_one_run() -> None:
    assert review_hint("sqlite:////tmp/a b/mlflow.db", "3", ["e" * 32, "f" * 32]) == (
        "mlflow ui --backend-store-uri 'sqlite:////tmp/a b/mlflow.db'\n  then open http://127.0.0.1:5000/"
        f"#/compare-runs?runs=%5B%22{'e' * 32}%22%2C%22{'f' * 32}%22%5D&experiments=%5B%223%22%5D")
    assert review_hint("http://mlflow:5000/", "3", ["e" * 32]) == f"open http://mlflow:5000/#/experiments/3/runs/{'e' * 32}"


@pytest.mark.slow
def test_a_job_ends_with_one_url_of_its_two_runs_and_a_note_on_its_pipeline_run(tmp_path: Path) -> None:
    args = ["+model=mnist_cnn", *SMOKE, "tracking.experiment_name=smoke runs"]  # a space: quoted when printed
    proc = run_cli_here(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    (resume,) = re.findall(r"continue it with: (python -m lrtrack .*)", proc.stdout)
    assert shlex.split(resume)[3:-1] == args  # the printed command, split as a shell does, is the one run
    assert lines[-2].endswith(f"review in MLflow: mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}")
    (url,) = URL.findall(lines[-1])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke runs")
    runs = {r.data.tags["lrtrack.stage"]: r for r in client.search_runs([exp.experiment_id])}
    explore, final, pipeline = runs["explore"], runs["final"], runs["pipeline"]
    assert _compare_ids(url) == ([explore.info.run_id, final.info.run_id], [exp.experiment_id])

    note = pipeline.data.tags["mlflow.note.content"]
    assert note.startswith("**lrtrack pipeline**: `python -m lrtrack +model=mnist_cnn +experiment=smoke "
                           "'tracking.experiment_name=smoke runs'`")
    lr = explore.data.metrics["suggested_lr"]
    assert f"| suggestion | confirmed: {lr:.3e} |" in note
    assert f"| confidence | {explore.data.tags['lrtrack.confidence']}" in note
    assert f"| bounds | max_lr {float(final.data.params['bounds.max_lr_used']):.3e}, base_lr " in note
    assert f"| final_val_loss | {final.data.metrics['final_val_loss']:.4g} |" in note
    assert f"[range test](#/experiments/{exp.experiment_id}/runs/{explore.info.run_id})" in note
    assert f"[training run](#/experiments/{exp.experiment_id}/runs/{final.info.run_id})" in note
    side_by_side = re.search(r"\[side by side\]\((#/compare-runs\?\S+)\)", note)[1]
    assert _compare_ids("http://127.0.0.1:5000/" + side_by_side) == _compare_ids(url)

    # No placeholder id anywhere: not in a tag, a param, the output.
    seen = [proc.stdout, proc.stderr] + [v for r in runs.values() for v in (*r.data.tags.values(),
                                                                         *r.data.params.values())]
    assert not [v for v in seen if "pending-" in v or "@explore@" in v or "@experiment@" in v]
    assert not [k for r in runs.values() for k in r.data.tags if "create_id" in k]


@pytest.mark.slow
def test_a_sweep_into_a_second_sqlite_file_prints_a_report_command_that_runs_as_printed(tmp_path: Path) -> None:
    second = tmp_path / "stores" / "second.db"
    second.parent.mkdir()
    proc = run_cli(["-m", "+model=mnist_cnn", *SMOKE, "seed=0,1", "stage=range_test",
                    f"tracking.tracking_uri=sqlite:///{second}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    (command,) = re.findall(r"Compare its jobs on one page: (python -m lrtrack\.report .*--out report/)", out)
    assert f"--tracking-uri sqlite:///{second}" in command
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the default store
    venv = clean_env()  # the shell of a user whose environment is active: its python first on PATH
    venv["PATH"] = f"{Path(sys.executable).parent}:{venv.get('PATH', '')}"
    shown = subprocess.run(command, shell=True, cwd=tmp_path, env=venv, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert (tmp_path / "report" / "index.html").is_file()
    assert "2 job(s), 0 failed" in (tmp_path / "report" / "index.html").read_text()
    (url,) = URL.findall(out)
    ids, _ = _compare_ids(url)
    assert len(ids) == 2  # the two jobs' range tests (stage=range_test: no training runs)


def test_help_names_folders_that_exist() -> None:
    proc = subprocess.run([sys.executable, "-m", "lrtrack", "--help"], cwd=ROOT, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    (folder,) = re.findall(r"each is commented in its YAML file under (\S+)\):", proc.stdout)
    assert Path(folder) == ROOT / "conf" and (Path(folder) / "config.yaml").is_file()
    assert "lrtrack/conf" not in proc.stdout  # a folder of the wheel only
