"""The shared building blocks in lrtrack.engine.steps: one train step, one validation loop, seeding."""

from __future__ import annotations

import random
import warnings
from contextlib import nullcontext
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from lrtrack.engine.steps import (
    autocast_factory,
    make_grad_scaler,
    mean_loss,
    seed_everything,
    supervised_step,
    train_step,
)

CPU = torch.device("cpu")


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(4, 3)


def _batches(sizes: list[int], seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in sizes]


def _feed(batches: list[Any]):
    return iter(batches).__next__


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


STEP = supervised_step(nn.CrossEntropyLoss())


# --------------------------------------------------------------------------- train_step


@pytest.mark.parametrize("accumulation_steps", [2, 3])
def test_accumulation_equals_one_step_on_the_concatenated_batch(accumulation_steps: int) -> None:
    batches = _batches([8] * accumulation_steps)
    accumulated = _linear()
    opt = torch.optim.SGD(accumulated.parameters(), lr=0.5)
    loss = train_step(accumulated, opt, _feed(batches), STEP, device=CPU,
                      accumulation_steps=accumulation_steps)

    whole = _linear()
    opt_whole = torch.optim.SGD(whole.parameters(), lr=0.5)
    inputs = torch.cat([x for x, _ in batches])
    targets = torch.cat([y for _, y in batches])
    whole_loss = nn.functional.cross_entropy(whole(inputs), targets)
    whole_loss.backward()
    opt_whole.step()

    assert loss.dtype == torch.float32 and not loss.requires_grad and loss.dim() == 0
    assert loss.item() == pytest.approx(whole_loss.item(), abs=1e-6)
    for a, b in zip(accumulated.parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not torch.equal(accumulated.weight, _linear().weight)  # it did step


def test_a_short_last_accumulation_steps_with_the_mean_gradient() -> None:
    batches = _batches([8, 8])  # accumulation 3, but only 2 batches left
    model = _linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train_step(model, opt, _feed(batches), STEP, device=CPU, accumulation_steps=3)

    reference = _linear()
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.5)
    inputs, targets = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    nn.functional.cross_entropy(reference(inputs), targets).backward()
    opt_ref.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_no_batch_left_raises_stop_iteration_and_steps_nothing() -> None:
    model = _linear()
    before = _params(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with pytest.raises(StopIteration):
        train_step(model, opt, _feed([]), STEP, device=CPU, accumulation_steps=2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_gradients_are_clipped_to_the_norm() -> None:
    batches = _batches([8])
    lr, clip = 1.0, 0.01
    clipped, free = _linear(), _linear()
    before = _params(clipped)
    train_step(clipped, torch.optim.SGD(clipped.parameters(), lr=lr), _feed(batches), STEP,
               device=CPU, grad_clip_norm=clip)
    train_step(free, torch.optim.SGD(free.parameters(), lr=lr), _feed(batches), STEP, device=CPU)

    def update_norm(model: nn.Module) -> float:
        deltas = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
        return torch.linalg.vector_norm(torch.cat([d.flatten() for d in deltas])).item()

    assert update_norm(free) > 10 * clip  # the clip bites
    assert update_norm(clipped) == pytest.approx(lr * clip, rel=1e-4)


def test_scaler_path_unscales_before_clipping_and_stepping() -> None:
    batches = _batches([8, 8])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaled, plain = _linear(), _linear()
    for model, s in ((scaled, scaler), (plain, None)):
        train_step(model, torch.optim.SGD(model.parameters(), lr=0.5), _feed(batches), STEP,
                   device=CPU, accumulation_steps=2, scaler=s, grad_clip_norm=0.05)
    for a, b in zip(scaled.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_before_step_sees_the_loss_and_can_stop_the_update() -> None:
    model = _linear()
    before = _params(model)
    seen: list[float] = []

    def refuse(loss: torch.Tensor) -> None:
        seen.append(loss.item())
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        train_step(model, torch.optim.SGD(model.parameters(), lr=0.5), _feed(_batches([8])),
                   STEP, device=CPU, before_step=refuse)
    assert len(seen) == 1 and seen[0] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class _DtypeRecorder(nn.Module):
    """A linear model that records the dtype of its activations."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        self.dtypes.append(out.dtype)
        return out


@pytest.mark.parametrize(("amp", "dtype"), [(True, torch.bfloat16), (False, torch.float32)])
def test_train_step_runs_under_the_autocast_given(amp: bool, dtype: torch.dtype) -> None:
    model = _DtypeRecorder()
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), _feed(_batches([8, 8])),
               STEP, device=CPU, accumulation_steps=2, autocast=autocast_factory(CPU, amp))
    assert model.dtypes == [dtype, dtype]
    assert model.linear.weight.dtype == torch.float32  # the parameters stay in float32


# --------------------------------------------------------------------------- the rest


def test_supervised_step_rejects_other_batches_with_one_type_error() -> None:
    step = supervised_step(nn.CrossEntropyLoss())
    for batch in ({"x": torch.zeros(2, 4)}, (torch.zeros(2, 4),), torch.zeros(2, 4)):
        with pytest.raises(TypeError, match=r"Pass step_fn=lambda model, batch: loss"):
            step(_linear(), batch)


def test_supervised_step_passes_outputs_and_targets_to_the_hook() -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    model = _linear()
    (x, y), = _batches([5])
    loss = supervised_step(nn.CrossEntropyLoss(), on_outputs=lambda o, t: seen.append((o, t)))(
        model, (x, y, "extra items are ignored")
    )
    assert len(seen) == 1 and seen[0][0].shape == (5, 3) and seen[0][1] is y
    torch.testing.assert_close(loss, nn.functional.cross_entropy(model(x), y))


def test_mean_loss_weights_batches_by_size_and_restores_the_mode() -> None:
    model = nn.Linear(1, 1)
    modes: list[bool] = []

    def step(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        modes.append(m.training)
        assert not torch.is_grad_enabled()
        return batch.mean()

    batches = [torch.full((4,), 1.0), torch.full((1,), 6.0)]  # unweighted mean would be 3.5
    for training in (True, False):
        model.train(training)
        loss = mean_loss(model, batches, step, device=CPU)
        assert loss.item() == pytest.approx(2.0, abs=1e-12)  # (4 * 1 + 1 * 6) / 5
        assert model.training is training
    assert modes == [False] * 4


def test_mean_loss_restores_the_mode_on_an_exception_and_rejects_no_batches() -> None:
    model = nn.Linear(1, 1).train()

    def boom(m: nn.Module, batch: Any) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        mean_loss(model, [torch.zeros(1)], boom, device=CPU)
    assert model.training
    with pytest.raises(ValueError, match="yielded no batches"):
        mean_loss(model, [], boom, device=CPU)


def test_seed_everything_makes_every_rng_repeat() -> None:
    def draws() -> tuple[float, float, list[float]]:
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    seed_everything(42)
    first = draws()
    seed_everything(42)
    assert draws() == first
    seed_everything(43)
    second = draws()
    assert all(a != b for a, b in zip(first, second, strict=True))


def test_autocast_and_scaler_factories() -> None:
    assert autocast_factory(CPU, False) is nullcontext
    with autocast_factory(CPU, True)():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    assert autocast_factory(torch.device("meta"), True) is nullcontext  # unsupported: full precision
    assert make_grad_scaler(CPU, True) is None
    assert make_grad_scaler(torch.device("cuda"), False) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on CPU-only machines
        scaler = make_grad_scaler(torch.device("cuda"), True)
    assert isinstance(scaler, torch.amp.GradScaler)
