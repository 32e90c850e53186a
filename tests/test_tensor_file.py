"""A malformed ``data=tensors`` file is one line naming ``data.path``, the key and what is wrong
(lrtrack.data.tensorfile), never torch's own error ("len() of a 0-d tensor", "Could not infer dtype
of dict", max() of an empty tensor) nor a wrapped value (uint64 labels past int64 shown negative)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lrtrack.data import DataUnavailableError, tensors
from lrtrack.data.tensorfile import EXPECTED, read_tensor_file
from tests.conftest import run_cli_here
from tests.test_examples import no_runs


def _arrays(n: int = 256) -> dict[str, np.ndarray]:
    g = np.random.default_rng(0)
    return {"x_train": g.standard_normal((n, 1, 28, 28)).astype("float32"), "y_train": g.integers(0, 10, n),
            "x_val": g.standard_normal((64, 1, 28, 28)).astype("float32"), "y_val": g.integers(0, 10, 64)}


def _npz(path: Path, **changes: object) -> Path:
    np.savez(path, **{**_arrays(), **changes})
    return path


def _pt(path: Path, **changes: object) -> Path:
    torch.save({**{k: torch.from_numpy(v) for k, v in _arrays().items()}, **changes}, path)
    return path


def _refused(path: Path) -> str:
    with pytest.raises(DataUnavailableError) as caught:
        read_tensor_file(path)
    return str(caught.value)


def test_each_malformed_value_is_named_with_what_the_file_should_hold(tmp_path: Path) -> None:
    empty = _npz(tmp_path / "empty.npz", x_val=np.zeros((0, 1, 28, 28), "float32"), y_val=np.zeros(0, "int64"))
    assert _refused(empty) == (f"data.path={str(empty)!r}: x_val has no rows (shape (0, 1, 28, 28)): the validation "
                               f"data needs at least one sample; {EXPECTED}")
    scalar = _npz(tmp_path / "scalar.npz", x_train=np.float32(1.5))
    assert _refused(scalar) == (f"data.path={str(scalar)!r}: x_train is a single number (1.5, a 0-d tensor), not "
                                f"rows; {EXPECTED}")
    nested = _pt(tmp_path / "nested.pt", x_train={"pixels": torch.zeros(3), "ids": torch.zeros(3)})
    assert _refused(nested) == (f"data.path={str(nested)!r}: x_train is a dict (keys: pixels, ids), not a tensor; "
                                f"{EXPECTED}")
    words = _npz(tmp_path / "words.npz", y_train=np.array(["cat"] * 256))
    assert _refused(words) == (f"data.path={str(words)!r}: y_train is an array of <U3 (strings), not numbers; "
                               f"{EXPECTED}")
    ragged = _pt(tmp_path / "ragged.pt", y_val=[1, [2, 3]])
    assert _refused(ragged).startswith(f"data.path={str(ragged)!r}: y_val is a list that is not an array of numbers")
    short = _npz(tmp_path / "short.npz", y_train=np.zeros(255, "int64"))
    assert _refused(short) == (f"data.path={str(short)!r}: x_train has 256 rows but y_train 255: give one target "
                               "per sample")


def test_uint64_labels_past_int64_are_refused_with_their_true_value(tmp_path: Path) -> None:
    labels = _arrays()["y_train"].astype("uint64")
    labels[[5, 9]] = [2**63 + 5, 2**63 + 2]
    path = _npz(tmp_path / "u64.npz", y_train=labels)
    assert _refused(path) == (
        f"data.path={str(path)!r}: y_train (uint64) holds 2 values past int64's largest, 9223372036854775807 (the "
        "highest: 9223372036854775813); torch computes in int64, where they would wrap to negative numbers: store "
        "them as int64 (class labels run from 0 to the number of classes - 1)")
    fine = _npz(tmp_path / "u64-fine.npz", y_train=_arrays()["y_train"].astype("uint64"),
                x_val=_arrays()["x_val"].astype("uint32"))
    tx, ty, vx, vy = read_tensor_file(fine)
    assert ty.dtype == torch.int64 and torch.equal(ty, torch.from_numpy(_arrays()["y_train"]))
    assert vx.dtype == torch.int64  # unsigned inputs wider than 8 bits: int64, which torch computes with


def test_good_files_keep_their_dtypes(tmp_path: Path) -> None:
    ids = _npz(tmp_path / "ids.npz", x_train=np.arange(256 * 4).reshape(256, 4), y_train=np.ones(256, bool),
               x_val=np.ones((64, 4), "uint8"))
    bundle = tensors(ids)
    tx, ty = bundle.train.images, bundle.train.targets
    assert (tx.dtype, ty.dtype, bundle.val.images.dtype) == (torch.int64, torch.float32, torch.uint8)
    assert bundle.num_classes is None  # bool targets: float (multi-label), not classes


BASE = ["+model=mnist_cnn", "+experiment=smoke", "data=tensors"]


@pytest.mark.parametrize("case", ["empty validation", "0-d x_train", "nested dict", "uint64 labels"])
def test_the_cli_says_what_is_wrong_with_the_file_before_any_run(case: str, tmp_path: Path, premade_store) -> None:
    premade_store(tmp_path)
    labels = _arrays()["y_train"].astype("uint64")
    labels[5] = 2**63 + 5
    path, expected = {
        "empty validation": (lambda p: _npz(p.with_suffix(".npz"), x_val=np.zeros((0, 1, 28, 28), "float32"),
                                            y_val=np.zeros(0, "int64")), "x_val has no rows (shape (0, 1, 28, 28))"),
        "0-d x_train": (lambda p: _npz(p.with_suffix(".npz"), x_train=np.float32(1.0)),
                        "x_train is a single number (1.0, a 0-d tensor), not rows"),
        "nested dict": (lambda p: _pt(p.with_suffix(".pt"), x_train={"a": torch.zeros(3)}),
                        "x_train is a dict (keys: a), not a tensor"),
        "uint64 labels": (lambda p: _npz(p.with_suffix(".npz"), y_train=labels),
                          "y_train (uint64) holds 1 value past int64's largest, 9223372036854775807 (the highest: "
                          "9223372036854775813)"),
    }[case]
    file = path(tmp_path / "data")
    proc = run_cli_here([*BASE, f"data.path={file.name}"], tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"lrtrack: error: data.path={str(file)!r}: {expected}")
    assert lines[0].endswith(EXPECTED) or case == "uint64 labels"
    assert no_runs(tmp_path)
