"""Which executor trains a sweep, and the sweep on it: this process (runner.py), `--jobs` worker
processes (parallel.py) or Ray tasks (ray_executor.py).

`check` fails early, before anything is written, on what the chosen executor will need; `train`
trains the runs on it. The command line (cli.py) calls these two and nothing else of the executors,
so a sweep's runs go down once and come back as outcomes (docs/architecture.md, "The walk").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bncompare import parallel, runner
from bncompare.backend import DeviceError
from bncompare.config import Run
from bncompare.lifecycle import Listener
from bncompare.status import Outcome


def check(runs: list[Run], executor: str, jobs: int | None, device: str, address: str | None
          ) -> tuple[runner.Prepared | None, int, str]:
    """Fail early on what the chosen executor will need. Returns (the single-process setup or
    None, the worker processes, a line saying how the sweep trains, or "")."""
    if executor == "ray":
        from bncompare.ray_executor import check_address, import_ray

        import_ray()
        if address is None:  # a local Ray instance reads the same data as we do
            runner.load_data(runs)
            runner.release_data()
        else:
            check_address(address)
        return None, 1, ""
    workers, how = parallel.choose_jobs(runs, runner.load_data(runs), jobs)
    if workers == 1:
        return runner.prepare(runs, device), 1, "" if jobs == 1 else how
    # The workers import the backend; importing it here would hold GPU memory they need. The data
    # was loaded once to fail early; it is released: the workers load their own copies.
    runner.release_data()
    runner.check_own_models_apart(runs, device)
    if device == "gpu" and not parallel.visible_gpus():
        raise DeviceError("--device gpu: no GPU is visible (nvidia-smi lists none)")
    return None, workers, how


def train(runs: list[Run], out: Path, display: Listener, prepared: Any, executor: str, jobs: int,
          device: str, address: str | None, force: bool) -> tuple[list[Outcome], bool]:
    """Train on the chosen executor (after `check`); return (an Outcome per run, interrupted)."""
    if executor == "ray":
        from bncompare.ray_executor import execute_ray

        return execute_ray(runs, out, display, address=address, device=device, force=force)
    if jobs > 1:
        return parallel.execute_parallel(runs, out, display, jobs=jobs, device=device, force=force)
    return runner.execute(runs, out, prepared, display, force=force)
