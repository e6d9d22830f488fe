"""Where a run's results live, and whether it is finished: answered from the results on disk alone.

A rerun whose runs are all finished needs neither TensorFlow nor the data: the command can say so
at once. This reads each run's metrics.json (as `lifecycle.claim_run` will again before training,
so a run finished meanwhile by another process is still skipped then). The one definition of a
run's directory (`run_dir`) and of "finished" (`finished_record`) for every module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bncompare.config import Run
from bncompare.results import FINISHED, UnreadableRun, read_run


def run_dir(run: Run, out: Path) -> Path:
    """Where `run` writes its results under the results root `out`."""
    return Path(out) / run.experiment / run.run_id


def finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a completed or diverged run in `run_dir`, else None."""
    try:
        record = read_run(run_dir)
    except UnreadableRun:
        return None
    return record.metrics if record.status in FINISHED else None


def is_finished(run: Run, out: Path) -> bool:
    """True when `run` completed or diverged in an earlier invocation."""
    return finished_record(run_dir(run, out)) is not None


def unfinished(runs: list[Run], out: Path, force: bool = False) -> list[Run]:
    """The runs still to train, in order: all of them with `force`, else those not finished."""
    return list(runs) if force else [run for run in runs if not is_finished(run, out)]
