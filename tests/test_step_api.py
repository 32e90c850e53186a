"""The step API: ``step_fn(model, batch) -> loss`` runs the range test for any model.

No subclassing: dict batches (the transformers style), several inputs and outputs, and a
custom loss all go through one function, with :func:`lrtrack.engine.finder.run_range_test` and with
:class:`lrtrack.compat.LRFinder` alike.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from lrtrack.compat import LRFinder  # noqa: E402
from lrtrack.engine.finder import RangeTestResult, run_range_test  # noqa: E402
from lrtrack.engine.suggest import RULES, suggest  # noqa: E402

VOCAB, SEQ = 20, 6


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny models run far faster on one intra-op thread than on contended cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_restored(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# --------------------------------------------------------------------------- dict batches


class _TokenData(Dataset):
    """Transformers-style samples: ``{"input_ids", "attention_mask", "labels"}``."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
        lengths = torch.randint(2, SEQ + 1, (n,), generator=g)
        self.mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
        self.ids = self.ids * self.mask  # 0 = padding
        self.labels = ((self.ids == 3).sum(dim=1) > 0).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


class _TinyEncoder(nn.Module):
    """Embedding + masked mean pooling + a classifier head, called with keyword inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(torch.tanh(pooled))


def dict_batch_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The whole adapter a transformers-style model needs."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return F.cross_entropy(logits, batch["labels"])


def _token_loaders() -> tuple[DataLoader, DataLoader]:
    return (
        DataLoader(_TokenData(128, 0), batch_size=16),
        DataLoader(_TokenData(48, 1), batch_size=16),
    )


def test_dict_batches_with_run_range_test() -> None:
    torch.manual_seed(0)
    model = _TinyEncoder()
    before = _state(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    train, val = _token_loaders()
    result = run_range_test(
        model,
        optimizer,
        train,
        step_fn=dict_batch_step,
        val_loader=val,
        end_lr=1.0,
        num_iter=30,
        progress=False,
    )
    assert isinstance(result, RangeTestResult)
    assert result.steps == 30 and result.stop_reason == "completed"
    assert result.train_losses != result.losses  # validation loss recorded, training loss kept
    assert set(result.suggestions) == set(RULES)
    _assert_restored(model, before)


@pytest.mark.parametrize("compat", [False, True])
def test_dict_batches_with_lrfinder(compat: bool) -> None:
    torch.manual_seed(0)
    model = _TinyEncoder()
    before = _state(model)
    seen: list[Any] = []

    def step(model: nn.Module, batch: Any) -> torch.Tensor:
        seen.append(batch)
        return dict_batch_step(model, batch)

    finder = LRFinder(
        model, torch.optim.AdamW(model.parameters(), lr=1e-5), step_fn=step, compat=compat
    )
    train, val = _token_loaders()
    finder.range_test(train, val_loader=val, end_lr=1.0, num_iter=25)
    assert len(finder.history["lr"]) == len(finder.history["loss"]) == 25
    assert all(
        isinstance(b, dict) and set(b) == {"input_ids", "attention_mask", "labels"} for b in seen
    )
    fig, ax = plt.subplots()
    try:
        _, lr = finder.plot(ax=ax, skip_start=2, skip_end=2)
    finally:
        plt.close(fig)
    assert lr is not None and finder.history["lr"][0] <= lr <= finder.history["lr"][-1]
    _assert_restored(model, before)


def test_compat_validation_with_step_fn_averages_the_whole_loader_per_sample() -> None:
    torch.manual_seed(0)
    model = _TinyEncoder()
    train, _ = _token_loaders()
    val = DataLoader(_TokenData(40, 1), batch_size=16)  # 16 + 16 + 8 samples
    finder = LRFinder(
        model, torch.optim.SGD(model.parameters(), lr=1e-6), step_fn=dict_batch_step, compat=True
    )
    finder.range_test(train, val_loader=val, end_lr=2e-6, num_iter=2, smooth_f=0.0)
    # Recompute the first step's validation loss by hand: one step at lr=1e-6 from the start.
    reference = _TinyEncoder()
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(reference.parameters(), lr=1e-6)
    dict_batch_step(reference, next(iter(train))).backward()
    opt.step()
    reference.eval()
    with torch.no_grad():
        total = sum(dict_batch_step(reference, b).item() * len(b["labels"]) for b in val)
    assert finder.result.losses[0] == pytest.approx(total / 40, abs=1e-6)


def test_lrfinder_default_mode_is_the_engine() -> None:
    """LRFinder (lrtrack mode) is a thin adapter: same numbers as run_range_test."""
    torch.manual_seed(0)
    base = _TinyEncoder()
    initial = _state(base)
    train, val = _token_loaders()

    base.load_state_dict(initial)
    finder = LRFinder(base, torch.optim.SGD(base.parameters(), lr=1e-4), step_fn=dict_batch_step)
    finder.range_test(train, val_loader=val, end_lr=10, num_iter=30, smooth_f=0.05)

    base.load_state_dict(initial)
    direct = run_range_test(
        base,
        torch.optim.SGD(base.parameters(), lr=1e-4),
        train,
        step_fn=dict_batch_step,
        val_loader=val,
        end_lr=10,
        num_iter=30,
        smoothing=0.95,
        device="cpu",
        progress=False,
    )
    assert finder.result is not None
    assert finder.result.lrs == direct.lrs
    assert finder.result.losses == direct.losses
    assert finder.history["loss"] == direct.smoothed_losses
    assert finder.result.stop_reason == direct.stop_reason


# --------------------------------------------------------------------------- two inputs, two outputs


class _TwoTower(nn.Module):
    """Two inputs (an image-like and a tabular tensor), two outputs (class logits, a value)."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU())
        self.table = nn.Sequential(nn.Linear(3, 8), nn.ReLU())
        self.classify = nn.Linear(16, 2)
        self.regress = nn.Linear(16, 1)

    def forward(
        self, image: torch.Tensor, table: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.cat([self.image(image), self.table(table)], dim=1)
        return self.classify(h), self.regress(h).squeeze(1)


def two_input_step(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A custom loss over two outputs: cross-entropy plus half the regression MSE."""
    image, table, label, target = batch
    logits, value = model(image, table)
    return F.cross_entropy(logits, label) + 0.5 * F.mse_loss(value, target)


def _two_input_batches(n_batches: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        image = torch.randn(16, 1, 4, 4, generator=g)
        table = torch.randn(16, 3, generator=g)
        label = (image.mean(dim=(1, 2, 3)) > 0).long()
        target = table.sum(dim=1)
        batches.append((image, table, label, target))
    return batches


def test_two_inputs_with_run_range_test() -> None:
    torch.manual_seed(0)
    model = _TwoTower()
    before = _state(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    result = run_range_test(
        model,
        optimizer,
        _two_input_batches(6, 0),  # a plain list of batches is a loader too
        step_fn=two_input_step,
        end_lr=10,
        num_iter=40,
        accumulation_steps=2,
        progress=False,
    )
    assert 0 < result.steps <= 40
    assert result.lrs[0] == 1e-4
    assert result.suggested_lr("valley") is not None
    _assert_restored(model, before)


@pytest.mark.parametrize("compat", [False, True])
def test_two_inputs_with_lrfinder(compat: bool) -> None:
    torch.manual_seed(0)
    model = _TwoTower()
    before = _state(model)
    finder = LRFinder(
        model,
        torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9),
        step_fn=two_input_step,
        compat=compat,
    )
    # DataLoaders over ready-made batches (batch_size=None): compat mode, like torch-lr-finder,
    # takes DataLoaders only
    finder.range_test(
        DataLoader(_two_input_batches(6, 0), batch_size=None),
        val_loader=DataLoader(_two_input_batches(2, 1), batch_size=None),
        end_lr=10,
        num_iter=40,
    )
    assert 17 <= len(finder.history["lr"]) <= 40
    assert finder.suggestions["steepest"].rule == "steepest"
    fig, ax = plt.subplots()
    try:
        _, lr = finder.plot(ax=ax)
    finally:
        plt.close(fig)
    # plot() marks the steepest descent of the curve trimmed by its default skips (10, 5):
    # torch-lr-finder's np.gradient rule in compat mode, lrtrack's steepest rule otherwise
    lrs, losses = finder.history["lr"], finder.history["loss"]
    if compat:
        expected = lrs[10:-5][int(np.gradient(np.asarray(losses[10:-5])).argmin())]
    else:
        expected = suggest("steepest", lrs, losses, skip_start=10, skip_end=5).lr
    assert expected is not None and lr == expected
    assert lrs[10] <= lr <= lrs[-6]
    _assert_restored(model, before)
