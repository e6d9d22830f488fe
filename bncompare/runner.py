"""Many runs: load data once, skip finished work, claim each run, train it, summarise, exit code.

Everything that can fail for a reason the user must fix (missing data, no GPU) fails in `prepare`,
before any file is written; after that, a problem with one run is recorded in that run and the
sweep goes on.
"""

from __future__ import annotations

import platform
import signal
import socket
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bncompare import __version__
from bncompare.config import Run
from bncompare.results import (CONFIG_FILE, FINISHED, Claim, UnreadableRun, claim_holder, read_run,
                               write_config)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class Outcome:
    """What happened to one run in this invocation."""

    run: Run
    status: str  # completed | diverged | failed | interrupted | skipped (done before) | busy (other process)
    final: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class Prepared:
    datasets: dict[tuple, Any]
    environment: dict[str, Any]


def data_key(run: Run) -> tuple:
    return (run["data.dataset"], run["data.validation"], run["data.train_limit"])


def prepare(runs: list[Run], device: str) -> Prepared:
    """Import the backend on the right device and load every dataset the runs need.

    Raises DataError or DeviceError (both mean: exit 2, nothing written).
    """
    from bncompare.backend import check_device, import_keras, select_device
    from bncompare.data import load_dataset

    select_device(device)
    keras = import_keras()
    described = check_device(device)
    datasets = {}
    for run in runs:
        if data_key(run) not in datasets:
            datasets[data_key(run)] = load_dataset(*data_key(run))
    return Prepared(datasets, environment(keras, described))


def environment(keras, device: str) -> dict[str, Any]:
    """Versions and machine, recorded in every metrics.json."""
    backend = keras.backend.backend()
    try:
        import tensorflow as tf

        tf_version = tf.__version__
    except ImportError:
        tf_version = None
    return {"bncompare": __version__, "python": platform.python_version(), "tensorflow": tf_version,
            "keras": keras.__version__, "backend": backend, "device": device,
            "git_commit": _git_commit(), "hostname": socket.gethostname()}


def _git_commit() -> str | None:
    """The commit of the working directory's repository (the user's experiment code), if any."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (e.g. `kill`, a job scheduler) like Ctrl-C: save the run as interrupted."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a completed or diverged run in `run_dir`, else None."""
    try:
        record = read_run(run_dir)
    except UnreadableRun:
        return None
    return record.metrics if record.status in FINISHED else None


def execute(runs: list[Run], out: Path, prepared: Prepared, display, *, force: bool = False) -> list[Outcome]:
    """Train every run that is not finished yet; stop at the first interrupt (Ctrl-C, SIGTERM)."""
    from bncompare.train import train_and_evaluate

    outcomes: list[Outcome] = []
    display.sweep_started(runs)
    with sigterm_as_interrupt():
        for run in runs:
            try:
                outcome = _execute_one(run, out, prepared, display, force, train_and_evaluate)
            except KeyboardInterrupt:  # between runs: nothing of this run was written
                outcome = Outcome(run, "interrupted", note="interrupted")
            outcomes.append(outcome)
            display.run_finished(outcome)
            if outcome.status == "interrupted":
                break
    return outcomes


def _execute_one(run: Run, out: Path, prepared: Prepared, display, force: bool, train) -> Outcome:
    run_dir = out / run.experiment / run.run_id
    done = None if force else finished_record(run_dir)
    if done:
        return Outcome(run, "skipped", done.get("final") or {}, f"already {done['status']}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        claim = Claim.acquire(run_dir)
    except OSError as e:
        return Outcome(run, "failed", note=f"cannot write {e.filename or run_dir}: {e.strerror or e}")
    if claim is None:
        return Outcome(run, "busy", note=f"being trained by {claim_holder(run_dir)}")
    try:
        # Another process may have finished it between our first look and our claim.
        done = None if force else finished_record(run_dir)
        if done:
            return Outcome(run, "skipped", done.get("final") or {}, f"already {done['status']}")
        write_config(run_dir / CONFIG_FILE, run.to_config(),
                     f"bncompare {__version__}: resolved config of run {run.run_id} "
                     f"(`bncompare run` this file to reproduce it)")
        status = train(run, run_dir, prepared.datasets[data_key(run)],
                       environment=prepared.environment, listener=display)
    except KeyboardInterrupt:
        return Outcome(run, "interrupted", note="interrupted")
    except OSError as e:  # the disk said no (read-only, full) while saving this run
        return Outcome(run, "failed", note=f"cannot write {e.filename or run_dir}: {e.strerror or e}")
    finally:
        claim.release()
    metrics = read_run(run_dir).metrics
    note = (metrics.get("error") or "").splitlines()[0] if status == "failed" else ""
    return Outcome(run, status, metrics.get("final") or {}, note)


def exit_code(outcomes: list[Outcome]) -> int:
    statuses = {o.status for o in outcomes}
    if "interrupted" in statuses:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if "failed" in statuses else EXIT_OK

