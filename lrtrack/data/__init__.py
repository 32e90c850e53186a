"""Data sets and loaders, as components a config chooses by ``_target_`` (no Hydra here).

Every builder returns a :class:`DataBundle` (the train and validation loaders and what they
hold); ``conf/data/<name>.yaml`` names one with ``_target_`` and sets its arguments:

- :func:`mnist` (idx files read directly; torchvision only to download), :func:`digits`
  (scikit-learn's bundled digits), :func:`fake` (random tensors, for smoke runs);
- :func:`image_folder`: torchvision's ``ImageFolder`` over ``root/train/<class>/*`` and
  ``root/val/<class>/*``;
- :func:`tensors`: a ``.pt`` or ``.npz`` file holding ``x_train``, ``y_train``, ``x_val``, ``y_val``;
- :func:`torchvision_set`: a torchvision built-in set by name (FashionMNIST, CIFAR10, ...);
- :func:`datasets`: any user ``Dataset`` for train and val, wrapped in ``DataLoader``\\ s.

A user's own builder (a loader factory) may return a :class:`DataBundle`, a
``(train_loader, val_loader)`` pair or a mapping with ``train`` and ``val``: :func:`as_bundle`
makes a bundle of any of them.

Small sets are decoded once into normalized tensors and batched by indexing
(:class:`InMemoryLoader`): no per-sample PIL transform, which on MNIST costs about as much as
the model's forward and backward pass on CPU. ``import torchvision`` takes seconds, so it is
imported only by the builders that need it (image folders, torchvision sets, MNIST streaming or
downloading).
"""

from __future__ import annotations

import gzip
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("mnist", "digits", "fake")  # the sets build_data knows by name
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
STATS_SAMPLES = 512  # images sampled to estimate mean/std when the set is not decoded in memory


class DataUnavailableError(RuntimeError):
    """The requested data cannot be loaded (and no fallback is allowed); the message says how to fix it."""


class CorruptDataError(ValueError):
    """A data file is there but broken (truncated, another format): never a reason to fall back."""


class InMemoryLoader:
    """Batches from tensors already in memory, by indexing; reshuffled every pass.

    Behaves like a ``DataLoader`` over ``TensorDataset(images, targets)``: iterable, with
    ``len()`` (the number of batches) and a ``dataset`` attribute.

    With ``world_size > 1`` (one process of a torchrun job; see :func:`shard`) every rank draws
    the same permutation from the same seed and takes its slice of each global batch of
    ``batch_size * world_size`` samples (:class:`ShardedBatches`), so N ranks with
    ``batch_size=B`` see exactly the batches of one process with ``batch_size=N*B``.

    Args:
        images: all inputs, first dimension = samples.
        targets: all targets.
        batch_size: samples per batch (per rank).
        shuffle: draw a new permutation each pass, from a generator seeded with ``seed``.
        drop_last: drop the last incomplete batch.
        seed: seed of the shuffling generator (each pass advances it).
        rank: this process's rank (its shard of every global batch).
        world_size: processes sharing the data.
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
        rank: int = 0,
        world_size: int = 1,
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
        self.batches = ShardedBatches(len(images), batch_size, rank=rank, world_size=world_size,
                                      shuffle=shuffle, drop_last=drop_last, generator=self.generator)

    @property
    def rank(self) -> int:
        return self.batches.rank

    @property
    def world_size(self) -> int:
        return self.batches.world_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.world_size > 1:
            for idx in self.batches.indices():
                yield self.images[idx], self.targets[idx]
            return
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                yield self.images[lo:hi], self.targets[lo:hi]
            else:
                idx = order[lo:hi]
                yield self.images[idx], self.targets[idx]


class ShardedBatches:
    """One rank's batches of indices: its slice of every global batch of one shared order.

    Every pass draws one permutation of ``range(num_samples)`` from ``generator`` (the same on
    every rank, given the same seed) and cuts it into global batches of ``batch_size *
    world_size``; rank ``r`` takes samples ``[r * batch_size, (r + 1) * batch_size)`` of each.
    A last, incomplete global batch is split as evenly as possible (sizes differ by one at
    most); when it holds fewer samples than there are ranks (or with ``drop_last``) it is left
    out, so every rank takes the same number of steps. With ``world_size=1`` this is the
    order of ``DataLoader(shuffle=True, generator=generator)``.

    Also a ``batch_sampler`` for a ``DataLoader`` (iterating yields lists of indices).

    Args:
        num_samples: samples in the data set.
        batch_size: samples per batch on each rank.
        rank: this process's rank.
        world_size: processes sharing the data.
        shuffle: a new permutation each pass (else the data set's order).
        drop_last: leave out an incomplete global batch.
        generator: the shuffling generator (the same seed on every rank).
    """

    def __init__(self, num_samples: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = False, generator: torch.Generator | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1; got {batch_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.generator = generator if generator is not None else torch.Generator().manual_seed(torch.initial_seed())

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size * self.world_size)
        return full + (1 if rest >= self.world_size and rest > 0 and not self.drop_last else 0)

    def indices(self) -> Iterator[torch.Tensor]:
        """This rank's batches of one pass, as index tensors."""
        n, size, world = self.num_samples, self.batch_size, self.world_size
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        step = size * world
        for k in range(len(self)):
            chunk = order[k * step:(k + 1) * step]
            if len(chunk) == step:
                yield chunk[self.rank * size:(self.rank + 1) * size]
            else:
                yield torch.tensor_split(chunk, world)[self.rank]

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.indices():
            yield idx.tolist()


@dataclass
class DataBundle:
    """The loaders a run uses and what they really hold.

    Attributes:
        train: the training batches (any iterable; ``len()`` when the schedule needs it).
        val: the validation batches, or ``None`` (no validation).
        name: the data set actually used (after any fallback): the runs' ``lrtrack.data`` tag.
        requested: the data set asked for (differs from ``name`` after a fallback).
        num_train: training samples, when known.
        num_val: validation samples, when known.
        source: where it came from, for the tracking record.
        num_classes: classes of a classification set, when known (the first-batch check
            compares it with the model's outputs).
    """

    train: Iterable[Any]
    val: Iterable[Any] | None
    name: str
    requested: str = ""
    num_train: int | None = None
    num_val: int | None = None
    source: str = ""
    num_classes: int | None = None

    def __post_init__(self) -> None:
        self.requested = self.requested or self.name

    @property
    def fell_back(self) -> bool:
        """True when another data set than the one requested is used."""
        return self.name != self.requested


# --------------------------------------------------------------------------- helpers


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


def _tensor_bundle(name: str, source: str, train: tuple[torch.Tensor, torch.Tensor],
                   val: tuple[torch.Tensor, torch.Tensor], *, batch_size: int, val_batch_size: int,
                   in_memory: bool, seed: int, num_workers: int, num_classes: int | None) -> DataBundle:
    tl, vl = _loaders(train, val, batch_size, val_batch_size, in_memory, seed, num_workers)
    return DataBundle(tl, vl, name, num_train=len(train[0]), num_val=len(val[0]), source=source,
                      num_classes=num_classes)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _shape(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"


# --------------------------------------------------------------------------- MNIST, digits, fake


def read_idx(path: str | Path) -> torch.Tensor:
    """An IDX file (MNIST's format; ``.gz`` or raw) as a uint8 tensor of its shape."""
    raw = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CorruptDataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = math.prod(dims)
    if len(raw) - offset != expected:
        raise CorruptDataError(f"{path} holds {len(raw) - offset} bytes of data; its header says {expected}")
    return torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8).reshape(dims)


def _mnist_file(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        path = root / "MNIST" / "raw" / name
        if path.is_file():
            return path
    return None


def mnist_tensors(root: str | Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as normalized float images (N, 1, 28, 28) and int64 labels.

    Reads ``<root>/MNIST/raw``'s idx files directly (torchvision's layout, ``.gz`` or not);
    torchvision is imported only to download them when they are missing and ``download``.

    Raises:
        RuntimeError: the files are missing and cannot be downloaded.
    """
    root = Path(root)
    prefix = "train" if train else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    if any(_mnist_file(root, s) is None for s in stems):
        if not download:
            raise RuntimeError(f"Dataset not found: no {stems[0]} in {root / 'MNIST' / 'raw'} (download=false)")
        from torchvision.datasets import MNIST

        MNIST(str(root), train=train, download=True)
    images_path, labels_path = (_mnist_file(root, s) for s in stems)
    assert images_path is not None and labels_path is not None  # torchvision downloaded them
    images = read_idx(images_path).unsqueeze(1).float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
    return images, read_idx(labels_path).long()


def mnist_dataset(root: str | Path, train: bool, download: bool) -> Dataset:
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


def digits(*, batch_size: int = 128, val_batch_size: int = 512, in_memory: bool = True,
           num_workers: int = 0, seed: int = 0) -> DataBundle:
    """scikit-learn's bundled digits (``data=digits``): 1,438 training and 359 validation images."""
    tx, ty, vx, vy = digits_tensors()
    return _tensor_bundle("digits", "sklearn.datasets.load_digits (8x8 upsampled to 28x28)", (tx, ty), (vx, vy),
                          batch_size=batch_size, val_batch_size=val_batch_size, in_memory=in_memory, seed=seed,
                          num_workers=num_workers, num_classes=10)


def fake(*, batch_size: int = 64, val_batch_size: int = 256, fake_size: int = 1024, in_memory: bool = True,
         num_workers: int = 0, seed: int = 0) -> DataBundle:
    """Random 1x28x28 tensors with learnable labels (``data=fake``); validation: a quarter as many."""
    tx, ty = fake_tensors(fake_size, seed=seed)
    vx, vy = fake_tensors(max(fake_size // 4, 1), seed=seed + 1)
    return _tensor_bundle("fake", f"random tensors (seed {seed})", (tx, ty), (vx, vy), batch_size=batch_size,
                          val_batch_size=val_batch_size, in_memory=in_memory, seed=seed, num_workers=num_workers,
                          num_classes=10)


def mnist(*, root: str | Path = "data", batch_size: int = 256, val_batch_size: int = 1000, in_memory: bool = True,
          download: bool = True, fallback: str | None = "digits", num_workers: int = 0, seed: int = 0) -> DataBundle:
    """MNIST (``data=mnist``): the train split for training, the test split for validation.

    Args:
        root: torchvision's root: the idx files are in ``<root>/MNIST/raw``.
        in_memory: decode once into normalized tensors and batch by indexing (fast); False uses
            torchvision's Dataset and a DataLoader with per-sample transforms.
        download: download MNIST (through torchvision) when it is missing.
        fallback: ``digits`` or ``fake``: the set used, with a loud warning, when MNIST cannot be
            had; ``None`` to fail instead. The bundle's ``name`` then says which set was used.

    Raises:
        DataUnavailableError: MNIST is missing, cannot be downloaded, and ``fallback`` is None.
    """
    if fallback not in (None, "digits", "fake"):
        raise ValueError(f"data.fallback must be digits, fake or null; got {fallback!r}")
    try:
        return _mnist_bundle(Path(root), batch_size, val_batch_size, in_memory, download, seed, num_workers)
    except CorruptDataError as err:  # the files are there but broken: say which, never fall back
        raise DataUnavailableError(f"data.root={str(root)!r}: {_one_line(err)}; replace the file (or delete "
                                   "MNIST/raw to download it afresh)") from err
    except (RuntimeError, OSError, ValueError) as err:  # "Dataset not found"; network errors
        if fallback is None:
            raise DataUnavailableError(
                f"MNIST is not under data.root={str(root)!r} and could not be downloaded ({_one_line(err)}). "
                "Put MNIST at <root>/MNIST/raw, or allow data.fallback=digits."
            ) from err
        log.warning(
            "\n%s\nMNIST is not available under data.root=%r and could not be downloaded:\n  %s\n"
            "FALLING BACK to data=%s (real but different data; the runs are tagged lrtrack.data=%s). "
            "To use MNIST, run once where the internet is reachable (it downloads to data.root) or point "
            "data.root at a folder with MNIST/raw. To fail instead of falling back, set data.fallback=null.\n%s",
            "=" * 78, str(root), _one_line(err), fallback, fallback, "=" * 78,
        )
        build = digits if fallback == "digits" else fake
        bundle = build(batch_size=batch_size, val_batch_size=val_batch_size, in_memory=in_memory, seed=seed,
                       num_workers=num_workers)
        bundle.requested = "mnist"
        return bundle


def _mnist_bundle(root: Path, batch_size: int, val_batch_size: int, in_memory: bool, download: bool,
                  seed: int, num_workers: int) -> DataBundle:
    source = f"MNIST idx files at {root.resolve() / 'MNIST' / 'raw'}"
    if in_memory:
        train = mnist_tensors(root, train=True, download=download)
        val = mnist_tensors(root, train=False, download=download)
        return _tensor_bundle("mnist", source, train, val, batch_size=batch_size, val_batch_size=val_batch_size,
                              in_memory=True, seed=seed, num_workers=num_workers, num_classes=10)
    train_ds = mnist_dataset(root, train=True, download=download)
    val_ds = mnist_dataset(root, train=False, download=download)
    return datasets(train_ds, val_ds, batch_size=batch_size, val_batch_size=val_batch_size,
                    num_workers=num_workers, seed=seed, name="mnist", source=f"torchvision MNIST at {root.resolve()}",
                    num_classes=10)


def build_data(name: str = "mnist", **settings: Any) -> DataBundle:
    """A built-in set by name (``mnist``, ``digits`` or ``fake``) with its keyword settings."""
    builders: dict[str, Callable[..., DataBundle]] = {"mnist": mnist, "digits": digits, "fake": fake}
    if name not in builders:
        raise ValueError(f"data.name must be one of {', '.join(DATASETS)}; got {name!r}")
    return builders[name](**settings)


# --------------------------------------------------------------------------- a tensors file


def tensors(path: str | Path, *, batch_size: int = 64, val_batch_size: int = 256, in_memory: bool = True,
            num_workers: int = 0, seed: int = 0) -> DataBundle:
    """Arrays from one file (``data=tensors data.path=FILE``): ``x_train``, ``y_train``, ``x_val``, ``y_val``.

    ``.pt``: a dict saved with ``torch.save`` (loaded with ``weights_only=True``); ``.npz``: numpy's
    ``savez``. Floating inputs become float32, integer inputs keep their dtype (token ids for an
    ``nn.Embedding``; store images as floats); targets stay integer (as int64: class indices) or
    float (float32: regression or multi-label). The batches are ``(x, y)`` pairs.

    Raises:
        DataUnavailableError: the file is missing, of another kind, lacks a key, or holds what is not
            rows of real numbers (:mod:`lrtrack.data.tensorfile`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(f"data.path={str(path)!r} is not a file: give a .pt or .npz file holding "
                                   "x_train, y_train, x_val, y_val")
    if path.suffix not in (".pt", ".pth", ".npz"):
        raise DataUnavailableError(f"data.path={str(path)!r} is not a .pt or .npz file: save x_train, y_train, "
                                   "x_val, y_val with torch.save({...}, 'data.pt') or numpy.savez('data.npz', ...)")
    from lrtrack.data.tensorfile import read_tensor_file  # its checks, one line each

    tx, ty, vx, vy = read_tensor_file(path)
    integer = not (ty.is_floating_point() or vy.is_floating_point())
    num_classes = int(max(ty.max(), vy.max())) + 1 if integer else None
    source = f"tensors file {path.resolve()} (x_train {_shape(tx)}, y_train {_shape(ty)}, x_val {_shape(vx)})"
    return _tensor_bundle("tensors", source, (tx, ty), (vx, vy), batch_size=batch_size, val_batch_size=val_batch_size,
                          in_memory=in_memory, seed=seed, num_workers=num_workers, num_classes=num_classes)


# --------------------------------------------------------------------------- user Datasets


def datasets(train: Dataset, val: Dataset | None = None, *, batch_size: int = 64, val_batch_size: int | None = None,
             num_workers: int = 0, collate_fn: Callable[[list[Any]], Any] | None = None, drop_last: bool = False,
             name: str | None = None, source: str | None = None, num_classes: int | None = None,
             seed: int = 0) -> DataBundle:
    """Any ``Dataset`` for train (shuffled, seeded) and val, in ``DataLoader``\\ s.

    In a config, ``train`` and ``val`` are nodes with their own ``_target_`` (Hydra builds them
    first). Items may be ``(inputs, targets)`` pairs or dicts of tensors (then choose a ``step``).

    Args:
        train: the training set (map-style is shuffled; an ``IterableDataset`` is read in order).
        val: the validation set, or None (no validation).
        batch_size: training batch size.
        val_batch_size: validation batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        collate_fn: how a list of items becomes a batch (default: torch's ``default_collate``).
        drop_last: drop the last incomplete training batch.
        name: the data's name in the runs (default: the training set's class name).
        source: where it came from, for the runs (default: the classes of both sets).
        num_classes: the number of classes, when it is a classification set.
        seed: the shuffling seed.
    """
    shuffle = not isinstance(train, IterableDataset)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                              collate_fn=collate_fn, drop_last=drop_last,
                              generator=torch.Generator().manual_seed(seed) if shuffle else None)
    val_loader = None if val is None else DataLoader(val, batch_size=val_batch_size or batch_size, shuffle=False,
                                                     num_workers=num_workers, collate_fn=collate_fn)
    kind = type(train).__name__
    return DataBundle(train_loader, val_loader, name or kind, num_train=_length(train), num_val=_length(val),
                      source=source or f"{type(train).__module__}.{kind} (val: {type(val).__name__})",
                      num_classes=num_classes)


def _length(ds: Any) -> int | None:
    try:
        return len(ds)
    except TypeError:
        return None


def as_bundle(built: Any, name: str) -> DataBundle:
    """What a data ``_target_`` returned, as a :class:`DataBundle`.

    Accepts a bundle, a ``(train, val)`` pair of loaders (``val`` may be None) or a mapping
    with ``train`` and ``val``; ``name`` labels the last two. A loader is any iterable of batches.

    Raises:
        TypeError: anything else, with what to return instead (``returned an int, not ...``: the
            caller names the target).
    """
    if isinstance(built, DataBundle):
        train, val = built.train, built.val
    elif isinstance(built, Mapping) and "train" in built:
        train, val = built["train"], built.get("val")
    elif isinstance(built, Sequence) and not isinstance(built, (str, bytes)) and len(built) == 2:
        train, val = built
    else:
        raise TypeError(f"returned {_article(built)}, not data loaders: return a (train_loader, val_loader) pair, "
                        "a dict with train and val, or a lrtrack.data.DataBundle (or use "
                        "_target_: lrtrack.data.datasets with train/val Datasets)")
    for split, loader in (("train", train), ("val", val)):
        if isinstance(loader, Dataset) and not isinstance(loader, DataLoader):
            raise TypeError(f"returned a Dataset as {split}; wrap it in a DataLoader, or use "
                            "_target_: lrtrack.data.datasets with train/val Datasets")
        if (loader is not None or split == "train") and (not isinstance(loader, Iterable)
                                                         or isinstance(loader, (str, bytes, Mapping))):
            raise TypeError(f"returned {_article(loader)} as {split}, not a loader (an iterable of batches, e.g. "
                            "a torch.utils.data.DataLoader)" + ("; val may be None" if split == "val" else ""))
    if isinstance(built, DataBundle):
        return built
    return DataBundle(train, val, name, num_train=_length(getattr(train, "dataset", None)),
                      num_val=_length(getattr(val, "dataset", None)), source=f"user loaders ({name})")


def _article(obj: Any) -> str:
    if obj is None:
        return "None"
    kind = type(obj).__name__
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def peek(loader: Iterable[Any]) -> Any:
    """The first batch of ``loader`` without changing what it yields next.

    The global torch RNG and the loader's own shuffling ``generator`` (lrtrack's in-memory
    loader, a ``DataLoader(generator=...)``) are put back afterwards, so a run with the check
    sees the same batches, in the same order, as one without it.

    Raises:
        ValueError: the loader yields nothing.
    """
    generator = getattr(loader, "generator", None)
    state = generator.get_state() if isinstance(generator, torch.Generator) else None
    try:
        with torch.random.fork_rng(devices=[]):
            return next(iter(loader))
    except StopIteration:
        raise ValueError("the training data yields no batches; check its size and batch_size") from None
    finally:
        if state is not None:
            generator.set_state(state)  # type: ignore[union-attr]


# --------------------------------------------------------------------------- sharding (torchrun)


class StridedBatches:
    """Rank ``r``'s share of any iterable of batches: batch ``r`` of every round of ``world_size``.

    The fallback of :func:`shard` for loaders it cannot re-index (iterable data sets, a user's
    own loader): an incomplete last round is dropped, so every rank takes the same number of
    steps. The global batch is then ``world_size`` of the loader's batches.
    """

    def __init__(self, loader: Iterable[Any], rank: int, world_size: int) -> None:
        self.loader, self.rank, self.world_size = loader, rank, world_size

    def __len__(self) -> int:
        return len(self.loader) // self.world_size  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        round_: list[Any] = []
        for batch in self.loader:
            round_.append(batch)
            if len(round_) == self.world_size:
                yield round_[self.rank]
                round_ = []


def _is_sharded(loader: Any) -> bool:
    from torch.utils.data import DistributedSampler

    return (isinstance(loader, (StridedBatches, ShardedBatches)) or (isinstance(loader, InMemoryLoader)
            and loader.world_size > 1) or isinstance(getattr(loader, "sampler", None), DistributedSampler)
            or isinstance(getattr(loader, "batch_sampler", None), ShardedBatches))


def _sharded_dataloader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """The same DataLoader (workers, collate, pinning) with a :class:`ShardedBatches` batch sampler."""
    from torch.utils.data import RandomSampler

    shuffle = isinstance(loader.sampler, RandomSampler)
    generator = loader.generator
    if generator is None and shuffle:
        generator = getattr(loader.sampler, "generator", None)
    sampler = ShardedBatches(len(loader.dataset), int(loader.batch_size), rank=rank,  # type: ignore[arg-type]
                             world_size=world_size, shuffle=shuffle, drop_last=loader.drop_last, generator=generator)
    extra: dict[str, Any] = {}
    if loader.num_workers > 0:
        extra = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers}
    return DataLoader(loader.dataset, batch_sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
                      worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
                      generator=sampler.generator, **extra)


def shard(loader: Any, rank: int, world_size: int) -> Any:
    """``loader`` as rank ``rank`` of ``world_size`` sees it: a distinct shard of every pass.

    - lrtrack's :class:`InMemoryLoader` and a map-style ``DataLoader`` keep one global order
      (the same permutation on every rank, from the same seed) and give each rank its slice of
      each global batch (:class:`ShardedBatches`): ``batch_size`` is per rank, the global batch
      ``batch_size * world_size``, and N ranks see the batches of one process with N times the
      batch size. A DataLoader keeps its workers, collate function and pinning.
    - A loader already sharded (a ``DistributedSampler``) is returned as it is.
    - Anything else (an iterable data set, a user's own iterable) is dealt round-robin, one
      batch per rank (:class:`StridedBatches`).

    ``None`` and ``world_size=1`` return ``loader`` unchanged.
    """
    if loader is None or world_size == 1 or _is_sharded(loader):
        return loader
    if isinstance(loader, InMemoryLoader):
        sharded = InMemoryLoader(loader.images, loader.targets, loader.batch_size, shuffle=loader.shuffle,
                                 drop_last=loader.drop_last, rank=rank, world_size=world_size)
        sharded.generator.set_state(loader.generator.get_state())
        return sharded
    if (isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)
            and loader.batch_size is not None and _length(loader.dataset) is not None):
        return _sharded_dataloader(loader, rank, world_size)
    return StridedBatches(loader, rank, world_size)


def shard_bundle(bundle: DataBundle, rank: int, world_size: int) -> DataBundle:
    """The bundle with its train and validation loaders sharded (:func:`shard`)."""
    from dataclasses import replace

    if world_size == 1:
        return bundle
    return replace(bundle, train=shard(bundle.train, rank, world_size), val=shard(bundle.val, rank, world_size))


# --------------------------------------------------------------------------- images


class _Normalized(Dataset):
    """Items of ``base`` (image tensor, target) with ``(image - mean) / std`` applied."""

    def __init__(self, base: Dataset, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.base, self.mean, self.std = base, mean.view(-1, 1, 1), std.view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image, target = self.base[index]
        return (image - self.mean) / self.std, target


def _image_transform(size: int | Sequence[int] | None) -> Any:
    from torchvision import transforms

    steps = [transforms.Resize(tuple(size) if isinstance(size, Sequence) else size)] if size else []
    return transforms.Compose([*steps, transforms.ToTensor()])


def _stack(ds: Dataset, num_workers: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every item of ``ds`` (image tensor, label) into two tensors."""
    loader = DataLoader(ds, batch_size=256, shuffle=False, num_workers=num_workers)
    images, labels = [], []
    try:
        for x, y in loader:
            images.append(x)
            labels.append(torch.as_tensor(y))
    except RuntimeError as err:
        if "stack expects each tensor to be equal size" in str(err):
            raise DataUnavailableError(f"the images of {what} differ in size ({_one_line(err)}); set "
                                       "data.size=<side> or data.size=[height,width] to resize them") from err
        raise
    return torch.cat(images), torch.cat(labels).long()


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [d for d in range(x.dim()) if d != 1]
    mean, std = x.mean(dim=dims), x.std(dim=dims)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def _given_stats(value: float | Sequence[float] | None, channels: int, setting: str) -> torch.Tensor | None:
    if value is None:
        return None
    values = [float(v) for v in value] if isinstance(value, Sequence) else [float(value)]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"data.{setting}={list(values)} has {len(values)} values; the images have {channels} channels")
    return torch.tensor(values)


@dataclass
class _ImageSets:
    """Two image Datasets yielding (C x H x W float tensor in [0, 1], class index)."""

    train: Dataset
    val: Dataset
    name: str
    source: str
    num_classes: int | None


def _image_bundle(sets: _ImageSets, *, batch_size: int, val_batch_size: int, mean: Any, std: Any,
                  in_memory: bool | None, max_memory_mb: float, num_workers: int, seed: int) -> DataBundle:
    """Normalize and batch two image sets: decoded into memory when small, else streamed."""
    first = sets.train[0][0]
    channels = int(first.shape[0])
    decoded_mb = (len(sets.train) + len(sets.val)) * first.numel() * 4 / 2**20  # type: ignore[arg-type]
    if in_memory is None:
        in_memory = decoded_mb <= max_memory_mb
    mean_t, std_t = _given_stats(mean, channels, "mean"), _given_stats(std, channels, "std")
    shape = "x".join(str(s) for s in first.shape)
    if in_memory:
        tx, ty = _stack(sets.train, num_workers, f"{sets.name} train")
        vx, vy = _stack(sets.val, num_workers, f"{sets.name} val")
        est_mean, est_std = _stats(tx)
        mean_t = est_mean if mean_t is None else mean_t
        std_t = est_std if std_t is None else std_t
        view = (1, -1, 1, 1)
        tx, vx = (tx - mean_t.view(view)) / std_t.view(view), (vx - mean_t.view(view)) / std_t.view(view)
        source = f"{sets.source}; {shape} decoded in memory ({decoded_mb:.0f} MB); mean={_fmt(mean_t)} std={_fmt(std_t)}"
        return _tensor_bundle(sets.name, source, (tx, ty), (vx, vy), batch_size=batch_size,
                              val_batch_size=val_batch_size, in_memory=True, seed=seed, num_workers=num_workers,
                              num_classes=sets.num_classes)
    if mean_t is None or std_t is None:
        g = torch.Generator().manual_seed(seed)
        picks = torch.randperm(len(sets.train), generator=g)[:STATS_SAMPLES].tolist()  # type: ignore[arg-type]
        est_mean, est_std = _stats(torch.stack([sets.train[i][0] for i in picks]))
        mean_t = est_mean if mean_t is None else mean_t
        std_t = est_std if std_t is None else std_t
    source = f"{sets.source}; {shape} streamed ({decoded_mb:.0f} MB decoded); mean={_fmt(mean_t)} std={_fmt(std_t)}"
    return datasets(_Normalized(sets.train, mean_t, std_t), _Normalized(sets.val, mean_t, std_t),
                    batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed,
                    name=sets.name, source=source, num_classes=sets.num_classes)


def _fmt(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in t.tolist()) + "]"


def _pil_mode(channels: int | None, sample: Path) -> str:
    if channels in (1, 3):
        return "L" if channels == 1 else "RGB"
    if channels is not None:
        raise ValueError(f"data.channels={channels!r} is invalid: allowed 1, 3 or null (as the images are)")
    from PIL import Image

    with Image.open(sample) as image:
        return "L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"


class _ImageLoader:
    """Opens an image file in one PIL mode (picklable, for DataLoader workers)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, path: str) -> Any:
        from PIL import Image

        with Image.open(path) as image:
            return image.convert(self.mode)


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def image_folder(root: str | Path, *, batch_size: int = 64, val_batch_size: int = 256,
                 size: int | Sequence[int] | None = None, channels: int | None = None,
                 mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None,
                 in_memory: bool | None = None, max_memory_mb: float = 1024, train_dir: str = "train",
                 val_dir: str = "val", num_workers: int = 0, seed: int = 0) -> DataBundle:
    """torchvision's ``ImageFolder`` over ``root/train/<class>/*`` and ``root/val/<class>/*``.

    Args:
        root: the folder holding ``train_dir`` and ``val_dir``, each with one sub-folder per class.
        size: resize to this (an int: the shorter side; ``[h, w]``: exactly); None keeps the
            images as they are (then they must all be the same size).
        channels: 1 (grayscale) or 3 (RGB); None: as the first training image is.
        mean, std: per-channel normalisation (one number or one per channel); None: measured on
            the training images (all of them in memory, else a sample of 512).
        in_memory: decode every image once into a tensor and batch by indexing; None: when the
            decoded set fits in ``max_memory_mb``; False: decode per batch in a DataLoader.
        num_workers: DataLoader workers (decoding, in both modes).

    Raises:
        DataUnavailableError: the folders are missing or their classes differ.
    """
    from lrtrack.data.folders import (
        LoopSafeImageFolder as ImageFolder,  # a directory link loop walked once
    )

    root = Path(root)
    train_classes, val_classes = _class_folders(root / train_dir), _class_folders(root / val_dir)
    if not train_classes or not val_classes:
        key, sub = ("train_dir", train_dir) if not train_classes else ("val_dir", val_dir)
        missing = root / sub
        where = f"data.{key}={sub!r}" if sub != {"train_dir": "train", "val_dir": "val"}[key] else f"data.root={str(root)!r}"
        raise DataUnavailableError(
            f"{where}: {missing} {'does not exist' if not missing.exists() else 'has no class folders'}; lay the "
            f"images out as <root>/{train_dir}/<class>/*.png and <root>/{val_dir}/<class>/*.png"
            + (f" (data.root={str(root)!r})" if not where.startswith("data.root") else ""))
    if train_classes != val_classes:
        raise DataUnavailableError(f"data.root={str(root)!r}: {train_dir}/ and {val_dir}/ have different class "
                                   f"folders ({', '.join(sorted(set(train_classes) ^ set(val_classes)))} in one "
                                   "only); give both the same classes")
    sample = next((p for p in sorted((root / train_dir / train_classes[0]).iterdir()) if p.is_file()), None)
    if sample is None:
        raise DataUnavailableError(f"data.root={str(root)!r}: {root / train_dir / train_classes[0]} holds no images")
    loader = _ImageLoader(_pil_mode(channels, sample))
    tf = _image_transform(size)
    try:
        train = ImageFolder(str(root / train_dir), transform=tf, loader=loader)
        val = ImageFolder(str(root / val_dir), transform=tf, loader=loader)
    except (FileNotFoundError, OSError) as err:
        raise DataUnavailableError(f"data.root={str(root)!r}: {_one_line(err)}") from err
    preview = ", ".join(train.classes[:5]) + (", ..." if len(train.classes) > 5 else "")
    sets = _ImageSets(train, val, "imagefolder", f"ImageFolder {root.resolve()} ({len(train.classes)} classes: "
                      f"{preview}; {len(train)} train, {len(val)} val images)", len(train.classes))
    return _image_bundle(sets, batch_size=batch_size, val_batch_size=val_batch_size, mean=mean, std=std,
                         in_memory=in_memory, max_memory_mb=max_memory_mb, num_workers=num_workers, seed=seed)


# --------------------------------------------------------------------------- torchvision's sets by name


def _torchvision_folder(cls: type, root: Path) -> Path:
    """Where torchvision looks for ``cls``'s files under ``root`` (for the offline message)."""
    from torchvision.datasets import MNIST

    base = getattr(cls, "base_folder", None)
    if isinstance(base, str):
        return root / base
    if issubclass(cls, MNIST):
        return root / cls.__name__ / "raw"
    return root


def _torchvision_split(cls: type, root: Path, train: bool, download: bool, transform: Any) -> Dataset:
    import inspect

    params = inspect.signature(cls).parameters
    if "train" in params:
        return cls(str(root), train=train, download=download, transform=transform)
    if "split" in params:
        return cls(str(root), split="train" if train else "test", download=download, transform=transform)
    raise ValueError(f"data.name={cls.__name__!r}: torchvision.datasets.{cls.__name__} takes neither train= nor "
                     "split=; write a data/<name>.yaml with _target_: lrtrack.data.datasets and train/val nodes")


def torchvision_set(name: str, *, root: str | Path = "data", batch_size: int = 128, val_batch_size: int = 1000,
                    download: bool = True, size: int | Sequence[int] | None = None,
                    mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None,
                    in_memory: bool | None = None, max_memory_mb: float = 1024, num_workers: int = 0,
                    seed: int = 0) -> DataBundle:
    """A torchvision built-in set by class name (``data=torchvision data.name=CIFAR10``).

    Its train split trains, its test split validates. Downloaded to ``root`` when missing and
    ``download``; offline, the error names the folder to fill. ``size``, ``mean``, ``std``,
    ``in_memory`` and ``max_memory_mb`` are as in :func:`image_folder`.

    Raises:
        DataUnavailableError: the set is not in ``root`` and cannot be downloaded.
        ValueError: ``name`` is not one of torchvision's data sets.
    """
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if not isinstance(cls, type) or not issubclass(cls, Dataset):
        known = ", ".join(n for n in ("MNIST", "FashionMNIST", "KMNIST", "CIFAR10", "CIFAR100", "SVHN", "STL10"))
        raise ValueError(f"data.name={name!r} is not a torchvision data set (e.g. {known}; "
                         "see torchvision.datasets)")
    root = Path(root)
    tf = _image_transform(size)
    try:
        train = _torchvision_split(cls, root, True, download, tf)
        val = _torchvision_split(cls, root, False, download, tf)
    except (RuntimeError, OSError) as err:  # "Dataset not found", URLError, connection errors
        raise DataUnavailableError(
            f"{name} is not under data.root={str(root)!r} and could not be downloaded ({_one_line(err)}): "
            f"put its files in {_torchvision_folder(cls, root)} (torchvision's layout), or run once online "
            "with data.download=true") from err
    classes = getattr(train, "classes", None)
    sets = _ImageSets(train, val, name, f"torchvision.datasets.{name} at {root.resolve()} ({len(train)} train, "
                      f"{len(val)} val)", len(classes) if classes else None)
    return _image_bundle(sets, batch_size=batch_size, val_batch_size=val_batch_size, mean=mean, std=std,
                         in_memory=in_memory, max_memory_mb=max_memory_mb, num_workers=num_workers, seed=seed)


#: The builders of the ``data`` group that take a ``seed`` and whose ``root``/``path`` the recipe
#: resolves against the launch folder (a user's own target gets its settings as written).
BUILTINS: dict[str, Callable[..., Any]] = {
    f"lrtrack.data.{fn.__name__}": fn
    for fn in (mnist, digits, fake, image_folder, tensors, torchvision_set, datasets)
}

__all__ = [
    "BUILTINS",
    "DataBundle",
    "DataUnavailableError",
    "InMemoryLoader",
    "ShardedBatches",
    "StridedBatches",
    "as_bundle",
    "build_data",
    "datasets",
    "digits",
    "fake",
    "image_folder",
    "mnist",
    "peek",
    "read_idx",
    "shard",
    "shard_bundle",
    "tensors",
    "torchvision_set",
]
