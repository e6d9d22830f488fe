"""Santurkar et al. 2018 probes (record.landscape, record.ics): each quantity against a direct
computation on a two-layer linear network whose gradients are known in closed form, the
cross-entropy wiring against tf.GradientTape on a BN network, the optimizer's real update, and that
probing changes nothing that is trained."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bncompare.config import ConfigError, load_runs
from bncompare.data import Dataset
from bncompare.models import build_model, loss_function
from bncompare.results import append_series as append_point
from bncompare.probes import (DEFAULT_FACTORS, current_weights, internal_covariate_shift,
                              keras_loss_and_gradients, landscape, optimizer_update, probe_blocks,
                              weight_layers)
from bncompare.engines.common import make_optimizer

ROOT = Path(__file__).resolve().parents[1]
N, D, H, K = 12, 5, 4, 3  # examples, inputs, hidden units, outputs of the linear network
STEP_SIZES = (0.05, 0.1, 0.2, 0.4)
LEARNING_RATE = 0.1


# ---- the closed form: f(x) = x W1 W2, L = mean over examples of 0.5 ||f(x) - y||^2 ----------------


def linear_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.normal(size=(N, K)).astype(np.float32)
    w1 = rng.normal(scale=0.7, size=(D, H)).astype(np.float32)
    w2 = rng.normal(scale=0.7, size=(H, K)).astype(np.float32)
    return x, y, [w1, w2]


def closed_form(x, y, weights):
    """(L, [dL/dW1, dL/dW2]) in float64: R = (X W1 W2 - Y) / n, dW2 = (X W1)^T R, dW1 = X^T R W2^T."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    w1, w2 = (w.astype(np.float64) for w in weights)
    residual = x @ w1 @ w2 - y
    loss = 0.5 * np.sum(residual ** 2) / len(x)
    r = residual / len(x)
    return loss, [x.T @ (r @ w2.T), (x @ w1).T @ r]


def squared_loss(keras, labels, outputs):
    return 0.5 * keras.ops.sum(keras.ops.square(outputs - labels), axis=-1)


def linear_model(weights):
    from bncompare.backend import import_keras

    keras = import_keras()
    inputs = keras.Input(shape=(D,))
    hidden = keras.layers.Dense(H, use_bias=False, name="dense_1")(inputs)
    outputs = keras.layers.Dense(K, use_bias=False, name="output")(hidden)
    model = keras.Model(inputs, outputs)
    model.set_weights(weights)
    return model


def flat_norm(arrays) -> float:
    return math.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in arrays))


def expected_landscape(x, y, weights, step_sizes):
    _, g = closed_form(x, y, weights)
    losses, diffs, ratios = [], [], []
    for eta in step_sizes:
        moved = [w.astype(np.float64) - eta * gi for w, gi in zip(weights, g)]
        loss, moved_g = closed_form(x, y, moved)
        diff = flat_norm([a - b for a, b in zip(g, moved_g)])
        losses.append(loss)
        diffs.append(diff)
        ratios.append(diff / (eta * flat_norm(g)))
    return {"loss_min": min(losses), "loss_max": max(losses), "grad_diff_min": min(diffs),
            "grad_diff_max": max(diffs), "beta_smoothness": max(ratios)}


def test_keras_gradients_of_the_linear_network_match_the_closed_form():
    x, y, weights = linear_problem()
    model = linear_model(weights)
    loss, gradients = keras_loss_and_gradients(model, x, y, squared_loss)(current_weights(model))
    expected_loss, expected = closed_form(x, y, weights)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for got, want in zip(gradients, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_landscape_matches_the_closed_form():
    x, y, weights = linear_problem()
    model = linear_model(weights)
    got = landscape(keras_loss_and_gradients(model, x, y, squared_loss), current_weights(model),
                    STEP_SIZES)
    want = expected_landscape(x, y, weights, STEP_SIZES)
    assert list(got) == list(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-4), key
    assert got["loss_min"] < got["loss_max"] and got["grad_diff_min"] < got["grad_diff_max"]


def test_beta_smoothness_of_a_quadratic_is_its_curvature_along_the_gradient():
    # L(w) = 0.5 w^T A w: grad L(w - eta g) = g - eta A g, so the ratio is ||A g|| / ||g|| at every
    # eta, and the loss along the line is a parabola (its band is set by the ends of the grid).
    a = np.diag([1.0, 4.0, 9.0])
    w = [np.array([1.0, -2.0, 0.5])]

    def quadratic(weights):
        return 0.5 * float(weights[0] @ a @ weights[0]), [a @ weights[0]]

    got = landscape(quadratic, w, STEP_SIZES)
    g = a @ w[0]
    assert got["beta_smoothness"] == pytest.approx(np.linalg.norm(a @ g) / np.linalg.norm(g))
    assert got["grad_diff_min"] == pytest.approx(0.05 * np.linalg.norm(a @ g))
    assert got["grad_diff_max"] == pytest.approx(0.4 * np.linalg.norm(a @ g))


def test_landscape_of_a_diverged_network_is_nan():
    def broken(weights):
        return math.nan, [np.full_like(w, np.nan) for w in weights]

    got = landscape(broken, [np.ones(3)], STEP_SIZES)
    assert all(math.isnan(value) for value in got.values())


def test_ics_matches_the_closed_form_for_sgd():
    """Def. 2.1 with plain SGD: W1' = W1 - lr dW1; G' of the output layer is dL/dW2 at (W1', W2)."""
    from bncompare.backend import import_keras

    keras = import_keras()
    x, y, weights = linear_problem()
    model = linear_model(weights)
    optimizer = keras.optimizers.SGD(LEARNING_RATE)
    loss_and_gradients = keras_loss_and_gradients(model, x, y, squared_loss)
    current = current_weights(model)
    _, gradients = loss_and_gradients(current)
    updated = optimizer_update(optimizer, model, current, gradients)
    layers = weight_layers(model)
    assert [(layer.name, layer.kernel, layer.preceding) for layer in layers] == \
        [("dense_1", 0, ()), ("output", 1, (0,))]
    got = internal_covariate_shift(loss_and_gradients, current, updated, layers)

    _, (g1, g2) = closed_form(x, y, weights)
    np.testing.assert_allclose(updated[0], weights[0] - LEARNING_RATE * g1, rtol=1e-5, atol=1e-7)
    _, (_, g2_after) = closed_form(x, y, [weights[0] - LEARNING_RATE * g1, weights[1]])
    assert got["dense_1"] == {"l2": 0.0, "cosine": 1.0}  # nothing precedes it
    assert got["output"]["l2"] == pytest.approx(np.linalg.norm(g2 - g2_after), rel=1e-4)
    cosine = np.sum(g2 * g2_after) / (np.linalg.norm(g2) * np.linalg.norm(g2_after))
    assert got["output"]["cosine"] == pytest.approx(cosine, rel=1e-6)
    assert got["output"]["l2"] > 0


def bn_setup(seed: int = 0, optimizer: str = "adam", dropout: float = 0.0):
    """A small BN MLP (BN after and before nonlinearities) with its optimizer, on synthetic data."""
    from bncompare.backend import import_keras

    keras = import_keras()
    params = {"model.kind": "mlp", "model.hidden": [16, 8], "model.depth": 2, "model.width": 8,
              "model.activation": "relu", "model.batch_norm": True,
              "model.bn_placement": "after_activation", "model.bn_momentum": 0.9,
              "model.bn_epsilon": 1e-3, "model.init": "glorot_uniform", "model.dropout": dropout,
              "train.optimizer": optimizer, "train.learning_rate": 0.05, "train.momentum": 0.9,
              "train.weight_decay": 0.0, "train.batch_size": 16, "record.landscape": True,
              "record.landscape_factors": [0.5, 1.0, 2.0], "record.ics": True}
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    keras.utils.set_random_seed(seed)
    model = build_model(params, (6,), 3)
    optimizer = make_optimizer(params)
    model.compile(optimizer=optimizer, loss=loss_function(keras))
    return keras, params, model, optimizer, Dataset("synthetic", x, y, x, y, 3)


def test_cross_entropy_gradients_match_a_gradient_tape_on_a_copy():
    import tensorflow as tf

    keras, params, model, optimizer, data = bn_setup()
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the reference computation is TensorFlow's")
    model.fit(data.x_train, data.y_train, batch_size=16, epochs=1, verbose=0)
    x, y = data.x_train[:16], data.y_train[:16]
    loss, gradients = keras_loss_and_gradients(model, x, y)(current_weights(model))
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    with tf.GradientTape() as tape:  # training mode: BN uses this batch's statistics
        expected_loss = loss_function(keras)(y, copy(x, training=True))
    expected = tape.gradient(expected_loss, copy.trainable_variables)
    assert loss == pytest.approx(float(expected_loss), rel=1e-6)
    for got, want in zip(gradients, expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name, trained", [("momentum", True), ("adam", True), ("adam", False)])
def test_the_ics_update_is_the_step_the_optimizer_really_takes(name, trained):
    """After some steps (momenta non-zero), and at step 0 (record.eval_at_start: not built yet)."""
    keras, params, model, optimizer, data = bn_setup(optimizer=name)
    if trained:
        model.fit(data.x_train, data.y_train, batch_size=16, epochs=1, verbose=0)
    assert optimizer.built == trained
    current = current_weights(model)
    _, gradients = keras_loss_and_gradients(model, data.x_train[:16], data.y_train[:16])(current)
    predicted = optimizer_update(optimizer, model, current, gradients)
    assert optimizer.built == trained  # the copy was built, not the optimizer
    optimizer.apply([keras.ops.convert_to_tensor(g) for g in gradients], model.trainable_variables)
    for got, real in zip(predicted, current_weights(model)):
        np.testing.assert_array_equal(got, real)


def test_ics_refuses_an_optimizer_built_for_another_model():
    keras, params, model, optimizer, data = bn_setup()
    other = keras.optimizers.Adam()
    other.build(model.trainable_variables[:2])
    current = current_weights(model)
    with pytest.raises(ValueError, match="optimizer that trains the model"):
        optimizer_update(other, model, current, current)


def snapshot(keras, model, optimizer) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v.value))
            for v in model.variables + optimizer.variables]


def test_probing_writes_nothing_and_training_is_bit_identical():
    """Two identical trainings (BN and dropout, so seed states matter), one probed between chunks."""
    finals, blocks = [], []
    for probe in (False, True):
        keras, params, model, optimizer, data = bn_setup(dropout=0.2)
        for chunk in range(2):
            if probe:
                before = snapshot(keras, model, optimizer)
                blocks.append(probe_blocks(model, optimizer, data, params, step=4 * chunk))
                for a, b in zip(before, snapshot(keras, model, optimizer)):
                    np.testing.assert_array_equal(a, b)
            model.fit(data.x_train, data.y_train, batch_size=16, epochs=1, verbose=0, shuffle=False)
        finals.append(snapshot(keras, model, optimizer))
    for a, b in zip(*finals):
        np.testing.assert_array_equal(a, b)
    assert all(set(b) == {"landscape", "ics"} for b in blocks)


def test_probe_blocks_shape_and_metrics_layout():
    keras, params, model, optimizer, data = bn_setup()
    metrics: dict = {}
    for step in (0, 4):
        point = probe_blocks(model, optimizer, data, params, step)
        assert list(point["landscape"]) == ["step", "loss_min", "loss_max", "grad_diff_min",
                                            "grad_diff_max", "beta_smoothness"]
        append_point(metrics, point)
        model.fit(data.x_train, data.y_train, batch_size=16, epochs=1, verbose=0)
    assert metrics["landscape"]["step"] == [0, 4]
    assert all(len(series) == 2 for series in metrics["landscape"].values())
    assert list(metrics["ics"]) == ["dense_1", "dense_2", "output"]
    for layer in metrics["ics"].values():
        assert layer["step"] == [0, 4] and len(layer["l2"]) == len(layer["cosine"]) == 2
    assert metrics["ics"]["dense_1"]["l2"] == [0.0, 0.0]
    assert all(0 < v and -1 <= c <= 1 for v, c in zip(metrics["ics"]["dense_2"]["l2"],
                                                       metrics["ics"]["dense_2"]["cosine"]))
    landscape_block = metrics["landscape"]
    assert all(lo <= hi for lo, hi in zip(landscape_block["loss_min"], landscape_block["loss_max"]))
    json.dumps(metrics, allow_nan=False)  # plain floats and ints only


def test_probe_blocks_is_empty_when_off_and_ics_covers_bn_before_activation():
    keras, params, model, optimizer, data = bn_setup()
    assert probe_blocks(model, optimizer, data, {**params, "record.landscape": False,
                                                  "record.ics": False}, 0) == {}
    params = {**params, "model.bn_placement": "before_activation"}
    model = build_model(params, (6,), 3)
    layers = {layer.name: layer for layer in weight_layers(model)}
    paths = [v.path for v in model.trainable_variables]
    # dense_2's predecessors: dense_1's kernel and bn_1's gamma and beta (no bias before BN).
    assert [paths[i] for i in layers["dense_2"].preceding] == ["dense_1/kernel", "bn_1/gamma",
                                                               "bn_1/beta"]


def test_the_keys_validate(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: {dataset: synthetic}\nrecord: {landscape: true, ics: true}\n")
    (run, *_) = load_runs([config])
    assert run.params["record.landscape_factors"] == list(DEFAULT_FACTORS)
    assert run.params["record.landscape"] and run.params["record.ics"]
    config.write_text("data: {dataset: synthetic}\nrecord: {landscape_factors: [1, 0]}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: record\.landscape_factors: item 2"):
        load_runs([config])


OTHER_BACKEND = """
import json, sys
sys.path.insert(0, {tests!r})
from test_probes import *
x, y, weights = linear_problem()
model = linear_model(weights)
f = keras_loss_and_gradients(model, x, y, squared_loss)
current = current_weights(model)
import keras
updated = optimizer_update(keras.optimizers.SGD({lr}), model, current, f(current)[1])
print(json.dumps({{"landscape": landscape(f, current, {steps}),
                  "ics": internal_covariate_shift(f, current, updated, weight_layers(model)),
                  "unchanged": all((a == b).all() for a, b in zip(current, current_weights(model)))}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_give_the_closed_form(backend):
    script = OTHER_BACKEND.format(tests=str(ROOT / "tests"), lr=LEARNING_RATE, steps=list(STEP_SIZES))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "KERAS_BACKEND": backend}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    x, y, weights = linear_problem()
    for key, value in expected_landscape(x, y, weights, STEP_SIZES).items():
        assert got["landscape"][key] == pytest.approx(value, rel=1e-4), key
    _, (g1, g2) = closed_form(x, y, weights)
    _, (_, g2_after) = closed_form(x, y, [weights[0] - LEARNING_RATE * g1, weights[1]])
    assert got["ics"]["output"]["l2"] == pytest.approx(np.linalg.norm(g2 - g2_after), rel=1e-4)
    assert got["unchanged"]


# ---- figures (bncompare/probe_plots.py) from results written through bncompare's writer ------------

PLOTTED = """\
name: probes
data: {dataset: synthetic}
train: {seeds: [0, 1]}
record: {landscape: true, ics: true}
"""


def write_probed_runs(tmp_path: Path, points: int = 4) -> Path:
    """Both default variants x 2 seeds; bn's band is half as wide and its ICS smaller."""
    from bncompare.results import MetricsFile

    out = tmp_path / "results"
    config = tmp_path / "config.yaml"
    config.write_text(PLOTTED)
    for run in load_runs([config]):
        scale = 0.5 if run.variant == "bn" else 1.0
        run_dir = out / run.experiment / run.run_id
        run_dir.mkdir(parents=True)
        metrics = MetricsFile(run_dir, experiment=run.experiment, run_id=run.run_id,
                              variant=run.variant, params=run.params, environment={})
        for i in range(points + 1):  # an eval point at step 0 too (record.eval_at_start)
            if i:
                metrics.add_point({"epoch": i, "step": 10 * i, "loss": 1 / i, "accuracy": 0.5,
                                   "val_loss": 1 / i, "val_accuracy": 0.5, "seconds": 2.0 * i})
            append_point(metrics.data, {
                "landscape": {"step": 10 * i, "loss_min": 1 / (i + 1), "loss_max": (1 + scale) / (i + 1),
                              "grad_diff_min": scale / (i + 1), "grad_diff_max": 3 * scale / (i + 1),
                              "beta_smoothness": 10 * scale + run.seed},
                "ics": {name: {"step": 10 * i, "l2": 0.0 if name == "dense_1" else scale / (i + 1),
                               "cosine": 1.0 if name == "dense_1" else 1 - 0.1 * scale}
                        for name in ("dense_1", "dense_2", "output")}})
        metrics.finish("completed")
    return out


def test_probe_figures_draw_a_band_per_variant_and_skip_the_first_layer(tmp_path):
    from bncompare.aggregate import load
    from bncompare.plots import save
    from bncompare.probe_plots import block_curve, figures, ics_figure, landscape_figure

    results = load(write_probed_runs(tmp_path))
    (experiment,) = results.experiments
    figure = landscape_figure(experiment, "step")
    loss_band, grad_band, beta = figure.axes[:3]
    assert len(loss_band.collections) == len(grad_band.collections) == 2  # a band per variant
    assert beta.get_yscale() == "log"
    no_bn = next(c for c in experiment.conditions if c.variant == "no_bn")
    curve = block_curve(no_bn, ("landscape", "beta_smoothness"), "step")
    assert list(curve.x) == [0, 10, 20, 30, 40] and curve.mean[0] == pytest.approx(10.5)
    by_epoch = block_curve(no_bn, ("ics", "output", "l2"), "epoch")
    assert list(by_epoch.x) == [0, 1, 2, 3, 4]
    ics = ics_figure(experiment, "time")
    assert [ax.get_title() for ax in ics.axes[:2]] == ["dense_2", "output"]  # dense_1: 0 by definition
    assert "dense_1 omitted" in ics.get_suptitle().replace("\n", " ")
    written = [save(fig, tmp_path / f"{stem}.png", "png") for stem, fig in
               figures(experiment, {"bn": "#0072B2", "no_bn": "#E69F00"}, "step")]
    assert [p.name for p in written] == ["landscape-step.png", "ics-step.png"]
    assert all(p.stat().st_size > 10_000 for p in written)


def test_probe_figures_are_none_without_probe_blocks(tmp_path):
    from bncompare.aggregate import load
    from bncompare.probe_plots import ics_figure, landscape_figure
    from tests.results_fixtures import sweep_results

    (experiment,) = load(sweep_results(tmp_path)).experiments
    assert landscape_figure(experiment) is None and ics_figure(experiment) is None
