"""Ctrl-C and SIGTERM stop training at the next safe point, never in the middle of a framework call.

A signal handler that raises KeyboardInterrupt lands wherever Python happens to be, e.g. inside
TensorFlow's device-scope context manager, whose __exit__ then replaces it with "RuntimeError:
Exiting device scope without proper scope nesting": the run was recorded as failed and the sweep
went on. So the handler only records the request, and training checks it where stopping is safe
(after each batch callback and each compiled call); that is at most `steps_per_execution` steps
away. A second signal stops at once, as Python's default does.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

_requested = False


def requested() -> bool:
    """True once Ctrl-C or SIGTERM asked the sweep to stop."""
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt here, at a safe point, if a stop was requested."""
    if _requested:
        raise KeyboardInterrupt


def _handler(signum, frame) -> None:
    global _requested
    if _requested:  # asked twice: the user means now
        raise KeyboardInterrupt
    _requested = True


@contextmanager
def stop_at_safe_points(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within this block, `signals` request a stop that `check()` turns into KeyboardInterrupt."""
    global _requested
    _requested = False
    previous = {number: signal.signal(number, _handler) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
