"""Ctrl-C and SIGTERM stop training at the next safe point, never in the middle of a framework call.

A signal handler that raises KeyboardInterrupt lands wherever Python happens to be, e.g. inside
TensorFlow's device-scope context manager, whose __exit__ then replaces it with "RuntimeError:
Exiting device scope without proper scope nesting": the run was recorded as failed and the sweep
went on. So the handler only records the request, and training checks it where stopping is safe
(after each batch callback and each compiled call); that is at most `steps_per_execution` steps
away. A second signal stops at once, as Python's default does.

The `bncompare` command installs the handlers once, first thing (`install()`, before the heavy
imports), and they stay for the whole command, so that a signal at any moment, start-up and the
final table included, ends in exit code 130 and never in a traceback or a default SIGTERM death:
- until the command defers (`defer()`, which `run` does), a signal exits 130 at once: nothing is
  being written that a stop could spoil;
- after, the first signal is recorded for `check()`, and the command's exit code says so.
Library code and tests that never call `install()` get the old scoped behaviour from
`stop_at_safe_points`.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

EXIT_INTERRUPTED = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested = False
_deferring = False  # True: the first signal only records a request (see the module docstring)
_installed: dict[int, object] | None = None  # the handlers install() replaced, while it is in force


def requested() -> bool:
    """True once Ctrl-C or SIGTERM asked the sweep to stop."""
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt here, at a safe point, if a stop was requested."""
    if _requested:
        raise KeyboardInterrupt


def _handler(signum, frame) -> None:
    global _requested
    if not _deferring:  # nothing is being trained: stop now, quietly, as interrupted
        raise SystemExit(EXIT_INTERRUPTED)
    if _requested:  # asked twice: the user means now
        raise KeyboardInterrupt
    _requested = True


def install() -> bool:
    """Install the handlers for the rest of the process (see the module docstring).

    Returns True when this call installed them, False when they already were (or when called off
    the main thread, where Python allows no signal handlers).
    """
    global _installed
    if _installed is not None or threading.current_thread() is not threading.main_thread():
        return False
    _installed = {number: signal.signal(number, _handler) for number in SIGNALS}
    return True


def uninstall() -> None:
    """Put back the handlers `install()` replaced and forget any request (for tests in-process)."""
    global _installed, _requested, _deferring
    if _installed is not None:
        for number, handler in _installed.items():
            signal.signal(number, handler)
    _installed, _requested, _deferring = None, False, False


def defer() -> None:
    """From now on, a first signal only records a stop request (the `run` command's mode)."""
    global _deferring
    _deferring = True


@contextmanager
def stop_at_safe_points(signals: tuple[int, ...] = SIGNALS) -> Iterator[None]:
    """Within this block, `signals` request a stop that `check()` turns into KeyboardInterrupt.

    Under `install()` the process-wide handlers stay and a request made before the block (during
    start-up) is kept; otherwise the handlers are installed for the block only.
    """
    global _requested, _deferring
    deferring = _deferring
    _deferring = True
    if _installed is not None:
        try:
            yield
        finally:
            _deferring = deferring
        return
    _requested = False
    previous = {number: signal.signal(number, _handler) for number in signals}
    try:
        yield
    finally:
        # The request belonged to this block: a later block or check() (the next test in the
        # same process, say) must not see it.
        _deferring, _requested = deferring, False
        for number, handler in previous.items():
            signal.signal(number, handler)
