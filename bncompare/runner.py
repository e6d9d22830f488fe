"""Many runs in this process: load data once, plan groups, train each, exit codes.

Everything that can fail for a reason the user must fix (missing data, no GPU) fails in `prepare`,
before any file is written; after that, a problem with one run is recorded in that run and the
sweep goes on. Every run of an invocation ends with an Outcome, also when the sweep is interrupted
before reaching it (`not_started`), so the end table and the exit code tell the whole story.
"""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bncompare import __version__, interrupts
from bncompare.config import Run
from bncompare.engines.common import data_key
from bncompare.lifecycle import InterruptedGroup, Listener, execute_group
from bncompare.skipping import run_dir
from bncompare.status import UNREACHED, Outcome, decide

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

__all__ = ["Outcome", "Prepared", "prepare", "execute", "sweep", "exit_code", "data_key", "not_started"]


@dataclass
class Prepared:
    datasets: dict[tuple, Any]
    environment: dict[str, Any]


def prepare(runs: list[Run], device: str) -> Prepared:
    """Import the backend on the right device and load every dataset the runs need.

    Raises DataError or DeviceError (both mean: exit 2, nothing written).
    """
    from bncompare.backend import check_device, import_keras, select_device

    select_device(device)
    keras = import_keras()
    described = check_device(device)
    datasets = load_data(runs)
    check_own_models(runs, datasets)
    return Prepared(datasets, environment(keras, described))


def check_own_models_apart(runs: list[Run], device: str) -> None:
    """`check_own_models` in a child process, for a parent that must not import the backend (the
    parent of --jobs workers: the GPU memory it would hold is theirs). Raises CallableError."""
    import multiprocessing

    from bncompare.callables import CallableError, is_reference

    own = [run for run in runs if is_reference(run["model.kind"])]
    if not own:
        return
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        problem = pool.apply(_check_in_child, (own, device))
    if problem:
        raise CallableError(problem)


def _check_in_child(runs: list[Run], device: str) -> str | None:
    from bncompare.callables import CallableError
    from bncompare.data import DataError

    try:
        prepare(runs, device)
    except (CallableError, DataError) as e:
        return str(e)
    return None


_CHECKED_MODELS: set[tuple] = set()  # once per process: --jobs workers prepare every group


def check_own_models(runs: list[Run], datasets: dict[tuple, Any]) -> None:
    """Build each researcher's model (`model.kind: "module:function"`) once per dataset, so that an
    import error or a model without logits is an error before anything is written (CallableError).
    """
    from bncompare.callables import fingerprint, is_reference
    from bncompare.models import build_model

    for run in runs:
        if not is_reference(run["model.kind"]):
            continue
        key = (fingerprint(run["model.kind"]), data_key(run))
        if key not in _CHECKED_MODELS:
            data = datasets[data_key(run)]
            build_model(run.params, data.input_shape, data.classes)
            _CHECKED_MODELS.add(key)


def load_data(runs: list[Run]) -> dict[tuple, Any]:
    """Every dataset the runs need, by data_key; raises DataError when one is missing."""
    from bncompare.data import load_dataset

    datasets = {}
    for run in runs:
        if data_key(run) not in datasets:
            datasets[data_key(run)] = load_dataset(*data_key(run), params=run.params)
    return datasets


def release_data() -> None:
    """Drop this process's cached datasets (the parent of --jobs workers needs none)."""
    from bncompare.data import clear_caches

    clear_caches()


def environment(keras, device: str) -> dict[str, Any]:
    """Versions and machine, recorded in every metrics.json."""
    from bncompare.backend import cpu, threads

    backend = keras.backend.backend()
    return {"bncompare": __version__, "python": platform.python_version(),
            "tensorflow": _installed("tensorflow"), "keras": keras.__version__, "backend": backend,
            **({backend: _installed(backend)} if backend != "tensorflow" else {}),
            "device": device, "threads": threads(), **cpu(), "git_commit": _git_commit(),
            "hostname": socket.gethostname()}


def _installed(package: str) -> str | None:
    """A package's installed version, without importing it (importing TensorFlow takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The commit of the working directory's repository (the user's experiment code), if any."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def not_started(runs: list[Run]) -> list[Outcome]:
    """The outcomes of runs the sweep never reached: here, only an interrupt leaves any."""
    return [decide(run, why=UNREACHED, stopped=True) for run in runs]


def execute(runs: list[Run], out: Path, prepared: Prepared, display: Listener, *,
            force: bool = False, signals: tuple[int, ...] = interrupts.SIGNALS
            ) -> tuple[list[Outcome], bool]:
    """Train every run that is not finished yet in this process, group by group (see `sweep`)."""
    return sweep(runs, out, display, lambda todo, force: _train_groups(todo, out, prepared, display, force),
                 force=force, signals=signals)


def sweep(runs: list[Run], out: Path, display: Listener,
          train: Callable[[list[Run], bool], tuple[list[Outcome], bool]], *, force: bool = False,
          signals: tuple[int, ...] = interrupts.SIGNALS) -> tuple[list[Outcome], bool]:
    """Train `runs` with `train(runs, force) -> (an Outcome per run, interrupted)`, on whichever
    executor it uses; stop at the first interrupt.

    A run another process is training ("busy") is waited for at the end, then skipped if that
    process finished it, or trained here if it failed or was interrupted: every run of this
    invocation ends with its own outcome, and exit code 0 means every one of them is a result.
    Returns an Outcome per run (in run order) and whether the sweep was interrupted.
    """
    outcomes: dict[int, Outcome] = {}
    index = {id(run): i for i, run in enumerate(runs)}
    display.sweep_started(runs)
    todo, interrupted = list(runs), False
    with interrupts.stop_at_safe_points(signals):
        while todo and not interrupted:
            done, interrupted = train(todo, force)
            for outcome in done:
                outcomes[index[id(outcome.run)]] = outcome
            todo = [o.run for o in done if o.status == "busy"]
            if todo and not interrupted:
                interrupted = not wait_for_others(todo, out, display)
                force = False  # what another process finished meanwhile is a result: keep it
    rest = [run for i, run in enumerate(runs) if i not in outcomes]
    for outcome in not_started(rest):
        outcomes[index[id(outcome.run)]] = outcome
    return [outcomes[i] for i in range(len(runs))], interrupted


def _train_groups(runs: list[Run], out: Path, prepared: Prepared, display: Listener,
                  force: bool) -> tuple[list[Outcome], bool]:
    from bncompare import engines
    from bncompare.backend import import_keras

    done: list[Outcome] = []
    for group in engines.plan(runs, import_keras().backend.backend(), prepared.datasets):
        try:
            interrupts.check()
            done += execute_group(engines.get(group.engine), group.runs, out,
                                  prepared.datasets[data_key(group.runs[0])], prepared.environment,
                                  display, force)
        except InterruptedGroup as stop:
            return done + stop.outcomes, True
        except KeyboardInterrupt:  # between groups: nothing of this group was written
            return done, True
    return done, False


def wait_for_others(runs: list[Run], out: Path, display: Listener, poll: float = 1.0) -> bool:
    """Wait until no other process holds the claim of any of `runs`; False when interrupted."""
    import time

    from bncompare.results import is_claimed

    display.waiting(runs)
    while any(is_claimed(run_dir(run, out)) for run in runs):
        if interrupts.requested():
            return False
        time.sleep(poll)
    return True


def exit_code(outcomes: list[Outcome], interrupted: bool = False) -> int:
    """130 interrupted (or a run never reached), 1 a run failed, else 0."""
    statuses = {o.status for o in outcomes}
    if interrupted or statuses & {"interrupted", "not_started"}:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if "failed" in statuses else EXIT_OK
