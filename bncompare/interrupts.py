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
- after, the first signal is recorded for `check()`, and the command's exit code says so;
- once the command has its exit code (`exiting()`), a signal only marks it interrupted: the last
  exit hook turns a 0 into 130 and ends the process with the code, so that a signal while the
  interpreter shuts down (Python restores the default handlers near its very end) can neither kill
  the process by the signal nor let it exit 0.
Library code and tests that never call `install()` get the old scoped behaviour from
`stop_at_safe_points`.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

EXIT_INTERRUPTED = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested = False
_deferring = False  # True: the first signal only records a request (see the module docstring)
_installed: dict[int, object] | None = None  # the handlers install() replaced, while it is in force
_exiting = False  # True once the command has its exit code (`exiting()`)
# True (the console script, until a command that writes files says otherwise): a signal before the
# command defers ends the process at once. Raising SystemExit from the handler is not enough at
# start-up: a signal that lands inside a C extension's import or a finaliser has its exception
# turned into a traceback and exit 1, or swallowed (the command then ends 0).
_hard_exit = False
_exit_code: object = None


def requested() -> bool:
    """True once Ctrl-C or SIGTERM asked the sweep to stop."""
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt here, at a safe point, if a stop was requested."""
    if _requested:
        raise KeyboardInterrupt


def _handler(signum, frame) -> None:
    global _requested
    if _exiting:  # the command is done: the exit hook reads the request
        _requested = True
        return
    if not _deferring:  # nothing is being trained: stop now, quietly, as interrupted
        if _hard_exit:  # nothing is being written either (see _hard_exit)
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(EXIT_INTERRUPTED)
        raise SystemExit(EXIT_INTERRUPTED)
    if _requested:  # asked twice: the user means now
        raise KeyboardInterrupt
    _requested = True


def install(hard_exit: bool = False) -> bool:
    """Install the handlers for the rest of the process (see the module docstring). `hard_exit`:
    the process is the `bncompare` command itself (see _hard_exit), not a caller of `app()`.

    Returns True when this call installed them, False when they already were (or when called off
    the main thread, where Python allows no signal handlers).
    """
    global _installed, _hard_exit
    if _installed is not None or threading.current_thread() is not threading.main_thread():
        return False
    _hard_exit = hard_exit
    _installed = {number: signal.signal(number, _handler) for number in SIGNALS}
    # Registered first, so it runs last: after every library's own exit hook (TensorFlow's, Ray's).
    atexit.register(_last_look)
    return True


def writes_files() -> None:
    """The command writes files (figures, a report, an export): a signal raises SystemExit, so
    that their clean-up (temporary files of atomic writes) runs."""
    global _hard_exit
    _hard_exit = False


def exiting(code: object) -> object:
    """The exit code the command ends with: 130 instead of success when a stop was requested.
    From here on a signal only marks the command interrupted (see `_last_look`)."""
    global _exit_code, _exiting
    if code in (0, None) and _requested:
        code = EXIT_INTERRUPTED
    _exit_code, _exiting = code, True
    return code


def _last_look() -> None:
    """The last exit hook: a signal since `exiting()` makes a success 130, and the process ends
    here with its code. What Python would do after this (tearing down modules, which takes a while
    after a big sweep) only frees memory; a signal during it, once Python has put back the default
    handlers, would kill the process by the signal instead of giving the code."""
    if _installed is None or not _exiting:
        return
    code = EXIT_INTERRUPTED if _exit_code in (0, None) and _requested else _exit_code
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def uninstall() -> None:
    """Put back the handlers `install()` replaced and forget any request (for tests in-process)."""
    global _installed, _requested, _deferring, _exiting, _hard_exit
    if _installed is not None:
        for number, handler in _installed.items():
            signal.signal(number, handler)
    _installed, _requested, _deferring, _exiting, _hard_exit = None, False, False, False, False
    atexit.unregister(_last_look)


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
