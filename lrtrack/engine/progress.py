"""Progress of a stage: a tqdm bar on a terminal, log lines everywhere else.

With stderr going to a file (a cluster job, ``nohup``, CI) a tqdm bar shows nothing, so a long
range test would be silent for minutes. :func:`progress_bar` returns tqdm's bar when stderr is a
terminal and else a :class:`LogProgress`: one ``logging`` line every 10% of the stage or every
:data:`EVERY_S` seconds, whichever comes first, with the step and total, the postfix values
(LR, smoothed loss), the elapsed time and the ETA; and a last line when the stage ends. Both take
the same calls (``update``, ``set_postfix``, ``set_description``, ``close``).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("lrtrack.progress")

EVERY_S = 30.0  # at most this long between two lines
EVERY_SHARE = 0.1  # and a line at every 10% of the stage


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class LogProgress:
    """A stage's progress as log lines (see the module docstring).

    Args:
        total: the stage's steps (None: unknown; then only the time-based lines, without ETA).
        desc: the stage's name, the start of every line.
        every_s: seconds between two lines at most.
    """

    def __init__(self, total: int | None, desc: str, every_s: float = EVERY_S) -> None:
        self.total = total if total and total > 0 else None
        self.desc = self._stage = desc
        self.every_s = every_s
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start = self._last = time.monotonic()
        self._next_share = EVERY_SHARE
        self._due = False
        self._shown_at = -1

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.total is not None and self.n >= self._next_share * self.total - 1e-9:
            while self._next_share * self.total <= self.n + 1e-9:
                self._next_share += EVERY_SHARE
            self._due = True
        elif now - self._last >= self.every_s:
            self._due = True

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """The values the next line shows (the latest LR, smoothed loss); a line that is due is written now."""
        self.postfix = values
        if self._due:
            self._emit()

    def set_description(self, desc: str, refresh: bool = True) -> None:
        """Where in the stage it is (``epoch 2/3``): the lines then start ``training (epoch 2/3)``."""
        self.desc = f"{self._stage} ({desc})"

    def close(self) -> None:
        """The stage is over: a last line unless the last step's was written."""
        if self.n and self._shown_at != self.n:
            self._emit(last=True)

    def _emit(self, last: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self._start
        step = f"step {self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"step {self.n}"
        values = "".join(f", {k}={v}" for k, v in self.postfix.items())
        eta = ""
        if self.total and 0 < self.n < self.total and not last:  # a stage may end early (the probes)
            eta = f", ETA {_clock(elapsed / self.n * (self.total - self.n))}"
        log.info("%s: %s%s, elapsed %s%s", self.desc, step, values, _clock(elapsed), eta)
        self._last, self._due, self._shown_at = now, False, self.n

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent:
    """No progress at all (``progress=False``)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        pass

    def set_description(self, desc: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, enabled: bool = True, *, leave: bool = True) -> Any:
    """tqdm's bar when stderr is a terminal, :class:`LogProgress` when it is not, nothing when
    ``enabled`` is false."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="step", leave=leave, dynamic_ncols=True)
    return LogProgress(total, desc)


__all__ = ["EVERY_S", "LogProgress", "progress_bar"]
