"""Many runs: load data once, skip finished work, claim each run, train it, summarise, exit code.

Everything that can fail for a reason the user must fix (missing data, no GPU) fails in `prepare`,
before any file is written; after that, a problem with one run is recorded in that run and the
sweep goes on.
"""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bncompare import __version__, interrupts
from bncompare.config import Run
from bncompare.results import (CONFIG_FILE, FINISHED, METRICS_FILE, Claim, UnreadableRun, claim_holder,
                               now, read_run, write_config, write_json)

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

    select_device(device)
    keras = import_keras()
    described = check_device(device)
    return Prepared(load_data(runs), environment(keras, described))


def load_data(runs: list[Run]) -> dict[tuple, Any]:
    """Every dataset the runs need, by data_key; raises DataError when one is missing."""
    from bncompare.data import load_dataset

    datasets = {}
    for run in runs:
        if data_key(run) not in datasets:
            datasets[data_key(run)] = load_dataset(*data_key(run))
    return datasets


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


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The commit of the working directory's repository (the user's experiment code), if any."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a completed or diverged run in `run_dir`, else None."""
    try:
        record = read_run(run_dir)
    except UnreadableRun:
        return None
    return record.metrics if record.status in FINISHED else None


def execute(runs: list[Run], out: Path, prepared: Prepared, display, *, force: bool = False) -> list[Outcome]:
    """Train every run that is not finished yet; stop at the first interrupt (Ctrl-C, SIGTERM)."""
    from bncompare import packed
    from bncompare.backend import import_keras
    from bncompare.train import train_and_evaluate

    outcomes: list[Outcome] = []
    display.sweep_started(runs)
    with interrupts.stop_at_safe_points():
        # `train.pack: auto` trains runs that see identical batches together (see packed.py).
        for group, pack in packed.plan(runs, import_keras().backend.backend()):
            if pack:
                done = packed.execute_pack(group, out, prepared, display, force)
            else:
                try:
                    interrupts.check()
                    done = [execute_one(group[0], out, prepared, display, force, train_and_evaluate)]
                except KeyboardInterrupt:  # between runs: nothing of this run was written
                    done = [Outcome(group[0], "interrupted", note="interrupted")]
                display.run_finished(done[0])
            outcomes.extend(done)
            if any(outcome.status == "interrupted" for outcome in done):
                break
    return outcomes


def claim_run(run: Run, out: Path, force: bool) -> tuple[Path, Claim | None, Outcome | None]:
    """Skip a finished run, else claim it and write its config.yaml.

    Returns (run_dir, claim, None) when this process is to train the run, else
    (run_dir, None, outcome) saying why not (done before, busy elsewhere, disk refused).
    """
    run_dir = out / run.experiment / run.run_id
    done = None if force else finished_record(run_dir)
    if done:
        return run_dir, None, Outcome(run, "skipped", done.get("final") or {}, f"already {done['status']}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        claim = Claim.acquire(run_dir)
    except OSError as e:
        return run_dir, None, _cannot_write(run, run_dir, e)
    if claim is None:
        return run_dir, None, Outcome(run, "busy", note=f"being trained by {claim_holder(run_dir)}")
    # Another process may have finished it between our first look and our claim.
    done = None if force else finished_record(run_dir)
    if done:
        claim.release()
        return run_dir, None, Outcome(run, "skipped", done.get("final") or {}, f"already {done['status']}")
    try:
        write_run_config(run_dir, run)
    except OSError as e:
        claim.release()
        return run_dir, None, _cannot_write(run, run_dir, e)
    return run_dir, claim, None


def write_run_config(run_dir: Path, run: Run) -> None:
    write_config(run_dir / CONFIG_FILE, run.to_config(),
                 f"bncompare {__version__}: resolved config of run {run.run_id} "
                 f"(`bncompare run` this file to reproduce it)")


def _cannot_write(run: Run, run_dir: Path, error: OSError) -> Outcome:
    return Outcome(run, "failed", note=f"cannot write {error.filename or run_dir}: {error.strerror or error}")


def execute_one(run: Run, out: Path, prepared: Prepared, display, force: bool, train) -> Outcome:
    """Train one run unless it is finished or claimed elsewhere; never raises for one bad run."""
    run_dir, claim, outcome = claim_run(run, out, force)
    if outcome is not None:
        return outcome
    try:
        status = train(run, run_dir, prepared.datasets[data_key(run)],
                       environment=prepared.environment, listener=display)
    except KeyboardInterrupt:
        return Outcome(run, "interrupted", note="interrupted")
    except OSError as e:  # the disk said no (read-only, full) while saving this run
        return _cannot_write(run, run_dir, e)
    except Exception as e:  # noqa: BLE001 - a bug outside training's own guard must not stop the sweep
        _record_failure(run_dir, e)
        return Outcome(run, "failed", note=f"{type(e).__name__}: {e}")
    finally:
        claim.release()
    metrics = read_run(run_dir).metrics
    note = (metrics.get("error") or "").splitlines()[0] if status == "failed" else ""
    return Outcome(run, status, metrics.get("final") or {}, note)


def _record_failure(run_dir: Path, error: Exception) -> None:
    """Mark a run that broke outside training's own error handling as failed, if it has a file."""
    try:
        metrics = read_run(run_dir).metrics
    except UnreadableRun:  # it broke before its metrics.json existed: the outcome says why
        return
    if metrics["status"] == "running":
        metrics.update(status="failed", finished_at=now(),
                       error=f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
        try:
            write_json(run_dir / METRICS_FILE, metrics)
        except OSError:
            pass


def exit_code(outcomes: list[Outcome], interrupted: bool = False) -> int:
    statuses = {o.status for o in outcomes}
    if interrupted or "interrupted" in statuses:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if "failed" in statuses else EXIT_OK

