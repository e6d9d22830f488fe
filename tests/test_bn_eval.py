"""BN evaluation modes (bncompare.bn_eval) against a NumPy re-implementation of the tiny models.

The NumPy forward below interprets the layers bncompare.models builds (Dense, Conv2D 3x3 'same',
Activation, BatchNormalization, MaxPooling2D 2x2, Dropout, Flatten) in float64, with each BN layer
normalising either with its batch's statistics (training mode) or with given population statistics.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from bncompare import bn_eval
from bncompare.config import ConfigError, check_value, config_hash
from bncompare.models import build_model
from bncompare.schema import SCHEMA

DEFAULTS = {key: option.default for key, option in SCHEMA.items()} | {"train.seed": 0}


def make_params(**changes) -> dict:
    return DEFAULTS | {key.replace("__", "."): value for key, value in changes.items()}


def tiny_model(kind: str, placement: str, batch_norm: bool = True, dropout: float = 0.0,
               seed: int = 0):
    """A two-layer MLP (6, 5 units) or CNN (4 filters, 8x8 input) with random BN parameters and
    moving statistics (so that a test cannot pass by reading the initial zeros and ones)."""
    import keras

    keras.utils.set_random_seed(seed)
    params = make_params(model__kind=kind, model__hidden=[6, 5] if kind == "mlp" else [4, 4],
                         model__batch_norm=batch_norm, model__bn_placement=placement,
                         model__dropout=dropout, train__batch_size=32)
    model = build_model(params, (8, 8, 1), 3)
    rng = np.random.default_rng(seed + 1)
    for layer in bn_eval.batch_norm_layers(model):
        n = layer.gamma.shape[0]
        layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
        layer.beta.assign(rng.normal(0, 0.3, n).astype("float32"))
        layer.moving_mean.assign(rng.normal(0, 0.5, n).astype("float32"))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
    return model, params


def data(n: int = 100, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0.5, 1.0, (n, 8, 8, 1)).astype("float32"),
            rng.integers(0, 3, n).astype("int32"))


# ---- the NumPy reference ---------------------------------------------------------------------------


def numpy_forward(model, x, statistics=None, record=None):
    """Logits of `model` on x in float64. statistics: {bn name: (mean, variance)} for inference;
    None: every BN uses its batch's biased statistics. record: list to append each BN's input to."""
    h = x.astype(np.float64)
    for layer in model.layers:
        kind = type(layer).__name__
        weights = [np.asarray(w, np.float64) for w in layer.get_weights()]
        if kind == "Flatten":
            h = h.reshape(len(h), -1)
        elif kind == "Dense":
            h = h @ weights[0] + (weights[1] if layer.use_bias else 0.0)
        elif kind == "Conv2D":
            padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
            windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
            h = np.einsum("nhwcab,abcf->nhwf", windows, weights[0])
            h = h + (weights[1] if layer.use_bias else 0.0)
        elif kind == "Activation":
            assert layer.get_config()["activation"] == "relu"
            h = np.maximum(h, 0.0)
        elif kind == "MaxPooling2D":
            n, height, width, c = h.shape
            h = h[:, :height // 2 * 2, :width // 2 * 2].reshape(
                n, height // 2, 2, width // 2, 2, c).max(axis=(2, 4))
        elif kind == "BatchNormalization":
            gamma, beta = weights[0], weights[1]
            if record is not None:
                record.append(h)
            axes = tuple(range(h.ndim - 1))
            mean, variance = (statistics[layer.name] if statistics is not None
                              else (h.mean(axis=axes), h.var(axis=axes)))
            h = gamma * (h - mean) / np.sqrt(variance + layer.epsilon) + beta
        else:
            assert kind in ("InputLayer", "Dropout"), kind  # dropout is off in every mode here
    return h


def numpy_loss_accuracy(logits, y):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probabilities[np.arange(len(y)), y].mean(), (logits.argmax(axis=1) == y).mean()


def numpy_precise(model, x, batch_size, examples, unbiased=False):
    """PreciseBN in NumPy: the equal-weight average of per-batch means and variances over full
    batches of the first `examples` rows, each batch in training mode."""
    names = [layer.name for layer in bn_eval.batch_norm_layers(model)]
    sums = {name: [0.0, 0.0] for name in names}
    batches = examples // batch_size
    for b in range(batches):
        inputs: list = []
        numpy_forward(model, x[b * batch_size:(b + 1) * batch_size], record=inputs)
        for name, h in zip(names, inputs):
            axes = tuple(range(h.ndim - 1))
            sums[name][0] = sums[name][0] + h.mean(axis=axes)
            sums[name][1] = sums[name][1] + h.var(axis=axes, ddof=1 if unbiased else 0)
    return {name: (s[0] / batches, s[1] / batches) for name, s in sums.items()}


def moving(model):
    return {layer.name: (np.asarray(layer.moving_mean.numpy(), np.float64),
                         np.asarray(layer.moving_variance.numpy(), np.float64))
            for layer in bn_eval.batch_norm_layers(model)}


def snapshot(model):
    return [np.array(v.numpy(), copy=True) for v in model.variables]


def assert_unchanged(model, before):
    after = snapshot(model)
    assert len(after) == len(before)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def statistics_of(model, statistics):
    """{bn name: (mean, variance)} from bn_eval's per-layer list."""
    return {layer.name: pair for layer, pair in zip(bn_eval.batch_norm_layers(model), statistics)}


CASES = [("mlp", "before_activation"), ("mlp", "after_activation"),
         ("cnn", "before_activation"), ("cnn", "after_activation")]


# ---- PreciseBN --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, placement", CASES)
@pytest.mark.parametrize("unbiased", [False, True])
def test_precise_statistics_match_numpy(kind, placement, unbiased):
    model, _ = tiny_model(kind, placement)
    x, _ = data(200)
    before = snapshot(model)
    # 150 examples in batches of 32: PreciseBN averages the 4 full batches (128 examples).
    got = statistics_of(model, bn_eval.precise_statistics(model, x, batch_size=32, examples=150,
                                                          unbiased=unbiased))
    assert_unchanged(model, before)
    expected = numpy_precise(model, x, 32, 150, unbiased)
    assert set(got) == set(expected) and len(got) == 2
    for name in expected:
        np.testing.assert_allclose(got[name][0], expected[name][0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[name][1], expected[name][1], rtol=1e-4, atol=1e-6)


def test_precise_batches_are_full_batches_of_the_first_examples():
    assert bn_eval.precise_batches(3000, 64, 2048) == [(i * 64, (i + 1) * 64) for i in range(32)]
    assert bn_eval.precise_batches(3000, 100, 250) == [(0, 100), (100, 200)]
    assert bn_eval.precise_batches(3000, 64, 10) == [(0, 64)]  # at least one batch
    assert bn_eval.precise_batches(50, 64, 2048) == [(0, 50)]  # the whole (small) training set


@pytest.mark.parametrize("kind, placement", CASES[::3])
def test_precise_evaluation_is_inference_with_the_precise_statistics(kind, placement):
    model, _ = tiny_model(kind, placement)
    x, y = data(200)
    x_val, y_val = data(60, seed=5)
    loss, accuracy = bn_eval.evaluate(model, x_val, y_val, "precise", batch_size=32, x_train=x,
                                      precise_examples=128)
    expected = numpy_loss_accuracy(numpy_forward(model, x_val, numpy_precise(model, x, 32, 128)),
                                   y_val)
    np.testing.assert_allclose((loss, accuracy), expected, rtol=1e-4)


# ---- moving averages and batch statistics ------------------------------------------------------------


@pytest.mark.parametrize("kind, placement", CASES)
def test_moving_mode_is_keras_inference(kind, placement):
    model, _ = tiny_model(kind, placement)
    x_val, y_val = data(60, seed=5)
    loss, accuracy = bn_eval.evaluate(model, x_val, y_val, "moving", batch_size=32)
    expected = numpy_loss_accuracy(numpy_forward(model, x_val, moving(model)), y_val)
    np.testing.assert_allclose((loss, accuracy), expected, rtol=1e-4)


@pytest.mark.parametrize("kind, placement", CASES)
def test_unbiased_moving_variance_is_scaled_by_m_over_m_minus_1(kind, placement):
    model, _ = tiny_model(kind, placement)
    values = statistics_of(model, bn_eval.moving_statistics(model, batch_size=4, unbiased=True))
    for layer in bn_eval.batch_norm_layers(model):
        # m: the batch (4) times the positions sharing one statistic (a CNN's map before pooling).
        m = 4 * (int(np.prod(layer.input.shape[1:3])) if kind == "cnn" else 1)
        assert m == bn_eval.values_per_statistic(layer, 4)
        mean, variance = values[layer.name]
        assert np.array_equal(mean, layer.moving_mean.numpy())
        np.testing.assert_allclose(variance, layer.moving_variance.numpy() * m / (m - 1), rtol=1e-6)
    assert bn_eval.values_per_statistic(bn_eval.batch_norm_layers(model)[0], 32) == (
        32 * 64 if kind == "cnn" else 32)


def test_unbiased_needs_two_values_per_statistic():
    model, _ = tiny_model("mlp", "before_activation")
    with pytest.raises(ValueError, match="at least 2 values"):
        bn_eval.moving_statistics(model, batch_size=1, unbiased=True)


@pytest.mark.parametrize("kind, placement", CASES)
def test_batch_mode_matches_numpy_with_dropout_off(kind, placement):
    model, _ = tiny_model(kind, placement, dropout=0.5)
    x_val, y_val = data(100, seed=5)
    before = snapshot(model)
    loss, accuracy = bn_eval.evaluate(model, x_val, y_val, "batch", batch_size=32)
    assert_unchanged(model, before)
    # Batches of 32, the last one of 4 examples normalised with its own statistics.
    logits = np.concatenate([numpy_forward(model, x_val[i:i + 32]) for i in range(0, 100, 32)])
    np.testing.assert_allclose((loss, accuracy), numpy_loss_accuracy(logits, y_val), rtol=1e-4)


def test_views_are_keras_training_and_inference_mode():
    import keras

    model, _ = tiny_model("cnn", "before_activation")
    x, _ = data(32)
    views = bn_eval._views(model)
    # Inference with the moving averages: the same compiled computation as Keras's, bit for bit.
    bn_eval.evaluate(model, x[:1], np.zeros(1, "int32"), "moving", batch_size=32)
    assert np.array_equal(views.fixed.predict(x, batch_size=32, verbose=0),
                          model.predict(x, batch_size=32, verbose=0))
    # Batch statistics: Keras's training-mode forward (eager here, so rounding may differ on JAX).
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    expected, _ = model.stateless_call(trainable, non_trainable, x, training=True)
    np.testing.assert_allclose(views.batch.predict(x, batch_size=32, verbose=0),
                               keras.ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-6)


# ---- the entry point, train_eval, models without BN ---------------------------------------------------


def test_extra_history_entries_and_train_eval():
    model, params = tiny_model("cnn", "before_activation", dropout=0.25)
    x, y = data(200)
    x_val, y_val = data(60, seed=5)
    dataset = SimpleNamespace(x_train=x, y_train=y, x_val=x_val, y_val=y_val)
    params = params | {"record.bn_eval": ["moving", "precise", "batch"], "record.train_eval": 50,
                       "record.precise_examples": 96}
    before = snapshot(model)
    history = bn_eval.extra_history(model, dataset, params)
    assert_unchanged(model, before)
    assert sorted(history) == sorted(["val_loss_precise", "val_accuracy_precise", "val_loss_batch",
                                      "val_accuracy_batch", "train_eval_loss", "train_eval_accuracy"])
    expected_train = numpy_loss_accuracy(numpy_forward(model, x[:50], moving(model)), y[:50])
    np.testing.assert_allclose((history["train_eval_loss"], history["train_eval_accuracy"]),
                               expected_train, rtol=1e-4)
    expected_precise = numpy_loss_accuracy(
        numpy_forward(model, x_val, numpy_precise(model, x, 32, 96)), y_val)
    np.testing.assert_allclose((history["val_loss_precise"], history["val_accuracy_precise"]),
                               expected_precise, rtol=1e-4)
    assert all(isinstance(value, float) for value in history.values())


def test_extra_history_unbiased_replaces_val_numbers():
    model, params = tiny_model("mlp", "after_activation")
    x, y = data(200)
    dataset = SimpleNamespace(x_train=x, y_train=y, x_val=x[:60], y_val=y[:60])
    params = params | {"model.bn_variance": "unbiased", "train.batch_size": 4}
    history = bn_eval.extra_history(model, dataset, params)
    statistics = {name: (mean, variance * 4 / 3) for name, (mean, variance) in moving(model).items()}
    expected = numpy_loss_accuracy(numpy_forward(model, x[:60], statistics), y[:60])
    np.testing.assert_allclose((history["val_loss"], history["val_accuracy"]), expected, rtol=1e-4)
    assert bn_eval.extra_history(model, dataset, params | {"model.bn_variance": "biased"}) == {}


def test_without_bn_every_mode_is_plain_inference():
    model, params = tiny_model("mlp", "before_activation", batch_norm=False)
    x, y = data(100)
    dataset = SimpleNamespace(x_train=x, y_train=y, x_val=x[:40], y_val=y[:40])
    assert bn_eval.batch_norm_layers(model) == []
    assert bn_eval.precise_statistics(model, x, 32, 64) == []
    params = params | {"record.bn_eval": ["moving", "precise", "batch"]}
    history = bn_eval.extra_history(model, dataset, params, moving=(0.5, 0.25))
    assert history == {"val_loss_precise": 0.5, "val_accuracy_precise": 0.25,
                       "val_loss_batch": 0.5, "val_accuracy_batch": 0.25}
    history = bn_eval.extra_history(model, dataset, params)
    expected = numpy_loss_accuracy(numpy_forward(model, x[:40]), y[:40])
    np.testing.assert_allclose((history["val_loss_batch"], history["val_accuracy_precise"]),
                               expected, rtol=1e-4)


def test_training_is_bit_identical_with_and_without_extra_evaluations():
    """Same seed, same fit calls; one model is evaluated every way between them. Dropout makes the
    test sensitive to any use of the layers' random state, BN to any write of the moving averages."""
    import keras

    x, y = data(128)
    dataset = SimpleNamespace(x_train=x, y_train=y, x_val=x[:64], y_val=y[:64])
    weights = []
    for evaluate in (False, True):
        model, params = tiny_model("cnn", "after_activation", dropout=0.3, seed=3)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.
                      SparseCategoricalCrossentropy(from_logits=True))
        params = params | {"record.bn_eval": ["moving", "precise", "batch"],
                           "record.train_eval": 64, "record.precise_examples": 64}
        for _ in range(2):
            model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
            if evaluate:
                bn_eval.extra_history(model, dataset, params)
                bn_eval.extra_history(model, dataset, params | {"model.bn_variance": "unbiased"})
        weights.append(snapshot(model))
    for a, b in zip(*weights):
        assert np.array_equal(a, b)


# ---- the lag warning ------------------------------------------------------------------------------


def test_moving_average_weight():
    assert bn_eval.moving_average_weight(0.99, 94) == pytest.approx(0.3888, abs=1e-4)
    assert bn_eval.moving_average_weight(0.9, 0) == 1.0


def test_lag_warning_threshold_and_fix():
    params = make_params(model__batch_norm=True)  # bn_momentum 0.99: 0.99**298 > 5% > 0.99**299
    assert math.isclose(0.99 ** 298, 0.0500, abs_tol=1e-4)
    warning = bn_eval.lag_warning(params, 298)
    assert warning is not None and "5%" in warning and "step 298" in warning
    assert "record.bn_eval=[moving,precise]" in warning and "model.bn_momentum" in warning
    assert bn_eval.lag_warning(params, 299) is None
    assert bn_eval.lag_warning(params, 0) is None  # record.eval_at_start: nothing learned yet
    assert bn_eval.lag_warning(params | {"model.batch_norm": False}, 10) is None
    assert bn_eval.lag_warning(params | {"model.bn_momentum": 0.9}, 94) is None
    recorded = bn_eval.lag_warning(params | {"record.bn_eval": ["moving", "precise"]}, 94)
    assert "39%" in recorded and "val_accuracy_precise" in recorded


# ---- config keys --------------------------------------------------------------------------------


def test_bn_eval_key_is_checked_and_canonical():
    assert check_value("record.bn_eval", ["batch", "moving"], "x") == ["moving", "batch"]
    for bad, message in ((["precise"], "includes moving"), (["moving", "moving"], "once"),
                         (["moving", "exact"], "expected one of"), ("moving", "list"), ([], "list")):
        with pytest.raises(ConfigError, match=message):
            check_value("record.bn_eval", bad, "x")
    with pytest.raises(ConfigError):
        check_value("record.train_eval", -1, "x")
    with pytest.raises(ConfigError):
        check_value("model.bn_variance", "corrected", "x")


def test_new_keys_name_runs_only_when_set():
    params = make_params()
    assert config_hash(params) == config_hash({k: v for k, v in params.items() if k not in (
        "record.bn_eval", "record.train_eval", "record.precise_examples", "model.bn_variance")})
    for key, value in (("record.bn_eval", ["moving", "precise"]), ("record.train_eval", 1000),
                       ("record.precise_examples", 4096), ("model.bn_variance", "unbiased")):
        assert config_hash(params | {key: value}) != config_hash(params)
