"""Your own data, loss, step and metric: the data builders, the first-batch check, the metrics,
the recipe's set-up from a user's config folder, and the notebook path, on real data and a real
MLflow store (sqlite in tmp_path)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from lrtrack import data as lrdata
from lrtrack.app.config import import_hint
from lrtrack.engine.tasks import Accuracy, BatchMean, ModelLoss, as_metric, first_batch_problem
from lrtrack.engine.train import evaluate
from tests.conftest import composed, errors_of, run_cli_here

ROOT = Path(__file__).resolve().parents[1]


def make_pngs() -> object:
    spec = importlib.util.spec_from_file_location("make_pngs", ROOT / "examples" / "image_classifier" / "make_pngs.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def png_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ImageFolder tree: scikit-learn's digits as 28x28 grayscale PNGs, 30 + 10 per class."""
    root = tmp_path_factory.mktemp("pngs")
    tool = make_pngs()
    tool.write_tree(root, *tool.digits_images(), per_class=30, val_per_class=10)  # type: ignore[attr-defined]
    return root


def diabetes() -> dict[str, np.ndarray]:
    spec = importlib.util.spec_from_file_location("make_tensors", ROOT / "examples" / "tabular_regression" / "make_tensors.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.diabetes_arrays()


# --------------------------------------------------------------------------- the data builders


def test_mnist_reads_the_idx_files_as_torchvision_does_without_importing_it(mnist_root: Path) -> None:
    code = ("import sys; from lrtrack.data import mnist\n"
            f"b = mnist(root={str(mnist_root)!r}, download=False, fallback=None)\n"
            "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
            "print(b.name, b.num_train, b.num_val, b.num_classes)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["mnist", "8000", "2000", "10"]
    from torchvision.datasets import MNIST

    images, labels = lrdata.mnist_tensors(mnist_root, train=False, download=False)
    reference = MNIST(str(mnist_root), train=False, download=False)
    expected = (reference.data.unsqueeze(1).float() / 255 - lrdata.MNIST_MEAN) / lrdata.MNIST_STD
    assert torch.equal(labels, reference.targets) and torch.allclose(images, expected)


def test_mnist_falls_back_to_digits_loudly_or_fails_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle = lrdata.mnist(root=tmp_path, download=False, batch_size=32)
    assert (bundle.name, bundle.requested, bundle.fell_back) == ("digits", "mnist", True)
    assert "FALLING BACK to data=digits" in caplog.text and "lrtrack.data=digits" in caplog.text
    with pytest.raises(lrdata.DataUnavailableError) as err:
        lrdata.mnist(root=tmp_path, download=False, fallback=None)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"MNIST is not under data.root={str(tmp_path)!r}")


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_tensors_file_of_a_real_regression_set(tmp_path: Path, suffix: str) -> None:
    arrays = diabetes()
    path = tmp_path / f"diabetes{suffix}"
    if suffix == ".pt":
        torch.save({k: torch.from_numpy(v).double() for k, v in arrays.items()}, path)  # float64 on purpose
    else:
        np.savez(path, **arrays)
    bundle = lrdata.tensors(path, batch_size=50, val_batch_size=100)
    x, y = next(iter(bundle.train))
    assert (x.shape, y.shape, x.dtype, y.dtype) == ((50, 10), (50, 1), torch.float32, torch.float32)
    assert (bundle.num_train, bundle.num_val, bundle.num_classes, bundle.name) == (354, 88, None, "tensors")
    vx, vy = next(iter(bundle.val))
    assert torch.allclose(vx, torch.from_numpy(arrays["x_val"]).float())  # validation is not shuffled


def test_tensors_with_class_labels_and_the_errors(tmp_path: Path) -> None:
    x, y = lrdata.digits_tensors()[:2]
    torch.save({"x_train": x[:100], "y_train": y[:100].int(), "x_val": x[100:140], "y_val": y[100:140]},
               tmp_path / "d.pt")
    torch.save({"x_train": x.numpy(), "y_train": y, "x_val": x, "y_val": y}, tmp_path / "numpy.pt")
    bundle = lrdata.tensors(tmp_path / "d.pt")
    assert next(iter(bundle.train))[1].dtype == torch.int64 and bundle.num_classes == 10
    torch.save({"x_train": x, "y_train": y}, tmp_path / "half.pt")
    cases = {
        tmp_path / "missing.pt": "data.path=", tmp_path / "d.csv": "is not a .pt or .npz file",
        tmp_path / "half.pt": "has no x_val, y_val (it holds x_train, y_train); it needs x_train, y_train, x_val, y_val",
        tmp_path / "numpy.pt": "holds objects torch.load(weights_only=True) refuses (numpy arrays?)",
    }
    (tmp_path / "d.csv").write_text("1,2\n")
    for path, expected in cases.items():
        with pytest.raises(lrdata.DataUnavailableError, match=re.escape(expected)):
            lrdata.tensors(path)


def test_image_folder_in_memory_and_streamed_give_the_same_batches(png_tree: Path) -> None:
    fast = lrdata.image_folder(png_tree, batch_size=16, val_batch_size=50, mean=0.5, std=0.25)
    slow = lrdata.image_folder(png_tree, batch_size=16, val_batch_size=50, mean=0.5, std=0.25, in_memory=False)
    assert isinstance(fast.train, lrdata.InMemoryLoader) and not isinstance(slow.train, lrdata.InMemoryLoader)
    assert (fast.num_train, fast.num_val, fast.num_classes) == (300, 100, 10)
    for (a, ya), (b, yb) in zip(fast.val, slow.val, strict=True):
        assert a.shape == (50, 1, 28, 28) and torch.allclose(a, b) and torch.equal(ya, yb)
    auto = lrdata.image_folder(png_tree)  # mean/std measured on the training images
    images = auto.train.images
    assert abs(float(images.mean())) < 1e-4 and abs(float(images.std()) - 1) < 1e-3
    assert "1x28x28 decoded in memory" in auto.source and "10 classes" in auto.source


def test_image_folder_settings_and_errors(png_tree: Path, tmp_path: Path) -> None:
    rgb = lrdata.image_folder(png_tree, channels=3, size=14, in_memory=False, batch_size=8)
    assert next(iter(rgb.train))[0].shape == (8, 3, 14, 14)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(lrdata.DataUnavailableError, match=r"^data.root='.+': .+/val does not exist; lay the images"):
        lrdata.image_folder(tmp_path)
    with pytest.raises(lrdata.DataUnavailableError,  # the setting that is wrong, not data.root
                       match=r"^data.train_dir='nope': .+/nope does not exist; lay the images out as "
                             r"<root>/nope/<class>/\*.png and <root>/val/<class>/\*.png \(data.root="):
        lrdata.image_folder(tmp_path, train_dir="nope")
    (tmp_path / "val").mkdir()
    with pytest.raises(lrdata.DataUnavailableError, match=r"val has no class folders; lay the images out as"):
        lrdata.image_folder(tmp_path)
    (tmp_path / "val" / "b").mkdir(parents=True)
    with pytest.raises(lrdata.DataUnavailableError, match=r"different class folders \(a, b in one only\)"):
        lrdata.image_folder(tmp_path)
    from PIL import Image

    mixed = tmp_path / "mixed"
    for split, side in (("train", 8), ("val", 8)):
        for i, s in enumerate((side, side + 2)):
            (mixed / split / "a").mkdir(parents=True, exist_ok=True)
            Image.new("L", (s, s)).save(mixed / split / "a" / f"{i}.png")
    with pytest.raises(lrdata.DataUnavailableError, match=r"differ in size .*set data.size=<side>"):
        lrdata.image_folder(mixed)
    assert next(iter(lrdata.image_folder(mixed, size=[6, 6]).train))[0].shape == (2, 1, 6, 6)


def test_torchvision_set_offline_names_the_folder_to_fill(tmp_path: Path) -> None:
    with pytest.raises(lrdata.DataUnavailableError) as err:
        lrdata.torchvision_set("FashionMNIST", root=tmp_path / "tv")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"FashionMNIST is not under data.root={str(tmp_path / 'tv')!r}")
    assert f"put its files in {tmp_path / 'tv' / 'FashionMNIST' / 'raw'} (torchvision's layout)" in message
    with pytest.raises(ValueError, match=r"data.name='FashionMnist' is not a torchvision data set"):
        lrdata.torchvision_set("FashionMnist", root=tmp_path)


def test_torchvision_set_by_name_on_real_mnist(mnist_root: Path) -> None:
    bundle = lrdata.torchvision_set("MNIST", root=mnist_root, download=False, batch_size=100)
    x, y = next(iter(bundle.val))
    assert x.shape == (1000, 1, 28, 28) and bundle.num_classes == 10 and bundle.name == "MNIST"
    reference, labels = lrdata.mnist_tensors(mnist_root, train=False, download=False)
    assert torch.equal(y, labels[:1000])


USER_MODULE = '''
import torch
from torch import nn
from torch.nn import functional as F


class DigitDicts(torch.utils.data.Dataset):
    """scikit-learn's digits as dict items: {"pixels": (64,) float, "labels": int}."""

    def __init__(self, split: str) -> None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        cut = 1400
        self.x = torch.tensor(x[:cut] if split == "train" else x[cut:], dtype=torch.float32) / 16
        self.y = torch.tensor(y[:cut] if split == "train" else y[cut:])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"pixels": self.x[i], "labels": self.y[i]}


class OwnLoss(nn.Module):
    """A model that computes its own loss from the batch's keys (Hugging Face style)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, pixels, labels):
        logits = self.net(pixels)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def scaled_loss(model, batch, scale=1.0):
    return scale * model(**batch)["loss"]
'''
_USER: dict[str, object] = {}
exec(compile(USER_MODULE, "dict_project.py", "exec"), _USER)  # the same classes for the library-level tests
DigitDicts = _USER["DigitDicts"]
OwnLoss = _USER["OwnLoss"]


def test_user_datasets_with_dict_items_and_loader_factories() -> None:
    bundle = lrdata.datasets(DigitDicts("train"), DigitDicts("val"), batch_size=32, seed=3)
    batch = next(iter(bundle.train))
    assert set(batch) == {"pixels", "labels"} and batch["pixels"].shape == (32, 64)
    assert (bundle.name, bundle.num_train, bundle.num_val) == ("DigitDicts", 1400, 397)
    again = next(iter(lrdata.datasets(DigitDicts("train"), batch_size=32, seed=3).train))
    assert torch.equal(again["labels"], batch["labels"])  # the shuffle follows the seed
    pair = lrdata.as_bundle((bundle.train, bundle.val), "mine")
    assert (pair.name, pair.num_train, pair.val) == ("mine", 1400, bundle.val)
    assert lrdata.as_bundle({"train": bundle.train}, "mine").val is None
    with pytest.raises(TypeError, match=r"returned a Dataset as train; wrap it in a DataLoader"):
        lrdata.as_bundle((DigitDicts("train"), None), "mine")


def test_peek_leaves_the_data_order_and_the_rng_alone() -> None:
    tx, ty, _, _ = lrdata.digits_tensors()
    for make in (lambda: lrdata.InMemoryLoader(tx, ty, 64, seed=5),
                 lambda: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tx, ty), batch_size=64,
                                                     shuffle=True, generator=torch.Generator().manual_seed(5))):
        peeked, plain = make(), make()
        torch.manual_seed(0)
        first = lrdata.peek(peeked)
        after = torch.rand(1)
        torch.manual_seed(0)
        assert torch.equal(after, torch.rand(1))
        for (a, ya), (b, yb) in zip(peeked, plain, strict=True):
            assert torch.equal(a, b) and torch.equal(ya, yb)
        assert torch.equal(first[1], next(iter(make()))[1])


# --------------------------------------------------------------------------- the data group in the config


def test_data_options_and_one_line_per_bad_setting() -> None:
    for option, target in (("imagefolder", "lrtrack.data.image_folder"), ("tensors", "lrtrack.data.tensors"),
                           ("torchvision", "lrtrack.data.torchvision_set"), ("fake", "lrtrack.data.fake")):
        cfg = composed(f"data={option}")
        assert cfg.data._target_ == target and errors_of(cfg) == []
    cfg = composed("data=imagefolder", "+data.sise=32", "data.channels=2", "data.batch_size=0", "+data.seed=1")
    assert errors_of(cfg) == [
        "data.sise=32 is invalid: lrtrack.data.image_folder has no setting 'sise'; did you mean data.size?",
        "data.seed=1 is invalid: the data order follows the top-level seed; set seed=<n> instead",
        "data.batch_size=0 is invalid: must be a whole number >= 1",
        "data.channels=2 is invalid: allowed: 1 (grayscale), 3 (RGB), null (as the images are)",
    ]


def test_a_users_data_file_with_target_composes_and_one_without_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.yaml").write_text(
        "_target_: lrtrack.data.datasets\ntrain: {_target_: my_dicts.DigitDicts, split: train}\n"
        "val: {_target_: my_dicts.DigitDicts, split: val}\nbatch_size: 32\nanything: 1\n")
    (tmp_path / "data" / "bare.yaml").write_text("path: x.pt\n")
    cfg = composed("data=mine", conf=tmp_path)
    assert cfg.data.train._target_ == "my_dicts.DigitDicts"
    assert errors_of(cfg) == ["data.anything=1 is invalid: lrtrack.data.datasets has no setting 'anything'; its "
                              "settings: train, val, batch_size, val_batch_size, num_workers, collate_fn, drop_last, "
                              "name, source, num_classes"]
    [line] = errors_of(composed("data=bare", conf=tmp_path))
    assert line.startswith("data has no _target_: choose data=<name> (available: digits, fake, imagefolder, mnist, "
                           "tensors, torchvision) or write conf/data/<name>.yaml with _target_")


def test_import_hint_names_the_module_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert import_hint("torch.nn.Linear") is None
    assert import_hint("no_such_module.Net") == (
        f"cannot import 'no_such_module.Net': no module 'no_such_module' on the Python path; put no_such_module.py "
        f"(or the package folder) in the folder you launch from ({tmp_path}), pip install -e your project, or add its "
        "folder to PYTHONPATH")
    assert import_hint("torch.nn.Linearr").startswith("cannot import 'torch.nn.Linearr': module torch.nn (")
    assert import_hint("Net").startswith("_target_ 'Net' is not a dotted path")


# --------------------------------------------------------------------------- the first-batch check

IMAGES = torch.randn(8, 1, 28, 28)
LABELS = torch.arange(8) % 4


class Logits(nn.Module):
    def __init__(self, classes: int = 4, end: str = "") -> None:
        super().__init__()
        self.fc, self.end = nn.Linear(784, classes), end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        return {"log_softmax": F.log_softmax(out, 1), "softmax": F.softmax(out, 1)}.get(self.end, out)


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


X, Y = torch.randn(8, 10), torch.randn(8, 1)
DICTS = {"pixels": torch.randn(8, 64), "labels": torch.arange(8)}

GOOD = [
    (Logits(end="log_softmax"), (IMAGES, LABELS), nn.NLLLoss(), None),
    (Logits(), (IMAGES, LABELS), nn.CrossEntropyLoss(), None),
    (Logits(end="log_softmax"), (IMAGES, LABELS), nn.CrossEntropyLoss(), None),  # CE of log_softmax is the NLL
    (Regressor(), (X, Y), nn.MSELoss(), None),
    (OwnLoss(), DICTS, None, ModelLoss()),
]


@pytest.mark.parametrize(("model", "batch", "criterion", "step"), GOOD)
def test_first_batch_check_passes_what_trains(model: nn.Module, batch: object, criterion: object, step: object) -> None:
    was = model.training
    assert first_batch_problem(model, batch, criterion=criterion, step=step, num_classes=4) is None
    assert model.training == was


BAD = [
    (Logits(), (IMAGES, LABELS), nn.NLLLoss(), None,
     "criterion=nll expects log-probabilities but the model returns raw scores (logits: exp(outputs) does not sum "
     "to 1): set criterion=cross_entropy, or end the model with log_softmax"),
    (Logits(end="softmax"), (IMAGES, LABELS), nn.CrossEntropyLoss(), None,
     "criterion=cross_entropy expects logits but the model returns probabilities (each row sums to 1): remove the "
     "softmax at the end of the model, or return log_softmax"),
    (Logits(classes=3), (IMAGES, LABELS), nn.CrossEntropyLoss(), None,
     "the data has 4 classes but the model returns 3 scores per sample: set the model's number of classes to 4 "
     "(e.g. model.num_classes=4)"),
    (Regressor(), (X, Y[:, 0]), nn.MSELoss(), None,
     "the model returns (8, 1) float32 but the targets are (8,) float32: criterion=mse needs equal shapes (it would "
     "broadcast them); make them match, e.g. squeeze the model's last dimension or store the targets as (N, 1)"),
    (Regressor(), (X, Y), nn.NLLLoss(), None,
     "criterion=nll takes class indices but the targets are (8, 1) float32 numbers: for regression set "
     "criterion=mse; for classes store the targets as integers"),
    (Logits(), (IMAGES, LABELS), nn.MSELoss(), None,
     "criterion=mse compares numbers but the targets are (8,) int64 class indices: use criterion=cross_entropy for "
     "classes, or float targets for regression"),
    (Logits(), (IMAGES[:, :, :20], LABELS), nn.CrossEntropyLoss(), None,
     "the model cannot take the data's inputs (8, 1, 20, 28) float32: RuntimeError: mat1 and mat2 shapes cannot be "
     "multiplied (8x560 and 784x4); make the model.* settings fit the data (input size, channels)"),
    (Logits(), (IMAGES, LABELS), nn.CrossEntropyLoss(reduction="none"), None,
     "criterion=cross_entropy returned (8,) float32, not a scalar loss tensor; average over the batch (e.g. "
     "criterion.reduction=mean)"),
    (OwnLoss(), DICTS, nn.NLLLoss(), None,
     "the batches are dicts (keys: pixels, labels), not (inputs, targets): set step=model_loss when the model returns "
     "its own loss from them, or step=<your (model, batch) -> loss>"),
    (Logits(), (IMAGES, LABELS), None, ModelLoss(),
     "step ModelLoss failed on the first batch: TypeError: step=model_loss expects dict batches (model(**batch)); got "
     "tuple. For (inputs, targets) batches set step=null and choose a criterion"),
]


@pytest.mark.parametrize(("model", "batch", "criterion", "step", "expected"), BAD,
                         ids=["logits-nll", "softmax-ce", "classes", "broadcast", "float-nll", "int-mse", "forward",
                              "not-scalar", "dicts", "step-on-pairs"])
def test_first_batch_check_names_the_setting_to_change(model: nn.Module, batch: object, criterion: object,
                                                       step: object, expected: str) -> None:
    assert first_batch_problem(model, batch, criterion=criterion, step=step) == expected


def test_first_batch_check_knows_the_classes_of_the_data() -> None:
    problem = first_batch_problem(Logits(classes=4), (IMAGES, LABELS), criterion=nn.CrossEntropyLoss(), num_classes=10)
    assert problem is not None and problem.startswith("the data has 10 classes but the model returns 4 scores")


# --------------------------------------------------------------------------- metrics


def test_accuracy_counts_class_indices_only() -> None:
    metric = Accuracy()
    metric.update(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1]))
    metric.update(torch.randn(2, 1), torch.randn(2, 1))  # a regression batch: skipped
    assert metric.compute() == 0.5 and metric.samples == 2
    metric.reset()
    metric.update(torch.randn(4, 1), torch.randn(4, 1))
    assert metric.compute() is None


class MeanError:
    """A torchmetrics-style object: update/compute/reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.total += float((outputs - targets).sum())
        self.count += targets.numel()

    def compute(self) -> torch.Tensor:
        return torch.tensor(self.total / self.count)


def test_evaluate_reports_the_metric_the_task_has() -> None:
    arrays = diabetes()
    x, y = torch.from_numpy(arrays["x_val"]), torch.from_numpy(arrays["y_val"])
    val = lrdata.InMemoryLoader(x, y, 30, shuffle=False)
    model, cpu = Regressor(), torch.device("cpu")
    plain = evaluate(model, val, device=cpu, criterion=nn.MSELoss(), step_fn=None)
    assert set(plain) == {"val_loss"}  # the default accuracy measures nothing on a regression
    with torch.no_grad():
        out = model(x)
    expected_mae, expected_mse = float(F.l1_loss(out, y)), float(F.mse_loss(out, y))
    mae = evaluate(model, val, device=cpu, criterion=nn.MSELoss(), step_fn=None, metric=as_metric(F.l1_loss, "mae"))
    assert mae == pytest.approx({"val_loss": expected_mse, "val_mae": expected_mae}, rel=1e-5)
    own = evaluate(model, val, device=cpu, criterion=nn.MSELoss(), step_fn=None, metric=MeanError())
    assert own["val_meanerror"] == pytest.approx(float((out - y).mean()), rel=1e-4, abs=1e-6)
    assert set(evaluate(model, val, device=cpu, criterion=nn.MSELoss(), step_fn=None, metric=None)) == {"val_loss"}
    assert BatchMean(F.l1_loss).name == "l1_loss"


def test_model_loss_step_still_reports_accuracy() -> None:
    data = lrdata.datasets(DigitDicts("train"), DigitDicts("val"), batch_size=64)
    model = OwnLoss()
    metrics = evaluate(model, data.val, device=torch.device("cpu"), criterion=None, step_fn=ModelLoss())
    assert set(metrics) == {"val_loss", "val_accuracy"} and 0 <= metrics["val_accuracy"] <= 1


# --------------------------------------------------------------------------- the recipe with a user's project

@pytest.fixture
def user_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with its own module and conf/: dict batches from a user Dataset, a model with its own loss."""
    (tmp_path / "dict_project.py").write_text(USER_MODULE)
    conf = tmp_path / "conf"
    for group, name, text in (
        ("model", "own_loss", "_target_: dict_project.OwnLoss\nhidden: 32\n"),
        ("data", "digit_dicts", "_target_: lrtrack.data.datasets\nbatch_size: 64\n"
                                "train: {_target_: dict_project.DigitDicts, split: train}\n"
                                "val: {_target_: dict_project.DigitDicts, split: val}\n"),
        ("step", "scaled", "_target_: dict_project.scaled_loss\nscale: 2.0\n"),
    ):
        (conf / group).mkdir(parents=True, exist_ok=True)
        (conf / group / f"{name}.yaml").write_text(text)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the recipe adds the launch folder; undone afterwards
    yield tmp_path
    sys.modules.pop("dict_project", None)


def recipe_for(cfg: DictConfig, folder: Path, **choices: str) -> object:
    from lrtrack.app.recipe import JobInfo, RangeTestRecipe

    job = JobInfo({"model": "own_loss", **choices}, [], "python -m lrtrack", folder, folder / "out")
    return RangeTestRecipe(cfg, job)


def test_recipe_setup_builds_a_users_data_step_and_metric(user_project: Path) -> None:
    from lrtrack.engine.finder import run_range_test
    from lrtrack.engine.train import train

    cfg = composed("data=digit_dicts", "step=model_loss", "tracking.enabled=false", model="own_loss", conf=user_project / "conf")
    assert errors_of(cfg) == []
    parts = recipe_for(cfg, user_project, data="digit_dicts", metric="accuracy").setup()  # type: ignore[attr-defined]
    assert (parts.data.name, parts.data_info.name) == ("DigitDicts", "DigitDicts")
    assert isinstance(parts.step, ModelLoss) and isinstance(parts.metric, Accuracy)
    assert parts.loss_args() == {"criterion": None, "step_fn": parts.step}
    result = run_range_test(parts.model, parts.optimizer, parts.data.train, **parts.loss_args(), end_lr=1,
                            num_iter=20, progress=False)
    assert result.steps == 20 and result.min_loss < result.losses[0]
    trained = train(parts.model, parts.optimizer, parts.data.train, epochs=1, val_loader=parts.data.val,
                    metric=parts.metric, progress=False, **parts.loss_args())
    assert set(trained.epochs[0]) == {"epoch", "train_loss_epoch", "val_loss", "val_accuracy"}


def test_recipe_setup_binds_a_users_step_function_and_metric(user_project: Path) -> None:
    cfg = composed("data=digit_dicts", "step=scaled", "metric=mae", "tracking.enabled=false", model="own_loss",
                   conf=user_project / "conf")
    parts = recipe_for(cfg, user_project, metric="mae").setup()  # type: ignore[attr-defined]
    batch = next(iter(parts.data.val))
    assert torch.allclose(parts.step(parts.model, batch), 2 * parts.model(**batch)["loss"])
    assert isinstance(parts.metric, BatchMean) and parts.metric.name == "mae"
    cfg = composed("data=digit_dicts", "step=model_loss", "metric=none", "tracking.enabled=false", model="own_loss",
                   conf=user_project / "conf")
    assert recipe_for(cfg, user_project).setup().metric is None  # type: ignore[attr-defined]


def test_recipe_setup_stops_on_a_mismatch_before_any_run(user_project: Path, premade_store) -> None:
    premade_store(user_project)
    from lrtrack.app.recipe import UserError

    uri = f"sqlite:///{user_project / 'mlflow.db'}"
    cfg = composed("data=digit_dicts", f"tracking.tracking_uri={uri}", model="own_loss", conf=user_project / "conf")
    with pytest.raises(UserError, match=r"^first batch: the batches are dicts \(keys: pixels, labels\)"):
        recipe_for(cfg, user_project).run()  # type: ignore[attr-defined]
    from tests.test_examples import no_runs

    assert no_runs(user_project)  # no run was created (the store itself may be)
    cfg = composed("data=digit_dicts", "model._target_=dict_project.Missing", model="own_loss", conf=user_project / "conf")
    with pytest.raises(UserError, match=r"^model \(dict_project.Missing\): cannot import 'dict_project.Missing': "
                                        r"module dict_project \(.*dict_project.py\) has no 'Missing'"):
        recipe_for(cfg, user_project).setup()  # type: ignore[attr-defined]


@pytest.mark.slow
def test_cli_trains_a_users_dict_batches_from_its_own_folder(user_project: Path, premade_store) -> None:
    premade_store(user_project)
    proc = run_cli_here(["--config-dir", "conf", "+model=own_loss", "data=digit_dicts", "step=model_loss",
                         "finder.num_iter=30", "train.epochs=2", "progress=false"], user_project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{user_project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lrtrack-own_loss")
    runs = {r.data.tags["lrtrack.stage"]: r for r in client.search_runs([exp.experiment_id])}
    explore, final = runs["explore"], runs["final"]
    assert final.data.tags["lrtrack.range_test_run_id"] == explore.info.run_id
    assert explore.data.tags["lrtrack.data"] == "DigitDicts" and explore.data.params["step._target_"] == "lrtrack.engine.tasks.ModelLoss"
    assert final.data.metrics["final_val_accuracy"] > 0.5, final.data.metrics


@pytest.mark.slow
def test_cli_mnist_fallback_is_visible_in_the_runs(tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    proc = run_cli_here(["+model=mlp", f"data.root={tmp_path / 'none'}", "data.download=false", "stage=range_test",
                         "finder.num_iter=10", "progress=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("lrtrack-mlp").experiment_id])
    assert run.data.tags["lrtrack.data"] == "digits" and run.data.params["data.used"] == "digits"
    assert "digits" in run.info.run_name, run.info.run_name


# --------------------------------------------------------------------------- the notebook path


def test_notebook_path_logs_the_clis_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lrtrack.app.notebook import tracked_range_test, tracked_training

    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    data = lrdata.digits(batch_size=64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    with pytest.raises(ValueError, match=r"^first batch: criterion=nll expects log-probabilities"):
        tracked_range_test(model, optimizer, data.train, criterion=nn.NLLLoss())
    rt = tracked_range_test(model, optimizer, data.train, criterion=nn.CrossEntropyLoss(), end_lr=1, num_iter=30,
                            suggestion="valley")
    tr = tracked_training(model, optimizer, data.train, val_loader=data.val, criterion=nn.CrossEntropyLoss(),
                          epochs=1, range_test=rt)
    assert repr(rt).startswith(f"TrackedRangeTest(run_id={rt.run_id!r}, steps={rt.result.steps}, stop_reason=")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    explore, final = client.get_run(rt.run_id), client.get_run(tr.run_id)
    assert explore.info.experiment_id == final.info.experiment_id
    assert client.get_experiment(explore.info.experiment_id).name == "lrtrack-Sequential"
    assert (explore.data.tags["lrtrack.stage"], final.data.tags["lrtrack.stage"]) == ("explore", "final")
    assert final.data.tags["lrtrack.range_test_run_id"] == rt.run_id
    assert {"range_test/plot.png", "range_test/history.csv", "range_test/suggestions.json"} <= {
        a.path for a in client.list_artifacts(rt.run_id, "range_test")}
    assert explore.data.params["finder.num_iter"] == "30" and explore.data.params["optimizer.momentum"] == "0.9"
    assert explore.data.metrics["suggested_lr/valley"] == pytest.approx(rt.lr)
    assert float(final.data.params["bounds.max_lr_used"]) == pytest.approx(rt.lr)
    assert final.data.metrics["final_val_accuracy"] == pytest.approx(tr.metrics["final_val_accuracy"])
    assert {"train/lr_and_loss.png", "train/lr_on_range_test.png", "train/history.csv"} <= {
        a.path for a in client.list_artifacts(tr.run_id, "train")}


def test_the_sweep_table_shows_the_metric_that_was_measured() -> None:
    from lrtrack.app.summary import SUMMARY_COLUMNS, rows_to_csv, summary_columns

    rows = [{"job": "a", "final_val_loss": 0.5, "final_val_mae": 0.6}, {"job": "b", "final_val_loss": 0.4}]
    columns = summary_columns(rows)
    at = columns.index("final_val_loss")
    assert columns[at - 1] == "final_val_mae" and columns.count("final_val_mae") == 1
    assert summary_columns([{"job": "a"}]) == list(SUMMARY_COLUMNS)
    assert rows_to_csv(rows, columns).splitlines()[1].endswith(",0.6,0.5,,,,")
