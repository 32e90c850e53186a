"""python -m lrtrack end to end: real Hydra composition, real MLflow runs read back through the client.

Most commands run in the test's process (:func:`tests.conftest.run_cli_here`: ``lrtrack.app.cli.main``
with ``sys.argv``, exit code, stdout and stderr as a process has them); the ones that check what a
fresh interpreter prints (one line, nothing else) run as real processes (``run_cli``). Tests about
something else than creating the store start from a premade one.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import run_cli, run_cli_here

SMOKE = ["+experiment=smoke"]  # conf/experiment/smoke.yaml: fake data, 12 range-test steps, 1 epoch


def _client(cwd: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")


def _runs(client: MlflowClient, experiment: str = "lrtrack-mnist_cnn") -> list:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} missing"
    return client.search_runs([exp.experiment_id])


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


# --------------------------------------------------------------------------- bad input


def test_missing_model_prints_one_line_naming_the_models(tmp_path: Path) -> None:  # a fresh process: one line
    proc = run_cli([], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lrtrack: error: no model chosen: add +model=<name> (available: mlp, mnist_cnn), "
        "e.g. python -m lrtrack +model=mnist_cnn"
    ]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("finder.num_iter=abc", "lrtrack: error: finder.num_iter=abc is invalid: must be a whole number; allowed: "
                                ">= 2 (a curve needs two points)"),
        ("finder.num_iter=1e3", "lrtrack: error: finder.num_iter=1e3 is invalid: must be a whole number (1e3 is "
                                "read as a float: write 1000); allowed: >= 2 (a curve needs two points)"),
        ("progress=[1]", "lrtrack: error: progress=[1] is invalid: must be true or false"),
        ("train.resume=[a,b]", "lrtrack: error: train.resume=[a,b] is invalid: must be one value, not a list or a "
                               "mapping"),
        ("finder.bogus=1", "lrtrack: error: Could not override 'finder.bogus'; To append to your config use "
                           "+finder.bogus=1; Key 'bogus' not in 'FinderConfig'; full_key: finder.bogus"),
        ("optimizer=sgdd", "lrtrack: error: In 'config': Could not find 'optimizer/sgdd'; "
                           "Available options in 'optimizer': adam, adamw, prodigy, schedulefree_adamw, "
                           "schedulefree_sgd, sgd"),
    ],
)
def test_bad_overrides_get_one_clear_line(tmp_path: Path, override: str, expected: str) -> None:
    proc = run_cli_here(["+model=mnist_cnn", override], tmp_path)
    assert proc.returncode == 2  # composition errors are bad input, like validation errors
    assert proc.stderr.strip().splitlines() == [expected]


# --------------------------------------------------------------------------- the range test run


def test_bad_values_are_reported_together_before_anything_starts(tmp_path: Path) -> None:
    proc = run_cli_here(["+model=mnist_cnn", "finder.num_iter=1", "finder.step_mode=cubic", "schedule.pct_start=1.5",
                    "optimizer.lr=-0.1"], tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert sorted(lines) == [
        "lrtrack: error: finder.num_iter=1 is invalid: must be >= 2 (a curve needs two points)",
        "lrtrack: error: finder.step_mode='cubic' is invalid: allowed: exp, linear",
        "lrtrack: error: optimizer.lr=-0.1 is invalid: must be 0 or in [1e-12, 1e+06] (the range test's start LR)",
    ]
    assert not (tmp_path / "mlflow.db").exists()  # no store, no run


@pytest.mark.slow
def test_a_bug_keeps_its_traceback_exits_1_and_the_run_ends_failed(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    # A user model whose forward pass raises: not bad input but a failure, so the traceback stays.
    (tmp_path / "buggy_model.py").write_text(
        "import torch\n\n"
        "class Buggy(torch.nn.Module):\n"
        "    def __init__(self, num_classes=10, dropout=0.5):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(784, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        if self.training:  # the first-batch check (eval mode) passes; training then fails\n"
        "            raise RuntimeError('boom in forward')\n"
        "        return torch.log_softmax(self.fc(x.flatten(1)), dim=1)\n")
    proc = run_cli_here(["+model=mnist_cnn", "model._target_=buggy_model.Buggy", *SMOKE, "stage=range_test"],
                        tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: boom in forward" in proc.stderr
    (run,) = _runs(_client(tmp_path))
    assert run.info.status == "FAILED" and run.data.tags["lrtrack.stage"] == "explore"


@pytest.mark.slow
def test_range_test_run_is_tracked(tmp_path: Path) -> None:  # in an empty folder: the store is created
    # A real process, its imports listed: the job never imports MLflow (its relay process delivers).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "lrtrack", "+model=mnist_cnn", *SMOKE,
                           "stage=range_test", "optimizer=sgd"], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "lrtrack.app.recipe" in imported
    assert not {m for m in imported if m == "mlflow" or m.startswith("mlflow.")}, "the job process imported MLflow"
    assert not list(tmp_path.rglob("tracking-spool")), "the spool is removed once the relay delivered it"
    client = _client(tmp_path)
    runs = _runs(client)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "range_test mnist_cnn sgd exp on fake"
    tags = run.data.tags
    assert tags["lrtrack.stage"] == "explore"
    assert tags["hydra.choice.model"] == "mnist_cnn" and tags["hydra.choice.optimizer"] == "sgd"
    assert tags["lrtrack.command"].startswith("python -m lrtrack +model=mnist_cnn")
    steps = int(run.data.metrics["steps"])
    # 12 steps from 1e-3 to 10 either complete or stop early on divergence, and the tag says which.
    assert tags["lrtrack.stop_reason"] == ("completed" if steps == 12 else "diverged")
    assert tags["lrtrack.data"] == "fake"
    params = run.data.params
    assert params["finder.num_iter"] == "12" and params["optimizer._target_"] == "torch.optim.SGD"
    assert params["optimizer.lr"] == "0.001" and params["data.batch_size"] == "64"
    for key in ("lr", "loss", "loss_smoothed"):
        assert _steps(client, run.info.run_id, key) == list(range(steps)), key
    lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]
    assert lrs == pytest.approx([1e-3 * 1e4 ** (i / 11) for i in range(steps)], rel=1e-9)  # the exact exp grid
    rules = ("steepest", "valley", "minimum", "slide")
    for rule in rules:
        tag = tags[f"lrtrack.suggestion.{rule}"]  # the LR, or why there is none
        if f"suggested_lr/{rule}" in run.data.metrics:
            assert float(tag) == pytest.approx(run.data.metrics[f"suggested_lr/{rule}"], rel=1e-5)
        else:
            assert tag and not tag[0].isdigit(), tag
    assert {"min_loss", "min_loss_lr", "steps"} <= set(run.data.metrics)
    # Summary values are one point at step 0 (MLflow's chart view draws those as bars, not as
    # one-dot line charts among the step series); log10_lr is per step, the x for loss vs LR.
    # A low-confidence verdict runs extra range tests, each logged per step under repeat_<i>/.
    per_step = {"lr", "loss", "loss_smoothed", "log10_lr"} | {k for k in run.data.metrics if k.startswith("repeat_")}
    summary = set(run.data.metrics) - per_step
    assert {"min_loss", "min_loss_lr", "steps", "probe_steps", "probes", "repeats", "total_steps",
            "extra_steps"} <= summary
    assert summary <= {"suggested_lr", "edge_lr", "min_loss", "min_loss_lr", "steps", "probe_steps", "probes",
                       "repeats", "total_steps", "extra_steps",
                       *(f"suggested_lr/{rule}" for rule in ("confirmed", *rules))}, summary
    # The confidence verdict: a tag, its reasons (or what the extra budget did), printed with the suggestion.
    assert tags["lrtrack.confidence"] in ("high", "low")
    assert (tags["lrtrack.confidence_reasons"] == "none") == (tags["lrtrack.confidence"] == "high"
                                                               and run.data.metrics["extra_steps"] == 0)
    assert f"confidence in the suggestion: {tags['lrtrack.confidence']}" in proc.stdout + proc.stderr
    assert {key: _steps(client, run.info.run_id, key) for key in summary} == {key: [0] for key in summary}
    log10_lr = sorted(client.get_metric_history(run.info.run_id, "log10_lr"), key=lambda m: m.step)
    assert [m.step for m in log10_lr] == list(range(steps))
    assert [m.value for m in log10_lr] == pytest.approx([math.log10(lr) for lr in lrs], abs=1e-9)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "range_test")}
    assert {"range_test/plot.png", "range_test/history.csv", "range_test/suggestions.json"} <= artifacts
    config_files = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert config_files == {"config/resolved.yaml", "config/hydra_overrides.yaml"}
    path = client.download_artifacts(run.info.run_id, "range_test/history.csv", str(tmp_path))
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == steps and float(rows[0]["lr"]) == pytest.approx(1e-3)
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_mnist_range_test_on_the_real_split(tmp_path: Path, mnist_root: Path, premade_store) -> None:
    premade_store(tmp_path)
    proc = run_cli_here(["+model=mnist_cnn", f"data.root={mnist_root}", "stage=range_test", "progress=false",
                         "finder.num_iter=30"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    client = _client(tmp_path)
    (run,) = _runs(client)
    assert run.data.tags["lrtrack.data"] == "mnist" and run.data.tags["lrtrack.data_fallback"] == "false"
    assert run.data.params["data.batch_size"] == "256"
    steps = int(run.data.metrics["steps"])
    assert len(client.get_metric_history(run.info.run_id, "loss")) == steps
    # 30 log-spaced steps from 1e-3 to 10: a CNN on MNIST learns, so the loss falls below its start.
    first = min(client.get_metric_history(run.info.run_id, "loss_smoothed"), key=lambda m: m.step)
    assert first.step == 0 and run.data.metrics["min_loss"] < first.value - 0.03


@pytest.mark.slow
def test_offline_mnist_falls_back_to_digits_and_says_so(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    proc = run_cli_here(["+model=mnist_cnn", f"data.root={tmp_path / 'no-mnist'}", "stage=range_test",
                         "progress=false", "finder.num_iter=10"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert "FALLING BACK to data=digits" in output and "data.fallback=null" in output
    (run,) = _runs(_client(tmp_path))
    assert run.data.tags["lrtrack.data"] == "digits" and run.data.tags["lrtrack.data_fallback"] == "true"
    assert run.data.params["data.used"] == "digits"


def test_offline_mnist_without_fallback_is_one_clear_error(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    proc = run_cli_here(["+model=mnist_cnn", f"data.root={tmp_path / 'no-mnist'}", "data.fallback=null",
                         "stage=range_test", "progress=false"], tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lrtrack: error: MNIST is not under data.root=") and "data.fallback=digits" in last


# --------------------------------------------------------------------------- range test + training


@pytest.mark.slow
def test_all_stages_make_linked_runs_under_one_parent(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    proc = run_cli_here(["+model=mnist_cnn", *SMOKE, "bounds.max_lr_rule=minimum"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    client = _client(tmp_path)
    runs = {r.data.tags["lrtrack.stage"]: r for r in _runs(client)}
    assert set(runs) == {"pipeline", "explore", "final"}
    parent, explore, final = runs["pipeline"], runs["explore"], runs["final"]
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert explore.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert final.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert final.data.tags["lrtrack.range_test_run_id"] == explore.info.run_id
    assert final.info.run_name == "train mnist_cnn sgd onecycle on fake"
    # max_lr is the range test's 'minimum' suggestion; base_lr a quarter of it.
    assert final.data.params["bounds.max_lr"] == "null"  # the config as given ...
    max_lr = float(final.data.params["bounds.max_lr_used"])  # ... and the bounds it produced
    assert max_lr == pytest.approx(explore.data.metrics["suggested_lr/minimum"])
    assert float(final.data.params["bounds.base_lr_used"]) == pytest.approx(max_lr / 4)
    assert final.data.params["bounds.rule_used"] == "max_lr = minimum suggestion; base_lr = max_lr / 4"
    # Per-step LR under the same key as the range test, so the chart view overlays them.
    n = len(client.get_metric_history(final.info.run_id, "lr"))
    assert n == 16  # 1024 fake samples / batch 64, one epoch
    assert _steps(client, final.info.run_id, "momentum") == list(range(n))
    lrs = [m.value for m in client.get_metric_history(final.info.run_id, "lr")]
    assert max(lrs) <= max_lr * (1 + 1e-9) and max(lrs) == pytest.approx(max_lr, rel=1e-2)  # 1cycle peaks between steps
    assert {"final_val_loss", "final_val_accuracy", "val_loss", "val_accuracy"} <= set(final.data.metrics)
    # The summaries at step 0 (bars in MLflow's chart view), the epoch's values at its last step.
    assert _steps(client, final.info.run_id, "final_val_loss") == [0]
    assert _steps(client, final.info.run_id, "final_val_accuracy") == [0]
    assert _steps(client, parent.info.run_id, "final_val_loss") == [0]
    assert _steps(client, final.info.run_id, "val_loss") == [n - 1]
    arts = {a.path for a in client.list_artifacts(final.info.run_id, "train")}
    assert {"train/lr_and_loss.png", "train/lr_on_range_test.png", "train/history.csv"} <= arts
    (ckpt,) = client.list_artifacts(final.info.run_id, "checkpoints")
    local = client.download_artifacts(final.info.run_id, ckpt.path, str(tmp_path))
    state = torch.load(local, weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch"} <= set(state)


@pytest.mark.slow
def test_train_stage_from_an_earlier_range_test_run(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    first = run_cli_here(["+model=mnist_cnn", *SMOKE, "stage=range_test"], tmp_path)
    assert first.returncode == 0, first.stderr
    client = _client(tmp_path)
    (explore,) = _runs(client)
    second = run_cli_here(["+model=mnist_cnn", *SMOKE, "stage=train", f"train.lr_from={explore.info.run_id}",
                           "schedule=triangular2"], tmp_path)
    assert second.returncode == 0, second.stderr
    final = next(r for r in _runs(client) if r.data.tags["lrtrack.stage"] == "final")
    assert final.data.tags["lrtrack.range_test_run_id"] == explore.info.run_id
    assert final.data.params["bounds.max_lr_rule"] == "null"  # the default: finder.suggestion's rule
    rule = final.data.params["finder.suggestion"]
    assert float(final.data.params["bounds.max_lr_used"]) == pytest.approx(explore.data.metrics[f"suggested_lr/{rule}"])
    assert "train/lr_on_range_test.png" in {a.path for a in client.list_artifacts(final.info.run_id, "train")}


def test_train_stage_with_a_wrong_run_id_is_a_clear_error(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    proc = run_cli_here(["+model=mnist_cnn", *SMOKE, "stage=train", "train.lr_from=0123456789abcdef"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "lrtrack: error: train.lr_from='0123456789abcdef': no such MLflow run in sqlite:///")


def test_train_stage_without_an_lr_source_is_refused(tmp_path: Path) -> None:  # a fresh process: one line
    proc = run_cli(["+model=mnist_cnn", *SMOKE, "stage=train"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lrtrack: error: stage=train needs an LR: set bounds.max_lr=<lr> or train.lr_from=<range-test run id>"]


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    proc = run_cli_here(["--cfg", "job", "+model=mnist_cnn"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "_target_: lrtrack.engine.models.MnistCNN" in proc.stdout
    assert "end_lr: 10.0" in proc.stdout and "batch_size: 256" in proc.stdout


@pytest.mark.slow
def test_broken_data_files_are_named_on_one_line_and_never_fall_back(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)  # (a fresh store and one line: test_train_stage_without_an_lr_source_is_refused)
    raw = tmp_path / "broken" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03" + b"\x01" * 64)  # a header that promises more data
    proc = run_cli_here(["+model=mnist_cnn", *SMOKE, "data=mnist", f"data.root={tmp_path / 'broken'}"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lrtrack: error: data.root=") and "train-images-idx3-ubyte holds 52 bytes of data" in line
    assert "FALLING BACK" not in proc.stdout + proc.stderr
    (tmp_path / "corrupt.pt").write_bytes(b"this is not a torch file")
    proc = run_cli_here(["+model=mnist_cnn", *SMOKE, "data=tensors", f"data.path={tmp_path / 'corrupt.pt'}"],
                        tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lrtrack: error: data.path=") and "corrupt.pt' cannot be read as a .pt file" in line
    exp = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("lrtrack-mnist_cnn")
    assert exp is None or not MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(
        [exp.experiment_id])  # nothing started
