"""What issue 20's unbounded-cost inputs cost now: `summary --where` with an 8-level YAML alias bomb
(400 bytes; 9**8 values once expanded) and `plot` of 4 runs, two of which differ in 5,000 params.

Each command runs in its own process, as a user runs it: wall and CPU seconds, exit code, load.

    python benchmarks/hostile_inputs.py
"""

from __future__ import annotations

import dataclasses
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import load

from bncompare.config import load_runs
from bncompare.results import MetricsFile

CONFIG = "name: hostile\ndata: {dataset: synthetic}\ntrain: {epochs: 1, seeds: [0, 1]}\n"
BOMB = "[&a0 [x,x,x,x,x,x,x,x,x], " + ", ".join(
    f"&a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)) + "]"


def write_results(root: Path) -> Path:
    """4 runs (2 variants x 2 seeds); the last two (one variant) differ in 5,000 params."""
    config = root / "hostile.yaml"
    config.write_text(CONFIG)
    runs = load_runs([config])
    for n in (2, 3):
        runs[n] = dataclasses.replace(runs[n], params={**runs[n].params,
                                                       **{f"junk.k{i}": i + n for i in range(5000)}})
    for run in runs:
        run_dir = root / "results" / run.experiment / run.run_id
        run_dir.mkdir(parents=True)
        metrics = MetricsFile(run_dir, experiment=run.experiment, run_id=run.run_id,
                              variant=run.variant, params=run.params, environment={})
        for epoch in (1, 2):
            metrics.add_point({"epoch": epoch, "step": 60 * epoch, "loss": 1 / epoch,
                               "accuracy": 0.5, "val_loss": 1 / epoch, "val_accuracy": 0.5,
                               "seconds": float(epoch)})
        metrics.finish("completed")
    return root / "results"


def timed(*args: str) -> str:
    """Wall and CPU seconds (the CPU column is the one to trust on a loaded machine), exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "bncompare", *args], capture_output=True).returncode
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return f"{wall:.2f} s wall, {cpu:.2f} s CPU, exit {code}"


def main() -> None:
    print(load())
    with tempfile.TemporaryDirectory() as folder:
        results = write_results(Path(folder))
        print(f"summary --where <alias bomb, {len(BOMB)} bytes>: "
              f"{timed('summary', str(results), '--where', f'learning_rate={BOMB}')}")
        print(f"plot, two runs differing in 5,000 params: {timed('plot', str(results))}")
    print(load())


if __name__ == "__main__":
    main()
