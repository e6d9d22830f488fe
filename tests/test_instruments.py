"""Instruments (record.activations, record.gradients, record.tensorboard): format, alignment with the
history, what they measure, that they change nothing that is trained, and TensorBoard files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bncompare.config import load_runs
from bncompare.data import Dataset, load_dataset
from bncompare.instruments import Instruments, gradient_norms
from bncompare.models import build_model
from train_one import train_one

ENVIRONMENT = {"backend": "test"}
RECORD_ALL = ["record.activations=true", "record.gradients=true", "record.tensorboard=true"]
TINY_BN = """\
name: tiny
data: {dataset: synthetic, train_limit: 512}
model: {hidden: [32, 16], batch_norm: true, dropout: 0.2}
train: {epochs: 2, batch_size: 64, seeds: [0]}
record: {eval_every: 3}
variants: {bn: {}}
"""


def train(tmp_path: Path, config: str, overrides: list[str], name: str) -> dict:
    """Train the one run `config` expands to into tmp_path/name; return its metrics."""
    path = tmp_path / "config.yaml"
    path.write_text(config)
    (run,) = load_runs([path], overrides)
    data = load_dataset(run["data.dataset"], run["data.validation"], run["data.train_limit"])
    status, run_dir = train_one(run, tmp_path / name, data, environment=ENVIRONMENT)
    assert status == "completed"
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[dict, Path]:
    """One tiny BN run (dropout too) with every instrument on, and its run directory."""
    tmp_path = tmp_path_factory.mktemp("recorded")
    metrics = train(tmp_path, TINY_BN, RECORD_ALL, "run")
    return metrics, tmp_path / "run" / metrics["experiment"] / metrics["run_id"]


def test_activations_are_per_layer_percentiles_aligned_with_history(recorded):
    metrics, _ = recorded
    points = len(metrics["history"]["step"])
    assert metrics["history"]["step"][:2] == [3, 6] and points == 6  # 16 steps, every 3, and the end
    assert list(metrics["activations"]) == ["layer_1", "layer_2"]
    for stats in metrics["activations"].values():
        assert list(stats) == ["p15", "p50", "p85", "mean", "std"]
        assert all(len(series) == points for series in stats.values())
        for p15, p50, p85 in zip(stats["p15"], stats["p50"], stats["p85"]):
            assert p15 <= p50 <= p85


def test_gradients_are_norms_of_every_trainable_variable(recorded):
    metrics, _ = recorded
    points = len(metrics["history"]["step"])
    assert list(metrics["gradients"]) == [
        "dense_1/kernel", "dense_1/bias", "bn_1/gamma", "bn_1/beta",
        "dense_2/kernel", "dense_2/bias", "bn_2/gamma", "bn_2/beta", "output/kernel", "output/bias"]
    for series in metrics["gradients"].values():
        assert list(series) == ["norm"] and len(series["norm"]) == points
        assert all(math.isfinite(n) and n >= 0 for n in series["norm"])


def test_instruments_do_not_change_training(tmp_path, recorded):
    """Same seed -> identical metrics with every instrument on or off (BN statistics, dropout seeds)."""
    with_instruments, _ = recorded
    without = train(tmp_path, TINY_BN, [], "plain")
    assert "activations" not in without and "gradients" not in without
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "step"):
        assert with_instruments["history"][key] == without["history"][key], key


def test_tensorboard_event_files_hold_scalars_and_histograms(recorded):
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    _, run_dir = recorded
    (events,) = run_dir.glob("events.out.tfevents.*")
    plugins, steps = {}, set()
    for record in tf.data.TFRecordDataset(str(events)):
        event = event_pb2.Event.FromString(record.numpy())
        for value in event.summary.value:
            plugins[value.tag] = value.metadata.plugin_data.plugin_name or plugins.get(value.tag)
            steps.add(event.step)
    assert steps == {0, 3, 6, 9, 12, 15, 16}  # 0: the HParams data (tests/test_own_code.py)
    for tag in ("loss", "val_accuracy", "activations/layer_2/p85", "gradients/dense_1/kernel"):
        assert plugins[tag] == "scalars", tag
    assert plugins["activations/layer_1"] == "histograms"


def probe_data(examples: int = 256, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.random((examples, 8, 8, 1), dtype=np.float32)
    y = (x.reshape(examples, -1).mean(axis=1) > 0.5).astype(np.int64)
    return Dataset("probe", x, y, x, y, classes=2)


def params(**changes) -> dict:
    base = {"model.kind": "mlp", "model.depth": 2, "model.width": 16, "model.hidden": None,
            "model.activation": "sigmoid", "model.batch_norm": True,
            "model.bn_placement": "before_activation", "model.bn_momentum": 0.9,
            "model.bn_epsilon": 0.001, "model.init": "glorot_uniform", "model.dropout": 0.0,
            "record.activations": True, "record.gradients": False, "record.tensorboard": False}
    return {**base, **changes}


def test_gradients_match_keras_and_leave_every_variable_untouched():
    import keras
    import tensorflow as tf

    data = probe_data()
    model = build_model(params(), data.input_shape, data.classes)
    before = [keras.ops.convert_to_numpy(v) for v in model.variables]
    norms = gradient_norms(model, data.x_val, data.y_val)
    assert all(np.array_equal(b, keras.ops.convert_to_numpy(v)) for b, v in zip(before, model.variables))
    # The same gradient the stateful way (which does update the BN moving statistics).
    with tf.GradientTape() as tape:
        predictions = model(data.x_val, training=True)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(data.y_val, predictions, from_logits=True))
    expected = tape.gradient(loss, [v.value for v in model.trainable_variables])
    for v, g in zip(model.trainable_variables, expected):
        assert norms[v.path]["norm"] == pytest.approx(float(tf.norm(g)), rel=1e-4), v.path


def test_cnn_activations_pool_positions_and_channels():
    data = probe_data()
    model = build_model(params(**{"model.kind": "cnn", "model.width": 4}), data.input_shape, data.classes)
    blocks = Instruments(params(**{"model.kind": "cnn"}), data, Path(".")).measure(model, {"step": 1})
    assert list(blocks["activations"]) == ["layer_1", "layer_2"]


def test_bn_before_the_nonlinearity_keeps_its_input_normalised_and_plain_layers_drift(tmp_path):
    """What Ioffe & Szegedy 2015 Figure 1 shows: with BN the sigmoid's input stays near mean 0 and std 1
    (BN's gamma = 1, beta = 0 at start); a badly scaled plain network feeds it values far from that."""
    common = ["model.activation=sigmoid", "model.bn_placement=before_activation", "model.dropout=0.0",
              "model.bn_momentum=0.9", "record.activations=true", "train.epochs=3",
              "train.optimizer=sgd", "train.learning_rate=0.1"]
    bn = train(tmp_path, TINY_BN, common, "bn")
    plain = train(tmp_path, TINY_BN, [*common, "model.batch_norm=false",
                                      "model.init={name: random_normal, stddev: 1.0}"], "plain")
    for layer, stats in bn["activations"].items():
        assert abs(stats["mean"][-1]) < 0.3 and 0.6 < stats["std"][-1] < 1.5, layer
    assert plain["activations"]["layer_1"]["std"][-1] > 3
