"""lrtrack: the learning-rate range test as an everyday, tracked workflow.

The library needs neither Hydra nor MLflow::

    from lrtrack import run_range_test, LRFinder

Names are imported lazily so that ``python -m lrtrack --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "run_range_test": "lrtrack.finder",
    "lr_grid": "lrtrack.finder",
    "RangeTestResult": "lrtrack.finder",
    "RangeTestPolicy": "lrtrack.finder",
    "run_repeated_range_test": "lrtrack.repeats",
    "Suggestion": "lrtrack.suggest",
    "suggest": "lrtrack.suggest",
    "suggest_all": "lrtrack.suggest",
    "train": "lrtrack.train",
    "TrainResult": "lrtrack.train",
    "Bounds": "lrtrack.schedules",
    "StepObserver": "lrtrack.observers",
    "NullObserver": "lrtrack.observers",
    "RecordingObserver": "lrtrack.observers",
    "tracked_range_test": "lrtrack.notebook",
    "tracked_training": "lrtrack.notebook",
    "LRFinder": "lrtrack.compat",
    "DataLoaderIter": "lrtrack.compat",
    "TrainDataLoaderIter": "lrtrack.compat",
    "ValDataLoaderIter": "lrtrack.compat",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lrtrack' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
