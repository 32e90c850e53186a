"""How the engine reports progress without knowing who listens.

The range test and the training loop call ``on_step(step, metrics)`` once per optimizer
step. The MLflow adapter in :mod:`lrtrack.tracking.runs` is one implementation; :class:`NullObserver`
is the default for library users who want nothing logged; :class:`RecordingObserver` keeps
everything in memory (handy in notebooks and tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable


@runtime_checkable
class StepObserver(Protocol):
    """Receives per-step metrics from the engine."""

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Called once per optimizer step with plain Python floats."""


class NullObserver:
    """Ignores everything: the default when no observer is given."""

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        pass


class RecordingObserver:
    """Keeps every ``(step, metrics)`` call in memory, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self.calls.append((step, dict(metrics)))

    def series(self, key: str) -> list[tuple[int, float]]:
        """All ``(step, value)`` pairs logged under ``key``."""
        return [(step, m[key]) for step, m in self.calls if key in m]


class ObserverGroup:
    """Fans one call out to several observers."""

    def __init__(self, observers: Iterable[StepObserver]) -> None:
        self.observers = list(observers)

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        for observer in self.observers:
            observer.on_step(step, metrics)
