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

from bncompare import interrupts
from bncompare.backend import import_keras
from bncompare.config import Run
from bncompare.data import Dataset
from bncompare.instruments import Instruments
from bncompare.models import build_model, loss_function
from bncompare.results import MetricsFile

EVAL_BATCH_SIZE = 1000  # inference only: the batch size changes speed, not the numbers
# A run has diverged when its loss becomes NaN/inf, or when its mean training loss over an eval
# interval exceeds EXPLOSION_FACTOR times its starting value: the untrained model's loss on the first
# 1,000 training examples, or uniform guessing's (ln classes) if that is larger. Relative to the
# start because cross-entropy from logits is uncapped: a network with a
# huge initial weight scale starts near a loss of 90 and can still recover.
EXPLOSION_FACTOR = 10.0
START_PROBE = 1000
# `train.steps_per_execution: auto`. One compiled call per step costs ~2 ms of Python and dispatch
# on CPU, more than a small MLP's arithmetic; 128 steps per call measured 2x faster (benchmarks/)
# while progress and NaN checks still come several times per MNIST epoch.
AUTO_STEPS_PER_EXECUTION = 128


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
    """Hooks for a progress display; the default does nothing.

    `slot` tells apart runs trained at the same time (parallel workers, members of a pack).
    """

    def started(self, run: Run, schedule: Schedule, slot: int = 0) -> None: ...

    def step(self, step: int, loss: float, accuracy: float, slot: int = 0) -> None: ...

    def point(self, point: dict[str, Any], slot: int = 0) -> None: ...


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


def steps_per_execution(params: dict[str, Any]) -> int:
    """Optimizer steps per compiled call (`train.steps_per_execution`)."""
    value = params.get("train.steps_per_execution", "auto")
    return AUTO_STEPS_PER_EXECUTION if value == "auto" else value


def jit_compile(params: dict[str, Any], backend: str) -> bool | str:
    """XLA for training (`train.jit_compile`); auto: on for TensorFlow, where it measured 2x faster
    on CPU, else Keras's own choice for the backend.

    auto leaves XLA off for models with dropout: compiled, TensorFlow's stateless random ops draw
    other numbers for the same seed, so the dropout masks (and what is learned) would change.
    """
    value = params.get("train.jit_compile", "auto")
    if value == "auto":
        if params.get("model.dropout"):
            return False
        return True if backend == "tensorflow" else "auto"
    return value


_DEVICE_ARRAYS: dict[int, tuple] = {}


def device_arrays(data: Dataset):
    """The training arrays as TensorFlow tensors, converted once per dataset and kept.

    Feeding batches gathered from resident tensors avoids copying the permuted training set
    (188 MB for MNIST) and converting it again for every `fit` call.
    """
    import tensorflow as tf

    if id(data) not in _DEVICE_ARRAYS:
        _DEVICE_ARRAYS.clear()  # one dataset at a time: a sweep over datasets frees the last one
        _DEVICE_ARRAYS[id(data)] = (data, tf.constant(data.x_train), tf.constant(data.y_train))
    return _DEVICE_ARRAYS[id(data)][1:]


def _fit_inputs(keras, data: Dataset, indices: np.ndarray, batch_size: int) -> dict[str, Any]:
    """`fit` arguments for the batches of `indices`, in that order (the Schedule's)."""
    if keras.backend.backend() != "tensorflow":  # every backend: a copy in batch order
        return {"x": data.x_train[indices], "y": data.y_train[indices], "batch_size": batch_size}
    import tensorflow as tf

    x, y = device_arrays(data)
    batches = tf.data.Dataset.from_tensor_slices(indices.astype(np.int32)).batch(batch_size)
    return {"x": batches.map(lambda i: (tf.gather(x, i), tf.gather(y, i))).prefetch(2)}


def explosion_limit(start_loss: float, classes: int) -> float:
    """The training loss above which a run counts as diverged (see EXPLOSION_FACTOR)."""
    chance = math.log(classes)
    return EXPLOSION_FACTOR * (max(start_loss, chance) if math.isfinite(start_loss) else chance)


def start_loss(model, data: Dataset) -> float:
    """The untrained model's loss on the first START_PROBE training examples."""
    return float(model.evaluate(data.x_train[:START_PROBE], data.y_train[:START_PROBE],
                                batch_size=EVAL_BATCH_SIZE, verbose=0, return_dict=True)["loss"])


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
    model.compile(optimizer=make_optimizer(params), loss=loss_function(keras),
                  metrics=["accuracy"], steps_per_execution=steps_per_execution(params),
                  jit_compile=jit_compile(params, keras.backend.backend()))
    schedule = Schedule.for_run(params, len(data.x_train))
    instruments = Instruments(params, data, metrics.path.parent)  # record.activations...
    listener.started(run, schedule)
    chunk_start, chunk_end, diverged_step = 0, 0, None

    def after_batch(batch: int, logs: dict | None) -> None:
        nonlocal diverged_step
        # With steps_per_execution k, Keras calls back once per k steps with `batch` = the block's
        # last index (past the chunk's end for a short last block), and logs the chunk's running
        # mean: a NaN anywhere in the block shows here, and is reported at the block's end.
        step, logs = min(chunk_start + batch + 1, chunk_end), logs or {}
        loss = float(logs.get("loss", float("nan")))
        if interrupts.requested():  # Ctrl-C/SIGTERM: leave fit at its next step, then stop
            model.stop_training = True
        if not math.isfinite(loss):  # stop at the first NaN/inf instead of training on garbage
            diverged_step = step
            model.stop_training = True
        else:
            listener.step(step, loss, float(logs.get("accuracy", float("nan"))))

    watch = keras.callbacks.LambdaCallback(on_train_batch_end=after_batch)
    exploded = explosion_limit(start_loss(model, data), data.classes)
    seconds = 0.0
    interval_loss = interval_accuracy = interval_examples = 0.0

    for first, last in schedule.chunks():
        indices = schedule.batch_indices(run.seed, first, last)
        chunk_start, chunk_end, started = first, last, time.perf_counter()
        history = model.fit(**_fit_inputs(keras, data, indices, schedule.batch_size), epochs=1,
                            shuffle=False, verbose=0, callbacks=[watch])
        seconds += time.perf_counter() - started
        interrupts.check()
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
        metrics.add_point(point, instruments.measure(model, point))
        listener.point(point)
        interrupts.check()
    return "completed", None
