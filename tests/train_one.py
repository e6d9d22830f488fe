"""Train one run the way `bncompare run` does (claim, train, settle: lifecycle.execute_group), for
tests that look inside the run it writes."""

from __future__ import annotations

from pathlib import Path

from bncompare import engines
from bncompare.lifecycle import Listener, execute_group
from bncompare.skipping import run_dir


def train_one(run, out: Path, data, *, environment: dict, listener: Listener | None = None,
              engine: str = "fit") -> tuple[str, Path]:
    """Train `run` under the results root `out` with `engine`; return its status and its directory.

    Ctrl-C/SIGTERM is re-raised (lifecycle.InterruptedGroup) once the run is saved as interrupted.
    """
    (outcome,) = execute_group(engines.get(engine), [run], Path(out), data, environment,
                               listener or Listener(), force=False)
    return outcome.status, run_dir(run, out)
