"""The `tf_pack` engine: runs that see identical batches train together in one compiled TF loop.

Small BN studies are dominated by per-step overhead (Python, dispatch, tiny matmuls), not
arithmetic. Runs that share the data (dataset, validation split, train_limit), the batch size, the
schedule (epochs/steps, eval points) and the seed see exactly the same batches in the same order (the
Schedule draws epoch e's permutation from (seed, e)), so they can share every step: one TensorFlow
graph runs `steps_per_execution` steps of all members in a while loop.

Each member keeps everything else its own: its initialization (its model is built right after
`set_random_seed(seed)`, as a solo run's is), its optimizer and learning rate, its architecture (BN
or not, any depth, MLP or CNN, any precision). Members share no variables, so one member's NaN never
reaches another's numbers. Each member's loss is the same mean cross-entropy Keras's `fit` computes,
so a member learns what it learns alone, bit for bit on CPU (tests/test_engines.py).

A member that diverges is dropped by the lifecycle; the compiled loop keeps computing it (its
numbers are ignored), so nothing is retraced or recompiled: two traces per group in all, one for
full batches and one for an epoch's partial last batch.
"""

from __future__ import annotations

import time

import numpy as np

from bncompare import interrupts
from bncompare.backend import import_keras
from bncompare.config import Run
from bncompare.data import Dataset
from bncompare.engines.common import (data_key, make_optimizer, restore, steps_per_execution,
                                      training_state)
from bncompare.engines.contract import EVAL_BATCH_SIZE, START_PROBE, Member, Stopwatch
from bncompare.engines.fit import device_arrays
from bncompare.models import build_model, loss_function, per_example_loss
from bncompare.seeding import set_random_seed

# Members per group. Memory grows with it (every member's activations for one batch) and so does
# graph-building time; 16 holds a learning-rate x BN sweep of 8 rates.
MAX_MEMBERS = 16


class TfPackEngine:
    """Same-seed runs of one invocation trained together (TensorFlow backend)."""

    name = "tf_pack"

    def refuses(self, run: Run) -> str | None:
        if run.params.get("train.jit_compile") is True:
            return "train.jit_compile: true trains alone through fit"
        return None

    def group_key(self, run: Run) -> tuple:
        params = run.params
        return ("tf_pack", data_key(run)) + tuple(params[key] for key in (
            "train.batch_size", "train.epochs", "train.steps", "record.eval_every", "train.seed")) + (
            params.get("record.eval_at_start", False), steps_per_execution(params, "tensorflow"))

    def max_members(self, run: Run, data: Dataset | None = None) -> int:
        return MAX_MEMBERS

    def train(self, members: list[Member], data: Dataset) -> float:
        """Train the members (one group_key) together; return the seconds spent compiling."""
        keras = import_keras()
        import tensorflow as tf

        models, optimizers = [], []
        for member in members:
            set_random_seed(member.run.seed)  # the same initial weights as alone
            models.append(build_model(member.run.params, data.input_shape, data.classes))
            optimizers.append(make_optimizer(member.run.params))
            optimizers[-1].build(models[-1].trainable_variables)
        schedule, seed = members[0].schedule, members[0].run.seed  # shared: see group_key
        steps_per_call = steps_per_execution(members[0].run.params, "tensorflow")
        x_train, y_train = device_arrays(data)
        validation = [(tf.constant(data.x_val[i:i + EVAL_BATCH_SIZE]),
                       tf.constant(data.y_val[i:i + EVAL_BATCH_SIZE]))
                      for i in range(0, len(data.x_val), EVAL_BATCH_SIZE)]
        full_steps = len(data.x_train) // schedule.batch_size  # per epoch; a partial batch comes last
        loop = _Loop(tf, keras, models, optimizers, x_train, y_train)

        probe = min(START_PROBE, len(data.x_train))
        starts = loop.evaluate([(x_train[:probe], y_train[:probe])])[0] / probe
        for member, start in zip(members, starts):
            member.recorder.start(float(start))
        # The lifecycle groups members by the step they resume at: one step for all.
        resumed_at = max(restore(m, model, optimizer) for m, model, optimizer
                         in zip(members, models, optimizers))

        def evaluate_at(step: int, interval: np.ndarray | None, seconds: float) -> None:
            scores = loop.evaluate(validation)
            for i, member in enumerate(members):
                member.recorder.point(
                    {"epoch": schedule.epoch_of(step), "step": step,
                     "loss": None if interval is None else float(interval[0, i] / interval[2, 0]),
                     "accuracy": None if interval is None else float(interval[1, i] / interval[2, 0]),
                     "val_loss": float(scores[0, i] / len(data.x_val)),
                     "val_accuracy": float(scores[1, i] / len(data.x_val)),
                     "seconds": round(seconds, 3)}, model=models[i], optimizer=optimizers[i],
                    state=lambda i=i: training_state(models[i], optimizers[i]))

        stopwatch = Stopwatch()
        if schedule.is_eval(0) and not resumed_at:
            evaluate_at(0, None, 0.0)
        # Training means are kept as fit keeps them, so they agree to the last bit: float32 sums per
        # chunk (one `fit` call), their float32 mean, then weighted by the chunk's examples in float64.
        interval = np.zeros((3, len(members)))  # loss x examples, accuracy x examples, examples
        examples, epoch_order = 0, (None, None)
        for first, last in schedule.chunks():
            if last <= resumed_at:
                continue
            epoch = first // schedule.steps_per_epoch
            if epoch_order[0] != epoch:
                order = schedule.permutation(seed, epoch).astype(np.int32)
                cut = full_steps * schedule.batch_size
                epoch_order = (epoch, (tf.constant(order[:cut].reshape(full_steps, schedule.batch_size)),
                                       tf.constant(order[cut:].reshape(1, -1))))
            full, partial = epoch_order[1]
            begin = first - epoch * schedule.steps_per_epoch
            end = last - epoch * schedule.steps_per_epoch
            for start in range(begin, end, steps_per_call):  # blocks from the chunk's start, as fit
                stop = min(start + steps_per_call, end)
                if stopwatch.first is None and start < full_steps:
                    # A call of zero steps traces and compiles the loop and trains nothing: its
                    # time is the compile time, also for a run that is one call (see Stopwatch).
                    started = time.perf_counter()
                    loop.train(full, 0, start)
                    loop.sums.numpy()
                    stopwatch.add(time.perf_counter() - started, 0)
                started = time.perf_counter()
                if start < full_steps:
                    loop.train(full, min(stop, full_steps) - start, start)
                if stop > full_steps:  # the epoch's partial last batch, its own shape
                    loop.train(partial, 1, 0)
                sums = loop.sums.numpy()  # waits for the block: the time below is its real cost
                stopwatch.add(time.perf_counter() - started, stop - start)
                interrupts.check()
                examples += (min(stop, full_steps) - min(start, full_steps)) * schedule.batch_size
                examples += partial.shape[1] if stop > full_steps else 0
                step = epoch * schedule.steps_per_epoch + stop
                means = sums[:2] / np.float32(examples)  # float32, as Keras's Mean metric
                for i, member in enumerate(members):
                    member.recorder.block(step, float(means[0, i]), float(means[1, i]))
                if not any(member.recorder.active for member in members):
                    return stopwatch.compile
            interval[:2] += means.astype(np.float64) * examples
            interval[2] += examples
            examples = 0
            loop.sums.assign(tf.zeros_like(loop.sums))
            if not schedule.is_eval(last):
                continue
            evaluate_at(last, interval, stopwatch.training)
            interval[:] = 0
            if not any(member.recorder.active for member in members):
                return stopwatch.compile
            interrupts.check()
        return stopwatch.compile


class _Loop:
    """The compiled training loop of a group, and its training sums since the chunk began:
    sums[0] = loss x examples, sums[1] = correct predictions, one column per member."""

    def __init__(self, tf, keras, models, optimizers, x_train, y_train):
        self.tf = tf
        self.sums = tf.Variable(tf.zeros([2, len(models)]), trainable=False)

        # The loss object fit uses (sum over the batch / batch size), not an equivalent formula:
        # an equivalent reduction can round differently, and BN training amplifies that.
        loss_fn = loss_function(keras)

        def train(order, steps, offset):
            # `steps` rows of `order` from `offset`: a while loop inside one graph.
            for i in tf.range(steps):
                # gather, not order[offset + i]: a slice start would be a trace-time constant.
                indices = tf.gather(order, offset + i)
                x, y = tf.gather(x_train, indices), tf.gather(y_train, indices)
                with tf.GradientTape() as tape:
                    outputs = [model(x, training=True) for model in models]
                    # Keras's fit: the mean over the batch (sum_over_batch_size), then loss scaling.
                    losses = [loss_fn(y, out) for out in outputs]
                    scaled = [optimizer.scale_loss(loss) for optimizer, loss in zip(optimizers, losses)]
                # One tape, disjoint variables: each member's gradient comes from its own loss only.
                grads = tape.gradient(scaled, [model.trainable_variables for model in models])
                for optimizer, model, grad in zip(optimizers, models, grads):
                    optimizer.apply(grad, model.trainable_variables)
                count = tf.cast(tf.shape(indices)[0], tf.float32)
                correct = [_correct(tf, y, out) for out in outputs]
                self.sums.assign_add(tf.stack([tf.stack(losses) * count, tf.stack(correct)]))

        def evaluate(x, y):
            outputs = [model(x, training=False) for model in models]
            return tf.stack([tf.stack([tf.reduce_sum(per_example_loss(keras, y, out)) for out in outputs]),
                             tf.stack([_correct(tf, y, out) for out in outputs])])

        # Graph mode without XLA: see engines.common.jit_compile. reduce_retracing: the partial last
        # batch of an epoch and of the validation data are the only other shapes.
        self._train = tf.function(train, jit_compile=False, reduce_retracing=True)
        self._evaluate = tf.function(evaluate, jit_compile=False, reduce_retracing=True)

    def train(self, order, steps: int, offset: int) -> None:
        # Tensors, not Python ints: a new int would mean a new trace per value.
        tf = self.tf
        self._train(order, tf.constant(steps, tf.int32), tf.constant(offset, tf.int32))

    def evaluate(self, batches) -> np.ndarray:
        """[2, members]: loss summed over examples, correct predictions."""
        return sum(self._evaluate(x, y).numpy() for x, y in batches)


def _correct(tf, y, out):
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(out, -1, output_type=tf.int32), y), tf.float32))
