"""The library's entry points check their arguments before any step: a device torch only parses, a
string for a flag, a tracking store nothing answers at. One clear exception naming the argument."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lrtrack import LRFinder, run_range_test, tracked_range_test
from lrtrack.tracking.store import TrackingUnavailable


def _task() -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 4), nn.LogSoftmax(1))
    data = TensorDataset(torch.randn(64, 20), torch.randint(0, 4, (64,)))
    return model, torch.optim.SGD(model.parameters(), lr=1e-3), DataLoader(data, batch_size=16)


@pytest.mark.parametrize(("device", "why"), [
    ("cpu:1", "the CPU has no index (torch runs on all its cores as one device); use device=cpu"),
    ("cuda:3", "CUDA is not available on this machine; use device=auto or cpu"),
    ("meta", "lrtrack trains on cpu, cuda"),
])
def test_a_device_this_machine_cannot_train_on_is_refused_before_any_step(device: str, why: str) -> None:
    if torch.cuda.is_available() and device.startswith("cuda"):
        pytest.skip("this machine has CUDA: cuda:3 may exist")
    model, opt, loader = _task()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = "^" + re.escape(f"device='{device}' is invalid: {why}")
    with pytest.raises(ValueError, match=expected):
        run_range_test(model, opt, loader, criterion=nn.NLLLoss(), device=device, num_iter=5, progress=False)
    with pytest.raises(ValueError, match=expected):
        LRFinder(model, opt, nn.NLLLoss(), device=device)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_lrfinder_memory_cache_takes_a_boolean_not_a_string() -> None:
    model, opt, _ = _task()
    with pytest.raises(TypeError, match=r"^memory_cache must be True or False; got 'no'$"):
        LRFinder(model, opt, nn.NLLLoss(), memory_cache="no")


def test_tracked_range_test_refuses_a_store_nothing_answers_at_before_the_test(tmp_path: Path,
                                                                               monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")  # the argument wins over it
    model, opt, loader = _task()
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=r"nothing answers at tracking server http://\*\*\*@127\.0\.0\.1:9 "):
        tracked_range_test(model, opt, loader, criterion=nn.NLLLoss(), num_iter=5,
                           tracking_uri="http://bob:s3cret@127.0.0.1:9")
    assert time.monotonic() - start < 10  # (it used to run the test, then wait 60 s for delivery)
    assert not list(tmp_path.iterdir())  # no journal, no store: nothing was started


def test_a_first_step_that_fails_keeps_its_error_and_gains_the_first_batch_diagnosis() -> None:
    """A model and data that do not fit: torch's own error (a bug's traceback is kept) with the line the
    CLI would print added as a note."""
    model, opt, _ = _task()
    narrow = DataLoader(TensorDataset(torch.randn(64, 7), torch.randint(0, 4, (64,))), batch_size=16)
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied") as caught:
        run_range_test(model, opt, narrow, criterion=nn.NLLLoss(), num_iter=5, progress=False)
    assert caught.value.__notes__ == [
        "lrtrack: the range test's first step failed: the model cannot take the data's inputs (16, 7) float32: "
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (16x7 and 20x4); make the model.* settings fit the "
        "data (input size, channels)"]


def test_tracked_training_checks_its_arguments_before_any_run(tmp_path: Path, monkeypatch) -> None:
    from lrtrack import tracked_training

    monkeypatch.chdir(tmp_path)
    model, opt, loader = _task()
    with pytest.raises(ValueError, match=r"^max_lr_rule must be one of confirmed, .*; got 'best'$"):
        tracked_training(model, opt, loader, epochs=1, max_lr_rule="best", criterion=nn.NLLLoss())
    with pytest.raises(ValueError, match=r"^give max_lr=0.1 or max_lr_rule='valley', not both"):
        tracked_training(model, opt, loader, epochs=1, max_lr=0.1, max_lr_rule="valley", criterion=nn.NLLLoss())
    with pytest.raises(TypeError, match=r"^range_test must be what tracked_range_test returned .*got str 'abc'$"):
        tracked_training(model, opt, loader, epochs=1, range_test="abc", criterion=nn.NLLLoss())
    with pytest.raises(TypeError, match=r"^metric='f1' is not known: pass 'accuracy', None, or a callable"):
        tracked_training(model, opt, loader, epochs=1, max_lr=0.1, metric="f1", criterion=nn.NLLLoss())
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was opened: no run


def test_flags_loss_classes_and_another_models_optimizer_are_refused_before_any_step() -> None:
    from lrtrack.engine.train import train

    model, opt, loader = _task()
    with pytest.raises(TypeError, match=r"^amp must be True or False; got 'no'$"):
        run_range_test(model, opt, loader, criterion=nn.NLLLoss(), amp="no", num_iter=5, progress=False)
    with pytest.raises(TypeError, match=r"^amp must be True or False; got 'no'$"):
        train(model, opt, loader, epochs=1, criterion=nn.NLLLoss(), amp="no", progress=False)
    with pytest.raises(TypeError, match=r"^criterion must be a loss instance, e.g. NLLLoss\(\), not the class NLLLoss$"):
        run_range_test(model, opt, loader, criterion=nn.NLLLoss, num_iter=5, progress=False)
    other = torch.optim.SGD(nn.Linear(3, 3).parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=r"^the optimizer holds none of the model's parameters"):
        LRFinder(model, other, nn.NLLLoss()).range_test(loader, num_iter=5, progress=False)
