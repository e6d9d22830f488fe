"""Santurkar et al. 2018 probes on models trained by Keras `fit`, outside the bncompare lifecycle:
a quick check of what configs/santurkar2018.yaml measures, and the probes' cost per eval point.

    python benchmarks/santurkar_probes.py [--steps 300] [--every 50] [--seeds 0 1] [--examples 6000]
                                          [--out DIR]

Trains the santurkar2018 config's MLP without and with BN (SGD, learning rate 0.1, batch 128) on the
first --examples MNIST training images, in chunks of --every steps, calls
`bncompare.probes.probe_blocks` at step 0 and after each chunk, and prints per variant the mean over
eval points and seeds of each landscape quantity and of each layer's ICS, plus seconds per eval
point (landscape and ICS together). With --out, also writes each run's metrics.json (history on the
first 2,000 test images, probe blocks) under DIR/santurkar2018/ and draws the probe figures into
DIR/santurkar2018/plots/. Needs BNCOMPARE_DATA_DIR (or Keras's cache) for MNIST.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bncompare.backend import import_keras
from bncompare.config import load_runs
from bncompare.data import Dataset, load_dataset
from bncompare.models import build_model, loss_function
from bncompare.probes import probe_blocks
from bncompare.results import append_series as append_point
from bncompare.results import MetricsFile
from bncompare.engines.common import make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--examples", type=int, default=6000)
    parser.add_argument("--config", default="configs/santurkar2018.yaml")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    keras = import_keras()
    runs = [run for run in load_runs([args.config], ["record.landscape=true", "record.ics=true"])
            if run.seed == 0 and run.variant in ("no_bn", "bn")]
    full = load_dataset(runs[0].params["data.dataset"])
    data = Dataset(full.name, full.x_train[:args.examples], full.y_train[:args.examples],
                   full.x_val, full.y_val, full.classes)
    results: dict[str, list[dict]] = {}
    seconds: dict[str, list[float]] = {}
    for run in runs:
        for seed in args.seeds:
            params = {**run.params, "train.seed": seed}
            keras.utils.set_random_seed(seed)
            model = build_model(params, data.input_shape, data.classes)
            optimizer = make_optimizer(params)
            model.compile(optimizer=optimizer, loss=loss_function(keras), metrics=["accuracy"])
            batch = params["train.batch_size"]
            record = None
            if args.out is not None:
                run_id = f"{run.variant}-s{seed}"
                (args.out / run.experiment / run_id).mkdir(parents=True, exist_ok=True)
                record = MetricsFile(args.out / run.experiment / run_id, experiment=run.experiment,
                                     run_id=run_id, variant=run.variant, params=params,
                                     environment={"note": "benchmarks/santurkar_probes.py"})
            metrics: dict = {}
            rng = np.random.default_rng(seed)
            trained = 0.0
            for step in range(0, args.steps + 1, args.every):
                started = time.perf_counter()
                blocks = probe_blocks(model, optimizer, data, params, step)
                seconds.setdefault(run.variant, []).append(time.perf_counter() - started)
                append_point(metrics, blocks)
                if record is not None:
                    if step:
                        record.add_point(history_point(model, data, step, batch, trained, fitted))
                    append_point(record.data, blocks)
                    record.save()
                if step < args.steps:
                    index = rng.integers(0, len(data.x_train), args.every * batch)
                    started = time.perf_counter()
                    fitted = model.fit(data.x_train[index], data.y_train[index], batch_size=batch,
                                       epochs=1, shuffle=False, verbose=0).history
                    trained += time.perf_counter() - started
            if record is not None:
                record.finish("completed")
            results.setdefault(run.variant, []).append(metrics)
    report(results, seconds)
    if args.out is not None:
        draw(args.out)


def history_point(model, data: Dataset, step: int, batch_size: int, seconds: float,
                  fitted: dict) -> dict:
    """The last chunk's training loss and accuracy, validation on the first 2,000 test images."""
    val_loss, val_accuracy = model.evaluate(data.x_val[:2000], data.y_val[:2000], verbose=0,
                                            batch_size=1000)
    return {"epoch": round(step * batch_size / len(data.x_train), 4), "step": step,
            "loss": fitted["loss"][-1], "accuracy": fitted["accuracy"][-1], "val_loss": val_loss,
            "val_accuracy": val_accuracy, "seconds": seconds}


def draw(out: Path) -> None:
    from matplotlib import rc_context

    from bncompare.aggregate import load
    from bncompare.plots import save
    from bncompare.probe_plots import figures
    from bncompare.style import PALETTE, STYLE

    results = load(out)
    colours = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(results.variants)}
    with rc_context(STYLE):
        for experiment in results.experiments:
            folder = experiment.directory / "plots"
            folder.mkdir(exist_ok=True)
            for stem, figure in figures(experiment, colours, "step"):
                print(save(figure, folder / f"{stem}.png", "png"))


def report(results: dict[str, list[dict]], seconds: dict[str, list[float]]) -> None:
    keys = ("loss_min", "loss_max", "grad_diff_min", "grad_diff_max", "beta_smoothness")
    print(f"{'variant':8} " + " ".join(f"{k:>15}" for k in keys) + "   band  s/point")
    for variant, runs in results.items():
        means = {k: np.nanmean([v for m in runs for v in m["landscape"][k][1:]]) for k in keys}
        band = means["loss_max"] - means["loss_min"]
        print(f"{variant:8} " + " ".join(f"{means[k]:15.4f}" for k in keys)
              + f" {band:6.4f} {np.median(seconds[variant]):8.3f}")
    print("ICS (mean over eval points after step 0 and seeds): layer  l2  cosine")
    for variant, runs in results.items():
        for layer in runs[0]["ics"]:
            l2 = np.nanmean([v for m in runs for v in m["ics"][layer]["l2"][1:]])
            cosine = np.nanmean([v for m in runs for v in m["ics"][layer]["cosine"][1:]])
            print(f"  {variant:8} {layer:8} {l2:10.4f} {cosine:8.4f}")


if __name__ == "__main__":
    main()
