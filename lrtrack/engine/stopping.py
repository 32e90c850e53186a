"""A stop asked for from outside the loop (SIGTERM, Ctrl-C), seen by every optimizer step.

A signal handler raises ``KeyboardInterrupt`` at whatever bytecode the main thread runs. When
that is inside a ``__del__`` or a weakref callback (a DataLoader iterator being collected, say),
Python prints "Exception ignored" and the stop is lost: the job trains on to its end. So the
application's handler also calls :func:`request_stop`, and each optimizer step and validation
pass calls :func:`check_stop`, which raises ``KeyboardInterrupt`` for as long as a stop is
requested: a stop cannot be lost, and no loop starts after it. A library user who installs no
handler never requests one.
"""

from __future__ import annotations

_requested = False


def request_stop() -> None:
    """Ask every loop to stop at its next step (a signal handler calls it)."""
    global _requested
    _requested = True


def clear_stop() -> None:
    """Forget a stop (a new job in the same process)."""
    global _requested
    _requested = False


def stop_requested() -> bool:
    return _requested


def check_stop() -> None:
    """Raise ``KeyboardInterrupt`` when a stop was requested."""
    if _requested:
        raise KeyboardInterrupt("stop requested")
