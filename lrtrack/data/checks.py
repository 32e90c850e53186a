"""Checks of the whole data, where they are cheap, before any run is created (no Hydra, no MLflow).

The first-batch check (:func:`lrtrack.engine.tasks.first_batch_problem`) sees one batch; these
look past it: every row of data held in memory (lrtrack's in-memory loaders, a ``DataLoader`` over a
``TensorDataset``), every label of an image folder, and the first batch of the validation data
against the training data's, whatever the loaders are. :func:`check_data` returns

- errors (one line each): complex inputs or targets, inf/NaN in any row, labels outside the
  model's classes, validation data of another shape or kind than the training data;
- warnings: one training sample, a single class, inputs far from normalised, validation data that
  is the training data (the same tensors or image files); :func:`val_batches_warning`:
  ``finder.val_batches`` past the validation loader's length;
- notes: what the range test's curve may be blamed on (inputs far from normalised), quoted when no
  LR can be suggested.

Integer inputs (token ids) are legal: only floating inputs are checked for finiteness and scale.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

#: Floating inputs whose mean or standard deviation is beyond this are "far from normalised".
FAR_FROM_NORMALISED = 20.0
#: Values sampled (evenly through the data) to measure the inputs' scale.
SCALE_SAMPLE = 1_000_000
#: The finiteness check looks at this many values at a time.
CHUNK_ELEMENTS = 4_000_000


@dataclass
class DataReport:
    """What :func:`check_data` found: errors stop the job, warnings are logged, notes explain a curve."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def held_tensors(loader: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (inputs, targets) a loader batches from memory, when it does (no copy); else None."""
    images, targets = getattr(loader, "images", None), getattr(loader, "targets", None)
    if isinstance(images, torch.Tensor) and isinstance(targets, torch.Tensor):
        return images, targets
    tensors = getattr(getattr(loader, "dataset", None), "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) >= 2 and all(isinstance(t, torch.Tensor) for t in tensors[:2]):
        return tensors[0], tensors[1]
    return None


def folder_targets(loader: Any) -> torch.Tensor | None:
    """The labels of an image-folder data set (``ImageFolder.targets``, also under a normalising wrapper)."""
    ds = getattr(loader, "dataset", None)
    for candidate in (ds, getattr(ds, "base", None)):
        targets = getattr(candidate, "targets", None)
        if isinstance(targets, list) and getattr(candidate, "classes", None) is not None:
            return torch.tensor(targets, dtype=torch.long)
    return None


def _pair(batch: Any) -> tuple[Any, Any] | None:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    return None


def _kind(t: torch.Tensor) -> str:
    return "complex" if t.is_complex() else "floating" if t.is_floating_point() else "bool" if t.dtype == torch.bool \
        else "integer"


def _desc(t: torch.Tensor) -> str:
    shape = f"{tuple(t.shape[1:])}" if t.dim() > 1 else "scalar"
    return f"{shape} {str(t.dtype).replace('torch.', '')}"


def _bad_rows(t: torch.Tensor) -> torch.Tensor:
    """Per row, whether it holds inf or NaN; in chunks, so the mask never costs more than a few MB."""
    flat = t.reshape(len(t), -1)
    chunk = max(1, CHUNK_ELEMENTS // max(1, flat.shape[1]))
    return torch.cat([~torch.isfinite(flat[i:i + chunk]).all(dim=1) for i in range(0, len(flat), chunk)])


def _non_finite(name: str, t: torch.Tensor) -> str | None:
    if not t.is_floating_point() or t.numel() == 0 or t.dim() == 0:
        return None
    bad = _bad_rows(t)
    rows = int(bad.sum())
    if not rows:
        return None
    first = int(bad.nonzero()[0, 0])
    what = "NaN" if torch.isnan(t[first]).any() else "inf"
    return (f"inf or NaN in {rows} of {len(t)} rows of {name} (the first: row {first}, {what}): the loss would "
            "be NaN whatever the LR; drop or fix those rows")


def _label_problem(name: str, targets: torch.Tensor, classes: int | None, ignore_index: int | None) -> str | None:
    if targets.is_floating_point() or targets.is_complex() or targets.numel() == 0:
        return None
    labels = targets[targets != ignore_index] if ignore_index is not None else targets
    if labels.numel() == 0:
        return None
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        count = int((labels < 0).sum())
        return (f"{count} negative class labels in {name} (the lowest: {low}); class labels run from 0 to the "
                "number of classes - 1: fix those labels")
    if classes is not None and high >= classes:
        count = int((labels >= classes).sum())
        return (f"{count} labels >= {classes}, the model's number of classes, in {name} (the highest: {high}); "
                f"set the model's number of classes to {high + 1} (e.g. model.num_classes={high + 1}) or fix the labels")
    return None


def _scale_note(x: torch.Tensor) -> str | None:
    if not x.is_floating_point() or x.numel() == 0:
        return None
    flat = x.reshape(-1)
    sample = flat[:: max(1, flat.numel() // SCALE_SAMPLE)][:SCALE_SAMPLE].double()  # evenly spread, bounded
    sample = sample[torch.isfinite(sample)]
    if sample.numel() == 0:
        return None
    mean, std = float(sample.mean()), float(sample.std()) if sample.numel() > 1 else 0.0
    if abs(mean) <= FAR_FROM_NORMALISED and std <= FAR_FROM_NORMALISED:
        return None
    low, high = float(sample.min()), float(sample.max())
    integral = bool((sample == sample.round()).all()) and low >= 0 and high <= 255
    looks = " (0-255 pixel values?)" if integral else ""
    return (f"inputs far from normalised (mean {mean:.3g}, std {std:.3g}, range {low:.3g} to {high:.3g}{looks})")


def _compare(train: Any, val: Any, fixed: bool) -> list[str]:
    """Validation batches of another shape or kind than the training batches. ``fixed``: every sample
    has the same shape (tensors held in memory); else only images (4-D floating inputs) are compared
    whole, other batches by their number of dimensions (a collate function may pad each batch)."""
    problems = []
    for what, t, v in (("inputs", train[0], val[0]), ("targets", train[1], val[1])):
        if not (isinstance(t, torch.Tensor) and isinstance(v, torch.Tensor)):
            continue
        whole = fixed or (t.dim() == 4 and t.is_floating_point())
        if (t.shape[1:] != v.shape[1:]) if whole else (t.dim() != v.dim()):
            problems.append(f"the validation {what} are {_desc(v)} per sample but the training {what} {_desc(t)}: "
                            "give both the same shape (the validation would fail after a whole epoch of training)")
        elif _kind(t) != _kind(v):
            problems.append(f"the validation {what} are {_desc(v)} but the training {what} {_desc(t)}: give both the "
                            "same kind of values")
    return problems


def check_data(train: Iterable[Any], val: Iterable[Any] | None, *, first_train: Any, first_val: Any = None,
               classes: int | None = None, classification: bool = False, ignore_index: int | None = None,
               num_train: int | None = None) -> DataReport:
    """Look past the first batch (see the module docstring).

    Args:
        train, val: the loaders (``val`` may be None).
        first_train, first_val: their first batches (already taken, RNG untouched).
        classes: the model's number of outputs (class scores) when the loss takes class labels.
        classification: the loss takes class labels (targets are checked against ``classes``).
        ignore_index: a label the loss skips (``CrossEntropyLoss(ignore_index=-100)``).
        num_train: training samples, when known.
    """
    report = DataReport()
    held = {"training": held_tensors(train), "validation": held_tensors(val) if val is not None else None}
    firsts = {"training": _pair(first_train), "validation": _pair(first_val)}
    for split, pair in firsts.items():
        for what, t in zip(("inputs", "targets"), pair or ()):
            if isinstance(t, torch.Tensor) and t.is_complex():
                report.errors.append(f"the {split} {what} are complex ({t.dtype}); the imaginary part would be "
                                     "dropped: give real values (e.g. torch.view_as_real(x): real and imaginary "
                                     "parts as 2 features)")
    if report.errors:
        return report
    if firsts["training"] is not None and firsts["validation"] is not None:
        fixed = held["training"] is not None and held["validation"] is not None
        report.errors.extend(_compare(firsts["training"], firsts["validation"], fixed))
    for split in ("training", "validation"):
        tensors = held[split]
        targets = tensors[1] if tensors is not None else folder_targets(train if split == "training" else val)
        if tensors is not None:
            for what, t in zip(("inputs", "targets"), tensors):
                problem = _non_finite(f"the {split} {what}", t)
                if problem:
                    report.errors.append(problem)
        if classification and targets is not None:
            problem = _label_problem(f"the {split} data", targets, classes, ignore_index)
            if problem:
                report.errors.append(problem)
    _degenerate(report, held["training"], folder_targets(train), num_train, classification)
    if val is not None and _same_data(train, val, held["training"], held["validation"]):
        report.warnings.append("the validation data is the training data (the same samples): the validation loss "
                               "then measures memorisation, not how the model does on unseen data; give a "
                               "separate validation split (for an image folder: data.val_dir)")
    return report


def _folder_samples(loader: Any) -> list[str] | None:
    """The image files of an image-folder data set (also under a normalising wrapper), by real path."""
    import os

    ds = getattr(loader, "dataset", None)
    for candidate in (ds, getattr(ds, "base", None)):
        samples = getattr(candidate, "samples", None)
        if isinstance(samples, list) and getattr(candidate, "classes", None) is not None:
            return [os.path.realpath(path) for path, _ in samples]
    return None


def _same_data(train: Any, val: Any, held_train: tuple[torch.Tensor, torch.Tensor] | None,
               held_val: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
    """Whether the validation data is the training data: the same tensors, or the same image files."""
    if train is val:
        return True
    if held_train is not None and held_val is not None:
        return all(t.shape == v.shape and t.dtype == v.dtype and (t is v or torch.equal(t, v))
                   for t, v in zip(held_train, held_val))
    files = _folder_samples(train)
    return files is not None and files == _folder_samples(val)


def val_batches_warning(val: Any, val_batches: int) -> str | None:
    """``finder.val_batches`` beyond the validation loader's length (or with no validation data):
    the range test validates on fewer batches than asked; None when it gets what it asked for."""
    if val_batches <= 0:
        return None
    if val is None:
        return (f"finder.val_batches={val_batches} but the data has no validation loader: the range test "
                "records the training loss; give validation data or set finder.val_batches=0")
    try:
        available = len(val)
    except TypeError:  # an iterable of unknown length
        return None
    if val_batches <= available:
        return None
    size = getattr(val, "batch_size", None)
    per = f" of up to {size} samples" if isinstance(size, int) else ""
    batches = f"{available} batch{'es' if available != 1 else ''}"
    return (f"finder.val_batches={val_batches} but the validation data has only {batches}{per}: the range test "
            f"validates on {'it' if available == 1 else f'those {batches}'} alone; set finder.val_batches={available} to say so, or give more "
            "validation data")


def _degenerate(report: DataReport, held: tuple[torch.Tensor, torch.Tensor] | None, folder: torch.Tensor | None,
                num_train: int | None, classification: bool) -> None:
    """Warnings (one sample, one class) and notes (the inputs' scale) about the training data."""
    count = len(held[0]) if held is not None else num_train
    if count == 1:
        report.warnings.append("the training data holds one sample: every step of the range test sees it, so the "
                               "curve shows how fast one sample is memorised, not a learning rate for the data")
    targets = held[1] if held is not None else folder
    if classification and targets is not None and targets.numel() > 1 and not targets.is_floating_point():
        if int(targets.min()) == int(targets.max()):
            report.warnings.append(f"every training label is {int(targets.min())} (a single class): the model can "
                                   "only learn to predict it, so the curve says little about the LR")
    if held is not None:
        note = _scale_note(held[0])
        if note:
            report.notes.append(note)
            report.warnings.append(f"training {note}: the range test then measures the scale more than the LR; "
                                   "normalise them ((x - mean) / std)")

