"""Model structure: the origin notebook's parameter counts, BN placement order, CNN shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bncompare.config import load_runs
from bncompare.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def params_for(tmp_path, text: str = "", variant: str = "bn") -> dict:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return next(r for r in load_runs([path]) if r.variant == variant).params


def kinds(model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("variant, count, batch_norms", [("no_bn", 235_146, 0), ("bn", 236_682, 2)])
def test_origin_notebook_models(variant, count, batch_norms):
    run = next(r for r in load_runs([ROOT / "configs" / "mnist.yaml"]) if r.variant == variant)
    model = build_model(run.params, (28, 28, 1), 10)
    assert model.count_params() == count
    assert kinds(model).count("BatchNormalization") == batch_norms
    assert model.output_shape == (None, 10)


def test_bn_after_activation_follows_each_nonlinearity(tmp_path):
    model = build_model(params_for(tmp_path, "model: {depth: 2}"), (28, 28, 1), 10)
    assert kinds(model)[1:] == ["Flatten", "Dense", "Activation", "BatchNormalization",
                                "Dense", "Activation", "BatchNormalization", "Dense"]
    assert model.get_layer("dense_1").use_bias


def test_bn_before_activation_is_dense_without_bias_then_bn(tmp_path):
    params = params_for(tmp_path, "model: {depth: 3, activation: sigmoid, bn_placement: before_activation}")
    model = build_model(params, (28, 28, 1), 10)
    assert kinds(model)[1:] == ["Flatten"] + ["Dense", "BatchNormalization", "Activation"] * 3 + ["Dense"]
    assert not model.get_layer("dense_1").use_bias  # BN's beta replaces it
    assert model.get_layer("act_2").get_config()["activation"] == "sigmoid"


def test_bn_options_and_dropout_reach_the_layers(tmp_path):
    params = params_for(tmp_path, "model: {bn_momentum: 0.9, bn_epsilon: 0.01, dropout: 0.25}")
    model = build_model(params, (28, 28, 1), 10)
    bn = model.get_layer("bn_1")
    assert (bn.momentum, bn.epsilon) == (0.9, 0.01)
    assert model.get_layer("dropout_2").rate == 0.25


def test_hidden_overrides_depth_and_width(tmp_path):
    model = build_model(params_for(tmp_path, "model: {depth: 5, width: 7, hidden: [40, 30, 20]}", "no_bn"),
                        (28, 28, 1), 10)
    assert [layer.units for layer in model.layers if type(layer).__name__ == "Dense"] == [40, 30, 20, 10]


def test_initializer_with_arguments(tmp_path):
    params = params_for(tmp_path, "model: {init: {name: random_normal, stddev: 0.5}, width: 512}", "no_bn")
    kernel = np.asarray(build_model(params, (28, 28, 1), 10).get_layer("dense_1").kernel)
    assert abs(kernel.std() - 0.5) < 0.02


@pytest.mark.parametrize("depth", [2, 6])
def test_cnn_builds_at_any_depth(tmp_path, depth):
    params = params_for(tmp_path, f"model: {{kind: cnn, depth: {depth}, width: 8}}")
    model = build_model(params, (28, 28, 1), 10)
    assert kinds(model).count("Conv2D") == depth
    assert kinds(model).count("BatchNormalization") == depth
    assert model.predict(np.zeros((2, 28, 28, 1), np.float32), verbose=0).shape == (2, 10)


def test_mixed_precision_computes_in_16_bits_and_does_not_leak(tmp_path):
    import keras

    params = params_for(tmp_path, "train: {precision: mixed_bfloat16}")
    model = build_model(params, (28, 28, 1), 10)
    assert model.get_layer("dense_1").compute_dtype == "bfloat16"
    assert model.get_layer("dense_1").kernel.dtype == "float32"  # weights stay in 32 bits
    assert model.get_layer("output").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"
    plain = build_model(params_for(tmp_path), (28, 28, 1), 10)
    assert plain.get_layer("dense_1").compute_dtype == "float32"
