"""The vmap engine: every member learns what it learns alone (Keras fit on JAX, same batches).

The engine needs the JAX backend, and CI runs pytest once on TensorFlow, so `test_vmap_under_jax`
runs this module again in a subprocess with KERAS_BACKEND=jax; there the other tests run and it is
skipped. The engine reports to bncompare.lifecycle's own Recorder and Member, as in a real run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from bncompare import checkpoint
from bncompare.config import Run
from bncompare.lifecycle import Listener, Member, Recorder
from bncompare.schedule import Schedule
from bncompare.schema import SCHEMA

ON_JAX = os.environ.get("KERAS_BACKEND") == "jax"
jax_only = pytest.mark.skipif(not ON_JAX, reason="runs in test_vmap_under_jax's JAX subprocess")
RELATIVE = 1e-4  # final losses, vmap against alone
ACCURACY = 0.002  # final validation accuracy


@pytest.mark.slow
@pytest.mark.skipif(ON_JAX, reason="this process is the JAX run")
def test_vmap_under_jax():
    under_jax(__file__)


def under_jax(test_file: str) -> None:
    """Run the tests of `test_file` in a pytest subprocess on the JAX backend (CPU)."""
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" in done.stdout  # the JAX tests ran, this one not


# ---- the lifecycle's own Recorder, read back ----------------------------------------------------


class Heard(Listener):
    """What a progress display hears: each compiled call's (step, loss, accuracy)."""

    def __init__(self) -> None:
        self.blocks: list[tuple[int, float, float]] = []

    def step(self, step: int, loss: float, accuracy: float, slot: int = 0) -> None:
        self.blocks.append((step, loss, accuracy))


class Recorded(Recorder):
    """bncompare.lifecycle's Recorder (its divergence rules, its metrics.json in a temporary
    directory), with what it recorded read back for the assertions."""

    def __init__(self, run: Run, data, slot: int = 0, heard: Heard | None = None):
        self.heard = heard or Heard()
        super().__init__(run, Path(tempfile.mkdtemp(prefix="vmap-test-")),
                         Schedule.for_run(run.params, len(data.x_train)), data,
                         environment={"backend": "jax"}, engine={"name": "vmap", "members": 0},
                         listener=self.heard, slot=slot, identity=checkpoint.identity(run, "jax", "vmap"))

    @property
    def points(self) -> list[dict[str, Any]]:
        history = self.metrics.data["history"]
        return [{key: values[i] for key, values in history.items() if i < len(values)}
                for i in range(len(history["step"]))]

    @property
    def blocks(self) -> list[tuple[int, float, float]]:
        return self.heard.blocks

    @property
    def diverged_at(self) -> int | None:
        return (self.metrics.data["diverged_at"] or {}).get("step")


def member(run: Run, data, slot: int = 0, heard: Heard | None = None) -> Member:
    recorder = Recorded(run, data, slot, heard)
    return Member(run, recorder.schedule, recorder, slot)


def make_run(seed: int = 0, **overrides: Any) -> Run:
    params = {key: option.default for key, option in SCHEMA.items() if key not in ("name", "train.seeds")}
    params.update({"data.dataset": "synthetic", "data.train_limit": 500, "model.hidden": [32, 16],
                   "train.epochs": 2, "train.seed": seed})
    params.update({key.replace("__", "."): value for key, value in overrides.items()})
    return Run("vmap_test", "bn" if params["model.batch_norm"] else "no_bn",
               f"run-{seed}-{params['train.learning_rate']}", params)


def dataset(run: Run):
    from bncompare.data import load_dataset

    return load_dataset(run["data.dataset"], run["data.validation"], run["data.train_limit"])


def train_vmapped(runs: list[Run]) -> list[Recorded]:
    from bncompare.engines.vmap import VmapEngine

    engine, data = VmapEngine(), dataset(runs[0])
    assert all(engine.refuses(run) is None for run in runs)
    assert len({engine.group_key(run) for run in runs}) == 1
    members = [member(run, data, slot) for slot, run in enumerate(runs)]
    engine.train(members, data)
    return [m.recorder for m in members]


def train_alone(run: Run, learning_rate_factor: float = 1.0) -> list[dict[str, Any]]:
    """The reference: plain Keras fit on JAX, fed the run's batches in its schedule's order."""
    from bncompare.backend import import_keras
    from bncompare.models import build_model, loss_function
    from bncompare.engines.common import make_optimizer, steps_per_execution

    keras, data, params = import_keras(), dataset(run), dict(run.params)
    params["train.learning_rate"] *= learning_rate_factor
    keras.utils.set_random_seed(run.seed)
    model = build_model(params, data.input_shape, data.classes)
    model.compile(optimizer=make_optimizer(params), loss=loss_function(keras), metrics=["accuracy"],
                  steps_per_execution=steps_per_execution(params, "jax"))
    schedule = Schedule.for_run(params, len(data.x_train))
    points, loss, correct, examples = [], 0.0, 0.0, 0
    for first, last in schedule.chunks():
        indices = schedule.batch_indices(run.seed, first, last)
        history = model.fit(data.x_train[indices], data.y_train[indices], batch_size=schedule.batch_size,
                            shuffle=False, epochs=1, verbose=0).history
        loss += history["loss"][-1] * len(indices)
        correct += history["accuracy"][-1] * len(indices)
        examples += len(indices)
        if schedule.is_eval(last):
            scores = model.evaluate(data.x_val, data.y_val, batch_size=1000, verbose=0,
                                    return_dict=True)
            points.append({"step": last, "loss": loss / examples, "accuracy": correct / examples,
                           "val_loss": scores["loss"], "val_accuracy": scores["accuracy"]})
            if params.get("record.train_eval"):  # the first N training examples, inference mode
                n = params["record.train_eval"]
                scores = model.evaluate(data.x_train[:n], data.y_train[:n], batch_size=1000,
                                        verbose=0, return_dict=True)
                points[-1].update(train_eval_loss=scores["loss"], train_eval_accuracy=scores["accuracy"])
            loss, correct, examples = 0.0, 0.0, 0
    return points


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def assert_learns_as_alone(run: Run, recorder: Recorded) -> None:
    """Final training and validation loss within RELATIVE, accuracy within ACCURACY; a BN member
    that misses RELATIVE must stay within its chaos floor (a 1e-6 learning-rate change, alone)."""
    alone = train_alone(run)
    assert [p["step"] for p in recorder.points] == [p["step"] for p in alone]
    mine, theirs = recorder.points[-1], alone[-1]
    for key in ("val_accuracy", "train_eval_accuracy"):
        assert abs(mine.get(key, 0) - theirs.get(key, 0)) <= ACCURACY, (key, mine, theirs)
    for key in ("loss", "val_loss", "train_eval_loss"):
        if key not in theirs:
            assert key not in mine
            continue
        if relative(mine[key], theirs[key]) <= RELATIVE:
            continue
        assert run["model.batch_norm"], (key, mine[key], theirs[key])
        floor = abs(train_alone(run, 1 + 1e-6)[-1][key] - theirs[key])
        assert abs(mine[key] - theirs[key]) <= floor, (key, mine[key], theirs[key], floor)


# ---- the engine --------------------------------------------------------------------------------


@jax_only
@pytest.mark.parametrize("variant", ["no_bn", "bn", "bn_bfloat16"])
def test_members_learn_what_they_learn_alone(variant: str):
    if variant == "no_bn":  # Adam; learning rate, decay and seed differ per member
        runs = [make_run(seed, train__learning_rate=rate, train__weight_decay=decay,
                         record__train_eval=300)
                for seed, rate, decay in [(0, 1e-3, 1e-4), (1, 3e-3, 1e-3), (2, 1e-2, 1e-2)]]
    elif variant == "bn_bfloat16":  # Keras mixed precision: bfloat16 compute, float32 weights
        runs = [make_run(seed, model__batch_norm=True, train__precision="mixed_bfloat16",
                         train__learning_rate=rate) for seed, rate in [(0, 3e-3), (1, 1e-2)]]
    else:  # SGD with momentum, BN; the epoch's last batch is partial (500 = 15 x 32 + 20)
        runs = [make_run(seed, model__batch_norm=True, train__optimizer="momentum",
                         train__learning_rate=rate) for seed, rate in [(0, 0.01), (1, 0.05), (2, 0.1)]]
    recorders = train_vmapped(runs)
    for run, recorder in zip(runs, recorders):
        assert recorder.active and recorder.diverged_at is None
        assert len(recorder.points) == 2 and recorder.blocks[-1][0] == 32
        assert_learns_as_alone(run, recorder)


@jax_only
def test_diverging_member_is_masked_and_the_others_unaffected():
    runs = [make_run(0, train__optimizer="sgd", train__learning_rate=0.05, record__eval_every=5),
            make_run(1, train__optimizer="sgd", train__learning_rate=1e4, record__eval_every=5),
            make_run(2, train__optimizer="sgd", train__learning_rate=0.1, record__eval_every=5)]
    calm, wild, other = train_vmapped(runs)
    assert wild.diverged_at is not None and not wild.active
    assert wild.diverged_at <= 10 and len(wild.points) < 2
    for run, recorder in ((runs[0], calm), (runs[2], other)):
        assert recorder.active and recorder.points[-1]["step"] == 32
        assert_learns_as_alone(run, recorder)


@jax_only
def test_dropout_members_draw_the_masks_they_draw_alone():
    runs = [make_run(seed, model__dropout=0.2, train__learning_rate=rate)
            for seed, rate in [(0, 1e-3), (3, 3e-3)]]
    for run, recorder in zip(runs, train_vmapped(runs)):
        assert_learns_as_alone(run, recorder)


@jax_only
def test_refusals_and_groups():
    from bncompare.engines.vmap import VmapEngine

    engine = VmapEngine()
    # Eval-time features are done at eval points (tests/test_vmap_eval.py); CNNs and
    # mixed_float16 are admitted too (tests/test_vmap_models.py).
    assert engine.refuses(make_run(record__activations=True)) is None
    assert engine.refuses(make_run(record__test=True, data__validation=0.1)) is None
    assert engine.refuses(make_run(train__precision="mixed_float16")) is None
    assert engine.refuses(make_run(model__kind="cnn")) is None
    assert engine.refuses(make_run()) is None
    key = engine.group_key
    # What members may differ in...
    assert key(make_run(0, train__learning_rate=0.1)) == key(make_run(5, train__learning_rate=0.2))
    assert key(make_run(train__weight_decay=0.1)) == key(make_run(train__weight_decay=0.2))
    assert key(make_run(train__momentum=0.5)) == key(make_run(train__momentum=0.9))  # adam ignores it
    assert key(make_run(model__hidden=None, model__depth=2, model__width=8)) == key(
        make_run(model__hidden=[8, 8]))
    # ...and what one compiled program cannot vary.
    for change in ({"model__batch_norm": True}, {"train__batch_size": 64}, {"train__epochs": 3},
                   {"train__optimizer": "sgd"}, {"train__weight_decay": 0.1},
                   {"record__eval_every": 5}, {"model__hidden": [32, 8]}, {"data__train_limit": 400}):
        assert key(make_run(**change)) != key(make_run()), change
    momentum = dict(train__optimizer="momentum")
    assert key(make_run(train__momentum=0.5, **momentum)) != key(make_run(**momentum))
    data = dataset(make_run())
    assert 1 <= engine.max_members(make_run(), data) <= 64


@jax_only
def test_ctrl_c_stops_after_the_compiled_call():
    from bncompare import interrupts
    from bncompare.engines.vmap import VmapEngine

    class StopAsked(Heard):
        def step(self, step, loss, accuracy, slot=0):
            interrupts._requested = True  # what the SIGINT handler sets
            super().step(step, loss, accuracy, slot)

    runs = [make_run(seed, train__learning_rate=0.01) for seed in (0, 1)]
    data = dataset(runs[0])
    members = [member(run, data, slot, StopAsked()) for slot, run in enumerate(runs)]
    try:
        with pytest.raises(KeyboardInterrupt):
            VmapEngine().train(members, data)
    finally:
        interrupts._requested = False
    assert [len(m.recorder.blocks) for m in members] == [1, 1]  # every member heard, then stop
    assert not any(m.recorder.points for m in members)


@jax_only
def test_groups_of_one_key_and_size_share_their_compiled_programs():
    from bncompare.engines.vmap import VmapEngine

    engine = VmapEngine()
    data = dataset(make_run())
    results = []
    for seeds in ((0, 1), (0, 1), (2, 3)):
        runs = [make_run(seed, train__learning_rate=0.01 * (seed + 1)) for seed in seeds]
        members = [member(run, data, slot) for slot, run in enumerate(runs)]
        engine.train(members, data)
        results.append([m.recorder.points[-1]["val_loss"] for m in members])
        if len(results) == 1:
            compiled = len(engine._programs)
    assert len(engine._programs) == compiled  # nothing compiled after the first group
    assert results[0] == results[1]  # reused programs, the same numbers
    assert results[2] != results[0]


@jax_only
def test_the_same_numbers_however_the_calls_are_sized(monkeypatch):
    """Calls are sized by measured time, so two runs of one config split their steps differently;
    the recorded training loss (summed over an eval interval) must not depend on where."""
    import bncompare.engines.vmap as vmap

    runs = [make_run(seed, model__batch_norm=True, train__learning_rate=0.01 * (seed + 1))
            for seed in (0, 1)]
    histories = []
    for steps in (1, 3, 1000):  # one step per call, uneven calls, a whole interval per call
        monkeypatch.setattr(vmap._Group, "_first_steps_per_call", lambda self, steps=steps: steps)
        monkeypatch.setattr(vmap, "CALL_SECONDS", 0.0)  # the next call: 1 step (then the cap)
        if steps == 1000:
            monkeypatch.setattr(vmap, "CALL_SECONDS", 1e9)
        histories.append([{key: values for key, values in recorder.metrics.data["history"].items()
                           if key != "seconds"} for recorder in train_vmapped(runs)])
    assert histories[0] == histories[1] == histories[2]
