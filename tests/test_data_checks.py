"""Data checks past the first batch (lrtrack.data.checks), the loop-safe image folder walk, and what
the CLI says when the curve, not the rule, explains a missing suggestion (lrtrack.engine.diagnosis)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lrtrack.data import InMemoryLoader, peek
from lrtrack.data.checks import check_data
from lrtrack.engine.diagnosis import curve_diagnosis, no_suggestion_message
from tests.conftest import run_cli_here


def _loaders(x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> tuple[InMemoryLoader, ...]:
    return InMemoryLoader(x, y, 16, seed=0), InMemoryLoader(xv, yv, 16, shuffle=False)


def _check(x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor | None = None, yv: torch.Tensor | None = None,
           classes: int = 10) -> object:
    xv = x[:32] if xv is None else xv
    yv = y[:32] if yv is None else yv
    train, val = _loaders(x, y, xv, yv)
    return check_data(train, val, first_train=peek(train), first_val=peek(val), classes=classes,
                      classification=True, ignore_index=-100)


def _data(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_clean_data_has_no_finding() -> None:
    x, y = _data()
    report = _check(x, y)
    assert (report.errors, report.warnings, report.notes) == ([], [], [])


def test_a_bad_label_deep_in_the_data_is_found() -> None:
    x, y = _data()
    y[250] = -3
    (error,) = _check(x, y).errors
    assert "1 negative class labels in the training data (the lowest: -3)" in error
    y[250] = 12  # beyond the model's 10 classes
    (error,) = _check(x, y).errors
    assert "labels >= 10" in error and "model.num_classes=13" in error
    y[250] = -100  # the loss's ignore_index is allowed
    assert _check(x, y).errors == []


def test_inf_in_one_row_and_nan_validation_are_found_with_the_row() -> None:
    x, y = _data()
    x[200, 0, 1, 1] = float("inf")
    (error,) = _check(x, y, x[:32].clone(), y[:32]).errors
    assert "inf or NaN in 1 of 256 rows of the training inputs (the first: row 200, inf)" in error
    x, y = _data()
    (error,) = _check(x, y, torch.full((32, 1, 8, 8), float("nan")), y[:32]).errors
    assert "32 of 32 rows of the validation inputs" in error


def test_validation_of_another_shape_or_kind_is_found_before_training() -> None:
    x, y = _data()
    (error,) = _check(x, y, torch.randn(32, 1, 9, 9), y[:32]).errors
    assert "validation inputs are (1, 9, 9) float32 per sample but the training inputs (1, 8, 8) float32" in error
    (error,) = _check(x, y, x[:32], y[:32].float()).errors
    assert "validation targets" in error and "same kind" in error


def test_complex_inputs_are_refused() -> None:
    x, y = _data()
    errors = _check(torch.complex(x, x), y, torch.complex(x[:32], x[:32]), y[:32]).errors
    assert errors and all("complex" in e and "imaginary part" in e for e in errors)


def test_degenerate_data_and_unnormalised_inputs_are_warnings_with_a_note() -> None:
    x, y = _data()
    one = _check(x[:1], y[:1], x[:4], y[:4])
    assert one.errors == [] and any("one sample" in w for w in one.warnings)
    single = _check(x, torch.zeros_like(y), x[:32], y[:32])
    assert any("a single class" in w for w in single.warnings)
    pixels = (x.abs() * 80).round().clamp(0, 255)
    scaled = _check(pixels, y, pixels[:32], y[:32])
    assert scaled.errors == [] and scaled.notes and "0-255 pixel values?" in scaled.notes[0]
    huge = _check(x * 1e30, y, x[:32] * 1e30, y[:32])
    assert huge.errors == [] and "far from normalised" in huge.notes[0]


def test_integer_inputs_are_legal_token_ids() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5000, (128, 12), generator=g)
    y = torch.randint(0, 10, (128,), generator=g)
    report = _check(ids, y, ids[:32], y[:32])
    assert (report.errors, report.notes) == ([], [])


def test_a_symlink_loop_in_an_image_folder_does_not_multiply_images(tmp_path: Path) -> None:
    from lrtrack.data.folders import make_dataset_once

    for cls in ("a", "b"):
        folder = tmp_path / "train" / cls
        folder.mkdir(parents=True)
        for i in range(8):
            (folder / f"{i}.png").write_bytes(b"")
    os.symlink("..", tmp_path / "train" / "a" / "loop")  # a link to its parent: a cycle
    os.symlink(tmp_path / "train" / "b", tmp_path / "train" / "a" / "b_again")  # another class's folder
    samples = make_dataset_once(tmp_path / "train", {"a": 0, "b": 1}, extensions=(".png",))
    assert len(samples) == 16 + 8  # b's 8 images once more, under a (a link, not a loop), and no more
    os.remove(tmp_path / "train" / "a" / "b_again")
    assert len(make_dataset_once(tmp_path / "train", {"a": 0, "b": 1}, extensions=(".png",))) == 16
    assert len({p for p, _ in samples}) == len(samples)


def test_the_curve_not_the_rule_is_named_when_nothing_can_be_suggested() -> None:
    lrs = [1e-3 * 1.5**i for i in range(20)]
    assert "not finite from step 0" in curve_diagnosis(lrs, [float("nan")] * 20)
    assert "never moved" in curve_diagnosis(lrs, [2.3] * 20)
    assert curve_diagnosis(lrs, [2.3 - 0.05 * i for i in range(20)]) is None
    rule = "bounds.max_lr_rule='confirmed' has no suggestion: no fixed-LR probe lowered the loss"
    assert no_suggestion_message(rule, lrs, [2.3 - 0.05 * i for i in range(20)]) == rule
    line = no_suggestion_message(rule, lrs, [2.3] * 20, ["inputs far from normalised (mean 64)"])
    assert "no fixed-LR probe" not in line and "never moved" in line and "inputs far from normalised" in line


def _save(path: Path, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor) -> Path:
    torch.save({"x_train": x, "y_train": y, "x_val": xv, "y_val": yv}, path)
    return path


@pytest.mark.slow
def test_the_cli_stops_bad_data_in_one_line_before_any_run(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 1, 28, 28, generator=g), torch.randint(0, 10, (256,), generator=g)
    y_bad = y.clone()
    y_bad[255] = -1
    cases = {
        "neg": (_save(tmp_path / "neg.pt", x, y_bad, x[:64], y[:64]), "negative class labels"),
        "shape": (_save(tmp_path / "shape.pt", x, y, torch.randn(64, 1, 32, 32), y[:64]), "validation inputs are"),
        "complex": (_save(tmp_path / "c.pt", torch.complex(x, x), y, torch.complex(x[:64], x[:64]), y[:64]),
                    "complex numbers"),
    }
    for name, (path, expected) in cases.items():
        proc = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "data=tensors", f"data.path={path}"], tmp_path)
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        lines = [line for line in proc.stderr.splitlines() if line.startswith("lrtrack: error:")]
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert "range test:" not in proc.stdout  # nothing started


@pytest.mark.slow
def test_inputs_x_1e30_are_blamed_not_the_rule(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 1, 28, 28, generator=g) * 1e30, torch.randint(0, 10, (256,), generator=g)
    path = _save(tmp_path / "big.pt", x, y, x[:64], y[:64])
    proc = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "data=tensors", f"data.path={path}",
                         "tracking.enabled=false"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lrtrack: error: no learning rate can be suggested: the loss was not finite from step")
    assert "inputs far from normalised" in last and "no fixed-LR probe" not in last
    assert "far from normalised" in proc.stdout  # the warning, before the range test


def test_batches_padded_per_batch_are_not_a_shape_mismatch() -> None:
    from torch.utils.data import DataLoader

    def padded(lengths: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(4, n, dtype=torch.long), torch.zeros(4, dtype=torch.long)) for n in lengths]

    train, val = padded([37, 12]), padded([52])  # a collate function pads each batch to its longest
    report = check_data(DataLoader(train, batch_size=None), DataLoader(val, batch_size=None), first_train=train[0],
                        first_val=val[0], classes=10, classification=True)
    assert report.errors == []
    images = [(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))]
    other = [(torch.zeros(4, 1, 32, 32), torch.zeros(4, dtype=torch.long))]
    report = check_data(images, other, first_train=images[0], first_val=other[0], classes=10, classification=True)
    assert len(report.errors) == 1 and "(1, 32, 32)" in report.errors[0]


def test_validation_that_is_the_training_data_is_a_warning() -> None:
    x, y = _data()
    train, val = InMemoryLoader(x, y, 16, seed=0), InMemoryLoader(x.clone(), y.clone(), 16, shuffle=False)
    report = check_data(train, val, first_train=peek(train), first_val=peek(val), classes=10, classification=True)
    assert report.errors == [] and report.warnings == [
        "the validation data is the training data (the same samples): the validation loss then measures "
        "memorisation, not how the model does on unseen data; give a separate validation split (for an image "
        "folder: data.val_dir)"]
    assert _check(x, y).warnings == []  # the first 32 rows only: not the same data


def test_val_batches_past_the_validation_loader_is_a_warning() -> None:
    from lrtrack.data.checks import val_batches_warning

    x, y = _data(40)
    val = InMemoryLoader(x, y, 16, shuffle=False)  # 3 batches
    assert val_batches_warning(val, 0) is None and val_batches_warning(val, 3) is None
    assert val_batches_warning(val, 50) == (
        "finder.val_batches=50 but the validation data has only 3 batches of up to 16 samples: the range test "
        "validates on those 3 batches alone; set finder.val_batches=3 to say so, or give more validation data")
    assert val_batches_warning(None, 5) == (
        "finder.val_batches=5 but the data has no validation loader: the range test records the training loss; "
        "give validation data or set finder.val_batches=0")


def _npz(path: Path, n_train: int, labels: object = None, n_val: int = 64) -> Path:
    import numpy as np

    g = np.random.default_rng(0)
    np.savez(path, x_train=g.standard_normal((n_train, 1, 28, 28)).astype("float32"),
             y_train=g.integers(0, 10, n_train) if labels is None else labels,
             x_val=g.standard_normal((n_val, 1, 28, 28)).astype("float32"), y_val=g.integers(0, 10, n_val))
    return path


def _images(root: Path, split: str, per_class: dict[str, int]) -> None:
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(len(split))
    for cls, count in per_class.items():
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(g.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / split / cls / f"{i}.png")


ONE_SAMPLE = ("the training data holds one sample: every step of the range test sees it, so the curve shows how "
              "fast one sample is memorised, not a learning rate for the data")
SAME_DATA = ("the validation data is the training data (the same samples): the validation loss then measures "
             "memorisation, not how the model does on unseen data; give a separate validation split (for an image "
             "folder: data.val_dir)")


@pytest.mark.slow
def test_degenerate_data_is_a_visible_warning_naming_the_data(tmp_path: Path) -> None:
    import numpy as np

    _npz(tmp_path / "one_row.npz", 1)
    _npz(tmp_path / "one_class.npz", 256, labels=np.full(256, 3))
    _npz(tmp_path / "val_10.npz", 256, n_val=10)
    _images(tmp_path / "one_image", "train", {"a": 1})
    _images(tmp_path / "one_image", "val", {"a": 2})
    _images(tmp_path / "same", "train", {"a": 4, "b": 4})
    cases = {
        "one row": (["data=tensors", "data.path=one_row.npz"], f"(data.path=one_row.npz): {ONE_SAMPLE}"),
        "one class": (["data=tensors", "data.path=one_class.npz"],
                      "(data.path=one_class.npz): every training label is 3 (a single class): the model can only "
                      "learn to predict it, so the curve says little about the LR"),
        "one image": (["data=imagefolder", "data.root=one_image"], f"(data.root=one_image): {ONE_SAMPLE}"),
        "val_dir=train": (["data=imagefolder", "data.root=same", "data.val_dir=train"], f"(data.root=same): {SAME_DATA}"),
        "val_dir=train streamed": (["data=imagefolder", "data.root=same", "data.val_dir=train", "data.in_memory=false"],
                                   f"(data.root=same): {SAME_DATA}"),
        "val_batches=50": (["data=tensors", "data.path=val_10.npz", "finder.val_batches=50"],
                           "(data.path=val_10.npz): finder.val_batches=50 but the validation data has only 1 batch "
                           "of up to 256 samples: the range test validates on it alone; set "
                           "finder.val_batches=1 to say so, or give more validation data"),
    }
    for name, (args, expected) in cases.items():
        proc = run_cli_here(["+model=mnist_cnn", "+experiment=smoke", "stage=range_test", "tracking.enabled=false",
                             *args], tmp_path)
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        warnings = [line for line in proc.stdout.splitlines() if "[WARNING]" in line and "check the data" in line]
        assert [w.split("[WARNING] - ", 1)[1] for w in warnings] == [f"WARNING, check the data {expected}"], (
            name, proc.stdout[-3000:])
