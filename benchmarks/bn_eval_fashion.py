"""Issue 12's case: is BN's collapse on the short Fashion-MNIST CNN run an evaluation artefact?

Trains the configs/fashion_cnn.yaml models (train_limit 3000, 2 epochs of batch 64 = 94 steps) with
plain Keras fit, then evaluates each on the test split under every `record.bn_eval` mode. Prints
one line per run and the seconds of each mode's second (compiled, as at every later eval point)
call; noisy on a shared machine.

    python benchmarks/bn_eval_fashion.py [--seeds 0 1] [--set model.bn_momentum=0.9]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bncompare import bn_eval
from bncompare.backend import import_keras
from bncompare.config import load_runs
from bncompare.data import load_dataset
from bncompare.models import build_model, loss_function
from bncompare.train import make_optimizer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    overrides = ["data.train_limit=3000", "train.epochs=2", f"train.seeds={args.seeds}",
                 "record.bn_eval=[moving,precise,batch]", "record.train_eval=3000", *args.overrides]
    keras = import_keras()
    print(f"{'run':<40} {'steps':>5} {'moving':>7} {'precise':>7} {'batch':>7} {'train_eval':>10} "
          f"{'0.99^steps':>10}  seconds (train, moving, precise, batch)")
    for run in load_runs([ROOT / "configs" / "fashion_cnn.yaml"], overrides):
        p = run.params
        data = load_dataset(p["data.dataset"], p["data.validation"], p["data.train_limit"])
        keras.utils.set_random_seed(run.seed)
        model = build_model(p, data.input_shape, data.classes)
        model.compile(optimizer=make_optimizer(p), loss=loss_function(keras), metrics=["accuracy"])
        start = time.perf_counter()
        history = model.fit(data.x_train, data.y_train, batch_size=p["train.batch_size"],
                            epochs=p["train.epochs"], verbose=0)
        train_seconds = time.perf_counter() - start
        steps = int(model.optimizer.iterations.numpy())
        results, seconds = {}, {}
        for mode in bn_eval.MODES:
            for _ in range(2):  # the second call is what every later eval point costs (compiled)
                start = time.perf_counter()
                results[mode] = bn_eval.evaluate(
                    model, data.x_val, data.y_val, mode, batch_size=p["train.batch_size"],
                    x_train=data.x_train, precise_examples=p["record.precise_examples"])
                seconds[mode] = time.perf_counter() - start
        extra = bn_eval.extra_history(model, data, p)
        weight = bn_eval.moving_average_weight(p["model.bn_momentum"], steps)
        print(f"{run.run_id:<40} {steps:>5} {results['moving'][1]:>7.3f} {results['precise'][1]:>7.3f} "
              f"{results['batch'][1]:>7.3f} {extra['train_eval_accuracy']:>10.3f} {weight:>10.3f}  "
              f"{train_seconds:.1f}, {seconds['moving']:.1f}, {seconds['precise']:.1f}, "
              f"{seconds['batch']:.1f}   (fit's last training accuracy "
              f"{history.history['accuracy'][-1]:.3f})")
        warning = bn_eval.lag_warning(p, steps)
        if warning and run.seed == args.seeds[0] and run.variant == "bn":
            print("  warning:", warning)
        assert np.isclose(extra["val_accuracy_precise"], results["precise"][1])


if __name__ == "__main__":
    main()
