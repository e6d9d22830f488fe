"""How long `bncompare plot`, `summary` and `compare` take on a large results directory (no training).

Writes RUNS runs through bncompare's own writer (2 variants x 10 learning rates x 5 depths x
RUNS/100 seeds, 5 eval points each, one learning rate diverging), then times reading + plotting,
reading + summarising and reading + comparing (every row's tests, Holm, seeds needed), as the
commands do them.

    python benchmarks/plot_many_runs.py            # 1,000 runs
    python benchmarks/plot_many_runs.py --runs 200
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bncompare import compare
from bncompare.aggregate import load
from bncompare.config import load_runs
from bncompare.plots import plot_results
from bncompare.results import MetricsFile
from bncompare.summary import render

CONFIG = """\
name: many
data: {dataset: synthetic}
train: {seeds: %s}
sweep:
  train.learning_rate: [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
  model.depth: [1, 2, 3, 4, 5]
"""


def write_results(root: Path, runs: int) -> int:
    config = root / "many.yaml"
    config.write_text(CONFIG % list(range(max(1, runs // 100))))
    expanded = load_runs([config])
    for run in expanded:
        run_dir = root / "results" / run.experiment / run.run_id
        run_dir.mkdir(parents=True)
        metrics = MetricsFile(run_dir, experiment=run.experiment, run_id=run.run_id,
                              variant=run.variant, params=run.params, environment={})
        diverges = run["train.learning_rate"] == 3.0 and run.variant == "no_bn"
        for epoch in range(1, 3 if diverges else 6):
            accuracy = 0.9 - 0.3 / epoch + 0.01 * run.seed
            metrics.add_point({"epoch": epoch, "step": 100 * epoch, "loss": 1 / epoch,
                               "accuracy": accuracy, "val_loss": 1.2 / epoch,
                               "val_accuracy": accuracy, "seconds": 1.5 * epoch})
        metrics.finish("diverged" if diverges else "completed",
                       diverged_at={"epoch": 3, "step": 300} if diverges else None)
    return len(expanded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        started = time.perf_counter()
        count = write_results(root, args.runs)
        print(f"wrote {count} runs in {time.perf_counter() - started:.1f} s")

        # CPU time too: on a shared machine the wall clock mostly measures the neighbours.
        started, cpu = time.perf_counter(), time.process_time()
        results = load(root / "results")
        loaded = time.perf_counter() - started
        written = plot_results(results)
        panels = sum(len(e.groups()) for e in results.experiments)
        print(f"plot: {len(written)} figures ({panels} panels per learning-curve figure) from {results.runs} runs "
              f"in {time.perf_counter() - started:.1f} s, {time.process_time() - cpu:.1f} s CPU "
              f"(reading {loaded:.2f} s)")

        started = time.perf_counter()
        render(load(root / "results"), "csv")
        print(f"summary: {len(results.experiments[0].conditions)} conditions in "
              f"{time.perf_counter() - started:.2f} s")

        started = time.perf_counter()
        loaded = load(root / "results")
        records = compare.rows(loaded)
        compare.render(loaded, records, "markdown")
        print(f"compare: {len(records)} rows in {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
