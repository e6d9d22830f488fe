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
    path.write_text(text or "{}")  # {}: every default (an empty file is refused as a likely mistake)
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


# ---- normalisers, residual networks, noisy BN (issue 13, issue 15) ------------------------------

KINDS = ("mlp", "cnn", "resmlp", "rescnn")
NORMS = ("none", "batch", "layer", "group", "rms", "renorm", "ghost")
# Parameters (trainable and not) of one normaliser over w units: gamma, beta and moving mean and
# variance for BN; renorm adds moving_stddev, renorm_mean and renorm_stddev; RMSNorm has a scale only.
NORM_PARAMS = {"none": 0, "batch": 4, "layer": 2, "group": 2, "rms": 1, "renorm": 7, "ghost": 4}
SMALL = (8, 8, 1)  # synthetic 8x8 images, 3 classes


def small_params(tmp_path, kind: str, norm: str, extra: str = "") -> dict:
    """A depth-2, width-8 model of `kind` with `norm`; `extra` adds or replaces model keys."""
    import yaml

    model = {"kind": kind, "norm": norm, "depth": 2, "width": 8, "groups": 4, "ghost_batch_size": 4}
    model.update(yaml.safe_load("{" + extra.lstrip(", ") + "}") or {})
    text = yaml.safe_dump({"model": model, "train": {"batch_size": 8}, "variants": {"v": {}}})
    return params_for(tmp_path, text, "v")


def one_step(model, batch: int = 10) -> float:
    """One Adam step on a random batch (10: not a multiple of the ghost batch of 4); the loss."""
    import keras

    from bncompare.models import loss_function

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch,) + SMALL).astype("float32")
    y = np.arange(batch) % 3
    # Eager: a compiled step would cost a second of tracing per model, for nothing tested here.
    model.compile(optimizer="adam", loss=loss_function(keras), run_eagerly=True)
    return float(model.train_on_batch(x, y))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("norm", NORMS)
def test_every_kind_and_norm_builds_and_trains_one_step(tmp_path, kind, norm):
    params = small_params(tmp_path, kind, norm)
    model = build_model(params, SMALL, 3)
    names = [layer.name for layer in model.layers]
    normalisers = [n for n in names if n.startswith("bn_")]
    hidden = 2 + (1 if kind.startswith("res") else 0)  # residual nets: the head's norm too
    assert len(normalisers) == (0 if norm == "none" else hidden)
    assert len([n for n in names if n.startswith("act_")]) == hidden
    before = [np.asarray(w).copy() for w in model.trainable_weights]
    assert np.isfinite(one_step(model))
    after = [np.asarray(w) for w in model.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("norm", NORMS)
def test_parameter_counts_per_norm(tmp_path, norm):
    width, pixels = 8, 64
    per_norm = NORM_PARAMS[norm] * width
    mlp = build_model(small_params(tmp_path, "mlp", norm), SMALL, 3)
    # dense_1 (64 -> 8) + dense_2 (8 -> 8) + output (8 -> 3); a batch norm before the activation
    # would drop the biases, after it (the default) they stay.
    assert mlp.count_params() == (pixels * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3) + 2 * per_norm
    res = build_model(small_params(tmp_path, "resmlp", norm, ", skip_init: true"), SMALL, 3)
    # stem dense_0, one block (dense_1, dense_2), three normalisers (two in the block, the head's),
    # one SkipInit scalar, output.
    assert res.count_params() == ((pixels * 8 + 8) + 2 * (8 * 8 + 8) + 3 * per_norm + 1
                                  + (8 * 3 + 3))


def test_norm_layer_types(tmp_path):
    expected = {"batch": "BatchNormalization", "renorm": "BatchNormalization",
                "layer": "LayerNormalization", "group": "GroupNormalization",
                "rms": "RMSNormalization", "ghost": "GhostBatchNormalization"}
    for norm, cls in expected.items():
        model = build_model(small_params(tmp_path, "mlp", norm), SMALL, 3)
        assert type(model.get_layer("bn_2")).__name__ == cls
    conv = build_model(small_params(tmp_path, "cnn", "layer"), SMALL, 3).get_layer("bn_1")
    assert type(conv).__name__ == "GroupNormalization" and conv.groups == 1  # LN over C, H, W


def test_norm_options_reach_the_layers(tmp_path):
    group = build_model(small_params(tmp_path, "mlp", "group", ", groups: 2"), SMALL, 3)
    assert group.get_layer("bn_1").groups == 2
    ghost = build_model(small_params(tmp_path, "cnn", "ghost", ", ghost_batch_size: 2, "
                                     "bn_momentum: 0.9"), SMALL, 3).get_layer("bn_2")
    assert (ghost.ghost_batch_size, ghost.momentum) == (2, 0.9)
    renorm = build_model(small_params(tmp_path, "resmlp", "renorm",
                                      ", renorm_clipping: {rmax: 2, dmax: 1}, bn_epsilon: 0.01"),
                         SMALL, 3).get_layer("bn_3")
    assert renorm.renorm and renorm.renorm_clipping == {"rmax": 2.0, "rmin": 0.5, "dmax": 1.0}
    assert renorm.epsilon == 0.01
    layer = build_model(small_params(tmp_path, "mlp", "layer", ", bn_epsilon: 0.01"), SMALL, 3)
    assert layer.get_layer("bn_1").epsilon == 0.01


def test_bias_is_dropped_only_before_batch_statistics(tmp_path):
    for norm, bias in (("batch", False), ("ghost", False), ("renorm", False), ("layer", True),
                       ("rms", True), ("none", True)):
        params = small_params(tmp_path, "mlp", norm, ", bn_placement: before_activation")
        assert build_model(params, SMALL, 3).get_layer("dense_1").use_bias is bias


def test_residual_structure(tmp_path):
    model = build_model(small_params(tmp_path, "resmlp", "batch", ", depth: 6"), SMALL, 3)
    assert kinds(model).count("Add") == 3
    assert [n for n in (layer.name for layer in model.layers) if n.startswith("dense_")] == [
        f"dense_{i}" for i in range(7)]  # dense_0 is the stem
    # after_activation (the default): act -> bn -> weights in each branch; before_activation is He
    # et al. 2016b's order, bn -> act -> weights.
    order = [layer.name for layer in model.layers]
    assert order.index("act_1") < order.index("bn_1") < order.index("dense_1")
    he = build_model(small_params(tmp_path, "resmlp", "batch", ", bn_placement: before_activation"),
                     SMALL, 3)
    order = [layer.name for layer in he.layers]
    assert order.index("bn_1") < order.index("act_1") < order.index("dense_1")
    widened = build_model(params_for(tmp_path, "model: {kind: resmlp, hidden: [8, 8, 16, 16]}", "bn"),
                          SMALL, 3)
    assert widened.get_layer("proj_2").units == 16 and "proj_1" not in [l.name for l in widened.layers]
    cnn = build_model(small_params(tmp_path, "rescnn", "group", ", depth: 4"), SMALL, 3)
    assert cnn.output_shape == (None, 3) and kinds(cnn).count("MaxPooling2D") == 2


def test_skip_init_starts_every_block_as_the_identity(tmp_path):
    import keras

    model = build_model(small_params(tmp_path, "resmlp", "none", ", skip_init: true, depth: 4"),
                        SMALL, 3)
    gains = [layer for layer in model.layers if layer.name.startswith("skip_gain_")]
    assert len(gains) == 2 and all(float(g.alpha) == 0.0 and g.trainable for g in gains)
    x = np.random.default_rng(1).normal(size=(4,) + SMALL).astype("float32")
    before = np.asarray(model(x))
    kernel = model.get_layer("dense_2").kernel
    kernel.assign(keras.ops.ones_like(kernel) * 5.0)  # the branches cannot matter yet
    np.testing.assert_allclose(np.asarray(model(x)), before, rtol=1e-6)


# ---- ghost batch norm ---------------------------------------------------------------------------


def ghost_layer(size: int, momentum: float = 0.9):
    from bncompare.layers import layer_classes

    layer = layer_classes()["GhostBatchNormalization"](size, momentum=momentum, epsilon=1e-3)
    layer.build((None, 3))
    return layer


def test_ghost_bn_normalises_each_sub_batch_and_a_partial_last_one():
    x = np.random.default_rng(2).normal(2.0, 3.0, size=(10, 3)).astype("float32")
    layer = ghost_layer(4)
    out = np.asarray(layer(x, training=True))
    for group in (slice(0, 4), slice(4, 8), slice(8, 10)):
        part = x[group]
        expected = (part - part.mean(0)) / np.sqrt(part.var(0) + 1e-3)
        np.testing.assert_allclose(out[group], expected, rtol=1e-4, atol=1e-5)


def test_ghost_bn_moving_averages_use_momentum_per_sub_batch():
    x = np.random.default_rng(3).normal(1.0, 2.0, size=(8, 3)).astype("float32")
    layer = ghost_layer(2, momentum=0.9)
    layer(x, training=True)
    keep = 0.9 ** 4  # 4 sub-batches of 2
    groups = x.reshape(4, 2, 3)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), (1 - keep) * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(layer.moving_variance),
                               keep + (1 - keep) * groups.var(1).mean(0), rtol=1e-5)
    # inference uses the moving statistics
    expected = (x - np.asarray(layer.moving_mean)) / np.sqrt(np.asarray(layer.moving_variance) + 1e-3)
    np.testing.assert_allclose(np.asarray(layer(x, training=False)), expected, rtol=1e-4, atol=1e-5)


def test_ghost_bn_with_one_ghost_batch_is_batch_norm():
    import keras

    x = np.random.default_rng(4).normal(size=(6, 4, 4, 5)).astype("float32")
    from bncompare.layers import layer_classes

    ghost = layer_classes()["GhostBatchNormalization"](6, momentum=0.9, epsilon=1e-3)
    bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    np.testing.assert_allclose(np.asarray(ghost(x, training=True)), np.asarray(bn(x, training=True)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ghost.moving_variance), np.asarray(bn.moving_variance),
                               rtol=1e-5)


# ---- noisy BN -----------------------------------------------------------------------------------


def test_noise_is_training_only_and_redrawn_every_step(tmp_path):
    params = small_params(tmp_path, "mlp", "batch", ", bn_noise: {mean: 0.5, std: 2.0}")
    model = build_model(params, SMALL, 3)
    assert [layer.name for layer in model.layers if layer.name.startswith("noise_")] == ["noise_1", "noise_2"]
    noise = model.get_layer("noise_1")
    x = np.random.default_rng(5).normal(size=(64, 8)).astype("float32")
    np.testing.assert_array_equal(np.asarray(noise(x, training=False)), x)
    first, second = (np.asarray(noise(x, training=True)) - x for _ in range(2))
    assert not np.allclose(first, second)
    # Per unit, the shift is within [-mean, mean] and the spread within [0, std] (64 examples).
    assert np.all(np.abs(first.mean(0)) < 0.5 + 3 * 2.0 / 8)
    assert first.std(0).max() < 2.0 * 1.5 and first.std(0).min() >= 0
    # Inference through the whole model: identical to the same weights without noise.
    plain = build_model(small_params(tmp_path, "mlp", "batch"), SMALL, 3)
    plain.set_weights(model.get_weights()[:len(plain.get_weights())])
    images = x.reshape(8, 8, 8, 1)
    np.testing.assert_allclose(np.asarray(model(images, training=False)),
                               np.asarray(plain(images, training=False)), rtol=1e-6)


def test_noise_is_reproducible_from_the_seed_and_advances_under_stateless_call(tmp_path):
    import keras

    params = small_params(tmp_path, "mlp", "layer", ", bn_noise: {mean: 1.0, std: 1.0}")
    x = np.random.default_rng(6).normal(size=(4,) + SMALL).astype("float32")

    def draws():
        keras.utils.set_random_seed(7)
        model = build_model(params, SMALL, 3)
        trainable = [v.value for v in model.trainable_variables]
        state = [v.value for v in model.non_trainable_variables]
        out1, state = model.stateless_call(trainable, state, x, training=True)
        out2, state = model.stateless_call(trainable, state, x, training=True)
        return np.asarray(out1), np.asarray(out2)

    a1, a2 = draws()
    b1, b2 = draws()
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.allclose(a1, a2)  # the seed state advanced: new noise at the next step


# ---- config: model.norm vs model.batch_norm, and the checks ------------------------------------


def run_ids(tmp_path, text: str) -> dict[str, str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return {r.variant: r.run_id.rsplit("-", 1)[1] for r in load_runs([path])}


def test_norm_batch_is_the_same_run_as_batch_norm_true(tmp_path):
    shorthand = run_ids(tmp_path, "variants: {a: {model.batch_norm: true}, b: {model.batch_norm: false}}")
    explicit = run_ids(tmp_path, "variants: {a: {model.norm: batch}, b: {model.norm: none}}")
    assert shorthand == explicit
    params = params_for(tmp_path, "variants: {a: {model.norm: batch}}", "a")
    assert (params["model.norm"], params["model.batch_norm"]) == (None, True)


def test_a_variant_may_choose_its_norm_over_the_default_batch_norm(tmp_path):
    ids = run_ids(tmp_path, "variants: {bn: {model.batch_norm: true}, ln: {model.norm: layer}, "
                  "gn: {model.norm: group, model.groups: 16}}")
    assert len(set(ids.values())) == 3
    params = params_for(tmp_path, "variants: {ln: {model.norm: layer}}", "ln")
    assert params["model.norm"] == "layer" and params["model.batch_norm"] is False


def test_options_of_an_unused_norm_do_not_rename_runs(tmp_path):
    plain = run_ids(tmp_path, "variants: {bn: {model.batch_norm: true}}")
    with_groups = run_ids(tmp_path, "model: {groups: 16, ghost_batch_size: 8}\n"
                          "variants: {bn: {model.batch_norm: true}}")
    assert plain == with_groups


@pytest.mark.parametrize("text, key, words", [
    ("model: {batch_norm: true, norm: layer}\nvariants: {v: {}}", "model.norm", "model.batch_norm"),
    ("model: {norm: group, groups: 3, hidden: [12, 8]}", "model.groups", "do not divide"),
    ("model: {norm: ghost, ghost_batch_size: 5}", "model.ghost_batch_size", "train.batch_size 32"),
    ("model: {kind: resmlp, depth: 3}", "model.depth", "even"),
    ("model: {kind: rescnn, hidden: [8, 8, 8]}", "model.hidden", "even"),
    ("model: {skip_init: true}", "model.skip_init", "residual"),
    ("model: {bn_noise: {mean: 1, std: 1}}\nvariants: {v: {}}", "model.bn_noise", "normaliser"),
    ("model: {bn_noise: {mean: 1}}", "model.bn_noise", "{mean: 0.5, std: 1.0}"),
    ("model: {renorm_clipping: {rmax: 0.5, dmax: 1}}", "model.renorm_clipping", "rmax"),
    ("model: {norm: instance}", "model.norm", "one of none, batch"),
])
def test_impossible_model_configs_name_the_key(tmp_path, text, key, words):
    from bncompare.config import ConfigError

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_runs([path])
    assert key in str(error.value) and words in str(error.value)
    assert str(error.value).startswith(f"{path}:")


BACKEND_CHECK = """
import numpy as np, keras
from bncompare.models import build_model, loss_function
from bncompare.schema import SCHEMA
params = {k: o.default for k, o in SCHEMA.items()}
params.update({"model.width": 8, "model.depth": 2, "model.groups": 4, "model.ghost_batch_size": 4,
               "train.seed": 0})
x = np.random.default_rng(0).normal(size=(10, 8, 8, 1)).astype("float32")
y = np.arange(10) % 3
for kind, norm in (("resmlp", "ghost"), ("rescnn", "group"), ("mlp", "renorm"), ("cnn", "rms")):
    keras.utils.set_random_seed(0)
    model = build_model(dict(params, **{"model.kind": kind, "model.norm": norm,
                                        "model.skip_init": kind.startswith("res"),
                                        "model.bn_noise": {"mean": 0.5, "std": 1.0}}), (8, 8, 1), 3)
    model.compile(optimizer="adam", loss=loss_function(keras), run_eagerly=True)
    loss = float(model.train_on_batch(x, y))
    trainable = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]
    first, state = model.stateless_call(trainable, state, x, training=True)
    second, state = model.stateless_call(trainable, state, x, training=True)
    assert np.isfinite(loss) and not np.allclose(keras.ops.convert_to_numpy(first), keras.ops.convert_to_numpy(second)), kind
    test = model.stateless_call(trainable, state, x, training=False)[0]
    assert np.allclose(keras.ops.convert_to_numpy(test), keras.ops.convert_to_numpy(model.stateless_call(trainable, state, x)[0]))
print(keras.backend.backend(), "ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_new_layers_train_on_other_backends(backend):
    """Ghost BN, noisy BN, SkipInit, group/RMS/renorm: one step and stateless calls elsewhere."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND=backend)
    done = subprocess.run([sys.executable, "-c", BACKEND_CHECK], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{backend} ok" in done.stdout


def test_instruments_know_every_model_kind():
    from bncompare.instruments import PROBE_EXAMPLES
    from bncompare.schema import MODEL_KINDS

    assert set(PROBE_EXAMPLES) == set(MODEL_KINDS)


def test_bn_evaluation_sees_every_batch_statistics_norm(tmp_path):
    from bncompare.bn_eval import uses_batch_norm

    path = tmp_path / "c.yaml"
    path.write_text("variants: {none: {}, bn: {model.norm: batch}, "
                    "ghost: {model.norm: ghost}, renorm: {model.norm: renorm}, ln: {model.norm: layer}}")
    seen = {run.variant: uses_batch_norm(run.params) for run in load_runs([path])}
    assert seen == {"none": False, "bn": True, "ghost": True, "renorm": True, "ln": False}
