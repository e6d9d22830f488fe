"""One run, one answer: the same BN run through every speed path, next to its chaos floor.

The issue's case: the origin MLP with BN, plain SGD 0.1, 94 steps on 3,000 MNIST images (one epoch,
batch 32), seed 0. Each path trains it into its own results directory; the table shows the final
training loss and validation accuracy, and the relative difference from the plain path (Keras fit,
one step per call, no XLA, one run at a time). The chaos floor is the same plain run with its
learning rate moved by one part in a million: what any change in float rounding can do to this run.

    python benchmarks/reproducibility.py [--backend tensorflow] [--steps-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """\
name: repro
data: {train_limit: 3000}
model: {hidden: [256, 128]}
train: {optimizer: sgd, learning_rate: 0.1, epochs: 1, seeds: [0]}
variants: {VARIANTS}
"""
PLAIN = ["train.pack=off", "train.steps_per_execution=1", "train.jit_compile=false"]
PATHS = {
    "plain (fit, 1 step per call, no XLA, alone)": PLAIN,
    "default (train.pack auto: the backend's group engine)": [],
    "fit, 128 steps per call": ["train.pack=off"],
    "default, --jobs 2": ["--jobs", "2"],
    "XLA (train.jit_compile: true, opt-in)": ["train.jit_compile=true"],
    "chaos floor: plain, learning rate 0.1000001": PLAIN + ["train.learning_rate=0.1000001"],
}


def train(config: Path, out: Path, backend: str, extra: list[str]) -> dict[str, tuple[float, float]]:
    args = [sys.executable, "-m", "bncompare", "run", str(config), "--out", str(out), "--quiet",
            "--backend", backend]
    for item in extra:
        args += [item] if item.startswith("--") or item.isdigit() else ["--set", item]
    subprocess.run(args, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    found = {}
    for path in out.glob("repro/*/metrics.json"):
        metrics = json.loads(path.read_text())
        found[metrics["variant"]] = (metrics["history"]["loss"][-1], metrics["history"]["val_accuracy"][-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="tensorflow")
    args = parser.parse_args()
    os.environ.setdefault("BNCOMPARE_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "repro.yaml"
        config.write_text(CONFIG.replace("{VARIANTS}", "{bn: {model.batch_norm: true}, "
                                                       "no_bn: {model.batch_norm: false}}"))
        rows = {name: train(config, Path(scratch) / str(i), args.backend, extra)
                for i, (name, extra) in enumerate(PATHS.items())}
    plain = rows[next(iter(PATHS))]
    print(f"backend {args.backend}; origin MLP, SGD 0.1, 94 steps on 3,000 MNIST images, seed 0")
    print("| path | BN loss | BN val acc | BN loss vs plain | no-BN loss | no-BN loss vs plain |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, found in rows.items():
        bn, no_bn = found["bn"], found["no_bn"]
        print(f"| {name} | {bn[0]:.7f} | {bn[1]:.4f} | {abs(bn[0] / plain['bn'][0] - 1):.1e} | "
              f"{no_bn[0]:.7f} | {abs(no_bn[0] / plain['no_bn'][0] - 1):.1e} |")


if __name__ == "__main__":
    main()
