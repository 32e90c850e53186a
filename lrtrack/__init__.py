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
    "run_range_test": "lrtrack.engine.finder",
    "lr_grid": "lrtrack.engine.finder",
    "RangeTestResult": "lrtrack.engine.finder",
    "RangeTestPolicy": "lrtrack.engine.finder",
    "run_repeated_range_test": "lrtrack.engine.repeats",
    "Suggestion": "lrtrack.engine.suggest",
    "suggest": "lrtrack.engine.suggest",
    "suggest_all": "lrtrack.engine.suggest",
    "train": "lrtrack.engine.train",
    "TrainResult": "lrtrack.engine.train",
    "Bounds": "lrtrack.engine.schedules",
    "StepObserver": "lrtrack.engine.observers",
    "NullObserver": "lrtrack.engine.observers",
    "RecordingObserver": "lrtrack.engine.observers",
    "tracked_range_test": "lrtrack.app.notebook",
    "tracked_training": "lrtrack.app.notebook",
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
