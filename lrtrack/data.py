"""Data sets and loaders: MNIST (torchvision), scikit-learn's digits, and fake tensors.

Small image sets that fit in memory are decoded once into normalized tensors and batched by
indexing (:class:`InMemoryLoader`): no per-sample PIL transform, which on MNIST costs about
as much as the model's forward and backward pass on CPU. ``in_memory=False`` keeps the plain
torchvision ``Dataset`` + ``DataLoader`` path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("mnist", "digits", "fake")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class DataUnavailableError(RuntimeError):
    """The requested data set cannot be loaded (and no fallback is allowed)."""


class InMemoryLoader:
    """Batches from tensors already in memory, by indexing; reshuffled every pass.

    Behaves like a ``DataLoader`` over ``TensorDataset(images, targets)``: iterable, with
    ``len()`` (the number of batches) and a ``dataset`` attribute.

    Args:
        images: all inputs, first dimension = samples.
        targets: all targets.
        batch_size: samples per batch.
        shuffle: draw a new permutation each pass, from a generator seeded with ``seed``.
        drop_last: drop the last incomplete batch.
        seed: seed of the shuffling generator (each pass advances it).
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1; got {batch_size}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.dataset = TensorDataset(images, targets)

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                yield self.images[lo:hi], self.targets[lo:hi]
            else:
                idx = order[lo:hi]
                yield self.images[idx], self.targets[idx]


@dataclass
class DataBundle:
    """The loaders a run uses and what data set they really hold."""

    train: InMemoryLoader | DataLoader
    val: InMemoryLoader | DataLoader
    name: str  # the data set actually used (after any fallback)
    requested: str
    num_train: int
    num_val: int
    source: str  # where it came from, for the tracking record

    @property
    def fell_back(self) -> bool:
        return self.name != self.requested


# --------------------------------------------------------------------------- sources


def mnist_tensors(root: str | Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as normalized float images (N, 1, 28, 28) and int64 labels, via torchvision."""
    from torchvision.datasets import MNIST

    ds = MNIST(str(root), train=train, download=download)
    images = ds.data.unsqueeze(1).float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
    return images, ds.targets.long()


def mnist_dataset(root: str | Path, train: bool, download: bool) -> torch.utils.data.Dataset:
    """MNIST as torchvision's Dataset with the usual ToTensor + Normalize transform."""
    from torchvision import transforms
    from torchvision.datasets import MNIST

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])
    return MNIST(str(root), train=train, download=download, transform=tf)


def digits_tensors(val_fraction: float = 0.2) -> tuple[torch.Tensor, ...]:
    """scikit-learn's bundled 8x8 digits (1,797 real images), upsampled to 1x28x28 like MNIST.

    Returns ``(train_images, train_targets, val_images, val_targets)``; the split is fixed
    (the last ``val_fraction`` of the set is validation).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    # 8x8 -> 20x20 then pad to 28x28, the way MNIST centres a 20x20 digit in its frame.
    images = torch.nn.functional.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    images = torch.nn.functional.pad(images, (4, 4, 4, 4))
    images = (images - MNIST_MEAN) / MNIST_STD
    targets = torch.tensor(bunch.target, dtype=torch.long)
    split = int(round(len(images) * (1 - val_fraction)))
    return images[:split], targets[:split], images[split:], targets[split:]


def fake_tensors(num_samples: int, seed: int, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 1x28x28 images with labels that depend on them (so a model can learn)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(num_samples, 1, 28, 28, generator=g)
    # A fixed random projection makes the labels learnable, unlike pure noise.
    projection = torch.randn(28 * 28, num_classes, generator=torch.Generator().manual_seed(1234))
    targets = (images.flatten(1) @ projection).argmax(1)
    return images, targets


# --------------------------------------------------------------------------- loaders


def _loaders(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    val_batch_size: int,
    in_memory: bool,
    seed: int,
    num_workers: int,
) -> tuple[InMemoryLoader | DataLoader, InMemoryLoader | DataLoader]:
    if in_memory:
        return (
            InMemoryLoader(*train, batch_size, shuffle=True, seed=seed),
            InMemoryLoader(*val, val_batch_size, shuffle=False),
        )
    return (
        DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True,
                   generator=torch.Generator().manual_seed(seed), num_workers=num_workers),
        DataLoader(TensorDataset(*val), batch_size=val_batch_size, shuffle=False, num_workers=num_workers),
    )


def build_data(
    name: str = "mnist",
    *,
    root: str | Path = "data",
    batch_size: int = 256,
    val_batch_size: int = 1000,
    in_memory: bool = True,
    download: bool = True,
    fallback: str | None = "digits",
    num_workers: int = 0,
    seed: int = 0,
    fake_size: int = 1024,
) -> DataBundle:
    """Build the train and validation loaders of a data set.

    Args:
        name: ``mnist``, ``digits`` or ``fake``.
        root: torchvision root for MNIST (it looks in ``<root>/MNIST/raw``).
        batch_size: training batch size.
        val_batch_size: validation batch size.
        in_memory: decode once into tensors and batch by indexing (fast); False uses
            torchvision's Dataset and a DataLoader with per-sample transforms.
        download: let torchvision download MNIST when it is missing.
        fallback: data set to use when MNIST cannot be loaded (``digits``) or None to fail.
        num_workers: DataLoader workers (``in_memory=False`` only).
        seed: shuffling seed.
        fake_size: number of training samples of the fake set (validation: a quarter).
    """
    if name not in DATASETS:
        raise ValueError(f"data.name must be one of {', '.join(DATASETS)}; got {name!r}")
    if fallback not in (None, "digits", "fake"):
        raise ValueError(f"data.fallback must be digits, fake or null; got {fallback!r}")
    if name == "mnist":
        try:
            return _mnist_bundle(root, batch_size, val_batch_size, in_memory, download, seed, num_workers)
        except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found"; network errors
            if fallback is None:
                raise DataUnavailableError(
                    f"MNIST is not under data.root={str(root)!r} and could not be downloaded ({err}). "
                    "Put MNIST at <root>/MNIST/raw, or allow data.fallback=digits."
                ) from err
            log.warning(
                "\n%s\nMNIST is not available under data.root=%r and could not be downloaded:\n  %s\n"
                "FALLING BACK to data=%s (real but different data). To use MNIST, run once where the "
                "internet is reachable (it downloads to data.root) or point data.root at a folder with "
                "MNIST/raw. To fail instead of falling back, set data.fallback=null.\n%s",
                "=" * 78, str(root), err, fallback, "=" * 78,
            )
            bundle = build_data(fallback, batch_size=batch_size, val_batch_size=val_batch_size,
                                in_memory=in_memory, seed=seed, fake_size=fake_size, num_workers=num_workers)
            bundle.requested = "mnist"
            return bundle
    if name == "digits":
        tx, ty, vx, vy = digits_tensors()
        source = "sklearn.datasets.load_digits (8x8 upsampled to 28x28)"
    else:
        tx, ty = fake_tensors(fake_size, seed=seed)
        vx, vy = fake_tensors(max(fake_size // 4, 1), seed=seed + 1)
        source = f"random tensors (seed {seed})"
    train, val = _loaders((tx, ty), (vx, vy), batch_size, val_batch_size, in_memory, seed, num_workers)
    return DataBundle(train, val, name, name, len(tx), len(vx), source)


def _mnist_bundle(root, batch_size, val_batch_size, in_memory, download, seed, num_workers) -> DataBundle:
    source = f"torchvision MNIST at {Path(root).resolve()}"
    if in_memory:
        tx, ty = mnist_tensors(root, train=True, download=download)
        vx, vy = mnist_tensors(root, train=False, download=download)
        train, val = _loaders((tx, ty), (vx, vy), batch_size, val_batch_size, True, seed, num_workers)
        return DataBundle(train, val, "mnist", "mnist", len(tx), len(vx), source)
    train_ds = mnist_dataset(root, train=True, download=download)
    val_ds = mnist_dataset(root, train=False, download=download)
    train = DataLoader(train_ds, batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed), num_workers=num_workers)
    val = DataLoader(val_ds, batch_size=val_batch_size, shuffle=False, num_workers=num_workers)
    return DataBundle(train, val, "mnist", "mnist", len(train_ds), len(val_ds), source)
