"""Eval-time work of vmap members against solo runs: seconds per eval point per member.

    python benchmarks/vmap_eval_cost.py [--members 4] [--steps 40] [--every 10] [--examples 2560]
                                        [--set KEY=VALUE ...]

The santurkar2018 config's BN MLP (256-128, SGD 0.1, batch 128; record.landscape, record.ics and
the step-0 point on) on the first --examples MNIST images, for --steps steps with an eval point every
--every, on the JAX backend (CPU): K members (seeds 0..K-1) trained as one vmap group, then each
alone through the fit engine, both through the lifecycle's `train_group`. Every `Recorder.point` is
timed (wall, and CPU of the whole process): per engine, the runs' first points (step 0; they
compile the probes' programs: every solo run's, only the group's first member's under vmap) and
the later points, median and max; for vmap also the loading of a member into
the template model (`vmap_eval.as_member`), which happens outside `point`. --set changes the config
(e.g. `--set record.landscape=false` for ICS alone).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _measure import data_dir, load  # noqa: E402


def cpu_seconds() -> float:
    """CPU seconds of this process so far (all threads: XLA's compiler and compute pools)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Timings:
    """(wall, CPU) seconds of every timed call, by label and whether it was a run's first point."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, bool], list[tuple[float, float]]] = {}

    @contextmanager
    def timed(self, label: str, first: bool = False):
        wall, cpu = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            elapsed = (time.perf_counter() - wall, cpu_seconds() - cpu)
            self.calls.setdefault((label, first), []).append(elapsed)

    def report(self, label: str, first: bool) -> str:
        calls = self.calls.get((label, first), [])
        if not calls:
            return f"{label}{' (first points)' if first else ''}: none"
        wall = [c[0] * 1000 for c in calls]
        cpu = [c[1] * 1000 for c in calls]
        return (f"{label}{' (first points)' if first else ''}: median {statistics.median(wall):.1f} ms "
                f"wall / {statistics.median(cpu):.1f} ms CPU, max {max(wall):.0f} ms wall / "
                f"{max(cpu):.0f} ms CPU ({len(calls)} calls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--examples", type=int, default=2560)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    os.environ.setdefault("BNCOMPARE_DATA_DIR", data_dir())
    from bncompare.backend import import_keras, select_backend, select_device

    select_backend("jax")
    select_device("cpu")
    import_keras().utils.set_random_seed(0)  # imports TensorFlow once, before any clock

    from bncompare import engines, lifecycle
    from bncompare.config import load_runs
    from bncompare.data import load_dataset
    from bncompare.engines import vmap

    seeds = ", ".join(str(s) for s in range(args.members))
    runs = [run for run in load_runs([ROOT / "configs" / "santurkar2018.yaml"],
                                     [f"train.steps={args.steps}", f"record.eval_every={args.every}",
                                      f"data.train_limit={args.examples}", f"train.seeds=[{seeds}]",
                                      *args.sets])
            if run.variant == "bn"]
    data = load_dataset("mnist", runs[0]["data.validation"], args.examples)
    timings = Timings()
    point, load_member = lifecycle.Recorder.point, vmap.as_member

    def timed_point(self, *a, **k):
        with timings.timed(f"{engine_name} point", first=a[0]["step"] == 0):
            return point(self, *a, **k)

    @contextmanager
    def timed_load(*a, **k):
        with timings.timed("vmap load"):
            context = load_member(*a, **k)
            context.__enter__()
        try:
            yield
        finally:
            context.__exit__(None, None, None)

    lifecycle.Recorder.point, vmap.as_member = timed_point, timed_load
    print(f"{len(runs)} members, {args.steps} steps, eval every {args.every}, "
          f"{args.examples} examples; {load()}", flush=True)
    with tempfile.TemporaryDirectory() as out:
        for engine_name, groups in (("fit", [[run] for run in runs]), ("vmap", [runs])):
            wall, cpu = time.perf_counter(), cpu_seconds()
            for group in groups:
                dirs = [Path(out) / engine_name / run.run_id for run in group]
                for folder in dirs:
                    folder.mkdir(parents=True)
                recorders = lifecycle.train_group(engines.get(engine_name), group, dirs, data,
                                                  environment={"backend": "jax"})
                assert all(r.status == "completed" for r in recorders), [r.status for r in recorders]
            print(f"{engine_name}: whole training {time.perf_counter() - wall:.1f} s wall, "
                  f"{cpu_seconds() - cpu:.1f} s CPU; {load()}", flush=True)
    for label in ("fit point", "vmap point"):
        print(timings.report(label, first=True))
        print(timings.report(label, first=False))
    print(timings.report("vmap load", first=False))


if __name__ == "__main__":
    main()
