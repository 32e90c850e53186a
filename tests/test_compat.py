"""lrtrack.compat.LRFinder against torch-lr-finder 0.2.2 (the reference, a dev dependency).

The differential tests run both finders on identical seeded copies of tiny tasks and require,
in compat mode, the same ``history["lr"]`` exactly, the same ``history["loss"]`` within 1e-6
and the same suggestion from ``plot()``; only they (and the error-type comparisons) use the
reference, through the ``tlf`` fixture. The rest pins the better defaults (NaN stops the test,
bias-corrected smoothing, restore after an exception), the argument errors, the loader
wrappers and the documented differences. torch-lr-finder's own test suite runs against compat
mode in tests/test_compat_upstream.py.
"""

from __future__ import annotations

import copy
import gc
import math
import random
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

import lrtrack  # noqa: E402
import lrtrack.compat as compat  # noqa: E402
from lrtrack.compat import (  # noqa: E402
    DIFFERENCES,
    LRFinder,
    TrainDataLoaderIter,
    ValDataLoaderIter,
)
from lrtrack.engine.observers import RecordingObserver  # noqa: E402
from lrtrack.engine.smoothing import smooth  # noqa: E402
from lrtrack.engine.suggest import RULES, suggest  # noqa: E402

LOSS_ATOL = 1e-6
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def tlf() -> ModuleType:
    """torch-lr-finder 0.2.2, the reference: a dev dependency, so a missing one is an error."""
    import torch_lr_finder

    return torch_lr_finder


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny models run far faster on one intra-op thread than on contended cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- tiny tasks


def _xor_data(n: int = 192, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (n, 2), generator=g).float()
    y = (x[:, 0] != x[:, 1]).long()
    return TensorDataset(x + 0.1 * torch.randn(n, 2, generator=g), y)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))


class _SmallCNN(nn.Module):
    """conv -> Dropout2d -> pool -> linear; dropout makes the RNG order matter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.drop = nn.Dropout2d(0.25)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.drop(self.conv(x))), 2)
        return F.log_softmax(self.fc(x.flatten(1)), dim=1)


def _image_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.bucketize(x.mean(dim=(1, 2, 3)), torch.tensor([-0.05, 0.05]))
    return TensorDataset(x, y)


class _Words(Dataset):
    """Yields (str, int): the inputs are not tensors."""

    def __init__(self, n: int = 96, seed: int = 0) -> None:
        rng = random.Random(seed)
        words = ["".join(rng.choice("abcd") for _ in range(5)) for _ in range(n)]
        self.items = [(w, int(w.count("a") >= 2)) for w in words]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.items[i]


class _CharModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(128, 8, mode="mean")
        self.fc = nn.Linear(8, 2)

    def forward(self, words: list[str]) -> torch.Tensor:
        idx = torch.tensor([[ord(c) for c in w] for w in words])
        return self.fc(self.emb(idx))


class _DictData(Dataset):
    """Yields {"features": x, "target": y}: needs an inputs_labels_from_batch override."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.base[i]
        return {"features": x, "target": y}


class _SqrtModel(nn.Module):
    """loss = w * mean(x^2) computed through sqrt(w): it falls steadily, then turns NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.w) * x


def _sqrt_task() -> tuple[nn.Module, DataLoader, nn.Module]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 4, generator=g)
    loader = DataLoader(TensorDataset(x, torch.zeros(64, 4)), batch_size=16)
    return _SqrtModel(), loader, nn.MSELoss()


# --------------------------------------------------------------------------- the harness


def _run(
    tlf: ModuleType,
    impl: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[..., torch.Tensor],
    loaders: tuple[Any, Any],
    finder_kwargs: dict[str, Any],
    range_kwargs: dict[str, Any],
    plot_kwargs: dict[str, Any],
) -> tuple[dict[str, list[float]], float | None]:
    train, val = loaders
    torch.manual_seed(1234)  # dropout masks: same stream for both finders
    if impl == "tlf":
        finder = tlf.LRFinder(model, optimizer, criterion, **finder_kwargs)
    else:
        finder = LRFinder(model, optimizer, criterion, compat=True, **finder_kwargs)
    finder.range_test(train, val_loader=val, **range_kwargs)
    fig, ax = plt.subplots()
    try:
        _, lr = finder.plot(ax=ax, suggest_lr=True, **plot_kwargs)
    finally:
        plt.close(fig)
    return {"lr": list(finder.history["lr"]), "loss": list(finder.history["loss"])}, lr


def _differential(
    tlf: ModuleType,
    make_model: Callable[[], nn.Module],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    make_loaders: Callable[[Any], tuple[Any, Any]],
    criterion: Callable[..., torch.Tensor],
    *,
    finder_kwargs: Callable[[], dict[str, Any]] | None = None,
    plot_kwargs: dict[str, Any] | None = None,
    **range_kwargs: Any,
) -> tuple[dict[str, list[float]], float | None]:
    """Run torch-lr-finder and lrtrack (compat) on copies of one model; assert they agree."""
    torch.manual_seed(0)
    base = make_model()
    out = {}
    for impl, module in (("tlf", tlf), ("lrtrack", compat)):
        model = copy.deepcopy(base)
        out[impl] = _run(
            tlf,
            impl,
            model,
            make_optimizer(model),
            criterion,
            make_loaders(module),
            finder_kwargs() if finder_kwargs else {},
            range_kwargs,
            plot_kwargs or {},
        )
    (ref, ref_lr), (ours, our_lr) = out["tlf"], out["lrtrack"]
    assert ours["lr"] == ref["lr"]
    assert len(ours["loss"]) == len(ref["loss"])
    np.testing.assert_allclose(ours["loss"], ref["loss"], rtol=0, atol=LOSS_ATOL, equal_nan=True)
    assert our_lr == ref_lr
    return ours, our_lr


def _sgd(lr: float = 1e-4, momentum: float = 0.9) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum)


# --------------------------------------------------------------------------- differential


def test_xor_mlp_matches_torch_lr_finder(tlf: ModuleType) -> None:
    def loaders(_: Any) -> tuple[DataLoader, None]:
        return DataLoader(_xor_data(), batch_size=32), None

    hist, lr = _differential(
        tlf, _mlp, _sgd(), loaders, nn.CrossEntropyLoss(), end_lr=10, num_iter=60
    )
    assert len(hist["lr"]) >= 17 and lr is not None


def test_xor_mlp_with_accumulation_and_validation_matches(tlf: ModuleType) -> None:
    def loaders(_: Any) -> tuple[DataLoader, DataLoader]:
        return (
            DataLoader(_xor_data(), batch_size=16),
            DataLoader(_xor_data(40, seed=1), batch_size=16),  # a short last batch
        )

    _differential(
        tlf,
        _mlp,
        _sgd(1e-3),
        loaders,
        nn.CrossEntropyLoss(),
        end_lr=5,
        num_iter=30,
        accumulation_steps=3,
        step_mode="linear",
    )


def test_small_cnn_with_dropout_and_validation_matches(tlf: ModuleType) -> None:
    def loaders(_: Any) -> tuple[DataLoader, DataLoader]:
        gen = torch.Generator().manual_seed(7)  # shuffled, same order for both
        train = DataLoader(_image_data(96, 0), batch_size=16, shuffle=True, generator=gen)
        return train, DataLoader(_image_data(48, 1), batch_size=16)

    _differential(
        tlf,
        _SmallCNN,
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-5),
        loaders,
        nn.NLLLoss(),
        end_lr=1,
        num_iter=30,
        diverge_th=50,
    )


def test_small_cnn_without_validation_matches(tlf: ModuleType) -> None:
    def loaders(_: Any) -> tuple[DataLoader, None]:
        gen = torch.Generator().manual_seed(11)
        return DataLoader(_image_data(96, 0), batch_size=16, shuffle=True, generator=gen), None

    _differential(tlf, _SmallCNN, _sgd(1e-4), loaders, nn.NLLLoss(), end_lr=10, num_iter=40)


def _two_groups(model: nn.Module) -> torch.optim.Optimizer:
    first, last = model[0], model[2]
    return torch.optim.SGD(
        [{"params": first.parameters(), "lr": 1e-4}, {"params": last.parameters(), "lr": 1e-3}],
        momentum=0.5,
    )


@pytest.mark.parametrize(
    "range_kwargs",
    [
        {"end_lr": 1.0, "num_iter": 30},  # groups start at their own LRs, end at the same one
        {"start_lr": 1e-5, "end_lr": 3.0, "num_iter": 30},  # a scalar start for every group
        {"start_lr": [1e-5, 1e-4], "end_lr": 2.0, "num_iter": 25, "step_mode": "linear"},
    ],
)
def test_two_parameter_groups_match(range_kwargs: dict[str, Any], tlf: ModuleType) -> None:
    def loaders(_: Any) -> tuple[DataLoader, None]:
        return DataLoader(_xor_data(), batch_size=32), None

    _differential(tlf, _mlp, _two_groups, loaders, nn.CrossEntropyLoss(), **range_kwargs)


@pytest.mark.parametrize("with_val", [False, True])
def test_non_tensor_inputs_match(with_val: bool, tlf: ModuleType) -> None:
    def loaders(_: Any) -> tuple[DataLoader, DataLoader | None]:
        val = DataLoader(_Words(40, seed=1), batch_size=16) if with_val else None
        return DataLoader(_Words(), batch_size=16), val

    _differential(
        tlf,
        _CharModel,
        _sgd(1e-3),
        loaders,
        nn.CrossEntropyLoss(),
        end_lr=10,
        num_iter=30,
        smooth_f=0.1,
    )


def test_custom_batch_format_via_iterator_subclasses_matches(tlf: ModuleType) -> None:
    def loaders(module: Any) -> tuple[Any, Any]:
        class TrainIter(module.TrainDataLoaderIter):
            def inputs_labels_from_batch(self, batch_data: Any) -> tuple[Any, Any]:
                return batch_data["features"], batch_data["target"]

        class ValIter(module.ValDataLoaderIter):
            def inputs_labels_from_batch(self, batch_data: Any) -> tuple[Any, Any]:
                return batch_data["features"], batch_data["target"]

        train = DataLoader(_DictData(_xor_data()), batch_size=32)
        val = DataLoader(_DictData(_xor_data(64, seed=2)), batch_size=32)
        return TrainIter(train), ValIter(val)

    _differential(tlf, _mlp, _sgd(), loaders, nn.CrossEntropyLoss(), end_lr=10, num_iter=30)


def test_nan_never_stops_in_compat_mode_same_as_torch_lr_finder(tlf: ModuleType) -> None:
    def loaders(_: Any) -> tuple[DataLoader, None]:
        return _sqrt_task()[1], None

    hist, _ = _differential(
        tlf,
        lambda: _sqrt_task()[0],
        lambda m: torch.optim.SGD(m.parameters(), lr=1e-3),
        loaders,
        nn.MSELoss(),
        end_lr=10,
        num_iter=30,
        smooth_f=0.0,
    )
    assert len(hist["loss"]) == 30 and math.isnan(hist["loss"][-1])


def test_divergence_stop_matches(tlf: ModuleType) -> None:
    def loaders(_: Any) -> tuple[DataLoader, None]:
        return DataLoader(_xor_data(), batch_size=32), None

    hist, _ = _differential(
        tlf,
        _mlp,
        _sgd(1e-2),
        loaders,
        nn.CrossEntropyLoss(),
        end_lr=1e4,
        num_iter=100,
        diverge_th=2,
        plot_kwargs={"skip_start": 2, "skip_end": 1},
    )
    assert len(hist["lr"]) < 100  # stopped early at the same step as torch-lr-finder


def test_torch_amp_backend_matches(tlf: ModuleType) -> None:
    def loaders(_: Any) -> tuple[DataLoader, None]:
        return DataLoader(_xor_data(), batch_size=16), None

    def amp_kwargs() -> dict[str, Any]:
        return {
            "amp_backend": "torch",
            "amp_config": {"device_type": "cpu", "dtype": torch.bfloat16},
            "grad_scaler": torch.amp.GradScaler("cpu"),
        }

    _differential(
        tlf,
        _mlp,
        _sgd(1e-3),
        loaders,
        nn.CrossEntropyLoss(),
        finder_kwargs=amp_kwargs,
        end_lr=10,
        num_iter=30,
        accumulation_steps=2,
    )


# --------------------------------------------------------------------------- better defaults


def _xor_finder(**kwargs: Any) -> tuple[LRFinder, nn.Module, torch.optim.Optimizer, DataLoader]:
    torch.manual_seed(0)
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    loader = DataLoader(_xor_data(), batch_size=32)
    return LRFinder(model, optimizer, nn.CrossEntropyLoss(), **kwargs), model, optimizer, loader


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_default_mode_stops_at_the_first_nan() -> None:
    model, loader, criterion = _sqrt_task()
    finder = LRFinder(model, torch.optim.SGD(model.parameters(), lr=1e-3), criterion)
    finder.range_test(loader, end_lr=10, num_iter=30, smooth_f=0.0)
    assert finder.result is not None
    assert finder.result.stop_reason == "non_finite_loss"
    assert len(finder.history["loss"]) < 30
    assert math.isnan(finder.history["loss"][-1])
    assert all(math.isfinite(v) for v in finder.history["loss"][:-1])


def test_default_mode_smoothing_is_bias_corrected() -> None:
    finder, *_, loader = _xor_finder()
    finder.range_test(loader, end_lr=1, num_iter=20, smooth_f=0.05)
    raw = finder.result.losses
    assert finder.history["loss"] == pytest.approx(smooth(raw, 0.95), rel=1e-12)
    assert finder.history["loss"][0] == raw[0]
    corrected = (0.95 * 0.05 * raw[0] + 0.05 * raw[1]) / (1 - 0.95**2)
    assert finder.history["loss"][1] == pytest.approx(corrected, rel=1e-12)


def test_compat_mode_smoothing_is_torch_lr_finders_formula() -> None:
    finder, *_, loader = _xor_finder(compat=True)
    finder.range_test(loader, end_lr=1, num_iter=20, smooth_f=0.05)
    raw, hist = finder.result.losses, finder.history["loss"]
    assert hist[0] == raw[0]
    for i in range(1, len(hist)):
        assert hist[i] == 0.05 * raw[i] + (1 - 0.05) * hist[i - 1]


@pytest.mark.parametrize("compat_mode", [False, True])
@pytest.mark.parametrize("memory_cache", [True, False])
def test_state_restored_after_an_exception_mid_test(
    compat_mode: bool, memory_cache: bool, tmp_path: Any
) -> None:
    torch.manual_seed(0)
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    calls = {"n": 0}

    def flaky(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("boom in the middle of the test")
        return loss_fn(output, target)

    finder = LRFinder(
        model, optimizer, flaky, compat=compat_mode, memory_cache=memory_cache, cache_dir=tmp_path
    )
    before, opt_before = _params(model), copy.deepcopy(optimizer.state_dict())
    rng_before = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="boom"):
        finder.range_test(DataLoader(_xor_data(), batch_size=32), end_lr=10, num_iter=20)
    _assert_same_state(model, before)
    assert optimizer.state_dict() == opt_before  # no momentum buffers, the original LR
    assert optimizer.param_groups[0]["lr"] == 1e-4
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert model.training
    if not memory_cache:
        del finder
        gc.collect()
        assert list(tmp_path.iterdir()) == []  # the state files are cleaned up


def test_state_restored_after_a_successful_test_and_rerun_without_reset() -> None:
    finder, model, optimizer, loader = _xor_finder(compat=True)
    before = _params(model)
    finder.range_test(loader, end_lr=10, num_iter=20)
    _assert_same_state(model, before)
    assert "initial_lr" not in optimizer.param_groups[0]
    first = finder.history
    finder.range_test(loader, end_lr=10, num_iter=20)  # torch-lr-finder needs reset() here
    assert finder.history["lr"] == first["lr"]


def test_reset_restores_the_state_at_construction(tmp_path: Any) -> None:
    finder, model, optimizer, _ = _xor_finder(memory_cache=False, cache_dir=tmp_path)
    before = _params(model)
    assert len(list(tmp_path.iterdir())) == 2  # model and optimizer state files
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    optimizer.param_groups[0]["lr"] = 0.5
    finder.reset()
    _assert_same_state(model, before)
    assert optimizer.param_groups[0]["lr"] == 1e-4


def test_result_suggestions_and_observer_are_exposed() -> None:
    observer = RecordingObserver()
    finder, _, _, loader = _xor_finder(observer=observer)
    finder.range_test(loader, end_lr=10, num_iter=40)
    assert finder.result is not None
    assert list(finder.suggestions) == list(RULES)
    assert len(observer.calls) == finder.result.steps == len(finder.history["lr"])
    assert observer.series("loss_smoothed")[0][1] == finder.history["loss"][0]
    assert finder.best_loss == min(finder.history["loss"])


def test_default_mode_keeps_group_ratios_and_exact_end() -> None:
    torch.manual_seed(0)
    model = _mlp()
    finder = LRFinder(model, _two_groups(model), nn.CrossEntropyLoss())
    finder.range_test(
        DataLoader(_xor_data(), batch_size=32), end_lr=1.0, num_iter=12, diverge_th=1e9
    )
    last = finder.result.group_lrs[-1]
    assert last[0] == 1.0 and last[1] == pytest.approx(10.0)


def test_default_mode_validation_uses_a_fixed_subset() -> None:
    finder, _, _, loader = _xor_finder()
    seen = {"n": 0}

    class CountingVal(ValDataLoaderIter):
        def inputs_labels_from_batch(self, batch_data: Any) -> tuple[Any, Any]:
            seen["n"] += 1
            return super().inputs_labels_from_batch(batch_data)

    val = CountingVal(DataLoader(_xor_data(320, seed=5), batch_size=32))  # 10 batches
    finder.range_test(loader, val_loader=val, end_lr=1, num_iter=8)
    assert seen["n"] == 5  # read once, evaluated at every step
    finder.range_test(loader, val_loader=val, end_lr=1, num_iter=8, val_batches=None)
    assert seen["n"] == 5 + 8 * 10


# --------------------------------------------------------------------------- plot


def test_plot_in_default_mode_uses_lrtracks_rules() -> None:
    finder, *_, loader = _xor_finder()
    finder.range_test(loader, end_lr=10, num_iter=40)
    fig, ax = plt.subplots()
    try:
        out_ax, lr = finder.plot(ax=ax, suggest_lr="valley", skip_start=2, skip_end=2)
        expected = suggest(
            "valley", finder.history["lr"], finder.history["loss"], skip_start=2, skip_end=2
        )
        assert out_ax is ax and lr == expected.lr
        _, steepest = finder.plot(ax=ax, skip_start=2, skip_end=2)
        assert (
            steepest
            == suggest(
                "steepest", finder.history["lr"], finder.history["loss"], skip_start=2, skip_end=2
            ).lr
        )
        assert finder.plot(ax=ax, suggest_lr=False, show_lr=1) is ax
    finally:
        plt.close(fig)


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"skip_start": -1}, ValueError, "skip_start must be an integer >= 0; got -1"),
        ({"skip_end": -2}, ValueError, "skip_end must be an integer >= 0; got -2"),
        ({"show_lr": "big"}, ValueError, "show_lr must be a float"),
        ({"suggest_lr": "median"}, ValueError, "unknown suggestion rule 'median'"),
        ({"skip_start": 30}, RuntimeError, "Need at least skip_start + skip_end + 2 = 37"),
    ],
)
def test_plot_argument_errors(kwargs: dict[str, Any], exc: type, fragment: str) -> None:
    finder, *_, loader = _xor_finder(compat=True)
    finder.range_test(loader, end_lr=1, num_iter=20)
    fig, ax = plt.subplots()
    try:
        with pytest.raises(exc) as info:
            finder.plot(ax=ax, **kwargs)
    finally:
        plt.close(fig)
    assert fragment in str(info.value)


def test_plot_without_axes_creates_a_figure() -> None:
    finder, *_, loader = _xor_finder(compat=True)
    finder.range_test(loader, end_lr=10, num_iter=20)
    ax, lr = finder.plot()
    assert ax.get_xscale() == "log" and lr in finder.history["lr"]
    plt.close("all")


# --------------------------------------------------------------------------- argument errors


def _scheduled_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    return optimizer


@pytest.mark.parametrize(
    ("range_kwargs", "exc", "fragments"),
    [
        ({"step_mode": "cubic"}, ValueError, ["step_mode", "'cubic'", "'exp'", "'linear'"]),
        ({"smooth_f": 1.0}, ValueError, ["smooth_f", "[0, 1)", "1.0"]),
        ({"smooth_f": -0.1}, ValueError, ["smooth_f", "-0.1"]),
        ({"num_iter": 1}, ValueError, ["num_iter", "larger than 1", "got 1"]),
        ({"num_iter": 0, "step_mode": "linear"}, ValueError, ["num_iter", "got 0"]),
    ],
)
def test_range_test_argument_errors_match_torch_lr_finders_types(
    range_kwargs: dict[str, Any], exc: type, fragments: list[str], tlf: ModuleType
) -> None:
    loader = DataLoader(_xor_data(), batch_size=32)
    model = _mlp()
    ref_opt = torch.optim.SGD(copy.deepcopy(model).parameters(), lr=1e-3)
    with pytest.raises(exc):
        tlf.LRFinder(copy.deepcopy(model), ref_opt, nn.CrossEntropyLoss()).range_test(
            loader, **range_kwargs
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    finder = LRFinder(model, optimizer, nn.CrossEntropyLoss(), compat=True)
    with pytest.raises(exc) as info:
        finder.range_test(loader, start_lr=1e-5, **range_kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)
    # Nothing was changed before the error (torch-lr-finder has set the LR by then).
    assert optimizer.param_groups[0]["lr"] == 1e-3 and "initial_lr" not in optimizer.param_groups[0]


def test_scheduler_already_attached_is_a_runtime_error_like_torch_lr_finder(
    tlf: ModuleType,
) -> None:
    with pytest.raises(RuntimeError):
        model = _mlp()
        tlf.LRFinder(model, _scheduled_optimizer(model), nn.CrossEntropyLoss())
    model = _mlp()
    with pytest.raises(RuntimeError) as info:
        LRFinder(model, _scheduled_optimizer(model), nn.CrossEntropyLoss())
    message = str(info.value)
    assert "scheduler attached" in message and "param_groups[0]" in message
    assert "after the range test" in message


def test_scheduler_attached_after_construction_is_caught_by_range_test() -> None:
    finder, _, optimizer, loader = _xor_finder()
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    with pytest.raises(RuntimeError, match="scheduler attached"):
        finder.range_test(loader, num_iter=5)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"amp_backend": "apex"}, "amp_backend='apex' is not supported"),
        ({"amp_backend": "cuda-magic"}, "amp_backend must be None or 'torch'; got 'cuda-magic'"),
        ({"amp_backend": "torch"}, "grad_scaler is required when amp_backend='torch'"),
        ({"cache_dir": "/no/such/dir"}, "cache_dir must be an existing directory"),
    ],
)
def test_constructor_errors(kwargs: dict[str, Any], fragment: str) -> None:
    model = _mlp()
    with pytest.raises(ValueError) as info:
        LRFinder(
            model, torch.optim.SGD(model.parameters(), lr=1e-3), nn.CrossEntropyLoss(), **kwargs
        )
    assert fragment in str(info.value)


def test_criterion_or_step_fn_exactly_one() -> None:
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="exactly one of criterion"):
        LRFinder(model, optimizer)
    with pytest.raises(ValueError, match="got both"):
        LRFinder(model, optimizer, nn.CrossEntropyLoss(), step_fn=lambda m, b: m(b).sum())


def test_default_mode_rejects_diverge_th_at_most_one() -> None:
    finder, *_, loader = _xor_finder()
    with pytest.raises(ValueError, match="diverge_th must be a number > 1; got 1"):
        finder.range_test(loader, num_iter=5, diverge_th=1)


# --------------------------------------------------------------------------- mixed precision


class _CountingScaler(torch.amp.GradScaler):
    def __init__(self) -> None:
        super().__init__("cpu")
        self.counts = {"scale": 0, "step": 0, "update": 0}

    def scale(self, outputs: Any) -> Any:
        self.counts["scale"] += 1
        return super().scale(outputs)

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        self.counts["step"] += 1
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale: Any = None) -> None:
        self.counts["update"] += 1
        super().update(new_scale)


@pytest.mark.parametrize("compat_mode", [False, True])
def test_torch_amp_scales_every_micro_batch_and_steps_once_per_step(compat_mode: bool) -> None:
    scaler = _CountingScaler()
    finder, *_, loader = _xor_finder(
        compat=compat_mode, amp_backend="torch", grad_scaler=scaler
    )  # amp_config=None: bfloat16 autocast on the CPU
    finder.range_test(loader, end_lr=1, num_iter=4, accumulation_steps=3, diverge_th=1e9)
    assert len(finder.history["lr"]) == 4
    assert scaler.counts == {"scale": 12, "step": 4, "update": 4}


def test_grad_scaler_is_ignored_without_amp_backend() -> None:
    scaler = _CountingScaler()
    finder, *_, loader = _xor_finder(grad_scaler=scaler)
    finder.range_test(loader, end_lr=1, num_iter=4)
    assert scaler.counts == {"scale": 0, "step": 0, "update": 0}


# --------------------------------------------------------------------------- loader wrappers


def test_default_iterator_rejects_dict_batches_with_a_hint() -> None:
    it = TrainDataLoaderIter(DataLoader(_DictData(_xor_data()), batch_size=8))
    with pytest.raises(ValueError) as info:
        next(it)
    assert "override inputs_labels_from_batch" in str(info.value) and "dict" in str(info.value)


def test_iterator_subclass_feeds_a_custom_batch_format() -> None:
    class TrainIter(TrainDataLoaderIter):
        def inputs_labels_from_batch(self, batch_data: Any) -> tuple[Any, Any]:
            return batch_data["features"], batch_data["target"]

    finder, *_ = _xor_finder()
    finder.range_test(TrainIter(DataLoader(_DictData(_xor_data()), batch_size=32)), num_iter=10)
    assert len(finder.history["lr"]) == 10


def test_train_iterator_auto_resets_and_val_iterator_restarts_per_pass() -> None:
    loader = DataLoader(_xor_data(64), batch_size=32)  # two batches
    train = TrainDataLoaderIter(loader)
    assert len([next(train) for _ in range(5)]) == 5
    val = ValDataLoaderIter(loader)
    assert len(list(val)) == 2 and len(list(val)) == 2
    assert val.dataset is loader.dataset


def test_exhausted_non_resetting_train_iterator_is_a_clear_error() -> None:
    finder, model, _, _ = _xor_finder()
    before = _params(model)
    short = TrainDataLoaderIter(DataLoader(_xor_data(64), batch_size=32), auto_reset=False)
    with pytest.raises(RuntimeError, match="auto_reset is False"):
        finder.range_test(short, num_iter=5)
    _assert_same_state(model, before)


def test_any_iterable_of_batches_is_accepted() -> None:
    finder, *_ = _xor_finder()
    batches = list(DataLoader(_xor_data(), batch_size=32))
    finder.range_test(batches, val_loader=batches[:2], end_lr=1, num_iter=10)
    assert len(finder.history["lr"]) == 10
    with pytest.raises(TypeError, match="train_loader must be"):
        finder.range_test(42, num_iter=5)


# --------------------------------------------------------------------------- names and docs


def test_names_are_importable_from_the_module_where_they_live() -> None:
    for name in ("LRFinder", "DataLoaderIter", "TrainDataLoaderIter", "ValDataLoaderIter"):
        assert name in compat.__all__ and hasattr(compat, name)
    assert issubclass(TrainDataLoaderIter, compat.DataLoaderIter)


def test_names_are_importable_from_lrtrack_when_exported() -> None:
    if "LRFinder" not in getattr(lrtrack, "__all__", []):
        pytest.skip("lrtrack/__init__.py does not export the compat names yet")
    from lrtrack import LRFinder as Exported
    from lrtrack import TrainDataLoaderIter as ExportedIter

    assert Exported is LRFinder and ExportedIter is TrainDataLoaderIter


def _readme_differences() -> list[str]:
    """The bullet list after the README's "What differs on purpose" line, one string a bullet."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Coming from pytorch-lr-finder", 1)[1].split("\n## ", 1)[0]
    listing = section.split("What differs on purpose", 1)[1]
    bullets: list[str] = []
    for line in listing.splitlines()[1:]:
        if line.startswith("- "):
            bullets.append(line[2:])
        elif line.startswith("  ") and bullets:
            bullets[-1] += " " + line.strip()
        elif line.strip() and bullets:
            break  # the first paragraph after the list
    return bullets


def test_readme_lists_every_difference_once_and_nothing_else() -> None:
    assert _readme_differences() == list(DIFFERENCES)
    text = README.read_text(encoding="utf-8")
    for line in DIFFERENCES:  # listed once: only this section carries them
        first_words = re.escape(" ".join(line.split()[:6]))
        assert len(re.findall(first_words, re.sub(r"\s+", " ", text))) == 1, line


def test_compat_mode_takes_only_torch_lr_finders_loader_types() -> None:
    batches = list(DataLoader(_xor_data(), batch_size=32))
    finder, model, optimizer, loader = _xor_finder(compat=True)
    before = _params(model)
    with pytest.raises(ValueError, match="`train_loader` has unsupported type list") as info:
        finder.range_test(batches, end_lr=1, num_iter=5)
    assert "compat=False" in str(info.value)  # the message names the way out
    with pytest.raises(ValueError, match="`val_loader` has unsupported type list"):
        finder.range_test(loader, val_loader=batches[:2], end_lr=1, num_iter=5)
    _assert_same_state(model, before)
    assert optimizer.param_groups[0]["lr"] == 1e-4 and finder.history == {"lr": [], "loss": []}
    # The same loaders are fine in the default mode (see test_any_iterable_of_batches_is_accepted).
    default, *_ = _xor_finder()
    default.range_test(batches, val_loader=batches[:2], end_lr=1, num_iter=5)
    assert len(default.history["lr"]) == 5


def test_memory_cache_false_restores_from_files_and_removes_them(tmp_path: Any) -> None:
    finder, model, optimizer, loader = _xor_finder(memory_cache=False, cache_dir=tmp_path)
    reset_files = sorted(tmp_path.iterdir())
    before, opt_before = _params(model), copy.deepcopy(optimizer.state_dict())
    rng_before = torch.get_rng_state()
    seen: list[int] = []
    finder.observer = _FileCounter(tmp_path, seen)
    finder.range_test(loader, end_lr=1, num_iter=5)
    assert seen and all(n == len(reset_files) + 2 for n in seen)  # + the per-test state files
    assert sorted(tmp_path.iterdir()) == reset_files  # those are gone afterwards
    _assert_same_state(model, before)
    assert optimizer.state_dict() == opt_before
    assert torch.equal(torch.get_rng_state(), rng_before)


class _FileCounter:
    """An observer that records how many files a folder holds at every step."""

    def __init__(self, folder: Any, seen: list[int]) -> None:
        self.folder, self.seen = folder, seen

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.seen.append(len(list(self.folder.iterdir())))
