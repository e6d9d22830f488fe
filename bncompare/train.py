"""Training one run: seeding, model, optimizer, batch schedule, eval points, divergence.

The batch order is ours, not Keras's: epoch e of seed s visits the training examples in the order of
a permutation drawn from (s, e), cut into batches of `batch_size` (the last one partial, as Keras
does). Training is fed to `fit` in chunks that end at eval points and epoch boundaries, so step-level
evaluation (`record.eval_every: N`) sees exactly the batches an epoch-level run sees, and runs with
the same seed train on identical batches whatever else differs (BN or not, learning rate...).
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bncompare.backend import import_keras
from bncompare.config import Run
from bncompare.data import Dataset
from bncompare.models import build_model
from bncompare.results import MetricsFile

# A run has diverged when its loss is NaN/inf, or when its mean training loss over an eval interval
# exceeds this many times the loss of guessing uniformly (ln classes). Keras clips probabilities at
# 1e-7, so cross-entropy cannot exceed ~16.1: a network 5x worse than chance (11.5 for 10 classes)
# is predicting the wrong class with near-certainty, which only blown-up weights do.
EXPLODED_OVER_CHANCE = 5.0
EVAL_BATCH_SIZE = 1000  # inference only: the batch size changes speed, not the numbers


@dataclass(frozen=True)
class Schedule:
    """Which optimizer steps happen, and after which ones the model is evaluated."""

    examples: int
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    eval_steps: tuple[int, ...]

    @classmethod
    def for_run(cls, params: dict[str, Any], examples: int) -> "Schedule":
        batch_size = params["train.batch_size"]
        per_epoch = math.ceil(examples / batch_size)
        total = params["train.steps"] or params["train.epochs"] * per_epoch
        every = params["record.eval_every"]
        interval = per_epoch if every == "epoch" else every
        evals = set(range(interval, total + 1, interval)) | {total}  # always evaluate at the end
        return cls(examples, batch_size, per_epoch, total, tuple(sorted(evals)))

    def epoch_of(self, step: int) -> float | int:
        """Epochs completed after `step` (fractional between epoch ends)."""
        epoch = step / self.steps_per_epoch
        return int(epoch) if epoch.is_integer() else round(epoch, 4)

    def chunks(self) -> list[tuple[int, int]]:
        """(first, last) step ranges that end at eval points and never cross an epoch end."""
        stops = sorted(set(self.eval_steps) | set(range(self.steps_per_epoch, self.total_steps,
                                                          self.steps_per_epoch)))
        chunks, start = [], 0
        for stop in stops:
            chunks.append((start, stop))
            start = stop
        return chunks

    def batch_indices(self, seed: int, first: int, last: int) -> np.ndarray:
        """Example indices of steps first+1..last (within one epoch), in training order."""
        epoch = first // self.steps_per_epoch
        order = np.random.default_rng((seed, epoch)).permutation(self.examples)
        offset = first - epoch * self.steps_per_epoch
        return order[offset * self.batch_size:(last - epoch * self.steps_per_epoch) * self.batch_size]


class Listener:
    """Hooks for a progress display; the default does nothing."""

    def started(self, run: Run, schedule: Schedule) -> None: ...

    def step(self, step: int, loss: float, accuracy: float) -> None: ...

    def point(self, point: dict[str, Any]) -> None: ...


def make_optimizer(params: dict[str, Any]):
    keras = import_keras()
    name, rate = params["train.optimizer"], params["train.learning_rate"]
    # Keras 3 applies weight_decay decoupled from the gradient (as AdamW does) for every optimizer.
    decay = params["train.weight_decay"] or None
    if name in ("sgd", "momentum"):
        momentum = params["train.momentum"] if name == "momentum" else 0.0
        return keras.optimizers.SGD(rate, momentum=momentum, weight_decay=decay)
    if name == "adam":
        return keras.optimizers.Adam(rate, weight_decay=decay)
    return keras.optimizers.RMSprop(rate, weight_decay=decay)


def _is_bad(value: float | None) -> bool:
    return value is None or not math.isfinite(value)


def train_and_evaluate(run: Run, run_dir: Path, data: Dataset, *, environment: dict[str, Any],
                       listener: Listener | None = None) -> str:
    """Train one run into `run_dir`; return its final status (completed, diverged or failed).

    KeyboardInterrupt is recorded as `interrupted` and re-raised, so the caller can stop the sweep.
    """
    listener = listener or Listener()
    metrics = MetricsFile(run_dir, experiment=run.experiment, run_id=run.run_id, variant=run.variant,
                          params=run.params, environment=environment)
    try:
        status, diverged_at = _train(run, data, metrics, listener)
    except KeyboardInterrupt:
        metrics.finish("interrupted", error="interrupted by the user (SIGINT/SIGTERM)")
        raise
    except Exception as e:  # noqa: BLE001 - one broken run must not stop the sweep
        metrics.finish("failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        return "failed"
    metrics.finish(status, diverged_at=diverged_at)
    return status


def _train(run: Run, data: Dataset, metrics: MetricsFile, listener: Listener):
    keras = import_keras()
    params = run.params
    keras.utils.set_random_seed(run.seed)  # weights, dropout; the batch order has its own rng
    model = build_model(params, data.input_shape, data.classes)
    model.compile(optimizer=make_optimizer(params), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    schedule = Schedule.for_run(params, len(data.x_train))
    listener.started(run, schedule)
    chunk_start, diverged_step = 0, None

    def after_batch(batch: int, logs: dict | None) -> None:
        nonlocal diverged_step
        step, logs = chunk_start + batch + 1, logs or {}
        loss = float(logs.get("loss", float("nan")))
        if not math.isfinite(loss):  # stop at the first NaN/inf instead of training on garbage
            diverged_step = step
            model.stop_training = True
        else:
            listener.step(step, loss, float(logs.get("accuracy", float("nan"))))

    watch = keras.callbacks.LambdaCallback(on_train_batch_end=after_batch)
    exploded = EXPLODED_OVER_CHANCE * math.log(data.classes)
    seconds = 0.0
    interval_loss = interval_accuracy = interval_examples = 0.0

    for first, last in schedule.chunks():
        indices = schedule.batch_indices(run.seed, first, last)
        chunk_start, started = first, time.perf_counter()
        history = model.fit(data.x_train[indices], data.y_train[indices],
                            batch_size=schedule.batch_size, epochs=1, shuffle=False, verbose=0,
                            callbacks=[watch])
        seconds += time.perf_counter() - started
        if diverged_step is not None:
            return "diverged", {"epoch": schedule.epoch_of(diverged_step), "step": diverged_step}
        # fit reports the mean over its chunk; weight chunks by their size for the interval mean.
        interval_loss += history.history["loss"][-1] * len(indices)
        interval_accuracy += history.history["accuracy"][-1] * len(indices)
        interval_examples += len(indices)
        if last not in schedule.eval_steps:
            continue
        scores = model.evaluate(data.x_val, data.y_val, batch_size=EVAL_BATCH_SIZE, verbose=0,
                                return_dict=True)
        point = {"epoch": schedule.epoch_of(last), "step": last,
                 "loss": interval_loss / interval_examples,
                 "accuracy": interval_accuracy / interval_examples,
                 "val_loss": float(scores["loss"]), "val_accuracy": float(scores["accuracy"]),
                 "seconds": round(seconds, 3)}
        interval_loss = interval_accuracy = interval_examples = 0.0
        if _is_bad(point["val_loss"]) or point["loss"] > exploded:
            return "diverged", {"epoch": point["epoch"], "step": last}
        metrics.add_point(point)
        listener.point(point)
    return "completed", None
