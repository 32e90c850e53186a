"""The follow-up training loop on tiny CPU tasks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lrtrack.engine import schedules as S
from lrtrack.engine.observers import RecordingObserver
from lrtrack.engine.train import NonFiniteLossError, TrainResult, train

STEP_KEYS = {"lr", "momentum", "loss", "loss_smoothed"}


def blobs(n: int = 96, seed: int = 0) -> TensorDataset:
    """Two separable Gaussian blobs in 4-D: a task a linear model learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) * 0.5 + (y.float() * 2 - 1).unsqueeze(1)
    return TensorDataset(x, y)


def loader(n: int = 96, batch_size: int = 16, shuffle: bool = True, seed: int = 0) -> DataLoader:
    return DataLoader(blobs(n, seed), batch_size=batch_size, shuffle=shuffle)


def model_and_opt(seed: int = 0, momentum: float = 0.9, dropout: bool = False):
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 8), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(0.2))
    layers.append(nn.Linear(8, 2))
    model = nn.Sequential(*layers)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)


def test_loss_decreases_and_observer_gets_every_step(tmp_path: Path) -> None:
    model, opt = model_and_opt()
    train_loader = loader()
    schedule = S.onecycle(
        opt, max_lr=0.5, base_lr=0.05, steps_per_epoch=len(train_loader), epochs=3
    )
    observer = RecordingObserver()
    result = train(
        model,
        opt,
        train_loader,
        epochs=3,
        schedule=schedule,
        val_loader=loader(48, shuffle=False, seed=1),
        observer=observer,
        checkpoint_dir=tmp_path,
        seed=0,
        progress=False,
    )
    assert isinstance(result, TrainResult)
    n = 3 * len(train_loader)
    assert result.steps == n
    assert len(result.lrs) == len(result.losses) == len(result.smoothed_losses) == n
    assert result.epochs[-1]["train_loss_epoch"] < result.epochs[0]["train_loss_epoch"]
    assert result.losses[-1] < result.losses[0]
    assert result.final_val_accuracy is not None and result.final_val_accuracy > 0.9
    assert result.final_val_loss == result.epochs[-1]["val_loss"]

    step_calls = [(s, m) for s, m in observer.calls if "loss" in m]
    assert [s for s, _ in step_calls] == list(range(n))
    for _, metrics in step_calls:
        assert set(metrics) == STEP_KEYS
        assert all(type(v) is float for v in metrics.values())
    # the LR recorded is the one the step used: onecycle starts at base_lr
    assert step_calls[0][1]["lr"] == pytest.approx(0.05)
    assert step_calls[0][1]["momentum"] == pytest.approx(0.95)
    assert step_calls[0][1]["loss_smoothed"] == step_calls[0][1]["loss"]

    epoch_calls = [(s, m) for s, m in observer.calls if "epoch" in m]
    assert [s for s, _ in epoch_calls] == [len(train_loader) * (e + 1) - 1 for e in range(3)]
    assert set(epoch_calls[0][1]) == {"epoch", "train_loss_epoch", "val_loss", "val_accuracy"}
    assert [m["epoch"] for _, m in epoch_calls] == [0.0, 1.0, 2.0]


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    model, opt = model_and_opt()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    schedule = S.triangular2(opt, max_lr=0.05, base_lr=0.01, steps_per_epoch=6, epochs=1)
    result = train(
        model, opt, loader(), epochs=1, schedule=schedule, checkpoint_dir=tmp_path, progress=False
    )
    assert result.checkpoint_path == tmp_path / "last.pt"
    ckpt = torch.load(result.checkpoint_path, weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch"} <= set(ckpt)
    assert ckpt["epoch"] == 0
    assert ckpt["scheduler"]["steps_done"] == 6
    fresh, _ = model_and_opt(seed=1)
    fresh.load_state_dict(ckpt["model"])
    for a, b in zip(fresh.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not (tmp_path / "last.pt.tmp").exists()


def test_checkpoint_without_schedule(tmp_path: Path) -> None:
    model, opt = model_and_opt()
    train(model, opt, loader(), epochs=1, checkpoint_dir=tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["scheduler"] is None


def test_same_seed_same_losses() -> None:
    def once() -> list[float]:
        model, opt = model_and_opt(dropout=True)
        return train(model, opt, loader(), epochs=2, seed=123, progress=False).losses

    assert once() == once()


def test_accumulation_halves_optimizer_steps() -> None:
    model, opt = model_and_opt()
    observer = RecordingObserver()
    result = train(
        model,
        opt,
        loader(96, 16),
        epochs=2,
        accumulation_steps=2,
        observer=observer,
        progress=False,
    )
    assert result.steps == 2 * 3
    assert [s for s, m in observer.calls if "loss" in m] == list(range(6))


def test_partial_accumulation_steps_with_mean_gradient() -> None:
    # 5 batches, accumulation 2 -> steps of 2, 2, 1 batches; a single-batch last step must use
    # that batch's own gradient (not half of it).
    ds = blobs(5)
    model_a, opt_a = model_and_opt(momentum=0.0)
    train(
        model_a,
        opt_a,
        DataLoader(ds, batch_size=1),
        epochs=1,
        accumulation_steps=2,
        progress=False,
    )
    model_b, opt_b = model_and_opt(momentum=0.0)
    batches = list(DataLoader(ds, batch_size=1))
    crit = nn.CrossEntropyLoss()
    for group in ([0, 1], [2, 3], [4]):
        opt_b.zero_grad()
        for i in group:
            (crit(model_b(batches[i][0]), batches[i][1]) / len(group)).backward()
        opt_b.step()
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_schedule_planned_for_batches_warns_and_holds(caplog) -> None:
    model, opt = model_and_opt()
    # planned with 6 batches per epoch, but accumulation makes it 3 steps: the mismatch is logged
    schedule = S.onecycle(opt, max_lr=0.5, base_lr=0.05, steps_per_epoch=6, epochs=1)
    with caplog.at_level("WARNING"):
        train(
            model, opt, loader(), epochs=1, schedule=schedule, accumulation_steps=2, progress=False
        )
    assert any("build it with steps_per_epoch=3" in r.getMessage() for r in caplog.records)


def test_nan_loss_stops_with_step_and_lr() -> None:
    model, opt = model_and_opt()
    calls = {"n": 0}

    def step_fn(m: nn.Module, batch) -> torch.Tensor:
        calls["n"] += 1
        loss = nn.functional.cross_entropy(m(batch[0]), batch[1])
        return loss * float("nan") if calls["n"] == 4 else loss

    observer = RecordingObserver()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(
        RuntimeError, match=r"training loss became nan at step 3 \(lr=0\.1\)"
    ) as info:
        train(model, opt, loader(), epochs=1, step_fn=step_fn, observer=observer, progress=False)
    err = info.value
    assert isinstance(err, NonFiniteLossError) and err.step == 3 and err.lr == pytest.approx(0.1)
    assert [s for s, _ in observer.calls] == [0, 1, 2]
    assert err.result.steps == 3 and len(err.result.losses) == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step was not applied
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_custom_step_fn_without_criterion_skips_accuracy() -> None:
    model, opt = model_and_opt()

    def step_fn(m: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(m(x), y)

    result = train(
        model, opt, loader(), epochs=1, step_fn=step_fn, val_loader=loader(32), progress=False
    )
    assert set(result.epochs[0]) == {"epoch", "train_loss_epoch", "val_loss"}
    assert result.final_val_accuracy is None


def test_val_loss_is_weighted_by_batch_size() -> None:
    model, opt = model_and_opt()
    val = blobs(10, seed=3)
    result = train(
        model, opt, loader(16), epochs=1, val_loader=DataLoader(val, batch_size=4), progress=False
    )
    model.eval()
    with torch.no_grad():
        outputs = model(val.tensors[0])
    expected = nn.functional.cross_entropy(outputs, val.tensors[1]).item()
    assert result.final_val_loss == pytest.approx(expected, rel=1e-5)
    accuracy = (outputs.argmax(dim=1) == val.tensors[1]).double().mean().item()
    assert result.final_val_accuracy == pytest.approx(accuracy, abs=1e-12)


def test_two_groups_and_grad_clip_and_bf16_amp() -> None:
    model, _ = model_and_opt()
    opt = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.1},
            {"params": model[2].parameters(), "lr": 0.01},
        ],
        lr=0.1,
        momentum=0.9,
    )
    schedule = S.cosine(opt, max_lr=0.2, base_lr=0.05, steps_per_epoch=6, epochs=1)
    observer = RecordingObserver()
    dtypes: list[torch.dtype] = []
    model[0].register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    result = train(
        model,
        opt,
        loader(),
        epochs=1,
        schedule=schedule,
        val_loader=loader(32, shuffle=False, seed=1),
        grad_clip_norm=1.0,
        amp=True,
        observer=observer,
        progress=False,
    )
    first = observer.calls[0][1]
    assert first["lr"] == pytest.approx(0.2)
    assert first["lr/group_1"] == pytest.approx(0.02)
    assert all(math.isfinite(v) for v in result.losses)
    # 6 training and 2 validation batches, all under CPU autocast; the weights stay float32
    assert dtypes == [torch.bfloat16] * 8
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_grad_clip_norm_bounds_every_update() -> None:
    model, opt = model_and_opt(momentum=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    params: list[torch.Tensor] = []

    def step_fn(m: nn.Module, batch) -> torch.Tensor:
        params.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
        return nn.functional.cross_entropy(m(batch[0]), batch[1]) * 100  # large gradients

    train(model, opt, loader(), epochs=1, step_fn=step_fn, grad_clip_norm=0.01, progress=False)
    updates = [torch.linalg.vector_norm(b - a).item() for a, b in zip(params, params[1:])]
    assert len(updates) == 5 and all(u == pytest.approx(0.01, rel=1e-4) for u in updates)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"accumulation_steps": 0}, "accumulation_steps must be an integer >= 1 .*got 0"),
        ({"grad_clip_norm": -1.0}, "grad_clip_norm must be a positive number or None"),
        ({"smoothing": 1.0}, r"smoothing must be in \[0, 1\)"),
    ],
)
def test_bad_inputs(kw: dict, message: str) -> None:
    model, opt = model_and_opt()
    args = {"epochs": 1, "progress": False, **kw}
    with pytest.raises(ValueError, match=message):
        train(model, opt, loader(), **args)


def test_empty_loader_and_foreign_schedule() -> None:
    model, opt = model_and_opt()
    empty = DataLoader(blobs(3), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="train_loader yielded no batches"):
        train(model, opt, empty, epochs=1, progress=False)
    _, other = model_and_opt()
    schedule = S.constant(other, max_lr=0.1, base_lr=0.1, steps_per_epoch=1, epochs=1)
    with pytest.raises(ValueError, match="schedule was built for a different optimizer"):
        train(model, opt, loader(), epochs=1, schedule=schedule, progress=False)
