"""metrics.json write time of a run, by its number of eval points: every point rewriting the file
(the policy before issue 25) against the pacer training uses now (results.WritePacer).

A run is simulated, nothing trains: `MetricsFile.add_point` with the seven history values an eval
point records (random floats, printed at full precision like real ones), `--training-ms` of
simulated training before each point (added to the pacer's clock, not slept), then `finish` and
`exclude_compile`, as the lifecycle ends a run. Every write is real: temporary file, fsync, rename,
in a temporary directory (or --dir, on the disk your results go to). Printed per run length:

- wall and CPU seconds spent in writes, and how many writes, for both policies;
- "stale": the longest a reader could find the file behind the run at an eval point (pacer clock);
- whether the last files are byte-identical (timestamps fixed).

Writing every point costs the square of the points, so above --full-up-to points the old policy is
sampled: one point in --sample is written and timed, times --sample (the estimate is printed next to
the full measurement at the largest length it has both for). Then a group of --members runs sharing
one pacer, as `train_group` makes them, with --group-points points each.

Usage: python benchmarks/metrics_writes.py [--points 200 2000 20000] [--training-ms 0 10]
       [--full-up-to 2000] [--sample 50] [--members 64] [--group-points 2000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _measure import load  # noqa: E402

from bncompare import results  # noqa: E402
from bncompare.results import MetricsFile, WritePacer  # noqa: E402

REAL_WRITE = results.write_json


class Writes:
    """Wall and CPU seconds in results.write_json (which MetricsFile.save calls), and a count."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.count = 0

    def __call__(self, path: Path, data: dict) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        REAL_WRITE(path, data)
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.count += 1


class RunClock:
    """The pacer's clock: real time plus the simulated training so far."""

    def __init__(self) -> None:
        self.training = 0.0

    def __call__(self) -> float:
        return time.perf_counter() + self.training


def points(count: int, seed: int = 0) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [{"epoch": 1 + i // 100, "step": 10 * i, "loss": rng.random(), "accuracy": rng.random(),
             "val_loss": rng.random(), "val_accuracy": rng.random(), "seconds": round(0.01 * i, 3)}
            for i in range(1, count + 1)]


def new_file(run_dir: Path, pacer: WritePacer | None) -> MetricsFile:
    run_dir.mkdir(parents=True)
    return MetricsFile(run_dir, experiment="bench", run_id="bn-s0-bench", variant="bn",
                       params={"train.learning_rate": 0.1}, environment={"bncompare": "bench"},
                       pacer=pacer)


def end(files: list[MetricsFile]) -> None:
    for metrics in files:
        metrics.finish("completed")
        metrics.exclude_compile(0.5)


def run(folder: Path, count: int, policy: str, training: float, sample: int = 1) -> dict:
    """One run of `count` eval points under `policy`: "every" point, "sampled" (every one in
    `sample`, its time times `sample`) or "paced"."""
    writes, clock = Writes(), RunClock()
    results.write_json = writes
    try:
        pacer = {"every": None, "sampled": WritePacer(spacing=float("inf")),
                 "paced": WritePacer(clock=clock)}[policy]
        metrics = new_file(folder / f"{policy}-{count}-{training}", pacer)
        stale = 0.0
        for i, point in enumerate(points(count), start=1):
            clock.training += training
            metrics.add_point(point)
            if policy == "sampled" and i % sample == 0:
                before = writes.wall, writes.cpu
                metrics.save()
                writes.wall += (sample - 1) * (writes.wall - before[0])
                writes.cpu += (sample - 1) * (writes.cpu - before[1])
            if policy == "paced" and metrics.pending:
                stale = max(stale, clock() - metrics.written_at)
        end([metrics])
    finally:
        results.write_json = REAL_WRITE
    if policy == "sampled":
        writes.count = count + 3  # what writing every point does: start, points, finish, compile
    return {"wall": writes.wall, "cpu": writes.cpu, "writes": writes.count, "stale": stale,
            "bytes": metrics.path.read_bytes()}


def group(folder: Path, members: int, count: int, training: float) -> dict:
    """`members` files sharing one pacer; each eval point adds a point to every member in turn."""
    writes, clock = Writes(), RunClock()
    results.write_json = writes
    try:
        pacer = WritePacer(clock=clock)
        files = [new_file(folder / f"group-{training}-{k}", pacer) for k in range(members)]
        rounds, stale = 0, 0.0
        for point in points(count):
            clock.training += training
            before = writes.count
            for metrics in files:
                metrics.add_point(point)
            rounds += writes.count > before
            stale = max(stale, max(clock() - m.written_at for m in files if m.pending) if any(
                m.pending for m in files) else 0.0)
        end(files)
    finally:
        results.write_json = REAL_WRITE
    return {"wall": writes.wall, "cpu": writes.cpu, "writes": writes.count, "rounds": rounds,
            "stale": stale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[200, 2000, 20000])
    parser.add_argument("--training-ms", type=float, nargs="+", default=[0.0, 10.0])
    parser.add_argument("--full-up-to", type=int, default=2000)
    parser.add_argument("--sample", type=int, default=50)
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--group-points", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    results.now = lambda: "2026-01-01T00:00:00+00:00"  # the same bytes from both policies
    print(f"pacer spacing {results.WRITE_SPACING:g}; {load()}")
    print("| eval points | every point: writes | wall s | CPU s | paced, training ms per point "
          "| writes | wall s | CPU s | stale s (max) | last file identical |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory(dir=args.dir) as name:
        folder = Path(name)
        for count in args.points:
            if count <= args.full_up_to:
                old = run(folder, count, "every", 0.0)
                label = ""
                if count == max(c for c in args.points if c <= args.full_up_to) and args.sample > 1:
                    estimate = run(folder, count, "sampled", 0.0, args.sample)
                    label = f" (sampled 1/{args.sample}: {estimate['wall']:.2f})"
            else:
                old = run(folder, count, "sampled", 0.0, args.sample)
                label = f" (sampled 1/{args.sample})"
            for training in args.training_ms:
                new = run(folder, count, "paced", training / 1000)
                print(f"| {count:,} | {old['writes']:,} | {old['wall']:.2f}{label} | {old['cpu']:.2f} "
                      f"| {training:g} | {new['writes']:,} | {new['wall']:.3f} | {new['cpu']:.3f} "
                      f"| {new['stale']:.3f} | {'yes' if new['bytes'] == old['bytes'] else 'NO'} |",
                      flush=True)
        if args.members:
            for training in args.training_ms:
                shared = group(folder, args.members, args.group_points, training / 1000)
                print(f"group of {args.members} x {args.group_points:,} points, {training:g} ms per "
                      f"point, one pacer: {shared['writes']:,} writes at {shared['rounds']} of "
                      f"{args.group_points:,} eval points, {shared['wall']:.2f} s wall, "
                      f"{shared['cpu']:.2f} s CPU, stale {shared['stale']:.2f} s (max); "
                      f"every point: {args.members * (args.group_points + 3):,} writes", flush=True)
    print(load())


if __name__ == "__main__":
    main()
