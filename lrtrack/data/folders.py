"""torchvision's ``ImageFolder`` without the loops: a folder symlinked into itself (or twice into one
class) is walked once, so the images are counted once (torchvision follows every directory link,
and a link to a parent multiplied 16 images into 656). Imports torchvision: import it lazily.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import has_file_allowed_extension


def walk_once(top: str | Path) -> list[tuple[str, list[str]]]:
    """``(folder, file names)`` of every folder under ``top``, following directory links but never
    into a folder already walked (by its real path) nor into one that holds the folder (a loop), sorted."""
    seen: set[str] = set()
    found: list[tuple[str, list[str]]] = []
    for folder, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in sorted(dirnames) if not _loops(os.path.realpath(os.path.join(folder, d)), real, seen)]
        found.append((folder, sorted(filenames)))
    return sorted(found)


def _loops(target: str, real_folder: str, seen: set[str]) -> bool:
    """A directory link back to a folder walked already, or to the folder itself or one above it."""
    return target in seen or real_folder == target or real_folder.startswith(target.rstrip(os.sep) + os.sep)


def make_dataset_once(directory: str | Path, class_to_idx: dict[str, int],
                      extensions: tuple[str, ...] | str | None = None,
                      is_valid_file: Callable[[str], bool] | None = None,
                      allow_empty: bool = False) -> list[tuple[str, int]]:
    """torchvision's ``make_dataset`` with :func:`walk_once` instead of a walk that follows loops."""
    if is_valid_file is None:
        def is_valid_file(path: str) -> bool:
            return has_file_allowed_extension(path, extensions)  # type: ignore[arg-type]

    instances: list[tuple[str, int]] = []
    empty = []
    for target_class in sorted(class_to_idx):
        target_dir = os.path.join(os.path.expanduser(str(directory)), target_class)
        count = len(instances)
        if os.path.isdir(target_dir):
            for folder, names in walk_once(target_dir):
                instances.extend((os.path.join(folder, n), class_to_idx[target_class]) for n in names
                                 if is_valid_file(os.path.join(folder, n)))
        if len(instances) == count:
            empty.append(target_class)
    if empty and not allow_empty:
        raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}")
    return instances


class LoopSafeImageFolder(ImageFolder):
    """``ImageFolder`` whose walk never follows a directory link into a folder it walked already."""

    @staticmethod
    def make_dataset(directory: str | Path, class_to_idx: dict[str, int],  # type: ignore[override]
                     extensions: tuple[str, ...] | None = None, is_valid_file: Callable[[str], bool] | None = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        return make_dataset_once(directory, class_to_idx, extensions, is_valid_file, allow_empty)
