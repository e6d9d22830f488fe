"""Packed training: runs that would see identical batches train together in one compiled step.

Small BN studies are dominated by per-step overhead (Python, dispatch, tiny matmuls), not
arithmetic. Runs of one invocation that share the data (dataset, validation split, train_limit), the
batch size, the schedule (epochs/steps, eval_every) and the seed see exactly the same batches in the
same order (the Schedule draws epoch e's permutation from (seed, e)), so they can share every step:
one XLA-compiled TensorFlow loop runs `steps_per_execution` steps of all members at once.

Runs with different seeds see different batches and go into different packs: a learning-rate x BN
sweep packs whole per seed. Each member keeps everything else its own: its initialization (its model
is built right after `set_random_seed(seed)`, as an unpacked run's is), its optimizer and learning
rate, its architecture (BN or not, any depth, MLP or CNN). Members share no variables, so one
member's NaN never reaches another's numbers.

A member whose loss becomes NaN/inf is recorded as diverged at the end of the compiled call in which
it happened (as an unpacked run with the same steps_per_execution is), or at an eval point when its
loss explodes, and is then removed from the pack: its updates stop, the step is recompiled for the
others, and they go on. Every member writes a metrics.json with the same keys and history length as
an unpacked run's; its `seconds` are the pack's training time (the members trained at once).

`train.pack: auto` packs on the TensorFlow backend (a pack of one included: the fused loop is faster
than `fit`); runs recording activations, gradients or TensorBoard, and other backends, train alone
through `train.train_and_evaluate`. `off` trains every run alone.
"""

from __future__ import annotations

import functools
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
from bncompare.models import build_model, per_example_loss
from bncompare.results import MetricsFile
from bncompare.train import (EVAL_BATCH_SIZE, START_PROBE, explosion_limit, Listener, Schedule, _is_bad,
                             device_arrays, jit_compile, make_optimizer, steps_per_execution)

# Members per pack. Memory grows with it (every member's activations for one batch) and so does
# XLA compile time (~10 s CPU for 16 MLPs); 16 holds a learning-rate x BN sweep of 8 rates.
MAX_PACK = 16
# What an unpacked run would not record: these need per-run hooks that the fused step has not.
RECORDERS = ("record.activations", "record.gradients", "record.tensorboard")


def pack_key(run: Run, backend: str) -> tuple | None:
    """Runs with equal keys train on identical batches and can share a pack; None: train alone."""
    params = run.params
    if (backend != "tensorflow" or params.get("train.pack", "auto") == "off"
            or any(params.get(key) for key in RECORDERS)):
        return None
    return tuple(params[key] for key in (
        "data.dataset", "data.validation", "data.train_limit", "train.batch_size", "train.epochs",
        "train.steps", "record.eval_every", "train.seed")) + (
        steps_per_execution(params), jit_compile(params, backend))


def plan(runs: list[Run], backend: str) -> list[tuple[list[Run], bool]]:
    """The runs grouped for training, in order of each group's first run: (runs, packed?)."""
    groups: dict[Any, list[Run]] = {}
    order: list[tuple[list[Run], bool]] = []
    for run in runs:
        key = pack_key(run, backend)
        if key is None:
            order.append(([run], False))
            continue
        group = groups.get(key)
        if group is None or len(group) >= MAX_PACK:
            group = groups[key] = []
            order.append((group, True))
        group.append(run)
    return order


# ---- training ------------------------------------------------------------------------------------


@dataclass
class Member:
    run: Run
    metrics: MetricsFile
    slot: int
    model: Any = None
    optimizer: Any = None
    status: str | None = None  # set when it leaves the pack
    exploded: float = math.inf  # its training-loss limit (train.EXPLOSION_FACTOR)


def train_pack(runs: list[Run], run_dirs: list[Path], data: Dataset, *, environment: dict[str, Any],
               listener: Listener | None = None) -> list[str]:
    """Train `runs` (one pack_key) together; return each one's final status, in order.

    Like `train.train_and_evaluate` for each member: a failure is recorded in every member still
    training; KeyboardInterrupt is recorded as `interrupted` and re-raised.
    """
    listener = listener or Listener()
    members = [Member(run, MetricsFile(run_dir, experiment=run.experiment, run_id=run.run_id,
                                       variant=run.variant, params=run.params,
                                       environment=environment), slot)
               for slot, (run, run_dir) in enumerate(zip(runs, run_dirs))]
    try:
        _train(members, data, listener)
    except KeyboardInterrupt:
        _finish_rest(members, "interrupted", "interrupted by the user (SIGINT/SIGTERM)")
        raise
    except Exception as e:  # noqa: BLE001 - one broken pack must not stop the sweep
        refused = _finish_rest(members, "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        if refused:  # not even the failure could be written: the runner says which file and why
            raise refused from e
    return [m.status for m in members]


def _finish_rest(members: list[Member], status: str, error: str) -> OSError | None:
    """Record `status` for every member still training; the first write the disk refused, if any."""
    refused = None
    for member in members:
        if member.status is None:
            member.status = status
            try:
                member.metrics.finish(status, error=error)
            except OSError as e:  # the disk refuses; the runner reports the run as failed
                refused = refused or e
    return refused


def _train(members: list[Member], data: Dataset, listener: Listener) -> None:
    keras = import_keras()
    import tensorflow as tf

    params = members[0].run.params  # shared by every member: see pack_key
    seed = members[0].run.seed
    for member in members:
        keras.utils.set_random_seed(member.run.seed)  # the same initial weights as unpacked
        member.model = build_model(member.run.params, data.input_shape, data.classes)
        member.optimizer = make_optimizer(member.run.params)
        member.optimizer.build(member.model.trainable_variables)
    schedule = Schedule.for_run(params, len(data.x_train))
    for member in members:
        listener.started(member.run, schedule, slot=member.slot)
    k = steps_per_execution(params)
    jit = jit_compile(params, "tensorflow") is True
    x_train, y_train = device_arrays(data)
    validation = [(tf.constant(data.x_val[i:i + EVAL_BATCH_SIZE]),
                   tf.constant(data.y_val[i:i + EVAL_BATCH_SIZE]))
                  for i in range(0, len(data.x_val), EVAL_BATCH_SIZE)]
    full_steps = len(data.x_train) // schedule.batch_size  # per epoch; a partial batch comes last

    active = list(members)
    step_fn = _Step(tf, keras, active, x_train, y_train, jit)
    # Each member's divergence limit from its own untrained loss, measured as train.py does.
    probe = min(START_PROBE, len(data.x_train))
    starts = step_fn.evaluate([(x_train[:probe], y_train[:probe])])[0] / probe
    for member, start in zip(members, starts):
        member.exploded = explosion_limit(float(start), data.classes)
    seconds, examples, epoch_order = 0.0, 0, (None, None)

    def leave(member: Member, status: str, step: int) -> None:
        member.status = status
        member.metrics.finish(status, diverged_at={"epoch": schedule.epoch_of(step), "step": step})

    for first, last in schedule.chunks():
        epoch = first // schedule.steps_per_epoch
        if epoch_order[0] != epoch:
            order = np.random.default_rng((seed, epoch)).permutation(schedule.examples).astype(np.int32)
            cut = full_steps * schedule.batch_size
            epoch_order = (epoch, (tf.constant(order[:cut].reshape(full_steps, schedule.batch_size)),
                                   tf.constant(order[cut:].reshape(1, -1))))
        full, partial = epoch_order[1]
        begin, end = first - epoch * schedule.steps_per_epoch, last - epoch * schedule.steps_per_epoch
        for start in range(begin, end, k):  # blocks of k steps from the chunk's start, as fit does
            stop = min(start + k, end)
            started = time.perf_counter()
            if start < full_steps:
                step_fn(full, min(stop, full_steps) - start, start)
            if stop > full_steps:  # the epoch's partial last batch, its own shape
                step_fn(partial, 1, 0)
            sums = step_fn.sums.numpy()  # waits for the block: the time below is its real cost
            seconds += time.perf_counter() - started
            interrupts.check()
            examples += (min(stop, full_steps) - min(start, full_steps)) * schedule.batch_size
            examples += partial.shape[1] if stop > full_steps else 0
            step = epoch * schedule.steps_per_epoch + stop
            diverged = [i for i, member in enumerate(active) if not np.isfinite(sums[0, i])]
            for i, member in enumerate(active):
                if i not in diverged:
                    listener.step(step, float(sums[0, i] / examples), float(sums[1, i] / examples),
                                  slot=member.slot)
            if diverged:
                for i in diverged:
                    leave(active[i], "diverged", step)
                active = [m for i, m in enumerate(active) if i not in diverged]
                if not active:
                    return
                step_fn = step_fn.without(diverged)
        if last not in schedule.eval_steps:
            continue
        sums = step_fn.sums.numpy()
        scores = step_fn.evaluate(validation)
        leaving = []
        for i, member in enumerate(active):
            point = {"epoch": schedule.epoch_of(last), "step": last,
                     "loss": float(sums[0, i] / examples), "accuracy": float(sums[1, i] / examples),
                     "val_loss": float(scores[0, i] / len(data.x_val)),
                     "val_accuracy": float(scores[1, i] / len(data.x_val)),
                     "seconds": round(seconds, 3)}
            if _is_bad(point["val_loss"]) or point["loss"] > member.exploded:
                leave(member, "diverged", last)
                leaving.append(i)
                continue
            member.metrics.add_point(point)
            listener.point(point, slot=member.slot)
        examples = 0
        step_fn.sums.assign(tf.zeros_like(step_fn.sums))
        if leaving:
            active = [m for i, m in enumerate(active) if i not in leaving]
            if not active:
                return
            step_fn = step_fn.without(leaving)
    for member in active:
        member.status = "completed"
        member.metrics.finish("completed")


class _Step:
    """The compiled training loop of the active members, and their training sums since the last
    eval point: sums[0] = loss x examples, sums[1] = correct predictions."""

    def __init__(self, tf, keras, members: list[Member], x_train, y_train, jit: bool, sums=None):
        self.tf, self.keras, self.members, self.jit = tf, keras, members, jit
        self.x_train, self.y_train = x_train, y_train
        self.sums = tf.Variable(sums if sums is not None else tf.zeros([2, len(members)]),
                                trainable=False)
        models = [m.model for m in members]
        optimizers = [m.optimizer for m in members]
        loss_fn = functools.partial(per_example_loss, keras)

        def train(order, steps, offset):
            # `steps` rows of `order` from `offset`: a while loop inside one compiled call.
            for i in tf.range(steps):
                # gather, not order[offset + i]: XLA would treat a slice start as a compile-time
                # constant and compile once per offset. `steps` is one (loop bound): 3 values at most.
                indices = tf.gather(order, offset + i)
                x, y = tf.gather(x_train, indices), tf.gather(y_train, indices)
                with tf.GradientTape() as tape:
                    outputs = [model(x, training=True) for model in models]
                    # Keras's default reduction (sum over batch size): the mean over the batch.
                    losses = [tf.reduce_mean(loss_fn(y, out)) for out in outputs]
                # One tape, disjoint variables: each member's gradient comes from its own loss only.
                grads = tape.gradient(losses, [model.trainable_variables for model in models])
                for optimizer, model, grad in zip(optimizers, models, grads):
                    optimizer.apply(grad, model.trainable_variables)
                count = tf.cast(tf.shape(indices)[0], tf.float32)
                correct = [_correct(tf, y, out) for out in outputs]
                self.sums.assign_add(tf.stack([tf.stack(losses) * count, tf.stack(correct)]))

        def evaluate(x, y):
            outputs = [model(x, training=False) for model in models]
            return tf.stack([tf.stack([tf.reduce_sum(loss_fn(y, out)) for out in outputs]),
                             tf.stack([_correct(tf, y, out) for out in outputs])])

        self._train = tf.function(train, jit_compile=jit)
        self._evaluate = tf.function(evaluate, jit_compile=jit)

    def __call__(self, order, steps: int, offset: int) -> None:
        # Tensors, not Python ints: a new int would mean a new trace (and XLA compile) per value.
        tf = self.tf
        self._train(order, tf.constant(steps, tf.int32), tf.constant(offset, tf.int32))

    def evaluate(self, batches) -> np.ndarray:
        """[2, members]: validation loss summed over examples, correct predictions."""
        return sum(self._evaluate(x, y).numpy() for x, y in batches)

    def without(self, leaving: list[int]) -> "_Step":
        """The step for the members that stay (a new trace and compile)."""
        keep = [i for i in range(len(self.members)) if i not in leaving]
        sums = self.tf.gather(self.sums, keep, axis=1)
        return _Step(self.tf, self.keras, [self.members[i] for i in keep], self.x_train,
                     self.y_train, self.jit, sums)


def _correct(tf, y, out):
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(out, -1, output_type=tf.int32), y), tf.float32))


# ---- the runner's side -----------------------------------------------------------------------


def execute_pack(runs: list[Run], out: Path, prepared, display, force: bool) -> list:
    """Claim each run as `runner.execute_one` does, train the claimed ones as one pack, and
    return an Outcome per run (in order); the display hears of each as it is settled."""
    from bncompare.results import UnreadableRun, read_run
    from bncompare.runner import Outcome, claim_run, data_key, finished_record

    outcomes: dict[int, Any] = {}
    claimed: list[tuple[int, Run, Path, Any]] = []
    try:
        for i, run in enumerate(runs):
            run_dir, claim, outcome = claim_run(run, out, force)
            if outcome is not None:
                outcomes[i] = outcome
            else:
                claimed.append((i, run, run_dir, claim))
        if claimed:
            statuses = train_pack([c[1] for c in claimed], [c[2] for c in claimed],
                                  prepared.datasets[data_key(claimed[0][1])],
                                  environment=prepared.environment, listener=display)
            for (i, run, run_dir, _), status in zip(claimed, statuses):
                try:
                    metrics = read_run(run_dir).metrics
                except UnreadableRun as e:
                    outcomes[i] = Outcome(run, "failed", note=f"metrics.json: {e}")
                    continue
                note = (metrics.get("error") or "").splitlines()[0] if status == "failed" else ""
                outcomes[i] = Outcome(run, status, metrics.get("final") or {}, note)
    except KeyboardInterrupt:
        for i, run in enumerate(runs):
            outcomes.setdefault(i, Outcome(run, "interrupted", note="interrupted"))
    except OSError as e:  # the disk refused (read-only, full): reported as runner.execute_one does
        for i, run, run_dir, _ in claimed:
            done = finished_record(run_dir)  # members that finished before the disk said no
            outcomes.setdefault(i, Outcome(run, done["status"], done.get("final") or {}) if done else
                                Outcome(run, "failed", note=f"cannot write {e.filename or run_dir}: "
                                                            f"{e.strerror or e}"))
    finally:
        for _, _, _, claim in claimed:
            claim.release()
    slots = {i: slot for slot, (i, *_) in enumerate(claimed)}
    result = []
    for i in range(len(runs)):
        display.run_finished(outcomes[i], slot=slots.get(i, 0))
        result.append(outcomes[i])
    return result
