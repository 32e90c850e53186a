"""Exponential moving average of the loss, with bias correction.

Shared by the range test and the training loop so both curves are smoothed the same way.
"""

from __future__ import annotations


def check_smoothing(smoothing: float) -> None:
    """Raise ``TypeError`` (not a number) or ``ValueError`` unless ``0 <= smoothing < 1``."""
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)):
        raise TypeError(f"smoothing must be a number in [0, 1), got {smoothing!r}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(
            f"smoothing must be in [0, 1) (the EMA decay: 0 = no smoothing, 0.98 = heavy), "
            f"got {smoothing!r}"
        )


class EmaSmoother:
    """Bias-corrected EMA: ``avg_t = b*avg_{t-1} + (1-b)*x_t``, reported as ``avg_t / (1-b^t)``.

    Without the correction the average starts at 0 and the first values are pulled towards
    zero (a known defect of some LR finders); with it, the first smoothed value equals the
    first raw value and a constant series stays constant.

    Args:
        smoothing: the decay ``b`` in [0, 1); 0 returns the raw values.
    """

    def __init__(self, smoothing: float) -> None:
        check_smoothing(smoothing)
        self.smoothing = float(smoothing)
        self._avg = 0.0
        self._count = 0

    def update(self, value: float) -> float:
        """Add one value and return the smoothed value so far."""
        self._count += 1
        self._avg = self.smoothing * self._avg + (1.0 - self.smoothing) * value
        if self.smoothing == 0.0:
            return self._avg
        return self._avg / (1.0 - self.smoothing**self._count)

    def reset(self) -> None:
        self._avg = 0.0
        self._count = 0


def smooth(values: list[float], smoothing: float) -> list[float]:
    """Bias-corrected EMA of a whole series (non-finite values propagate)."""
    smoother = EmaSmoother(smoothing)
    return [smoother.update(v) for v in values]


def zero_lag(values: list[float], smoothing: float) -> list[float]:
    """A centred smoothing of a finished series: the bias-corrected EMA run forwards, then backwards.

    The running EMA of :class:`EmaSmoother` is causal, so it trails the raw series by about
    ``smoothing / (1 - smoothing)`` steps (19 at 0.95): on a range test sweeping 4 decades in
    100 steps that is most of a decade, and every feature of the curve (its minimum, the point
    where it starts rising) shows up at a larger LR than where it happened. Running the same
    filter back over the forward pass cancels that delay (a zero-phase filter), which is what
    an analysis of the whole curve wants.

    Args:
        values: the raw series (finite values; clip or cut a divergent tail first).
        smoothing: the decay of each pass, in [0, 1).

    Returns:
        The smoothed series, as long as ``values``.
    """
    forward = smooth(values, smoothing)
    return smooth(forward[::-1], smoothing)[::-1]
