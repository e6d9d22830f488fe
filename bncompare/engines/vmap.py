"""The vmap engine: many runs trained as one JAX program (JAX backend only).

Each member is the Keras model its solo run would build (`build_model` right after
`keras.utils.set_random_seed(seed)`, so identical initial weights) with the optimizer `make_optimizer`
gives it. The engine takes their variable values out, stacks them along a leading member axis, and
trains them with one member's model and optimizer as the traced template:

    model.stateless_call(trainable, non_trainable, x, training=True)    forward + BN moving stats
    jax.value_and_grad                                                  gradients of the batch mean
    optimizer.stateless_apply(optimizer_variables, grads, trainable)    the member's update

under `jax.vmap` over members (for convolutional models `lax.map`: see `_Group._over_members`) and
`lax.fori_loop` over steps: one compiled call trains every member for a block of steps. Under
mixed_float16 each member's loss is scaled by its own LossScaleOptimizer state, as in fit. The
learning rate is one of the optimizer's variables, so stacking the members' optimizer variables
gives each its own rate; weight decay is substituted per member while tracing
(Keras reads `optimizer.weight_decay` only as a number to multiply by). Each member gathers its own
batches on the device from its epoch permutation (`Schedule.batch_indices`), uploaded once per epoch.

What must be equal for one compiled program is the group key (`group_key`): every param except the
learning rate, the weight decay's value, the seed, the initializer and keys that only change speed.
SGD's momentum and BN's momentum and epsilon stay in the key: Keras branches on `momentum != 0` in
Python, and BN's `1 - momentum` computed from a traced float32 instead of a Python float would round
differently from a solo run.
A member whose recorder turns inactive (diverged) keeps its last state: the block's result is
selected per member with `jnp.where`, so nothing is recompiled.
At eval points, validation (and train_eval) is vmapped; what needs a Keras model (instruments,
probes, BN evaluation modes, the test split) runs on the template loaded with one member's state at
a time (vmap_eval.py), through the Recorder's own code.

Steps per call: a call ends at the chunk's end (eval point or epoch end) or after `steps` steps,
whichever is first; `steps` starts from an arithmetic estimate (STEP_FLOPS_PER_SECOND) and then
follows the measured time per step so that a call takes about CALL_SECONDS, keeping progress and
Ctrl-C responsive while one dispatch per call costs nothing against a second of arithmetic. The
step count is a traced argument, so changing it never recompiles. NaN/inf is reported at the same
step a solo run with the same `train.steps_per_execution` reports it: the end of the
steps_per_execution block (counted from the chunk start, as Keras's fit counts) in which the member's
loss first became non-finite.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Hashable

import numpy as np

from bncompare import interrupts
from bncompare.backend import backend_name, import_keras
from bncompare.config import Run
from bncompare.data import Dataset
from bncompare.models import (BATCH_NORMS, CONVOLUTIONAL, build_model, layer_sizes, loss_function,
                              norm_of, per_example_loss)
# Schedule (the members' `schedule`) is only used through its documented methods, wherever it lives.
from bncompare.engines.common import check_shapes, make_optimizer, steps_per_execution
from bncompare.engines.contract import EVAL_BATCH_SIZE, START_PROBE
from bncompare.engines.vmap_eval import as_member, decaying
from bncompare.seeding import set_random_seed

NAME = "vmap"
# Target duration of one compiled training call (see the module docstring).
CALL_SECONDS = 1.0
# First guess of the training arithmetic rate (FLOP/s) before any call has been timed; low on
# purpose, so the first call is short rather than long.
STEP_FLOPS_PER_SECOND = {"cpu": 5e9, "gpu": 2e12}
# Members per group on a CPU: beyond this the program is compute-bound already and compile time and
# the first result's delay only grow.
CPU_MAX_MEMBERS = 64
# Compiled programs kept between groups (a few per distinct group key and size).
PROGRAMS_KEPT = 32
# Fraction of the free device memory (a CPU: of the machine's memory) a group may plan to use
# (XLA needs room for temporaries, and a CPU for everything else).
MEMORY_SHARE = 0.5
# Keys whose values may differ between members of one group. The rest of a run's params must be
# equal. `train.momentum` matters only to the momentum optimizer and `model.bn_*` only with BN, so
# `group_key` drops them where they are ignored.
PER_MEMBER = ("train.learning_rate", "train.weight_decay", "train.seed", "model.init")
SPEED_ONLY = ("train.jit_compile", "train.pack", "record.tensorboard")
# ---- admission: an allow-list. What is not on it trains alone through the fit engine. ----------
KINDS = ("mlp", "cnn", "resmlp", "rescnn")
NORMS = (None, "none", "batch", "layer", "group", "rms", "renorm", "ghost")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
# Every param the engine acts on: through the member's own model (build_model) and optimizer
# (make_optimizer), its Schedule, its eval points (validation loss and accuracy, record.train_eval)
# and the lifecycle's checkpoints.
HANDLED = frozenset({
    "data.dataset", "data.validation", "data.train_limit",
    "model.kind", "model.depth", "model.width", "model.hidden", "model.activation",
    "model.batch_norm", "model.norm", "model.groups", "model.ghost_batch_size",
    "model.renorm_clipping", "model.bn_noise", "model.skip_init", "model.bn_placement",
    "model.bn_momentum", "model.bn_epsilon", "model.init", "model.dropout",
    "train.optimizer", "train.learning_rate", "train.momentum", "train.weight_decay",
    "train.batch_size", "train.epochs", "train.steps", "train.precision", "train.seed",
    "train.steps_per_execution", "train.jit_compile", "train.pack",
    "record.eval_every", "record.train_eval", "record.keep_checkpoint", "record.precise_examples",
    "record.landscape_factors",
    # Eval-time features: at an eval point the member is loaded into the template model, and the
    # lifecycle measures it with the code a solo run uses (vmap_eval.py, tests/test_vmap_eval.py).
    "record.activations", "record.gradients", "record.tensorboard", "record.landscape", "record.ics",
    "record.eval_at_start", "record.test", "record.bn_eval", "model.bn_variance"})
# Normalisers that use the batch's statistics (models.BATCH_NORMS) in a convolutional model: a
# 2x32-filter BN CNN (MNIST, 32 steps) ended up to 1e-2 (loss) and 0.004 (accuracy) from its solo
# fit, 2.5x outside the contract, also as a group of one member: XLA compiles a convolution step
# inside the block's lax loop differently from fit's top-level step (docs/vmap.md), and BN's
# training amplifies the rounding.
CONVOLUTION_WITH_BATCH_STATISTICS = (
    "measured outside its solo run's chaos floor in the vmap engine, even as a group of one "
    "(docs/vmap.md)")
# Model kinds whose members run one after another (lax.map) inside the program: the convolutional
# ones (models.CONVOLUTIONAL), see _over_members.
SEQUENTIAL_KINDS = CONVOLUTIONAL


class VmapEngine:
    """Trains a group of runs as one vmapped JAX program (see the module docstring)."""

    name = NAME

    def __init__(self):
        # Compiled programs by (group key, member count, argument shapes): the groups a large sweep
        # is split into (same key, same size) compile once.
        self._programs: dict[Any, Future] = {}

    def refuses(self, run: Run) -> str | None:
        """Why this engine cannot train `run` (it then trains alone with fit), or None."""
        params = run.params
        backend = backend_name()  # not Keras's own answer: the --jobs parent must not import it
        if backend != "jax":
            return f"the vmap engine needs the JAX backend (this is {backend})"
        for key in params:
            if key not in HANDLED:
                return f"{key}: not a setting the vmap engine handles"
        for key, allowed in (("model.kind", KINDS), ("model.norm", NORMS),
                             ("train.precision", PRECISIONS), ("train.optimizer", OPTIMIZERS)):
            if params.get(key) not in allowed:
                return f"{key}={params.get(key)}: not one the vmap engine trains ({_listed(allowed)})"
        norm = norm_of(params)
        if params["model.kind"] in SEQUENTIAL_KINDS and norm in BATCH_NORMS:
            return (f"model.kind={params['model.kind']} with model.norm={norm}: "
                    + CONVOLUTION_WITH_BATCH_STATISTICS)
        return None

    def group_key(self, run: Run) -> Hashable:
        """Runs with equal keys can train as one program: all params but the per-member ones."""
        params = dict(run.params)
        for key in PER_MEMBER + SPEED_ONLY:
            params.pop(key, None)
        params["model.hidden"] = tuple(layer_sizes(run.params))
        params.pop("model.depth", None)
        params.pop("model.width", None)
        if run.params.get("train.optimizer") != "momentum":
            params.pop("train.momentum", None)
        if norm_of(run.params) == "none":  # no normaliser reads BN's momentum and epsilon
            params.pop("model.bn_momentum", None)
            params.pop("model.bn_epsilon", None)
        # Decay on or off changes the program (make_optimizer passes None for 0); its value does not.
        params["weight_decay_on"] = bool(run.params.get("train.weight_decay"))
        params["train.steps_per_execution"] = steps_per_execution(run.params, "jax")
        return tuple(sorted((key, _hashable(value)) for key, value in params.items()))

    def max_members(self, run: Run, data: Dataset | None = None) -> int:
        """How many such runs fit in one group on the default device (memory estimate; without
        the data, as for --dry-run, the CPU cap)."""
        if data is None:  # e.g. the --jobs parent, which plans without touching a device
            return CPU_MAX_MEMBERS
        import jax

        device = jax.devices()[0]
        per_member = member_bytes(run.params, data)
        shared = data.x_train.nbytes + data.x_val.nbytes  # one copy for the whole group
        if device.platform == "cpu":
            memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            fit = int((memory * MEMORY_SHARE - shared) // per_member)
            return max(1, min(CPU_MAX_MEMBERS, fit))
        stats = device.memory_stats() or {}
        free = stats.get("bytes_limit", 0) - stats.get("bytes_in_use", 0)
        if free <= 0:  # the platform reports no memory statistics
            return CPU_MAX_MEMBERS
        return max(1, int((free * MEMORY_SHARE - shared) // per_member))

    def train(self, members: list, data: Dataset) -> None:
        """Train `members` (equal group keys) to the end of their schedule (engines/__init__.py)."""
        if members:
            if len(self._programs) > PROGRAMS_KEPT:
                self._programs.clear()
            _Group(members, data, self.group_key(members[0].run), self._programs).train()


def _positions(layer) -> int:
    """Output positions of a layer: the pixels of a convolution's feature map, 1 for a vector."""
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # a layer used more than once, or never called
        return 1
    return int(np.prod(shape[1:-1])) if len(shape) > 2 else 1


def _listed(values: tuple) -> str:
    return ", ".join(str(v) for v in values if v is not None)


def member_bytes(params: dict[str, Any], data: Dataset) -> int:
    """Device bytes one member needs: weights, gradients, optimizer slots, one batch's activations
    (training and evaluation), and its epoch permutation."""
    model = build_model(params, data.input_shape, data.classes)
    weights = sum(int(np.prod(v.shape)) for v in model.weights)
    slots = {"sgd": 0, "momentum": 1, "adam": 2, "rmsprop": 1}[params["train.optimizer"]]
    activations = sum(int(np.prod(layer.output.shape[1:])) for layer in model.layers)
    # Training keeps each layer's output for the backward pass plus a gradient of the same size.
    batch = 3 * activations * params["train.batch_size"] + activations * EVAL_BATCH_SIZE
    return 4 * ((2 + slots) * weights + batch + len(data.x_train))


def _hashable(value: Any) -> Hashable:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


_DEVICE_COPIES: dict[tuple, tuple] = {}


def _on_device(x: np.ndarray, y: np.ndarray, device, batch: int | None = None,
               count: int | None = None) -> tuple:
    """(x, int32 y) on `device`, or a list of such pairs of `batch` examples from the first `count`;
    copied once and kept for every group and eval point of a sweep; one dataset's copies at a time.

    Batches are cut on the host: slicing a device array compiles a program per shape."""
    import jax

    key = (id(x), id(y), str(device), batch, count)
    if key not in _DEVICE_COPIES:
        if len(_DEVICE_COPIES) >= 4:  # training set; validation, start-loss, train_eval batches
            _DEVICE_COPIES.clear()
        held = (x, y)
        x, y = x[:count], y[:count].astype(np.int32)
        pieces = ([(x, y)] if batch is None else
                  [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)])
        copies = [(jax.device_put(a, device), jax.device_put(b, device)) for a, b in pieces]
        # The arrays themselves are kept too, so that their ids cannot be reused while cached.
        _DEVICE_COPIES[key] = (held, copies[0] if batch is None else copies)
    return _DEVICE_COPIES[key][1]


class _Group:
    """The stacked state of a group and its compiled training and evaluation calls."""

    def __init__(self, members: list, data: Dataset, structure: Hashable,
                 programs: dict[Any, Future]):
        import jax
        import jax.numpy as jnp

        self.keras = keras = import_keras()
        self.members, self.data = members, data
        self.params = params = members[0].run.params
        self.schedule = members[0].schedule  # equal for all: the group key holds its params
        self.batch = self.schedule.batch_size
        self.per_execution = steps_per_execution(params, "jax")
        self.device = jax.devices()[0]
        model, optimizer, states = self._initial_states(members, data)
        # The template every member's numbers are traced through: the group key makes the
        # structure (and weight decay on/off, momentum) the same for all.
        self.model, self.optimizer = model, optimizer
        # A resumed group is padded to the size its members were trained at (idle copies of the
        # first member): XLA rounds a vmapped program differently for different member counts, and
        # the members that finished before the interruption are not trained again.
        self.lanes = max([len(members)] + [(m.resume.metrics.get("engine") or {}).get("members", 0)
                                           for m in members if m.resume is not None])
        padding = self.lanes - len(members)
        if padding:  # recorded, so that a second resume pads to the same size again
            for member in members:
                member.recorder.trained_in(self.lanes)
        # Stacked on the host and copied once: jnp.stack compiles a program per leaf shape.
        stacked = jax.tree.map(lambda *values: np.stack(values), *states, *[states[0]] * padding)
        self.state = jax.device_put(stacked, self.device)
        decays = [m.run.params["train.weight_decay"] for m in members]
        self.decay = jnp.asarray(decays + decays[:1] * padding, jnp.float32)
        self.active = np.arange(self.lanes) < len(members)
        self.x_train, self.y_train = _on_device(data.x_train, data.y_train, self.device)
        # Multiply-adds per example: each weight once per output position (a convolution's kernel
        # at every pixel of its output map, a dense layer's once).
        self.multiply_adds = sum(int(np.prod(v.shape)) * _positions(layer)
                                 for layer in model.layers for v in layer.trainable_variables)
        self.sequential = params["model.kind"] in SEQUENTIAL_KINDS
        self.structure, self._programs = structure, programs
        self._compiler = ThreadPoolExecutor(max_workers=3, thread_name_prefix="vmap-compile")
        self._loss = loss_function(keras)

    @staticmethod
    def _initial_states(members: list, data: Dataset) -> tuple:
        """(a template model, its built optimizer, each member's (trainable, non-trainable,
        optimizer) values): exactly the values each member's solo run starts from.

        A member's weights are drawn by `build_model` right after seeding with its seed, from its
        params less the optimizer's numbers (which no model reads): members that share those (a
        learning-rate sweep) draw the same weights alone, so they share one draw here. Each member
        gets its own optimizer's iteration and learning-rate variables (Keras creates them in the
        constructor); the variables that `build` adds (moments, zero; a loss scale) are alike for
        every member of a group, so the template's are copied."""
        drawn: dict[Hashable, tuple] = {}
        states = []
        for member in members:
            params = member.run.params
            key = (member.run.seed, _hashable({k: v for k, v in params.items()
                                               if k not in ("train.learning_rate", "train.weight_decay")}))
            if key not in drawn:
                set_random_seed(member.run.seed)  # what a solo run draws
                model = build_model(params, data.input_shape, data.classes)
                drawn[key] = ([v.value for v in model.trainable_variables],
                              [v.value for v in model.non_trainable_variables])
            own = [v.value for v in make_optimizer(params).variables]
            states.append((*drawn[key], own))
        optimizer = make_optimizer(members[-1].run.params)
        unbuilt = {id(v) for v in optimizer.variables}
        optimizer.build(model.trainable_variables)
        # `build` may add variables between the constructor's (a LossScaleOptimizer's step counter
        # and scale come before its inner optimizer's iteration and rate): place each member's own
        # values where the template's constructor variables ended up, in their order.
        template = [v.value for v in optimizer.variables]
        places = [i for i, v in enumerate(optimizer.variables) if id(v) in unbuilt]
        assembled = []
        for trainable, non_trainable, own in states:
            values = list(template)
            for place, value in zip(places, own, strict=True):
                values[place] = value
            assembled.append((trainable, non_trainable, values))
        return model, optimizer, assembled

    # ---- the traced functions -------------------------------------------------------------------

    def _step(self, state, decay, x, y):
        """One optimizer step of one member: (new state, summed loss, correct predictions)."""
        import jax
        import jax.numpy as jnp

        trainable, non_trainable, slots = state

        def loss_of(trainable):
            logits, updated = self.model.stateless_call(trainable, non_trainable, x, training=True)
            loss = self._loss(y, logits)
            # As Keras's JAX trainer does in fit: the gradient is of the loss scaled by the
            # optimizer, which reads the member's own variables (under mixed_float16 the
            # LossScaleOptimizer's dynamic scale; otherwise the loss is returned unchanged).
            with self.keras.StatelessScope(state_mapping=list(zip(self.optimizer.variables, slots))):
                scaled = self.optimizer.scale_loss(loss)
            return scaled, (loss, logits, updated)

        (_, (loss, logits, non_trainable)), grads = jax.value_and_grad(
            loss_of, has_aux=True)(trainable)
        # LossScaleOptimizer unscales the gradients (and skips a step whose gradients overflowed,
        # with ops.cond: a select under vmap) and then steps its inner optimizer, whose decay it is.
        with decaying(self.optimizer, decay):  # the member's decay
            trainable, slots = self.optimizer.stateless_apply(slots, grads, trainable)
        correct = jnp.sum(jnp.argmax(logits, axis=-1) == y)
        return (trainable, non_trainable, slots), loss, correct

    def _block_function(self, batch: int):
        """The compiled call: `steps` steps of every member, batches of `batch` from `offset` on.

        The interval's summed training loss is carried in from the previous call (`loss_sum`), not
        restarted at 0 and added up on the host: calls are sized by measured time, so restarting
        would split the float32 sum at different steps in different runs of the same config."""
        import jax
        import jax.numpy as jnp
        from jax import lax

        def member(state, decay, active, order, offset, steps, loss_sum, x_all, y_all):
            def body(i, carry):
                current, loss_sum, correct, first_bad = carry
                indices = lax.dynamic_slice(order, (offset + i * batch,), (batch,))
                current, loss, right = self._step(current, decay, x_all[indices], y_all[indices])
                first_bad = jnp.where((first_bad < 0) & ~jnp.isfinite(loss), i, first_bad)
                return current, loss_sum + loss * batch, correct + right, first_bad

            start = (state, loss_sum, jnp.int32(0), jnp.int32(-1))
            new, loss_sum, correct, first_bad = lax.fori_loop(0, steps, body, start)
            # An inactive member keeps its state: masked, not removed, so nothing recompiles.
            new = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)
            return new, loss_sum, correct, first_bad

        vmapped = self._over_members(member, (0, 0, 0, 0, None, None, 0, None, None))
        donate = (0,) if self.device.platform != "cpu" else ()  # CPU buffers cannot be donated
        return jax.jit(vmapped, donate_argnums=donate)

    def _eval_function(self):
        """Summed loss and correct predictions of every member on one shared batch, inference mode."""
        import jax
        import jax.numpy as jnp

        def member(state, x, y):
            trainable, non_trainable, _ = state
            logits, _ = self.model.stateless_call(trainable, non_trainable, x, training=False)
            losses = per_example_loss(self.keras, y, logits)
            return jnp.sum(losses), jnp.sum(jnp.argmax(logits, axis=-1) == y)

        return jax.jit(self._over_members(member, (0, None, None)))

    def _over_members(self, function, in_axes: tuple):
        """`function` of one member, applied to every member: `jax.vmap`, or for models with
        convolutions `lax.map` (one member after another inside the same compiled program).

        A vmapped convolution lowers to one grouped convolution (feature_group_count = members),
        which XLA computes with another kernel than a solo run's convolution and rounds
        differently; under `lax.map` each member's convolutions are the solo run's (measured in
        docs/vmap.md). On a CPU the members' arithmetic is serial either way."""
        import jax
        from jax import lax

        if not self.sequential:
            return jax.vmap(function, in_axes=in_axes)

        def mapped(*args):
            def one(per_member):
                values = iter(per_member)
                return function(*[next(values) if axis == 0 else arg
                                  for arg, axis in zip(args, in_axes)])

            return lax.map(one, tuple(arg for arg, axis in zip(args, in_axes) if axis == 0))

        return mapped

    def _program(self, key, make, *args):
        """The compiled program for these argument shapes (a future): traced here, compiled on a
        worker thread, so programs compile at the same time as each other and as training."""
        import jax

        shapes = jax.tree.map(lambda a: (np.shape(a), str(getattr(a, "dtype", type(a)))), args)
        full_key = (self.structure, key, str(shapes))
        future = self._programs.get(full_key)
        if future is None or future.cancelled() or (future.done() and future.exception()):
            future = self._programs[full_key] = self._compiler.submit(make().lower(*args).compile)
        return future

    def _block_program(self, batch: int, orders):
        """The training call for batches of `batch` examples (compiled once per batch size)."""
        args = (self.state, self.decay, self.active, orders, np.int32(0), np.int32(1),
                np.zeros(self.lanes, np.float32), self.x_train, self.y_train)
        return self._program(("block", batch), lambda: self._block_function(batch), *args)

    # ---- the loop -------------------------------------------------------------------------------

    def evaluate(self, x: np.ndarray, y: np.ndarray, count: int | None = None):
        """Mean loss and accuracy of every member on the first `count` (default: all) examples of
        (x, y), in batches of EVAL_BATCH_SIZE: two arrays over members."""
        import jax

        count = len(x) if count is None else count
        loss_sum = np.zeros(self.lanes)
        correct = np.zeros(self.lanes)
        for xb, yb in _on_device(x, y, self.device, EVAL_BATCH_SIZE, count):
            call = self._program("eval", self._eval_function, self.state, xb, yb).result()
            losses, rights = jax.device_get(call(self.state, xb, yb))
            loss_sum += losses
            correct += rights
        return loss_sum / count, correct / count

    def train(self) -> None:
        try:
            self._train()
        finally:
            self._compiler.shutdown(wait=True, cancel_futures=True)

    def _epoch_orders(self, epoch: int):
        """Each member's permutation of the training examples in `epoch`, on the device."""
        import jax

        per_epoch = self.schedule.steps_per_epoch
        orders = [m.schedule.batch_indices(m.run.seed, epoch * per_epoch, (epoch + 1) * per_epoch)
                  for m in self.members]
        orders += orders[:1] * (self.lanes - len(orders))
        return jax.device_put(np.stack(orders).astype(np.int32), self.device)

    def _train(self) -> None:
        import jax

        schedule, data = self.schedule, self.data
        # Every training program starts compiling now, beside the start-loss evaluation's.
        orders, order_epoch = self._epoch_orders(0), 0
        self._block_program(self.batch, orders)
        if len(data.x_train) % self.batch and schedule.total_steps >= schedule.steps_per_epoch:
            self._block_program(len(data.x_train) % self.batch, orders)
        probe = min(START_PROBE, len(data.x_train))
        start_losses, _ = self.evaluate(data.x_train, data.y_train, probe)
        for k, (member, loss) in enumerate(zip(self.members, start_losses)):
            member.recorder.start(float(loss))
            self.active[k] = member.recorder.active
        resumed_at = self._restore()
        if schedule.is_eval(0) and not resumed_at:  # record.eval_at_start, as fit records it
            self._record_points(0, None, None, 0.0)
            if not self.active.any():
                return
        steps_per_call = self._first_steps_per_call()
        seconds = 0.0
        interval_loss = np.zeros(self.lanes, np.float32)  # summed on the device (_block_function)
        interval_correct = np.zeros(self.lanes)
        interval_examples = 0
        per_epoch = schedule.steps_per_epoch
        for first, last in schedule.chunks():
            if last <= resumed_at:
                continue
            epoch = first // per_epoch
            if epoch != order_epoch:  # uploaded once per epoch; batches are gathered on the device
                orders, order_epoch = self._epoch_orders(epoch), epoch
            step = first
            while step < last:
                offset = (step - epoch * per_epoch) * self.batch
                remaining = len(data.x_train) - offset
                if remaining < self.batch:  # the epoch's partial last batch: its own shape
                    batch, steps = remaining, 1
                else:
                    full = min(last - step, remaining // self.batch)
                    batch, steps = self.batch, max(1, min(steps_per_call, full))
                call = self._block_program(batch, orders).result()  # compiled before the clock
                began = time.perf_counter()
                self.state, loss_sum, correct, first_bad = call(
                    self.state, self.decay, self.active, orders, np.int32(offset), np.int32(steps),
                    interval_loss, self.x_train, self.y_train)
                loss_sum, correct, first_bad = jax.device_get((loss_sum, correct, first_bad))
                took = time.perf_counter() - began
                seconds += took
                if batch == self.batch:  # at most 4x more per call: one fast, noisy timing
                    wanted = int(steps * CALL_SECONDS / max(took, 1e-6))
                    steps_per_call = max(1, min(4 * steps, wanted))
                interval_loss = np.asarray(loss_sum, np.float32)
                interval_correct += correct
                interval_examples += steps * batch
                self._report_block(first, last, step, steps, first_bad,
                                   interval_loss / interval_examples,
                                   interval_correct / interval_examples)
                step += steps
                interrupts.check()
                if not self.active.any():
                    return
            if not schedule.is_eval(last):
                continue
            self._record_points(last, interval_loss / interval_examples,
                                interval_correct / interval_examples, seconds)
            interval_loss = np.zeros(self.lanes, np.float32)
            interval_correct[:] = 0.0
            interval_examples = 0
            interrupts.check()
            if not self.active.any():
                return

    def _record_points(self, step: int, loss: np.ndarray | None, accuracy: np.ndarray | None,
                       seconds: float) -> None:
        """Every active member's eval point at `step`: validation (and train_eval) scores vmapped;
        a member whose Recorder wants a model gets the template loaded with its state (vmap_eval.py).
        `loss`, `accuracy`: the interval's training means per member (None at step 0, as fit)."""
        data = self.data
        wants = [m.recorder.active and m.recorder.wants_model(step) for m in self.members]
        val_loss, val_accuracy = self.evaluate(data.x_val, data.y_val)
        # record.train_eval: N: the first N training examples, inference mode, every point. A member
        # given a model gets it from bn_eval.extra_history, as alone: vmapped only for the others.
        examples = min(self.params.get("record.train_eval") or 0, len(data.x_train))
        needed = examples and not all(w for w, a in zip(wants, self.active) if a)
        train_eval = self.evaluate(data.x_train, data.y_train, examples) if needed else None
        state = _Snapshot(self.state)
        for k, member in enumerate(self.members):
            if not self.active[k]:
                continue
            point = {"epoch": self.schedule.epoch_of(step), "step": step,
                     "loss": None if loss is None else float(loss[k]),
                     "accuracy": None if accuracy is None else float(accuracy[k]),
                     "val_loss": float(val_loss[k]), "val_accuracy": float(val_accuracy[k]),
                     "seconds": round(seconds, 3)}
            if train_eval:
                point["train_eval_loss"] = float(train_eval[0][k])
                point["train_eval_accuracy"] = float(train_eval[1][k])
            checkpoint = (lambda k=k: state.member(k)) if step else None  # step 0: nothing to save, as fit
            if not wants[k]:
                self.active[k] = member.recorder.point(point, state=checkpoint)
                continue
            with as_member(self.model, self.optimizer, state.member(k)[0],
                           member.run.params["train.weight_decay"]):
                self.active[k] = member.recorder.point(point, model=self.model,
                                                       optimizer=self.optimizer, state=checkpoint)

    def _restore(self) -> int:
        """Load each member's checkpoint into its slice of the stacked state; the step they resume
        at (the lifecycle groups members by it: one step for all), 0 without checkpoints."""
        import jax

        saved = [(k, m.resume) for k, m in enumerate(self.members) if m.resume is not None]
        if not saved:
            return 0
        leaves, tree = jax.tree.flatten(jax.device_get(self.state))
        leaves = [np.array(leaf) for leaf in leaves]  # writable host copies
        for k, checkpoint in saved:
            check_shapes([leaf.shape[1:] for leaf in leaves], checkpoint.variables,
                         self.members[k].run.run_id)
            for leaf, value in zip(leaves, checkpoint.variables):
                leaf[k] = value
        self.state = jax.device_put(jax.tree.unflatten(tree, leaves), self.device)
        return max(checkpoint.step for _, checkpoint in saved)

    def _report_block(self, first: int, last: int, step: int, steps: int, first_bad: np.ndarray,
                      loss: np.ndarray, accuracy: np.ndarray) -> None:
        """recorder.block for every active member; a NaN/inf goes at the end of the
        steps_per_execution block (counted from the chunk start) where a solo fit reports it."""
        for k, member in enumerate(self.members):
            if not self.active[k]:
                continue
            if first_bad[k] >= 0 or not math.isfinite(loss[k]):
                bad_step = step + max(int(first_bad[k]), 0) + 1
                blocks = math.ceil((bad_step - first) / self.per_execution)
                at = min(first + blocks * self.per_execution, last)
                self.active[k] = member.recorder.block(at, float("nan"), float("nan"))
            else:
                self.active[k] = member.recorder.block(step + steps, float(loss[k]),
                                                       float(accuracy[k]))

    def _first_steps_per_call(self) -> int:
        """Steps in the first call: CALL_SECONDS of arithmetic at a conservative rate."""
        rate = STEP_FLOPS_PER_SECOND.get(self.device.platform, STEP_FLOPS_PER_SECOND["gpu"])
        flops = 6 * self.multiply_adds * self.batch * self.lanes  # forward + backward, per step
        return max(1, int(CALL_SECONDS * rate / flops))


class _Snapshot:
    """The group's state at an eval point, copied to the host once for every member's checkpoint."""

    def __init__(self, state):
        self.state, self._leaves = state, None

    def member(self, k: int) -> tuple[list[np.ndarray], None]:
        import jax

        if self._leaves is None:
            self._leaves = jax.tree.leaves(jax.device_get(self.state))
        return [np.asarray(leaf[k]) for leaf in self._leaves], None
