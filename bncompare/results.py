"""The on-disk format: atomic strict-JSON writes, run claims, the metrics file, tolerant reading.

Layout: <out>/<experiment>/<run_id>/{config.yaml, metrics.json, .claim}.

Safety rules, each for a failure other tools have:
- every file is written to a temporary file in the same directory, fsynced, then os.replace()d, so a
  reader (or a crash) never sees half a file;
- NaN and inf become null, so metrics.json is strict JSON that every parser accepts;
- a training run's metrics.json is rewritten whole, but not at every eval point: a `WritePacer`
  spaces the rewrites so that they cost a bounded share of the run's time (see MetricsFile);
- a run is claimed by an exclusive lock (flock) on its `.claim` file before training. The kernel drops
  the lock when the process dies, even by SIGKILL, so a dead process's claim is free to take, and a
  reader can tell a live `running` run from one whose process is gone (reported as `interrupted`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import socket
import stat
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

SCHEMA_VERSION = 1
STATUSES = ("running", "completed", "diverged", "failed", "interrupted")
FINISHED = ("completed", "diverged")  # results; a rerun skips them
HISTORY_KEYS = ("epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")
METRICS_FILE, CONFIG_FILE, CLAIM_FILE = "metrics.json", "config.yaml", ".claim"
RUN_LOG = "run.log"  # what the terminal showed for the run (display.RunLog)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- atomic, strict writes ------------------------------------------------------------------------


def strict(value: Any) -> Any:
    """A copy safe for strict JSON: NaN/inf -> None, NumPy scalars and arrays -> Python values."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # NumPy
        return strict(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; results are shared like any other file.
FILE_MODE = 0o666 & ~_umask()


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the new one, never a mix."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, content: bytes) -> None:
    """`write_atomic` for bytes."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _naming(e, path) from None
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _naming(e, path) from None
        raise


def append_atomic(path: Path, text: str) -> None:
    """Append `text` with one write to a file opened for appending: concurrent readers and writers
    see either none of it or all of it, after what was there (a log, never rewritten)."""
    # O_NOFOLLOW: a log planted as a symbolic link must not have its target appended to.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def _naming(error: OSError, path: Path) -> OSError:
    """The same error, naming the file we meant to write (a full disk's write error names none)."""
    return type(error)(error.errno, error.strerror or str(error), str(path))


def to_json(value: Any, indent: str = "") -> str:
    """Strict JSON, one key per line, lists on one line: readable and diff-friendly."""
    if isinstance(value, dict) and value:
        inner = indent + "  "
        items = ",\n".join(f"{inner}{json.dumps(str(k))}: {to_json(v, inner)}" for k, v in value.items())
        return "{\n" + items + "\n" + indent + "}"
    return json.dumps(value, allow_nan=False, separators=(", ", ": "))


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, to_json(strict(data)) + "\n")


def write_config(path: Path, config: dict[str, Any], header: str) -> None:
    body = yaml.safe_dump(strict(config), sort_keys=False, default_flow_style=None)
    write_atomic(path, f"# {header}\n{body}")


def make_directories(path: Path, below: Path) -> None:
    """`mkdir -p path`, where `below` is the directory the user named and `path` lies under it.

    A symbolic link among the parts of `path` below `below` would send what is written there into
    its target, outside the directory the user gave: refused with OSError(ELOOP) naming it. `below`
    itself may be a link: the user chose it.
    """
    path, below = Path(path), Path(below)
    below.mkdir(parents=True, exist_ok=True)
    current = below
    for part in path.relative_to(below).parts:
        current = current / part
        try:
            current.mkdir()
        except FileExistsError:
            pass
        info = os.lstat(current)
        if stat.S_ISLNK(info.st_mode):
            raise OSError(errno.ELOOP, "is a symbolic link; bncompare writes only inside the "
                          "directory it was given", str(current))
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(current))


# ---- claims ---------------------------------------------------------------------------------------


class Claim:
    """An exclusive, crash-safe claim on one run directory (see the module docstring)."""

    def __init__(self, fd: int, path: Path):
        self._fd, self.path = fd, path

    @classmethod
    def acquire(cls, run_dir: Path, attempts: int = 5) -> "Claim | None":
        """The claim, or None when a live process holds it."""
        path = run_dir / CLAIM_FILE
        # O_NOFOLLOW: a `.claim` planted as a symbolic link must not get its target truncated;
        # O_NONBLOCK: one planted as a FIFO must not hang the open (fstat refuses it below).
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OSError(e.errno, "is a symbolic link; bncompare does not follow it",
                              str(path)) from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "is not a regular file", str(path))
            for attempt in range(attempts):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    # A reader checking liveness holds a shared lock for a moment; retry briefly
                    # before concluding another trainer owns the run.
                    if attempt == attempts - 1:
                        os.close(fd)
                        return None
                    time.sleep(0.05)
            # The file is never deleted (deleting a lock file races with its next opener); its
            # content is only for people: who holds the run.
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "since": now()}).encode(), 0)
        except BaseException:  # a full disk refusing the note: no descriptor may leak
            try:
                os.close(fd)
            except OSError:
                pass
            raise
        return cls(fd, path)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporary files an atomic write left behind when its process was killed mid-write.

    Only the claim holder calls this: no live process of this run can be writing them.
    """
    for stale in Path(run_dir).glob(".*.tmp"):
        try:
            stale.unlink()
        except FileNotFoundError:
            pass


def claim_holder(run_dir: Path) -> str:
    """Who holds a claim, for messages ("pid 123 on host")."""
    try:
        info = json.loads((run_dir / CLAIM_FILE).read_text())
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def is_claimed(run_dir: Path) -> bool:
    """True while a live process holds the run's claim."""
    try:
        fd = os.open(run_dir / CLAIM_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# ---- the metrics file -----------------------------------------------------------------------------


def append_series(target: dict, blocks: dict) -> None:
    """Append one eval point's values to the series at the same paths in `target`, at any depth:
    {"landscape": {"loss_min": 0.3}} appends 0.3 to target["landscape"]["loss_min"]."""
    for key, value in blocks.items():
        if isinstance(value, dict):
            append_series(target.setdefault(key, {}), value)
        else:
            target.setdefault(key, []).append(value)


# An eval point rewrites metrics.json only once the time since the file was last written is at
# least WRITE_SPACING times what writing every file of its group once costs (WritePacer): rewriting
# a whole file at every point made a run's write time grow with the square of its eval points,
# while this keeps writing to about 1/WRITE_SPACING of the run's time and the total linear in its
# eval points (benchmarks/metrics_writes.py). A reader sees a file at most that long plus one eval
# interval behind the run (docs/limits.md, "How fresh a running run's metrics.json is").
WRITE_SPACING = 20.0


class WritePacer:
    """Decides when an eval point rewrites a metrics.json, for all the files of one group.

    Shared by a group's members so that the spacing grows with the group: each file waits
    `spacing` times the summed cost of the last write of every file still running, so a group of
    64 writes its 64 files once per such interval, not 64 files per eval point, and writing stays
    at about 1/`spacing` of the time whatever the group's size. `clock` is injectable for tests.
    """

    def __init__(self, spacing: float = WRITE_SPACING, clock: Callable[[], float] = time.perf_counter):
        self.spacing, self.clock = spacing, clock
        self._costs: dict[MetricsFile, float] = {}  # the seconds each file's last write took

    def due(self, written_at: float) -> bool:
        """True when a file last written at clock time `written_at` is to be written again."""
        return self.clock() - written_at >= self.spacing * sum(self._costs.values())

    def wrote(self, file: "MetricsFile", seconds: float, running: bool) -> None:
        """Note a write's cost; a finished file writes no more eval points and stops counting."""
        if running:
            self._costs[file] = seconds
        else:
            self._costs.pop(file, None)


class MetricsFile:
    """Builds one run's metrics.json, rewriting it atomically (write_json) as it changes.

    Without a `pacer` every change is written at once. With one (how training records runs), an
    eval point is written only when the pacer says so (see WRITE_SPACING); everything else is
    written at once: the start, a warning, the end (`finish`, `exclude_compile`), and `flush`,
    which the lifecycle calls before each checkpoint and on any exit that skips `finish`. Every
    write is a whole file, fsynced then renamed over the old one, so a reader sees strict JSON at
    every instant, and the data written does not depend on when: the last file is the same bytes
    whichever points were written on the way. The fsync stays on the intermediate writes too: a
    power loss after an unsynced rename can leave an empty metrics.json, which reads as a run that
    never recorded anything, and a rerun then discards the run's checkpoint (lifecycle.resume_point)
    instead of resuming; the pacer counts the fsync in a write's cost, so it costs no more than the
    rest.
    """

    def __init__(self, run_dir: Path, *, experiment: str, run_id: str, variant: str,
                 params: dict[str, Any], environment: dict[str, Any],
                 engine: dict[str, Any] | None = None, restored: dict[str, Any] | None = None,
                 resumed_at: int | None = None, pacer: WritePacer | None = None):
        """A new run's file; with `restored` (the file as a checkpoint saved it), a run resumed at
        step `resumed_at`: its history and series go on, `resumes` records the step."""
        self.path = Path(run_dir) / METRICS_FILE
        self.pacer = pacer
        self.pending = False  # eval points added since the last write
        self.writes = 0
        self.written_at = -math.inf  # pacer clock at the end of the last write
        self.data: dict[str, Any] = {
            "schema": SCHEMA_VERSION, "experiment": experiment, "run_id": run_id,
            "variant": variant, "status": "running", "engine": engine, "params": params,
            "history": {key: [] for key in HISTORY_KEYS},
            "final": {}, "diverged_at": None, "error": None, "environment": environment,
            "started_at": now(), "finished_at": None, "resumes": [],
        }
        if restored is not None:
            kept = {k: v for k, v in restored.items() if k not in self.data or k in (
                "history", "started_at", "resumes", "warnings")}
            self.data.update(kept)
            self.data["resumes"] = [*restored.get("resumes", []), resumed_at]
        self.save()

    def save(self) -> None:
        """Write the file now."""
        clock = self.pacer.clock if self.pacer else time.perf_counter
        started = clock()
        write_json(self.path, self.data)
        self.written_at, self.pending = clock(), False
        self.writes += 1
        if self.pacer:
            self.pacer.wrote(self, self.written_at - started, self.data["status"] == "running")

    def flush(self) -> None:
        """Write the eval points the pacer held back, if any."""
        if self.pending:
            self.save()

    def add_point(self, point: dict[str, Any], blocks: dict[str, dict[str, dict[str, float]]] | None = None) -> None:
        """Append one eval point to the history; `blocks` are recorded series outside the history:
        per layer ({"activations": {"layer_1": {"p50": value}}}) or flat ({"landscape": {"loss_min":
        value}})."""
        history = self.data["history"]
        for key in dict.fromkeys([*HISTORY_KEYS, *point]):  # extra keys: val_accuracy_precise...
            history.setdefault(key, []).append(point.get(key))
        append_series(self.data, blocks or {})
        self.pending = True
        if self.pacer is None or self.pacer.due(self.written_at):
            self.save()

    def finish(self, status: str, *, diverged_at: dict | None = None, error: str | None = None,
               final: dict[str, Any] | None = None) -> None:
        """Record how the run ended; `final` adds entries to `final` (record.test's test scores)."""
        history = self.data["history"]
        accuracies = [a for a in history["val_accuracy"] if a is not None and math.isfinite(a)]
        last = {key: history[key][-1] for key in HISTORY_KEYS} if history["step"] else {}
        self.data["final"] = {
            "val_accuracy": last.get("val_accuracy"), "val_loss": last.get("val_loss"),
            "best_val_accuracy": max(accuracies) if accuracies else None,
            "train_seconds": last.get("seconds"),
            **(final or {}),
        }

        self.data.update(status=status, diverged_at=diverged_at, error=error, finished_at=now())
        self.save()


    def exclude_compile(self, seconds: float, first: int = 0) -> None:
        """Take compile time out of `history.seconds` (from point `first` on: a resumed run's
        earlier points were timed by another process) and `final.train_seconds`, and record it.

        Every eval point comes after the first compiled call, which held the compilation, so each
        cumulative time drops by the same amount.
        """
        history = self.data["history"]
        history["seconds"] = history["seconds"][:first] + [
            None if t is None else round(max(t - seconds, 0.0), 3) for t in history["seconds"][first:]]
        final = self.data["final"]
        if final.get("train_seconds") is not None:
            final["train_seconds"] = history["seconds"][-1]
        final["compile_seconds"] = round(seconds, 3)
        self.save()


# ---- reading runs back ----------------------------------------------------------------------------
#
# Results directories are read as untrusted input: a reader opens only regular files, reads at most
# MAX_METRICS_BYTES, bounds JSON nesting and number sizes, and checks every field's type, so a
# hostile or broken file is a skipped run with a reason, never a hang, a memory kill or a traceback.

MAX_METRICS_BYTES = 64 * 2**20  # a 10,000-point history with every optional block is a few MB
MAX_DEPTH = 32  # metrics.json nests 4 levels (ics/<layer>/l2/[...]); params values a few more
MAX_INT_DIGITS = 30  # larger integers are read as floats (inf beyond 1e308), not as bignums


@dataclass(frozen=True)
class RunRecord:
    """One run as read from disk."""

    path: Path
    metrics: dict[str, Any]

    @property
    def status(self) -> str:
        return self.metrics["status"]

    @property
    def run_id(self) -> str:
        return self.metrics["run_id"]


class UnreadableRun(ValueError):
    """A run directory whose metrics cannot be used; the message says why."""


def read_run(run_dir: Path) -> RunRecord:
    """Read one run's metrics; a `running` run whose process is gone reads as `interrupted`.

    A reader can race with the writer finishing: it reads `running`, the writer saves `completed`
    and releases its claim, then the reader finds the claim free. So when the claim is free the
    file is read again and its newer status believed; only a file that still says `running` after
    the claim was seen free belongs to a dead process.
    """
    run_dir = Path(run_dir)
    data = _read_metrics(run_dir / METRICS_FILE)
    if data["status"] == "running" and not is_claimed(run_dir):
        data = _read_metrics(run_dir / METRICS_FILE)
        if data["status"] == "running":
            data["status"] = "interrupted"  # its process died without saying so (SIGKILL, power loss)
    return RunRecord(run_dir, data)


def _read_metrics(path: Path) -> dict[str, Any]:
    """A metrics.json parsed and type-checked; UnreadableRun saying why not."""
    text = _read_regular(path)
    if not text.strip():
        raise UnreadableRun("metrics.json is empty")
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_int=_bounded_int)
    except RecursionError:
        raise UnreadableRun("metrics.json is nested too deeply") from None
    except ValueError as e:
        raise UnreadableRun(f"metrics.json is not valid JSON ({e})") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if type(schema) is not int or schema != SCHEMA_VERSION:  # `true == 1` in Python: not schema 1
        raise UnreadableRun("metrics.json is not a bncompare metrics file (schema 1)")
    problem = _type_problem(data)
    if problem:
        raise UnreadableRun(f"metrics.json {problem}")
    return data


def _read_regular(path: Path) -> str:
    """The text of a regular file of bounded size (a FIFO, a device or a huge file is refused)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UnreadableRun("no metrics.json") from None
    except OSError as e:
        raise UnreadableRun(f"cannot read metrics.json ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableRun("metrics.json is not a regular file")
        if info.st_size > MAX_METRICS_BYTES:
            raise UnreadableRun(f"metrics.json is larger than {MAX_METRICS_BYTES // 2**20} MB")
        chunks, size = [], 0
        while size <= MAX_METRICS_BYTES:  # the file may grow while we read it
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_METRICS_BYTES:
            raise UnreadableRun(f"metrics.json is larger than {MAX_METRICS_BYTES // 2**20} MB")
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableRun("metrics.json is not UTF-8 text") from None
    except OSError as e:
        raise UnreadableRun(f"cannot read metrics.json ({e.strerror or e})") from None
    finally:
        os.close(fd)


def _bounded_int(text: str) -> int | float:
    # Python refuses int() of more than 4,300 digits, and 10**400 overflows every float operation
    # later: a number that large is read as a float (inf), which the plots treat as a missing value.
    return int(text) if len(text) <= MAX_INT_DIGITS else float(text)


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


# Optional top-level fields and the types they must have when present (None is always allowed).
_OPTIONAL_TYPES = {"experiment": str, "variant": str, "error": str, "diverged_at": dict,
                   "final": dict, "environment": dict, "engine": dict, "started_at": str,
                   "finished_at": str, "resumes": list}


def _type_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a parsed metrics file's structure, or None."""
    missing = [k for k in ("run_id", "status", "params", "history") if k not in data]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not isinstance(data["run_id"], str) or not isinstance(data["status"], str):
        return "has a run_id or status that is not text"
    if data["status"] not in STATUSES:
        return "lacks a known status"
    if not isinstance(data["params"], dict) or not isinstance(data["history"], dict):
        return "has params or history of the wrong type"
    for key, kind in _OPTIONAL_TYPES.items():
        if data.get(key) is not None and not isinstance(data[key], kind):
            return f"has {key} of the wrong type ({type(data[key]).__name__}, not {kind.__name__})"
    for key, values in data["history"].items():
        if not isinstance(values, list) or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            return f"has a history {key!r} that is not a list of numbers"
    if _depth(data) > MAX_DEPTH:
        return "is nested too deeply"
    return None


def _depth(value: Any, level: int = 0) -> int:
    """Nesting depth, looking no deeper than MAX_DEPTH + 1 (so never a RecursionError)."""
    if level > MAX_DEPTH or not isinstance(value, (dict, list)):
        return level
    children = value.values() if isinstance(value, dict) else value
    return max((_depth(child, level + 1) for child in children if isinstance(child, (dict, list))),
               default=level + 1)


def run_dirs(root: Path) -> Iterator[Path]:
    """Run directories under a results root, an experiment directory, or a run directory itself.

    A directory that cannot be listed is yielded as it is, so reading it gives a reason that names
    it (permission denied) instead of a traceback here.
    """
    root = Path(root)
    if _holds_run(root):
        yield root
        return
    children = _subdirectories(root)
    if children is None:
        yield root
        return
    for child in children:
        if _holds_run(child):
            yield child
            continue
        grandchildren = _subdirectories(child)
        if grandchildren is None:
            yield child
        else:
            yield from (g for g in grandchildren if _holds_run(g))


def _holds_run(directory: Path) -> bool:
    """True for a run directory, and for one that cannot be searched (mode 000): reading it then
    gives a warning that names it, instead of it vanishing from every table without a word."""
    for name in (METRICS_FILE, CLAIM_FILE):
        try:
            os.lstat(directory / name)
            return True
        except PermissionError:
            return True
        except OSError:
            continue
    return False


def _subdirectories(directory: Path) -> list[Path] | None:
    """Visible subdirectories in name order, or None when the directory cannot be listed."""
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError:
        return None
    found = []
    for entry in entries:
        try:
            if not entry.name.startswith(".") and entry.is_dir():
                found.append(Path(entry.path))
        except OSError:
            continue
    return found


def read_results(root: Path) -> tuple[list[RunRecord], list[tuple[Path, str]]]:
    """Every readable run under `root`, and (path, reason) for each run that could not be read."""
    runs, unreadable = [], []
    for run_dir in run_dirs(root):
        try:
            runs.append(read_run(run_dir))
        except UnreadableRun as e:
            unreadable.append((run_dir, str(e)))
    return runs, unreadable
