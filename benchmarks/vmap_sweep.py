"""The vmap engine against one run at a time (Keras fit, `train.pack: off`), both on JAX.

    python benchmarks/vmap_sweep.py [--members 16] [--epochs 1] [--train-limit N] [--device cpu|gpu]
                                    [--baseline-runs N]

The sweep is the origin config (configs/mnist.yaml: MLP 256-128, Adam, batch 32, MNIST) with K runs:
K/2 learning rates (log-spaced, 1e-4 to 0.3) x {no_bn, bn}; K=1 is the no_bn run alone. Each variant is
one group (split further only if `max_members` says so). `--members 1 16 256` measures several sizes
in one process. Prints, per K: wall seconds of the engine (model building, compilation, training,
evaluation) and its CPU seconds, its training seconds alone, and member-epochs per second of each; then Keras fit on the
first `--baseline-runs` runs of the 16-run sweep, one after another (the `pack: off` path), and the
ratio of the two throughputs (wall against wall). Nothing is asserted; on a shared machine timings
are noisy: the load average is printed with each line.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Tally:
    """What the benchmark needs of a lifecycle Recorder: the final point and the active flag."""

    def __init__(self):
        self.active, self.last = True, None

    def start(self, start_loss: float) -> None: ...

    def block(self, step: int, loss: float, accuracy: float) -> bool:
        self.active = math.isfinite(loss)
        return self.active

    def point(self, point: dict, blocks: dict | None = None) -> bool:
        self.last = point
        self.active = math.isfinite(point["val_loss"])
        return self.active


class Member:
    def __init__(self, run, schedule, slot):
        self.run, self.schedule, self.recorder, self.slot = run, schedule, Tally(), slot


def sweep_runs(members: int, epochs: int, limit: int | None):
    import numpy as np

    from bncompare.config import load_runs

    overrides = [f"train.epochs={epochs}"] + ([f"data.train_limit={limit}"] if limit else [])
    if members == 1:
        return [r for r in load_runs([ROOT / "configs" / "mnist.yaml"], overrides)
                if not r["model.batch_norm"]]
    rates = ", ".join(f"{r:.6g}" for r in np.geomspace(1e-4, 0.3, members // 2))
    return load_runs([ROOT / "configs" / "mnist.yaml"],
                     overrides + [f"sweep.train.learning_rate=[{rates}]"])


def cpu_seconds() -> float:
    """CPU seconds of this process so far (all threads: XLA's compiler and compute pools)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def vmapped(members: int, epochs: int, limit: int | None) -> float:
    """Train the K-run sweep with the vmap engine; print and return member-epochs per wall second."""
    from bncompare.data import load_dataset
    from bncompare.engines.vmap import VmapEngine
    from bncompare.schedule import Schedule

    engine, runs = VmapEngine(), sweep_runs(members, epochs, limit)
    data = load_dataset("mnist", "test", limit)
    groups: dict = {}
    for run in runs:
        groups.setdefault(engine.group_key(run), []).append(run)
    started, cpu, trained, sizes, accuracies = time.perf_counter(), cpu_seconds(), 0.0, [], []
    for group in groups.values():
        cap = engine.max_members(group[0], data)
        for begin in range(0, len(group), cap):
            part = group[begin:begin + cap]
            team = [Member(run, Schedule.for_run(run.params, len(data.x_train)), slot)
                    for slot, run in enumerate(part)]
            engine.train(team, data)
            trained += max(m.recorder.last["seconds"] for m in team if m.recorder.last)
            sizes.append(len(part))
            accuracies += [m.recorder.last["val_accuracy"] for m in team if m.recorder.last]
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    done = len(runs) * epochs
    print(f"vmap K={members:<5} groups {sizes}: wall {wall:.1f} s, CPU {cpu:.1f} s, "
          f"training {trained:.1f} s; "
          f"member-epochs/s {done / wall:.2f} (wall), {done / trained:.2f} (training); "
          f"best val acc {max(accuracies):.4f}; {load()}", flush=True)
    return done / wall


def one_at_a_time(runs_wanted: int, epochs: int, limit: int | None) -> float:
    """Keras fit, one run after another (train.pack: off); return member-epochs per wall second."""
    from bncompare.data import load_dataset
    from _measure import train_alone

    runs = sweep_runs(16, epochs, limit)
    runs = [runs[i] for i in sorted({round(i * 16 / runs_wanted) % 16 for i in range(runs_wanted)})]
    data = load_dataset("mnist", "test", limit)
    started, cpu = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory() as out:
        statuses = []
        for run in runs:
            statuses.append(train_alone(run, Path(out), data))
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    print(f"fit  {len(runs)} runs one at a time: wall {wall:.1f} s, CPU {cpu:.1f} s, "
          f"member-epochs/s {len(runs) * epochs / wall:.2f} (wall); statuses {sorted(set(statuses))}; "
          f"{load()}", flush=True)
    return len(runs) * epochs / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[16])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--baseline-runs", type=int, default=16,
                        help="runs of the 16-run sweep trained with fit for the ratio (0: skip)")
    args = parser.parse_args()
    os.environ.setdefault("BNCOMPARE_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))
    from bncompare.backend import check_device, import_keras, select_backend, select_device

    select_backend("jax")
    select_device(args.device)
    import_keras()  # once per process, before any clock starts: not charged to the first K
    print(f"device {check_device(args.device)}; epochs {args.epochs}; "
          f"train limit {args.train_limit or 'none'}", flush=True)
    rates = {k: vmapped(k, args.epochs, args.train_limit) for k in args.members}
    if args.baseline_runs:
        alone = one_at_a_time(min(args.baseline_runs, 16), args.epochs, args.train_limit)
        for k, rate in rates.items():
            print(f"ratio K={k}: vmap {rate:.2f} / fit {alone:.2f} member-epochs/s = {rate / alone:.1f}x")


if __name__ == "__main__":
    main()
