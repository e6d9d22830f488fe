"""Cost of one checkpoint per eval point (bncompare/checkpoint.py): time and bytes, per model size.

For each model: the run's Keras model and Adam optimizer (slots built), then, N times, what the
lifecycle does at an eval point: read every variable back (engines.common.training_state) and write
checkpoint.npz atomically (temporary file, fsync, rename) into a temporary run directory; and the
rerun's read (checkpoint.load, every array's checksum verified). Prints the median milliseconds of
each and the file size. Usage: python benchmarks/checkpoint_cost.py [--repeat 20] [--dir DIR]
(--dir: a directory on the disk your results go to; default: a temporary one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _measure import load  # noqa: E402

MODELS = {  # name: (config, input shape)
    "tiny MLP [32, 16] (tests)": ("model: {hidden: [32, 16]}", (20,)),
    "origin MLP 256-128 + BN (configs/mnist.yaml)": ("model: {hidden: [256, 128], batch_norm: true}",
                                                      (28, 28, 1)),
    "MLP 4 x 1024 + BN": ("model: {depth: 4, width: 1024, batch_norm: true}", (28, 28, 1)),
    "CNN depth 3, 64 filters + BN (CIFAR-10)": ("model: {kind: cnn, depth: 3, width: 64, "
                                                "batch_norm: true}", (32, 32, 3)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    from bncompare import checkpoint
    from bncompare.backend import import_keras
    from bncompare.checkpoint import Checkpoint
    from bncompare.config import load_runs
    from bncompare.engines.common import make_optimizer, training_state
    from bncompare.models import build_model

    keras = import_keras()
    print(f"backend {keras.backend.backend()}, {load()}")
    print("| model | parameters | bytes | state read ms | write ms | load ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        config = Path(folder) / "c.yaml"
        for name, (model_yaml, shape) in MODELS.items():
            config.write_text(f"name: c\n{model_yaml}\nvariants: {{only: {{}}}}\n")
            (run,) = load_runs([config])
            model = build_model(run.params, shape, 10)
            optimizer = make_optimizer(run.params)
            optimizer.build(model.trainable_variables)
            identity = checkpoint.identity(run, keras.backend.backend(), "fit")
            history = {"history": {"step": list(range(100)), "val_loss": [0.5] * 100}}
            reads, writes, loads, size = [], [], [], 0
            for _ in range(args.repeat):
                started = time.perf_counter()
                variables, rng = training_state(model, optimizer)
                reads.append(time.perf_counter() - started)
                started = time.perf_counter()
                size = checkpoint.save(Path(folder), identity, Checkpoint(100, variables, history,
                                                                          torch_rng=rng))
                writes.append(time.perf_counter() - started)
                started = time.perf_counter()
                found, why = checkpoint.load(Path(folder), identity)
                loads.append(time.perf_counter() - started)
                assert found is not None, why
            print(f"| {name} | {model.count_params():,} | {size:,} | "
                  f"{1000 * statistics.median(reads):.1f} | {1000 * statistics.median(writes):.1f} | "
                  f"{1000 * statistics.median(loads):.1f} |")
    print(load())


if __name__ == "__main__":
    main()
