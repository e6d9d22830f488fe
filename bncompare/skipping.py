"""Which runs a `bncompare run` still has to train, answered from the results on disk alone.

A rerun whose runs are all finished needs neither TensorFlow nor the data: the command can say so
at once. This reads each run's metrics.json (as `runner.claim_run` will again before training, so
a run finished meanwhile by another process is still skipped then).
"""

from __future__ import annotations

from pathlib import Path

from bncompare.config import Run
from bncompare.results import FINISHED, UnreadableRun, read_run


def run_dir(run: Run, out: Path) -> Path:
    """Where `run` writes its results under the results root `out`."""
    return Path(out) / run.experiment / run.run_id


def is_finished(run: Run, out: Path) -> bool:
    """True when `run` completed or diverged in an earlier invocation."""
    try:
        return read_run(run_dir(run, out)).status in FINISHED
    except UnreadableRun:
        return False


def unfinished(runs: list[Run], out: Path, force: bool = False) -> list[Run]:
    """The runs still to train, in order: all of them with `force`, else those not finished."""
    return list(runs) if force else [run for run in runs if not is_finished(run, out)]
