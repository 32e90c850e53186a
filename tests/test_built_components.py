"""What a component's ``_target_`` builds is checked before any run (lrtrack.app.kinds), and the
validation metric is tried on the first batch (lrtrack.engine.metric_check): a target that builds
an int, a string or a partial, or a metric that returns None, a string or cannot be called with
(outputs, targets), is one ``lrtrack: error:`` line, exit 2, no MLflow run."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from lrtrack.app import kinds
from lrtrack.engine.metric_check import METRIC_FIX, metric_problem
from lrtrack.engine.tasks import BatchMean, as_metric, metric_value_problem
from tests.conftest import run_cli_here
from tests.test_examples import no_runs

PARTS = '''
import torch


def text_model(**settings):
    return "a model"


def list_optimizer(params, **settings):
    return list(params)


def text_metric(outputs, targets):
    return "good"


def vector_metric(outputs, targets):
    return (outputs.argmax(1) == targets).float()


def nan_metric(outputs, targets):
    return float("nan")


def no_arg_metric():
    return 1.0


def text_data(**settings):
    return "loaders"


def number_loaders(**settings):
    return 3, None


class ExitingNet(torch.nn.Module):
    def __init__(self, **settings):
        super().__init__()
        raise SystemExit(3)
'''

BASE = ["+model=mnist_cnn", "+experiment=smoke"]
GIVEN = "(given the first batch's outputs (64, 10) float32 and targets (64,) int64)"


def refused(args: list[str], folder: Path) -> str:
    """The one error line of ``python -m lrtrack BASE ARGS`` in ``folder``, checked: exit 2, no
    traceback, nothing else on stderr, no run in the folder's store."""
    proc = run_cli_here([*BASE, *args], folder)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("lrtrack: error: "), lines
    assert no_runs(folder)
    return lines[0].removeprefix("lrtrack: error: ")


@pytest.fixture
def project(tmp_path: Path, premade_store) -> Path:
    premade_store(tmp_path)
    (tmp_path / "parts.py").write_text(PARTS)
    return tmp_path


MODULE = "give a Module class, or a factory function that returns a module"
CASES = {
    "int model": (["model._target_=builtins.int", "~model.num_classes", "~model.dropout"],
                  f"model._target_=builtins.int built an int, not a torch.nn.Module: {MODULE}"),
    "text model": (["model._target_=parts.text_model"],
                   f"model._target_=parts.text_model built a str, not a torch.nn.Module: {MODULE}"),
    "partial model": (["+model._partial_=true"],
                      "model._target_=lrtrack.engine.models.MnistCNN built a functools.partial of "
                      "lrtrack.engine.models.MnistCNN, not a torch.nn.Module (model._partial_=true defers the call): "
                      "drop model._partial_ (lrtrack calls the model's _target_ itself)"),
    "list optimizer": (["optimizer._target_=parts.list_optimizer", "stage=range_test"],  # (no schedule to build)
                       "optimizer._target_=parts.list_optimizer built a list from the model's parameters, not a "
                       "torch.optim.Optimizer: give an Optimizer class with optimizer._partial_=true (lrtrack passes "
                       "the model's parameters), or a factory params -> Optimizer"),
    "int criterion": (["criterion._target_=builtins.int"],
                      "criterion._target_=builtins.int built an int, not a loss function: give a loss module (e.g. "
                      "torch.nn.CrossEntropyLoss) or a callable fn(outputs, targets) -> loss"),
    "text data": (["data._target_=parts.text_data"],
                  "data._target_=parts.text_data returned a str, not data loaders: return a (train_loader, "
                  "val_loader) pair, a dict with train and val, or a lrtrack.data.DataBundle (or use _target_: "
                  "lrtrack.data.datasets with train/val Datasets)"),
    "number loaders": (["data._target_=parts.number_loaders"],
                       "data._target_=parts.number_loaders returned an int as train, not a loader (an iterable of "
                       "batches, e.g. a torch.utils.data.DataLoader)"),
    "print metric": (["+metric={_target_: builtins.print, _partial_: true}"],
                     f"metric._target_=builtins.print returned None, not a number {GIVEN}; {METRIC_FIX}"),
    "text metric": (["metric._target_=parts.text_metric"],
                    f"metric._target_=parts.text_metric returned a str, not a number {GIVEN}; {METRIC_FIX}"),
    "per-sample metric": (["metric._target_=parts.vector_metric"],
                          "metric._target_=parts.vector_metric returned a tensor (64,) float32, not one number: "
                          f"average over the batch (e.g. reduction='mean') {GIVEN}; {METRIC_FIX}"),
    "nan metric": (["metric._target_=parts.nan_metric"],
                   f"metric._target_=parts.nan_metric returned nan, not a finite number {GIVEN}; {METRIC_FIX}"),
    "no-argument metric": (["metric._target_=parts.no_arg_metric"],
                           "metric._target_=parts.no_arg_metric failed on the first batch's outputs (64, 10) float32 "
                           "and targets (64,) int64: TypeError: no_arg_metric() takes 0 positional arguments but 2 "
                           f"were given (a factory? set metric._partial_=false); {METRIC_FIX}"),
    "factory metric built a float": (["metric._target_=parts.no_arg_metric", "+metric._partial_=false"],
                                     "metric._target_=parts.no_arg_metric built a float, not a metric: give a callable "
                                     "fn(outputs, targets) -> number, or a class with update/compute/reset "
                                     "(torchmetrics)"),
}


EXITING = {  # a user's module or constructor calling sys.exit would end lrtrack silently (exit 0 on import)
    "a module exiting on import": (["model._target_=scriptlike.Net"],
                                   "model (scriptlike.Net): cannot import 'scriptlike.Net': importing scriptlike called "
                                   "sys.exit(0); put the module's script code under `if __name__ == \"__main__\":`"),
    "a constructor exiting": (["model._target_=parts.ExitingNet"],
                              "model (parts.ExitingNet): building it called sys.exit(3); a component must raise an "
                              "exception to refuse its settings"),
}


@pytest.mark.parametrize("case", list(EXITING))
def test_a_component_calling_sys_exit_is_one_line_not_a_silent_exit(case: str, project: Path) -> None:
    (project / "scriptlike.py").write_text("import sys\n\nprint('training...')\nsys.exit(0)\n")
    args, expected = EXITING[case]
    assert refused(args, project) == expected


@pytest.mark.parametrize("case", list(CASES))
def test_a_component_that_is_not_what_lrtrack_needs_is_one_line_before_any_run(case: str, project: Path) -> None:
    args, expected = CASES[case]
    assert refused(args, project) == expected


def test_the_metric_check_passes_good_metrics_and_leaves_them_unchanged() -> None:
    from torch.nn import functional as F

    model = torch.nn.Linear(3, 2)
    batch = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    criterion = torch.nn.CrossEntropyLoss()
    mae = as_metric(lambda o, t: F.l1_loss(o[:, 0], t.float()), "mae")
    assert metric_problem(mae, model, batch, criterion=criterion) is None
    assert mae.compute() is None  # no state left from the check

    class Stateful:  # torchmetrics' protocol; compute() is None before any update
        def reset(self) -> None:
            self.values: list[torch.Tensor] = []

        def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
            self.values.append((outputs.argmax(1) == targets).float().mean())

        def compute(self) -> torch.Tensor | None:
            return torch.stack(self.values).mean() if self.values else None

    stateful = as_metric(Stateful(), "acc")
    stateful.reset()
    assert metric_problem(stateful, model, batch, criterion=criterion) is None and stateful.compute() is None
    assert metric_problem(None, model, batch, criterion=criterion) is None
    assert metric_problem(as_metric("accuracy"), model, batch, criterion=criterion) is None


def test_a_metric_value_is_a_real_number_at_run_time_too() -> None:
    assert metric_value_problem(0.5) is None and metric_value_problem(torch.tensor(2)) is None
    assert metric_value_problem(torch.tensor([0.5])) is None  # one element
    assert metric_value_problem(None) == "returned None, not a number"
    assert metric_value_problem("x") == "returned a str, not a number"
    assert metric_value_problem(True) is None and metric_value_problem(torch.tensor(False)) is None  # 0 or 1
    assert metric_value_problem(np.float32(0.5)) is None and metric_value_problem(np.ones(1)) is None
    assert metric_value_problem(np.array(["a"])) == "returned an array of <U1, not a number"
    assert metric_value_problem(torch.tensor(1j)) == "returned a tensor () complex64, not a real number"
    assert metric_value_problem(torch.ones(3), many=True) is None
    metric = BatchMean(lambda o, t: None, "broken")
    with pytest.raises(TypeError, match=r"^the metric broken returned None, not a number$"):
        metric.update(torch.ones(2, 2), torch.ones(2))


def test_what_a_target_built_is_described_in_a_few_words() -> None:
    assert kinds.describe(3) == "an int" and kinds.describe("x") == "a str" and kinds.describe(None) == "None"
    assert kinds.describe(torch.nn.Linear) == "the class torch.nn.modules.linear.Linear (not an instance)"
    assert kinds.describe(functools.partial(torch.nn.Linear, 2)) == (
        "a functools.partial of torch.nn.modules.linear.Linear")
    assert kinds.model_problem("m.Net", torch.nn.Linear(2, 2)) is None
    assert kinds.model_problem("m.Net", torch.nn.Linear) == (
        "model._target_=m.Net built the class torch.nn.modules.linear.Linear (not an instance), not a "
        "torch.nn.Module: a factory must return an instance, not its class")
    assert kinds.callable_problem("criterion", "torch.nn.MSELoss", torch.nn.MSELoss()) is None
    assert kinds.callable_problem("criterion", "x", functools.partial(torch.nn.MSELoss)).startswith(
        "criterion._target_=x built a functools.partial of torch.nn.modules.loss.MSELoss, not a loss function "
        "(criterion._partial_=true defers the call): drop criterion._partial_")
    assert kinds.optimizer_factory_problem("o", 0) == (
        "optimizer._target_=o built an int, not a factory of a torch.optim.Optimizer: give an Optimizer class with "
        "optimizer._partial_=true (lrtrack passes the model's parameters), or a factory params -> Optimizer")


FIRST_BATCH = '''
import torch


class BadForward(torch.nn.Module):
    def __init__(self, **settings):
        super().__init__()
        self.linear = torch.nn.Linear(784, 10)

    def forward(self, x):
        return {}["pixel_values"]


def missing_file_data(**settings):
    raise FileNotFoundError(2, "No such file or directory", "/data/train.bin")
'''


@pytest.mark.parametrize(("args", "line"), [
    (["+criterion.reduction=avg"], "first batch: criterion.reduction='avg' is invalid: ValueError: avg is not a valid "
                                   "value for reduction"),
    (["model._target_=first.BadForward"], "first batch: the model cannot take the data's inputs (64, 1, 28, 28) "
                                          "float32: KeyError: 'pixel_values'; the model's own code raised it "
                                          "(first.py:11): fix the model, or the data it expects"),
    (["model._target_=torch.nn.Identity", "~model.num_classes", "~model.dropout"],
     "model._target_=torch.nn.Identity built a model with no trainable parameters: there is nothing for the range "
     "test to train; check model._target_ (and any requires_grad=False in it)"),
    (["data._target_=first.missing_file_data", "~data.val_batch_size", "~data.fake_size", "~data.in_memory"],
     "data (first.missing_file_data): FileNotFoundError: [Errno 2] No such file or directory: '/data/train.bin'; "
     "check the data.* settings"),
])
def test_a_component_failing_is_blamed_on_the_setting_or_code_that_failed(args: list[str], line: str,
                                                                          project: Path) -> None:
    (project / "first.py").write_text(FIRST_BATCH)
    assert refused(args, project) == line
