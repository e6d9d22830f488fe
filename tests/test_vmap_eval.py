"""The vmap engine's eval-time features: each member records what its solo `fit` run records.

Instruments (activations, gradient norms, TensorBoard), probes (landscape, ICS), BN evaluation modes,
unbiased inference variance, the test split, the step-0 point and train_eval, for tiny groups
against the fit engine's own run of each member (`train.pack: off`), both reporting to the
lifecycle's Recorder. Runs in a JAX subprocess from the TensorFlow CI run, as tests/test_vmap.py.

The contract (issue #22): every recorded value within 1e-4 relative of the solo run's, or within 3x
the change a +-1e-6 relative learning-rate perturbation makes to that value alone, whichever is
larger; accuracies within 0.002.
"""

from __future__ import annotations

from typing import Any

import pytest

from bncompare.config import Run
from tests.test_vmap import ACCURACY, ON_JAX, RELATIVE, dataset, jax_only, make_run, member, under_jax

# Everything recorded per eval point, besides the history (per layer or flat, see results.py).
SERIES_BLOCKS = ("activations", "gradients", "landscape", "ics")
# Not a number of the model: wall-clock seconds differ between engines.
NOT_COMPARED = ("history/seconds",)


@pytest.mark.slow
@pytest.mark.skipif(ON_JAX, reason="this process is the JAX run")
def test_vmap_eval_under_jax():
    under_jax(__file__)


# ---- what a run recorded, and the contract ----------------------------------------------------


def series(recorder) -> dict[str, list]:
    """Every recorded series of a run by its path ("history/val_loss", "ics/dense_2/l2"...), plus
    "final/test_loss" and "final/test_accuracy" when record.test is on."""
    found: dict[str, list] = {}

    def walk(path: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{path}/{key}", value)
        elif path not in NOT_COMPARED:
            found[path] = list(node)

    data = recorder.metrics.data
    for block in ("history", *SERIES_BLOCKS):
        if block in data:
            walk(block, data[block])
    for key, value in recorder.test_scores().items():
        found[f"final/{key}"] = [value]
    return found


def train_alone(run: Run, data) -> dict[str, list]:
    """The member's solo run: the fit engine, reporting to the same kind of Recorder."""
    from bncompare.engines.fit import FitEngine

    solo = member(run, data)
    FitEngine().train([solo], data)
    assert solo.recorder.active, solo.recorder.metrics.data.get("error")
    return series(solo.recorder)


def with_rate(run: Run, factor: float) -> Run:
    params = {**run.params, "train.learning_rate": run.params["train.learning_rate"] * factor}
    return Run(run.experiment, run.variant, f"{run.run_id}-x{factor!r}", params)


def assert_records_as_alone(run: Run, recorder, data) -> dict[str, list]:
    """The member's series equal its solo run's within the contract; returns them."""
    mine, alone = series(recorder), train_alone(run, data)
    assert mine.keys() == alone.keys()
    assert mine["history/step"] == alone["history/step"]
    perturbed: list[dict[str, list]] = []  # the +-1e-6 learning-rate runs, trained when needed
    for path, values in mine.items():
        for i, (value, expected) in enumerate(zip(values, alone[path], strict=True)):
            if value is None or expected is None or isinstance(value, str):
                assert value == expected, (path, i)
                continue
            if "accuracy" in path.rsplit("/", 1)[-1]:
                assert abs(value - expected) <= ACCURACY, (path, i, value, expected)
                continue
            if value == expected or abs(value - expected) <= RELATIVE * abs(expected):
                continue
            if not perturbed:
                perturbed = [train_alone(with_rate(run, f), data) for f in (1 + 1e-6, 1 - 1e-6)]
            chaos = max(abs(p[path][i] - expected) for p in perturbed)
            assert abs(value - expected) <= 3 * chaos, (path, i, value, expected, chaos)
    return mine


def train_vmapped(runs: list[Run], data) -> list:
    from bncompare.engines.vmap import VmapEngine

    engine = VmapEngine()
    assert all(engine.refuses(run) is None for run in runs), [engine.refuses(r) for r in runs]
    assert len({engine.group_key(run) for run in runs}) == 1
    members = [member(run, data, slot) for slot, run in enumerate(runs)]
    engine.train(members, data)
    for m in members:
        assert m.recorder.active, m.recorder.metrics.data.get("error")
    return [m.recorder for m in members]


def tiny(seed: int, rate: float, **overrides: Any) -> Run:
    """16 steps (2 epochs of full batches) of a BN MLP with one hidden layer of 8 units and dropout,
    on 256 synthetic examples with 20% of the split held out (so the test split exists), an eval
    point every 8 steps."""
    settings = dict(data__train_limit=256, data__validation=0.2, model__hidden=[8],
                    model__batch_norm=True, model__dropout=0.1, train__steps=16,
                    record__eval_every=8, train__learning_rate=rate)
    return make_run(seed, **{**settings, **overrides})


# Every eval-time feature that needs a member's model: instruments, probes, BN evaluations beyond
# the moving averages, unbiased inference variance, the test split, an eval point at step 0.
EVERYTHING = dict(record__activations=True, record__gradients=True, record__landscape=True,
                  record__ics=True, record__eval_at_start=True, record__test=True,
                  record__bn_eval=["moving", "precise", "batch"], record__precise_examples=128,
                  model__bn_variance="unbiased", record__train_eval=100)
# Per member: seed, learning rate, weight decay (ICS applies the member's own optimizer update).
MEMBERS = [(0, 3e-3, 1e-3), (1, 1e-2, 0.1)]


@pytest.fixture(scope="module")
def everything():
    """The members with every eval-time feature, trained as one vmap group: (runs, recorders)."""
    runs = [tiny(seed, rate, train__weight_decay=decay, **EVERYTHING) for seed, rate, decay in MEMBERS]
    return runs, train_vmapped(runs, dataset(runs[0]))


# ---- the features --------------------------------------------------------------------------------


@jax_only
def test_every_eval_time_feature_is_recorded_as_alone(everything):
    """Activations, gradient norms, landscape, ICS, the precise and batch BN columns with unbiased
    variance, train_eval, the step-0 point and the test scores: each member's, as alone."""
    runs, recorders = everything
    for run, recorder in zip(runs, recorders):
        recorded = assert_records_as_alone(run, recorder, dataset(run))
        assert recorded["history/step"] == [0, 8, 16] and recorded["history/loss"][0] is None
        assert {"activations/layer_1/p50", "gradients/bn_1/gamma/norm", "landscape/beta_smoothness",
                "ics/output/cosine", "history/val_loss_precise", "history/val_accuracy_batch",
                "history/train_eval_loss", "final/test_loss", "final/test_accuracy"} <= set(recorded)


@jax_only
def test_tensorboard_per_member_train_eval_either_way_and_training_unchanged(everything):
    """record.tensorboard may differ within a group: the member that writes events gets them in
    its own directory, with its own history's values. train_eval is vmapped for the member without
    a model and taken from the model for the other, both as alone. And all the eval-time work of
    the group with every feature (members loaded into the template model) left its training
    unchanged: the same training numbers, bit for bit."""
    runs = [tiny(seed, rate, train__weight_decay=decay, record__train_eval=100,
                 record__tensorboard=seed == 0) for seed, rate, decay in MEMBERS]
    data = dataset(runs[0])
    recorders = train_vmapped(runs, data)
    for run, recorder in zip(runs, recorders):
        assert_records_as_alone(run, recorder, data)
    writer, other = recorders
    assert not list(other.run_dir.glob("events.out.tfevents.*"))
    events = scalars(writer.run_dir)
    history = writer.metrics.data["history"]
    for tag in ("val_loss", "loss", "val_accuracy"):
        assert sorted(events[tag]) == history["step"]
        assert [events[tag][s] for s in history["step"]] == pytest.approx(history[tag], rel=1e-6)

    for quiet, measured in zip(recorders, everything[1]):
        assert quiet.blocks == measured.blocks
        for key in ("loss", "accuracy"):  # `measured` has a step-0 point more
            assert quiet.metrics.data["history"][key] == measured.metrics.data["history"][key][1:]


def scalars(run_dir) -> dict[str, dict[int, float]]:
    """The scalar events in a run directory: {tag: {step: value}}."""
    import tensorflow as tf

    found: dict[str, dict[int, float]] = {}
    for path in run_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    found.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return found
