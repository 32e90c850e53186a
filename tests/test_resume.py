"""Training interrupted mid-epoch and resumed from its last checkpoint equals one uninterrupted run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from lrtrack.data import InMemoryLoader
from lrtrack.engine.models import MnistCNN
from lrtrack.engine.observers import RecordingObserver
from lrtrack.engine.schedules import onecycle, optimizer_steps_per_epoch
from lrtrack.engine.train import load_checkpoint, train

EPOCHS = 3


def _setup(seed: int = 0):
    data = torch.Generator().manual_seed(7)  # the same data set in every process
    images = torch.randn(320, 1, 28, 28, generator=data)
    targets = torch.randint(0, 10, (320,), generator=data)
    torch.manual_seed(seed)
    loader = InMemoryLoader(images, targets, batch_size=32, seed=seed)  # shuffles every pass
    val = InMemoryLoader(images[:64], targets[:64], batch_size=64, shuffle=False)
    model = MnistCNN()  # dropout: the RNG state matters
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    schedule = onecycle(optimizer, max_lr=0.05, base_lr=0.01,
                        steps_per_epoch=optimizer_steps_per_epoch(len(loader)), epochs=EPOCHS)
    return model, optimizer, schedule, loader, val


class _StopAt(RecordingObserver):
    """Records, and raises KeyboardInterrupt (as Ctrl-C or SIGTERM would) at one step."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.stop = step
        self.checkpoints: list[tuple[Path, int]] = []

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        super().on_step(step, metrics)
        if step == self.stop and "loss" in metrics:
            raise KeyboardInterrupt

    def on_checkpoint(self, path: Path, step: int) -> None:
        self.checkpoints.append((path, step))


def test_resume_continues_exactly_as_if_never_interrupted(tmp_path: Path) -> None:
    full_model, optimizer, schedule, loader, val = _setup()
    full = train(full_model, optimizer, loader, epochs=EPOCHS, schedule=schedule, criterion=torch.nn.NLLLoss(),
                 val_loader=val, seed=0, progress=False)

    model, optimizer, schedule, loader, val = _setup()
    killed = _StopAt(step=15)  # mid second epoch (10 steps per epoch)
    with pytest.raises(KeyboardInterrupt):
        train(model, optimizer, loader, epochs=EPOCHS, schedule=schedule, criterion=torch.nn.NLLLoss(),
              val_loader=val, seed=0, progress=False, checkpoint_dir=tmp_path, observer=killed)
    assert killed.checkpoints == [(tmp_path / "last.pt", 9)]  # the first epoch's, at its last step
    state = load_checkpoint(tmp_path / "last.pt")
    assert (state["epoch"], state["global_step"]) == (0, 10)

    # A new process would build everything afresh (other weights, other RNG) and then resume.
    model, optimizer, schedule, loader, val = _setup(seed=123)
    resumed_obs = RecordingObserver()
    resumed = train(model, optimizer, loader, epochs=EPOCHS, schedule=schedule, criterion=torch.nn.NLLLoss(),
                    val_loader=val, seed=0, progress=False, checkpoint_dir=tmp_path, observer=resumed_obs,
                    resume_from=tmp_path / "last.pt")
    assert resumed.steps == full.steps == 30
    assert resumed.lrs == full.lrs  # the schedule continues exactly
    assert resumed.losses == full.losses  # same data order, dropout masks and weights
    assert resumed.smoothed_losses == full.smoothed_losses
    assert resumed.epochs == full.epochs and resumed.final_val_loss == full.final_val_loss
    # The observer hears only the steps after the checkpoint: nothing is reported twice.
    assert [s for s, m in resumed_obs.calls if "loss" in m] == list(range(10, 30))
    for name, weight in full_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], weight), name
