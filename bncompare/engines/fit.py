"""The `fit` engine: one run through Keras's own `Model.fit`, on any backend.

This is the reference path: what a Keras user would write, fed our batch schedule. Training is fed to
`fit` in chunks that end at eval points and epoch boundaries (see `Schedule.chunks`), as arrays
already in batch order, so `fit` never shuffles.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from bncompare import interrupts
from bncompare.backend import import_keras
from bncompare.config import Run
from bncompare.data import Dataset
from bncompare.engines.common import (evaluate_point, jit_compile, make_optimizer, restore,
                                      start_loss, steps_per_execution, training_state)
from bncompare.engines.contract import Member, Stopwatch
from bncompare.models import build_model, loss_function
from bncompare.seeding import set_random_seed

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


class FitEngine:
    """One run at a time through `Model.fit`."""

    name = "fit"

    def refuses(self, run: Run) -> str | None:
        return None

    def group_key(self, run: Run) -> tuple:
        return ("fit", run.experiment, run.run_id)  # a group of one

    def max_members(self, run: Run, data: Dataset | None = None) -> int:
        return 1

    def train(self, members: list[Member], data: Dataset) -> float:
        """Train the one member; return the seconds spent compiling."""
        (member,) = members
        keras = import_keras()
        run, schedule, recorder = member.run, member.schedule, member.recorder
        params = run.params
        set_random_seed(run.seed)  # weights, dropout; the batch order has its own rng
        model = build_model(params, data.input_shape, data.classes)
        backend = keras.backend.backend()
        model.compile(optimizer=make_optimizer(params), loss=loss_function(keras), metrics=["accuracy"],
                      steps_per_execution=steps_per_execution(params, backend),
                      jit_compile=jit_compile(params, backend))
        recorder.start(start_loss(model, data))
        resumed_at = restore(member, model, model.optimizer)
        chunk = {"start": 0, "end": 0, "diverged": None}

        def after_batch(batch: int, logs: dict | None) -> None:
            # With steps_per_execution k, Keras calls back once per k steps with `batch` = the block's
            # last index (past the chunk's end for a short last block), and logs the chunk's running
            # mean: a NaN anywhere in the block shows here, and is reported at the block's end.
            step, logs = min(chunk["start"] + batch + 1, chunk["end"]), logs or {}
            loss = float(logs.get("loss", float("nan")))
            if interrupts.requested():  # Ctrl-C/SIGTERM: leave fit at its next step, then stop
                model.stop_training = True
            if not math.isfinite(loss):
                chunk["diverged"] = step
                model.stop_training = True
            else:
                recorder.block(step, loss, float(logs.get("accuracy", float("nan"))))

        watch = keras.callbacks.LambdaCallback(on_train_batch_end=after_batch)
        stopwatch = Stopwatch()
        interval_loss = interval_accuracy = interval_examples = 0.0
        if schedule.is_eval(0) and not resumed_at:
            recorder.point(evaluate_point(model, data, schedule, 0, None, None, 0.0), model=model)
        for first, last in schedule.chunks():
            if last <= resumed_at:
                continue
            indices = schedule.batch_indices(run.seed, first, last)
            chunk.update(start=first, end=last)
            started = time.perf_counter()
            history = model.fit(**_fit_inputs(keras, data, indices, schedule.batch_size), epochs=1,
                                shuffle=False, verbose=0, callbacks=[watch])
            stopwatch.add(time.perf_counter() - started, last - first)
            interrupts.check()
            if chunk["diverged"] is not None:
                recorder.block(chunk["diverged"], math.nan, math.nan)
                return stopwatch.compile
            # fit reports the mean over its chunk; weight chunks by their size for the interval mean.
            interval_loss += history.history["loss"][-1] * len(indices)
            interval_accuracy += history.history["accuracy"][-1] * len(indices)
            interval_examples += len(indices)
            if not schedule.is_eval(last):
                continue
            point = evaluate_point(model, data, schedule, last, interval_loss / interval_examples,
                                   interval_accuracy / interval_examples, stopwatch.training)
            interval_loss = interval_accuracy = interval_examples = 0.0
            if not recorder.point(point, model=model,
                                  state=lambda: training_state(model, model.optimizer)):
                return stopwatch.compile
            interrupts.check()
        return stopwatch.compile

