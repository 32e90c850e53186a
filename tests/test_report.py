"""``python -m lrtrack.report``: one HTML page with PNGs from runs read back through MlflowClient."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli_here

# The report reads runs, it does not need the confirmation probes: no probes, a curve rule
# (tests/test_sweep.py runs sweeps on the default rule, confirmed).
FAST = ["+model=mlp", "data=fake", "data.fake_size=256", "train.epochs=1", "finder.num_iter=10",
        "finder.probe_steps=0", "finder.suggestion=valley", "bounds.max_lr_rule=valley",
        "progress=false", "train.checkpoint=false"]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LRTRACK_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory: pytest.TempPathFactory, premade_store) -> Path:
    """A 2-job sweep's store: ``python -m lrtrack -m ...`` run in this process, into a premade store
    (the report is the subject here; tests/test_sweep.py runs sweeps as real processes)."""
    folder = premade_store(tmp_path_factory.mktemp("report"))
    proc = run_cli_here(["-m", *FAST, "optimizer=sgd,adamw", f"tracking.tracking_uri=sqlite:///{folder / 'mlflow.db'}"],
                        folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def report(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lrtrack.report", *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_report_of_a_sweep_run_writes_html_with_images(sweep_store: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{sweep_store / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "lrtrack-mlp"]
    (sweep,) = client.search_runs([exp.experiment_id], "tags.`lrtrack.stage` = 'sweep'")

    proc = report([sweep.info.run_id, "--out", "by_sweep"], sweep_store)
    assert proc.returncode == 0, proc.stderr
    out = sweep_store / "by_sweep"
    page = (out / "index.html").read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert {"range_tests.png", "bounds.png", "lr_paths.png", "training.png"} <= set(images)
    for name in images:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert "optimizer=sgd" in page and "optimizer=adamw" in page
    assert page.count("<td class=\"FINISHED\">") == 2
    assert sweep.info.run_id in page
    summary = list(csv.DictReader(io.StringIO((out / "summary.csv").read_text())))
    assert len(summary) == 2
    for row in summary:  # bounds by the valley rule; confirmed had no probes, so an empty cell
        assert row["suggestion_rule"] == "valley" and row["suggested_lr/confirmed"] == ""
        assert float(row["max_lr"]) == pytest.approx(float(row["suggested_lr/valley"]))


@pytest.mark.slow
def test_report_by_experiment_name_and_errors(sweep_store: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from lrtrack.app.report import main

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(sweep_store)
    assert main(["lrtrack-mlp", "--out", "by_name"]) == 0
    page = (sweep_store / "by_name" / "index.html").read_text()
    assert "experiment lrtrack-mlp" in page and "range_tests.png" in page
    assert page.count("<td class=\"FINISHED\">") == 2  # the pipeline runs, not the sweep run

    assert main(["no-such-thing", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "neither an experiment (available: " in err and "lrtrack-mlp" in err

    monkeypatch.chdir(sweep_store / "by_name")  # no mlflow.db here
    assert main(["lrtrack-mlp"]) == 2
    assert "no MLflow store" in capsys.readouterr().err


def test_report_and_deliver_refuse_bad_arguments_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A store URI the report cannot use, and a --timeout that is not seconds: one line naming the
    flag, exit 2, no traceback (MLflow's own error for an unknown scheme is a 30-line traceback)."""
    from lrtrack.app.report import main as report
    from lrtrack.tracking.deliver import main as deliver

    monkeypatch.chdir(tmp_path)
    assert report(["--tracking-uri", "garbage://x", "some-run"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("lrtrack: error: tracking URI 'garbage://x' is not supported") and \
        line.endswith("(set --tracking-uri)")
    for bad in ("nan", "-5", "soon"):
        with pytest.raises(SystemExit) as stopped:
            deliver([str(tmp_path), "--timeout", bad])
        assert stopped.value.code == 2
        assert f"argument --timeout: '{bad}' is not a number of seconds >= 0; e.g. --timeout 300" in \
            capsys.readouterr().err


def test_report_refuses_an_empty_out_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """--out '' means the current folder: the page and its PNGs would land among the user's files."""
    from lrtrack.app.report import main as report

    monkeypatch.chdir(tmp_path)
    assert report(["some-experiment", "--out", ""]) == 2
    assert capsys.readouterr().err.strip() == ("lrtrack: error: --out '' is empty; name a folder to write the report "
                                               "into (default: lrtrack-report)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("meta", "why"), [
    ("{bad", "cannot be read as a journal's description (Expecting property name enclosed in double quotes: line 1 "
             "column 2 (char 1)): the journal is damaged"),
    ("[]", "holds a JSON list, not a journal's description: the journal is damaged"),
])
def test_deliver_of_a_damaged_journal_names_its_file_in_one_line(meta: str, why: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from lrtrack.tracking.deliver import main as deliver

    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "journal.json").write_text(meta)
    assert deliver([str(tmp_path / "spool")]) == 2
    assert capsys.readouterr().err.strip() == f"lrtrack: error: {tmp_path / 'spool' / 'journal.json'} {why}; its " \
                                              "records (journal.jsonl) are kept as they are"
    assert deliver([""]) == 2
    assert capsys.readouterr().err.strip() == ("lrtrack: error: the journal path is empty; name a journal folder (or "
                                               "a folder to search)")
