"""What reaches the user's terminal: control characters escaped, and a closed stdout survived.

Kept free of heavy imports: the command line uses it before anything else.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, TextIO

# C0 and C1 control characters other than tab and newline (ESC starts a terminal escape sequence).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str, *, newlines: bool = True) -> str:
    """`text` with control characters shown as escapes (`\\x1b`), so that an echoed key or file
    name cannot move the cursor, recolour the terminal or hide part of a message."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if newlines else text.replace("\n", "\\n")


class DroppingStream:
    """A text stream that keeps working after its reader went away (`bncompare run ... | head`).

    The first BrokenPipeError points the file descriptor at /dev/null and says so once on stderr;
    from then on output is dropped and the command goes on, so that training finishes and its
    results are written, instead of dying with a run left `running`.
    """

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.dropped = False

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._drop()

    def _drop(self) -> None:
        if self.dropped:
            return
        self.dropped = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())  # Python's own flush at exit must succeed too
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        try:
            sys.__stderr__.write("bncompare: standard output was closed (e.g. `| head`); going on "
                                 "without printing more\n")
            sys.__stderr__.flush()
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the real stream's
        return getattr(self.stream, name)


def protect_stdout() -> TextIO:
    """Make sys.stdout a DroppingStream; return what it was, for `restore_stdout`."""
    previous = sys.stdout
    if not isinstance(previous, DroppingStream):
        sys.stdout = DroppingStream(previous)  # type: ignore[assignment]
    return previous


def restore_stdout(previous: TextIO) -> None:
    sys.stdout = previous


# One live display per terminal. In-process: a flag. Across processes (a shell script starting
# several `bncompare run &` in one terminal): an advisory lock on a file named after the terminal
# device, held while the display is live and released when the process ends, however it ends.
_live_lock: int | None = None
_live_here = False


def claim_live(stream: TextIO) -> bool:
    """True when the caller may draw a live display on `stream`'s terminal (nobody else does)."""
    global _live_lock, _live_here
    if _live_here:
        return False
    try:
        import fcntl
        import tempfile

        device = os.fstat(stream.fileno()).st_rdev
        path = os.path.join(tempfile.gettempdir(), f"bncompare-live-{os.getuid()}-{device}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        _live_lock = fd
    except (OSError, ValueError, AttributeError, ImportError):
        pass  # not a real terminal (a test's console) or no locking: this process alone decides
    _live_here = True
    return True


def release_live() -> None:
    """Let another display go live on this terminal."""
    global _live_lock, _live_here
    if _live_lock is not None:
        os.close(_live_lock)  # closing releases the lock
    _live_lock, _live_here = None, False
