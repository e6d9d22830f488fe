"""Start-up of a vmap sweep: the whole `bncompare run` process against `python -c "import keras"`.

    python benchmarks/startup.py [--members 64] [--train-limit 2000] [--repeats 3] [--source DIR]
                                 [--phases]

The case of issue #22: 64 BN members of the origin MLP (configs/mnist.yaml, variant bn) as one vmap
group, 32 learning rates x 2 seeds, 1 epoch of 2,000 MNIST images, `--backend jax` on the CPU. Each
repeat measures, one right after the other, `python -c "import keras"` on JAX and the whole
`bncompare run` process into a fresh results directory (wall and CPU seconds, peak RSS), and reads
the members' training seconds from their metrics.json. Prints each repeat, the medians, and the
ratio of the two wall times (the issue's goal: at most 3x). Run and import are measured side by
side so that a loaded machine inflates both; read the ratio and the CPU seconds.

--source DIR runs the bncompare of another checkout (e.g. the code before a change) with this
interpreter. --phases runs the sweep once more in one process with timers around its start-up steps
(wall and CPU seconds each; steps nest, e.g. planning builds the first model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import ROOT, data_dir, load, measure  # noqa: E402

# In the child: timers around the steps of start-up, then `bncompare run` itself.
PHASES = r"""
import functools, json, resource, sys, time

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

began, steps = time.perf_counter(), {}

def timed(owner, name, label):
    function = getattr(owner, name, None)
    if function is None:  # another version of bncompare: that step is not measured
        return

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        step = steps.setdefault(label, {"calls": 0, "wall_s": 0.0, "cpu_s": 0.0})  # in order of start
        wall, used = time.perf_counter(), cpu()
        try:
            return function(*args, **kwargs)
        finally:
            step["calls"] += 1
            step["wall_s"] += time.perf_counter() - wall
            step["cpu_s"] += cpu() - used
    setattr(owner, name, wrapper)

import bncompare.backend as backend, bncompare.cli as cli, bncompare.engines as engines
import bncompare.runner as runner
import bncompare.engines.vmap as vmap
timed(cli, "_load", "config expansion (cli._load)")
timed(runner, "load_data", "data loading (runner.load_data)")
timed(runner, "prepare", "backend and data (runner.prepare)")
timed(engines, "plan", "planning (engines.plan)")
timed(vmap.VmapEngine, "max_members", "  memory estimate (max_members: the first model)")
timed(runner, "execute_group", "the group, claims and records included (execute_group)")
timed(vmap._Group, "__init__", "  initial states (vmap _Group.__init__)")
timed(vmap._Group, "_program", "  tracing and lowering, main thread (_Group._program)")
timed(vmap._Group, "evaluate", "  evaluation, waits for compiles (_Group.evaluate)")
sys.argv = ["bncompare", *sys.argv[1:]]
from bncompare.__main__ import main
try:
    main()
except SystemExit:
    pass
steps["whole process, from interpreter start"] = {"calls": 1, "cpu_s": cpu(),
                                                  "wall_s": time.perf_counter() - began}
print("PHASES " + json.dumps(steps))
"""


def rates(count: int) -> str:
    """`count` learning rates, log-spaced from 1e-4 to 0.3 (as benchmarks/vmap_sweep.py)."""
    import numpy as np

    return ",".join(f"{r:.6g}" for r in np.geomspace(1e-4, 0.3, count))


def command(members: int, limit: int, out: Path) -> list[str]:
    # -P: the checkout on PYTHONPATH, not the current directory's, provides bncompare.
    return ["-P", "-m", "bncompare", "run", str(ROOT / "configs" / "mnist.yaml"), "--variants", "bn",
            "--set", f"data.train_limit={limit}", "--set", "train.epochs=1",
            "--set", "train.seeds=[0,1]", "--sweep", f"train.learning_rate={rates(members // 2)}",
            "--backend", "jax", "--quiet", "--out", str(out)]


def environment(source: Path | None) -> dict[str, str]:
    return {"BNCOMPARE_DATA_DIR": data_dir(), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(source or ROOT)}


def training_seconds(out: Path) -> float:
    """The group's training seconds (every member of a vmap group reports the same)."""
    runs = [json.loads(p.read_text()) for p in out.glob("mnist/*/metrics.json")]
    if not runs or any(r["status"] != "completed" for r in runs):
        raise RuntimeError(f"{out}: not every run completed")
    return max(r["final"]["train_seconds"] for r in runs)


def repeat(members: int, limit: int, source: Path | None) -> dict:
    keras = measure([sys.executable, "-c", "import keras"],
                    {**environment(source), "KERAS_BACKEND": "jax"})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results"
        run = measure([sys.executable, *command(members, limit, out)], environment(source))
        run["train_s"] = training_seconds(out)
    return {"keras": keras, "run": run, "ratio": run["wall_s"] / keras["wall_s"], "load": load()}


def phases(members: int, limit: int, source: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        argv = command(members, limit, Path(tmp) / "results")[3:]  # without "-P -m bncompare"
        done = subprocess.run([sys.executable, "-P", "-c", PHASES, *argv], capture_output=True, text=True,
                              env={**os.environ, **environment(source)}, cwd=ROOT)
    if "PHASES " not in done.stdout:
        raise RuntimeError(done.stdout + done.stderr)
    return json.loads(done.stdout.split("PHASES ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=64, help="runs in the sweep (even)")
    parser.add_argument("--train-limit", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--source", type=Path, help="another checkout's bncompare to measure")
    parser.add_argument("--phases", action="store_true", help="also time the steps of start-up")
    args = parser.parse_args()
    source = args.source.resolve() if args.source else None
    where = subprocess.run([sys.executable, "-P", "-c", "import bncompare; print(bncompare.__file__)"],
                           capture_output=True, text=True, env={**os.environ, **environment(source)})
    print(f"{args.members} BN members, 1 epoch of {args.train_limit:,} MNIST images, --backend jax "
          f"({where.stdout.strip()})")
    results = []
    for _ in range(args.repeats):
        result = repeat(args.members, args.train_limit, source)
        results.append(result)
        keras, run = result["keras"], result["run"]
        print(f"import keras {keras['wall_s']:5.2f} s wall {keras['cpu_s']:5.2f} s CPU | "
              f"bncompare run {run['wall_s']:6.2f} s wall {run['cpu_s']:6.2f} s CPU "
              f"{run['peak_rss_mb']:5.0f} MB, training {run['train_s']:5.2f} s | "
              f"ratio {result['ratio']:4.1f}x ({result['load']})", flush=True)

    def median(what: str, key: str) -> float:
        return statistics.median(r[what][key] for r in results)

    print(f"median: import keras {median('keras', 'wall_s'):.2f} s wall ({median('keras', 'cpu_s'):.2f} "
          f"CPU); bncompare run {median('run', 'wall_s'):.2f} s wall ({median('run', 'cpu_s'):.2f} "
          f"CPU), training {median('run', 'train_s'):.2f} s; ratio "
          f"{statistics.median(r['ratio'] for r in results):.1f}x (goal: at most 3x)")
    if args.phases:
        print("\nstep                                                     calls   wall s    CPU s")
        for label, step in phases(args.members, args.train_limit, source).items():
            print(f"{label:56} {step['calls']:5} {step['wall_s']:8.2f} {step['cpu_s']:8.2f}")


if __name__ == "__main__":
    main()
