"""What `bncompare export` / `bncompare.load` cost on a large results directory, and what a run's
run.log costs per eval point (no training).

    python benchmarks/export_and_log.py             # 1,000 runs, 5 eval points each
    python benchmarks/export_and_log.py --runs 200 --points 2000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _measure import load as machine_load
from plot_many_runs import write_results

from bncompare.config import load_runs
from bncompare.display import RunLog
from bncompare.export import frame, render
from bncompare.lifecycle import Listener, Outcome
from bncompare.schedule import Schedule


def time_export(root: Path, runs: int) -> None:
    from bncompare.aggregate import load

    count = write_results(root, runs)
    started, cpu = time.perf_counter(), time.process_time()
    table = frame(load(root / "results"))
    loaded = time.perf_counter() - started
    print(f"load: {len(table):,} rows x {len(table.columns)} columns from {count} runs in "
          f"{loaded:.2f} s ({time.process_time() - cpu:.2f} s CPU)")
    for fmt in ("csv", "jsonl", "parquet"):
        started = time.perf_counter()
        size = len(render(table, fmt))
        print(f"  render {fmt}: {time.perf_counter() - started:.2f} s, {size / 1e6:.1f} MB")


def time_run_log(root: Path, points: int) -> None:
    """RunLog around a display that does nothing: the cost the log adds to each eval point."""
    (root / "log.yaml").write_text("name: log\ndata: {dataset: synthetic}\n")
    run = load_runs([root / "log.yaml"])[0]
    (root / "out" / run.experiment / run.run_id).mkdir(parents=True)
    schedule = Schedule.for_run(run.params, 2000)
    log = RunLog(Listener(), root / "out")
    log.sweep_started([run])
    log.started(run, schedule)
    point = {"epoch": 1, "step": 63, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.4,
             "val_accuracy": 0.85, "seconds": 1.0}
    started = time.perf_counter()
    for step in range(points):
        log.point({**point, "step": step}, 0)
    seconds = time.perf_counter() - started
    log.run_finished(Outcome(run, "completed", {"val_accuracy": 0.85}))
    print(f"run.log: {points} eval points in {seconds:.3f} s: {1e6 * seconds / points:.0f} us per "
          f"eval point")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--points", type=int, default=1000)
    args = parser.parse_args()
    print(machine_load())
    with tempfile.TemporaryDirectory() as folder:
        time_export(Path(folder), args.runs)
        time_run_log(Path(folder), args.points)
    print(machine_load())


if __name__ == "__main__":
    main()
