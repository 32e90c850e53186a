"""The projects in examples/ run as their READMEs say, from a folder of their own, with real data.

Each example is copied to a fresh folder and its README's commands are run there as written
(``python`` is this interpreter; the only extra override is ``progress=false``), then its
runs are read back from the real MLflow store it wrote: the same linked explore/final runs as
the MNIST demo, with no lrtrack code changed.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import MNIST_SPLIT, run_cli_here

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def readme_commands(example: str) -> list[list[str]]:
    """The commands of the example README's ```bash block, split as a shell would."""
    text = (EXAMPLES / example / "README.md").read_text()
    block = re.search(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert block is not None, f"examples/{example}/README.md has no bash block"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


def run_example(example: str, folder: Path, extra: dict[str, list[str]] | None = None) -> list[str]:
    """Copy the example to ``folder`` and run its README's commands there; returns the lrtrack command."""
    shutil.copytree(EXAMPLES / example, folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    lrtrack_command: list[str] = []
    for command in readme_commands(example):
        assert command[0] == "python", command
        args = [sys.executable, *command[1:], *(extra or {}).get(command[1], [])]
        if command[1:3] == ["-m", "lrtrack"]:
            args.append("progress=false")
            lrtrack_command = command
        proc = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stderr[-3000:]}"
    assert lrtrack_command, f"examples/{example}/README.md runs no python -m lrtrack"
    return lrtrack_command


def linked_runs(folder: Path, experiment: str) -> dict[str, object]:
    """The pipeline, explore and final runs of the one job the example ran, checked to be linked."""
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    runs = {r.data.tags["lrtrack.stage"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"pipeline", "explore", "final"}
    pipeline, explore, final = runs["pipeline"], runs["explore"], runs["final"]
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert explore.data.tags["mlflow.parentRunId"] == final.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
    assert final.data.tags["lrtrack.range_test_run_id"] == explore.info.run_id
    artifacts = {a.path for a in client.list_artifacts(explore.info.run_id, "range_test")}
    assert {"range_test/plot.png", "range_test/history.csv", "range_test/suggestions.json"} <= artifacts
    rule = final.data.params["bounds.max_lr_rule"]  # max_lr = the range test's suggestion by this rule
    if rule == "null":  # the default: the rule the range test chose (finder.suggestion)
        rule = explore.data.tags["lrtrack.suggestion_rule"]
    assert float(final.data.params["bounds.max_lr_used"]) == pytest.approx(explore.data.metrics[f"suggested_lr/{rule}"])
    return runs


def no_runs(folder: Path) -> bool:
    """True when the folder's MLflow store holds no run (or was never created)."""
    if not (folder / "mlflow.db").exists():
        return True
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    return not client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
def test_image_classifier_example(tmp_path: Path) -> None:
    folder = tmp_path / "image_classifier"
    real_mnist = (MNIST_SPLIT / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    extra = {"make_pngs.py": ["--mnist", str(MNIST_SPLIT)]} if real_mnist else {}  # else scikit-learn's digits
    command = run_example("image_classifier", folder, extra)
    assert "criterion=cross_entropy" in command and "data=imagefolder" in command
    runs = linked_runs(folder, "lrtrack-digit_net")
    explore, final = runs["explore"], runs["final"]
    assert explore.data.tags["lrtrack.data"] == "imagefolder" and "ImageFolder" in explore.data.tags["lrtrack.data_source"]
    assert explore.data.params["model._target_"] == "digit_net.DigitNet"
    assert explore.data.params["criterion._target_"] == "torch.nn.CrossEntropyLoss"
    assert explore.data.metrics["min_loss"] < math.log(10) - 0.1  # below chance level on real digits
    assert final.data.metrics["final_val_accuracy"] > 0.5, final.data.metrics  # 10 classes: chance is 0.1
    assert final.data.metrics["final_val_loss"] < 1.5  # chance: ln 10 = 2.3


@pytest.mark.slow
def test_image_classifier_with_the_default_nll_stops_before_any_run(tmp_path: Path, premade_store) -> None:
    folder = tmp_path / "image_classifier"
    shutil.copytree(EXAMPLES / "image_classifier", folder)
    subprocess.run([sys.executable, "make_pngs.py", "images", "--per-class", "20", "--val-per-class", "5"],
                   cwd=folder, check=True, capture_output=True)
    # The refusal needs no process of its own: the command runs in this one, from the example's folder
    # (with a store there already: the README's commands create one in the other tests).
    premade_store(folder)
    proc = run_cli_here(["--config-dir", "conf", "+model=digit_net", "data=imagefolder", "data.root=images"], folder)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lrtrack: error:")]
    assert errors == [
        "lrtrack: error: first batch: criterion=nll expects log-probabilities but the model returns raw scores "
        "(logits: exp(outputs) does not sum to 1): set criterion=cross_entropy, or end the model with log_softmax"]
    assert no_runs(folder)


@pytest.mark.slow
def test_tabular_regression_example(tmp_path: Path) -> None:
    folder = tmp_path / "tabular_regression"
    command = run_example("tabular_regression", folder)
    assert "criterion=mse" in command and "data=tensors" in command
    runs = linked_runs(folder, "lrtrack-diabetes_mlp")
    explore, final = runs["explore"], runs["final"]
    assert explore.data.tags["lrtrack.data"] == "tensors"
    assert explore.data.params["data.path"] == "diabetes.npz"
    assert final.data.metrics["final_val_loss"] < 0.8  # standardized targets: predicting the mean scores ~1
    assert 0 < final.data.metrics["final_val_mae"] < 0.8
    assert not any("accuracy" in key for key in final.data.metrics)  # no accuracy for a regression
