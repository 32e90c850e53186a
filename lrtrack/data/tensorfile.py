"""A ``data=tensors`` file read and checked (no Hydra): ``x_train``, ``y_train``, ``x_val``, ``y_val``.

:func:`read_tensor_file` returns the four as tensors with one row per sample, or raises
:class:`lrtrack.data.DataUnavailableError` with one line that names ``data.path`` and what is wrong
with which key: a value that is not an array of numbers (a nested dict, strings), a single number
(0-d) instead of rows, no rows, complex values, unsigned integers too large for int64 (read as
int64 they would wrap to negative numbers), rows that do not pair up. Whatever torch's own
conversions would have raised ("len() of a 0-d tensor", "Could not infer dtype of dict", max() of
an empty tensor) is said here in words.

Floating inputs become float32 (float64 halves the speed for nothing), bools float32; integer
inputs keep their dtype (token ids for an ``nn.Embedding``), except unsigned ones wider than 8 bits,
which torch barely supports: int64. Targets: integers become int64 (class indices), bools and
float64 float32 (regression, multi-label).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lrtrack.data import DataUnavailableError

KEYS = ("x_train", "y_train", "x_val", "y_val")
#: What the file must hold, for the end of a line.
EXPECTED = ("save a dict of x_train, y_train, x_val, y_val: tensors (numpy arrays in a .npz) with one row per "
            "sample, x of shape (N, ...) and y of shape (N,) or (N, ...)")
INT64_MAX = 2**63 - 1
#: Unsigned dtypes torch reads but barely computes with; their values are checked against int64.
_WIDE_UNSIGNED = tuple(getattr(torch, name) for name in ("uint16", "uint32", "uint64") if hasattr(torch, name))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _fail(path: Path, what: str) -> DataUnavailableError:
    return DataUnavailableError(f"data.path={str(path)!r}: {what}")


def _load(path: Path) -> Mapping[str, Any]:
    """The file's top-level mapping: numpy arrays from a ``.npz``, whatever ``torch.load`` gives from a ``.pt``."""
    try:
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise DataUnavailableError(
            f"data.path={str(path)!r} holds objects torch.load(weights_only=True) refuses (numpy arrays?): save "
            "torch tensors (torch.from_numpy(a)) in the dict, or the arrays with numpy.savez to a .npz") from err
    except ValueError as err:
        if "allow_pickle" in str(err):  # an object array in a .npz
            raise _fail(path, f"holds an array of Python objects (numpy dtype object); {EXPECTED}") from err
        raise DataUnavailableError(f"data.path={str(path)!r} cannot be read as a {path.suffix} file "
                                   f"({type(err).__name__}: {_one_line(err)}); save it again") from err
    except Exception as err:  # torch.load on a file that is not one fails in many ways (IndexError, EOFError ...)
        raise DataUnavailableError(f"data.path={str(path)!r} cannot be read as a {path.suffix} file "
                                   f"({type(err).__name__}: {_one_line(err)}); save it again") from err
    if not isinstance(loaded, Mapping):
        raise DataUnavailableError(
            f"data.path={str(path)!r} holds a {type(loaded).__name__}, not a dict: save it with "
            "torch.save({'x_train': ..., 'y_train': ..., 'x_val': ..., 'y_val': ...}, path)")
    return loaded


def _tensor(path: Path, key: str, value: Any) -> torch.Tensor:
    """``value`` as a tensor of rows, or the line that says why it is not one."""
    if isinstance(value, Mapping):
        keys = ", ".join(map(str, list(value)[:5])) + (", ..." if len(value) > 5 else "")
        raise _fail(path, f"{key} is a dict (keys: {keys or 'none'}), not a tensor; {EXPECTED}")
    if hasattr(value, "dtype") and hasattr(value, "shape") and not isinstance(value, torch.Tensor):  # numpy
        if value.dtype.kind not in "biufc":
            raise _fail(path, f"{key} is an array of {value.dtype} ({_kind_name(value.dtype.kind)}), not numbers; "
                        f"{EXPECTED}")
        value = torch.from_numpy(value.copy())
    elif not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise _fail(path, f"{key} is a {type(value).__name__} that is not an array of numbers "
                        f"({_one_line(err)}); {EXPECTED}") from err
    if value.dim() == 0:
        raise _fail(path, f"{key} is a single number ({value.item()!r}, a 0-d tensor), not rows; {EXPECTED}")
    if len(value) == 0:
        split = "training" if key.endswith("train") else "validation"
        raise _fail(path, f"{key} has no rows (shape {tuple(value.shape)}): the {split} data needs at least one "
                    f"sample; {EXPECTED}")
    return value


def _kind_name(kind: str) -> str:
    return {"U": "strings", "S": "bytes", "O": "Python objects", "M": "dates", "m": "time spans",
            "V": "raw records"}.get(kind, "not numbers")


def _unsigned_problem(key: str, t: torch.Tensor) -> str | None:
    """Unsigned values past int64's largest: read as int64 they would wrap to negative numbers."""
    if t.dtype != getattr(torch, "uint64", None):
        return None
    wrapped = t.view(torch.int64)  # values >= 2**63 read as negative: the same bits
    over = wrapped < 0
    count = int(over.sum())
    if not count:
        return None
    highest = int(wrapped[over].max()) + 2**64
    values = "1 value" if count == 1 else f"{count} values"
    return (f"{key} (uint64) holds {values} past int64's largest, {INT64_MAX} (the highest: {highest}); "
            "torch computes in int64, where they would wrap to negative numbers: store them as int64 "
            "(class labels run from 0 to the number of classes - 1)")


def _as_input(x: torch.Tensor) -> torch.Tensor:
    if x.dtype in (torch.float64, torch.bool):
        return x.float()
    if x.dtype in _WIDE_UNSIGNED:
        return x.view(torch.int64) if x.dtype == getattr(torch, "uint64", None) else x.long()
    return x


def _as_target(y: torch.Tensor) -> torch.Tensor:
    if y.dtype in (torch.bool, torch.float64):
        return y.float()
    if y.is_floating_point():
        return y
    return y.view(torch.int64) if y.dtype == getattr(torch, "uint64", None) else y.long()


def read_tensor_file(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_val, y_val)`` from ``path`` (see the module docstring).

    Raises:
        DataUnavailableError: one line naming ``data.path``, the key and what is wrong.
    """
    arrays = _load(path)
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise DataUnavailableError(f"data.path={str(path)!r} has no {', '.join(missing)} (it holds "
                                   f"{', '.join(sorted(map(str, arrays))) or 'nothing'}); it needs x_train, y_train, "
                                   "x_val, y_val")
    raw = {k: _tensor(path, k, arrays[k]) for k in KEYS}
    complex_keys = [k for k in KEYS if raw[k].is_complex()]
    if complex_keys:  # casting would drop the imaginary part silently
        raise _fail(path, f"{', '.join(complex_keys)} {'holds' if len(complex_keys) == 1 else 'hold'} complex "
                    "numbers: give real values (e.g. torch.view_as_real(x): real and imaginary parts as 2 features)")
    for key in KEYS:
        problem = _unsigned_problem(key, raw[key])
        if problem:
            raise _fail(path, problem)
    for split in ("train", "val"):
        x, y = raw[f"x_{split}"], raw[f"y_{split}"]
        if len(x) != len(y):
            raise _fail(path, f"x_{split} has {len(x)} rows but y_{split} {len(y)}: give one target per sample")
    return _as_input(raw["x_train"]), _as_target(raw["y_train"]), _as_input(raw["x_val"]), _as_target(raw["y_val"])


__all__ = ["EXPECTED", "KEYS", "read_tensor_file"]
