"""Models by name (`model.kind`): MLP, small CNN and their pre-activation residual versions, with
the normaliser `model.norm` (batch, layer, group, RMS, batch renorm, ghost BN, or none) placed by
one helper.

Every hidden layer i is built from weights `dense_{i}`/`conv_{i}`, its normaliser `bn_{i}` (named so
whatever the norm) and its nonlinearity `act_{i}`, an `Activation` layer of its own, so the input to
each nonlinearity (what Ioffe & Szegedy 2015 Figure 1 plots) is the output of a named layer that
instruments can read. Noisy BN adds `noise_{i}` right after `bn_{i}`. The classifier is `output`
and returns logits.
"""

from __future__ import annotations

from typing import Any, Callable

from bncompare.backend import import_keras
from bncompare.callables import CallableError
from bncompare.layers import layer_classes
from bncompare.schema import SCHEMA


class ModelError(CallableError):
    """A researcher's model function that did not return a usable model; says why in one line."""


def build_model(params: dict[str, Any], input_shape: tuple[int, ...], classes: int):
    """The Keras model a run's params describe (uncompiled)."""
    keras = import_keras()
    # Layers take the dtype policy in force when they are made; restoring it afterwards keeps one
    # run's mixed precision from leaking into the next model built in this process.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(params.get("train.precision", "float32"))
    try:
        if params["model.kind"] not in BUILDERS:
            return _own_model(keras, params, input_shape, classes)
        builder = BUILDERS[params["model.kind"]]
        inputs = keras.Input(shape=input_shape, name="image")
        x = builder(keras, params, inputs)
        # The output is the logits, in float32 (float16 underflows in the loss). The loss applies the
        # softmax itself (`loss_function`): Keras computes cross-entropy from logits on TensorFlow but
        # from clipped probabilities on JAX and PyTorch, where the loss can never exceed ~16, so an
        # exploding run would not count as diverged there.
        outputs = keras.layers.Dense(classes, name="output", dtype="float32",
                                     kernel_initializer=_initializer(keras, params["model.init"]))(x)
        return keras.Model(inputs, outputs, name=f"{params['model.kind']}")
    finally:
        keras.config.set_dtype_policy(previous)


def _own_model(keras, params: dict[str, Any], input_shape: tuple[int, ...], classes: int):
    """A researcher's model function (`model.kind: "module:function"`), called as
    function(input_shape, num_classes, norm, params), and checked: a Keras model with logits."""
    from bncompare.callables import load, one_line

    kind = params["model.kind"]
    function = load("model.kind", kind)
    try:
        made = function(tuple(input_shape), classes, NormFactory(keras, params), params)
    except Exception as e:  # noqa: BLE001 - the user's function raised: say where, in one line
        raise ModelError(f"model.kind: {kind}: raised {one_line(e)}") from None
    if not isinstance(made, keras.Model):
        raise ModelError(f"model.kind: {kind}: returned {type(made).__name__}, not a keras.Model")
    try:
        output = made.compute_output_spec(keras.KerasTensor((None, *input_shape)))
    except Exception as e:  # noqa: BLE001 - the user's model: say what went wrong, in one line
        raise ModelError(f"model.kind: {kind}: the model cannot take inputs of shape "
                         f"{(None, *input_shape)}: {type(e).__name__}: {str(e).strip()[:300]}") from None
    shape = tuple(output.shape) if hasattr(output, "shape") else f"{type(output).__name__} of outputs"
    if shape[1:] != (classes,):
        raise ModelError(f"model.kind: {kind}: outputs {shape}; expected (None, {classes}): one "
                         f"logit per class, without softmax")
    last = made.layers[-1] if made.layers else None
    if getattr(getattr(last, "activation", None), "__name__", "") == "softmax":
        raise ModelError(f"model.kind: {kind}: its last layer applies softmax; return the logits "
                         f"(bncompare's loss applies the softmax itself)")
    return made


class NormFactory:
    """`norm()` for a researcher's model: each call makes a new layer of the run's normaliser
    (`model.norm`/`batch_norm`, momentum, epsilon, noise), named bn_1, bn_2... as bncompare's own
    models name theirs, or an Identity layer for `none`; one model function serves every variant."""

    def __init__(self, keras, params: dict[str, Any]):
        self.keras, self.params, self.count = keras, params, 0

    def __call__(self):
        keras, params = self.keras, self.params
        self.count += 1
        if norm_of(params) == "none":
            return keras.layers.Identity(name=f"identity_{self.count}")
        layer = _normaliser(keras, params, f"bn_{self.count}")
        noise = _option(params, "model.bn_noise")
        if noise is None:
            return layer
        return keras.Sequential([layer, layer_classes()["NoiseAfterNorm"](
            noise["mean"], noise["std"], name=f"noise_{self.count}")], name=f"noisy_bn_{self.count}")


def loss_function(keras):
    """Mean sparse categorical cross-entropy from the model's logits: the same on every backend."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def per_example_loss(keras, labels, logits):
    """Cross-entropy of each example, from logits (sums and masks need it unreduced)."""
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def layer_sizes(params: dict[str, Any]) -> list[int]:
    """Units (mlp, resmlp) or filters (cnn, rescnn) of each hidden weight layer: `hidden`, else
    depth x width. A residual network's blocks are consecutive pairs of these layers."""
    return list(params["model.hidden"] or [params["model.width"]] * params["model.depth"])


def norm_of(params: dict[str, Any]) -> str:
    """The normaliser a run uses: `model.norm`, else `model.batch_norm`'s batch | none.

    Resolved params keep `model.norm` null for batch and none (see config._resolve), so that
    `norm: batch` and `batch_norm: true` are the same run with the same id.
    """
    return params.get("model.norm") or ("batch" if params.get("model.batch_norm") else "none")


# Normalisers computed from batch statistics: they subtract a per-unit mean over the batch, so a
# bias in the weight layer before them is redundant (Ioffe & Szegedy 2015, section 3.2). Layer,
# group and RMS norm normalise each example over its units, which a per-unit bias is not.
BATCH_NORMS = ("batch", "renorm", "ghost")
CONVOLUTIONAL = ("cnn", "rescnn")


def _normaliser(keras, params: dict[str, Any], name: str):
    """The `model.norm` layer, named `name` (bn_{i} whatever the norm)."""
    norm, epsilon = norm_of(params), params["model.bn_epsilon"]
    momentum = params["model.bn_momentum"]
    if norm == "batch":
        return keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=name)
    if norm == "renorm":
        clipping = _option(params, "model.renorm_clipping")
        # Ioffe 2017: r in [1/rmax, rmax], d in [-dmax, dmax]. Keras keeps them constant (the
        # paper ramps them up from 1 and 0 over the first steps).
        return keras.layers.BatchNormalization(
            momentum=momentum, epsilon=epsilon, renorm=True, name=name,
            renorm_clipping={"rmax": clipping["rmax"], "rmin": 1 / clipping["rmax"],
                             "dmax": clipping["dmax"]})
    if norm == "ghost":
        ghost = layer_classes()["GhostBatchNormalization"]
        return ghost(_option(params, "model.ghost_batch_size"), momentum=momentum, epsilon=epsilon,
                     name=name)
    if norm == "layer":
        if params["model.kind"] in CONVOLUTIONAL:
            # Ba et al. 2016 / Wu & He 2018: one mean and variance per example over all channels
            # and positions, with a per-channel scale and offset: GroupNorm with one group.
            return keras.layers.GroupNormalization(groups=1, epsilon=epsilon, name=name)
        return keras.layers.LayerNormalization(epsilon=epsilon, name=name)
    if norm == "group":
        return keras.layers.GroupNormalization(groups=_option(params, "model.groups"),
                                               epsilon=epsilon, name=name)
    if norm == "rms":
        return keras.layers.RMSNormalization(epsilon=epsilon, name=name)
    raise ValueError(f"unknown normaliser {norm!r}")


def _normalised_activation(keras, params: dict[str, Any], x, index: int):
    """[norm] -> activation -> [norm] for hidden layer `index`, placed as bn_placement says, with
    the noise of noisy BN right after the normaliser."""
    norm = norm_of(params)
    before = params["model.bn_placement"] == "before_activation"

    def normalise(x):
        x = _normaliser(keras, params, f"bn_{index}")(x)
        noise = _option(params, "model.bn_noise")
        if noise is not None:
            x = layer_classes()["NoiseAfterNorm"](noise["mean"], noise["std"],
                                                  name=f"noise_{index}")(x)
        return x

    if norm != "none" and before:
        x = normalise(x)
    x = keras.layers.Activation(params["model.activation"], name=f"act_{index}")(x)
    if norm != "none" and not before:
        x = normalise(x)
    return x


def _weights(keras, params: dict[str, Any], size: int, index: int, use_bias: bool = True):
    """The weight layer of hidden layer `index`: dense_{index} or conv_{index} (3x3, same)."""
    init = _initializer(keras, params["model.init"])
    if params["model.kind"] in CONVOLUTIONAL:
        return keras.layers.Conv2D(size, 3, padding="same", use_bias=use_bias,
                                   kernel_initializer=init, name=f"conv_{index}")
    return keras.layers.Dense(size, use_bias=use_bias, kernel_initializer=init,
                              name=f"dense_{index}")


def _mlp(keras, params: dict[str, Any], x):
    x = keras.layers.Flatten(name="flatten")(x)
    for i, units in enumerate(layer_sizes(params), start=1):
        x = _hidden_layer(keras, params, x, i, units)
    return x


def _cnn(keras, params: dict[str, Any], x):
    for i, filters in enumerate(layer_sizes(params), start=1):
        x = _hidden_layer(keras, params, x, i, filters)
        x = _pool(keras, x, i)
    return keras.layers.Flatten(name="flatten")(x)


def _pool(keras, x, index: int):
    if min(x.shape[1], x.shape[2]) >= 2:  # deep stacks stop pooling once the map is 1x1
        x = keras.layers.MaxPooling2D(2, name=f"pool_{index}")(x)
    return x


def _hidden_layer(keras, params: dict[str, Any], x, index: int, size: int):
    """weights -> [norm] -> activation -> [norm] -> [dropout], the norm placed as the config says."""
    before = params["model.bn_placement"] == "before_activation"
    # A bias right before a batch-statistics normaliser is redundant: its beta replaces it.
    use_bias = not (before and norm_of(params) in BATCH_NORMS)
    x = _weights(keras, params, size, index, use_bias)(x)
    x = _normalised_activation(keras, params, x, index)
    if params["model.dropout"] > 0:
        x = keras.layers.Dropout(params["model.dropout"], name=f"dropout_{index}")(x)
    return x


def _residual(keras, params: dict[str, Any], x):
    """Pre-activation residual network (He, Zhang, Ren & Sun 2016, "Identity Mappings in Deep
    Residual Networks"): a stem, then blocks  x + branch(x)  with branch = two hidden layers, each
    [norm, activation] -> weights, and nothing on the identity path; a final [norm] -> activation
    before the classifier.

    - depth counts the hidden weight layers in the branches (as for mlp/cnn), so it must be even:
      depth 24 is 12 blocks, comparable with a plain depth-24 network.
    - The stem (dense_0 / conv_0, linear) projects the input (flattened pixels / image channels) to
      the first block's width; a block whose output width differs from its input gets a bias-free
      projection on its skip path (proj_{k}, He et al. 2016a option B).
    - `model.skip_init`: the branch is multiplied by a trainable scalar initialised to zero
      (skip_gain_{k}; De & Smith 2020, SkipInit), so every block starts as the identity.
    - rescnn pools after a block (both paths at once) while the feature map is at least 2x2.
    """
    convolutional = params["model.kind"] == "rescnn"
    if not convolutional:
        x = keras.layers.Flatten(name="flatten")(x)
    sizes = layer_sizes(params)
    init = _initializer(keras, params["model.init"])
    x = _weights(keras, params, sizes[1], 0)(x)  # the stem
    for block in range(1, len(sizes) // 2 + 1):
        first = 2 * block - 1
        skip = x
        if sizes[first] != x.shape[-1]:
            skip = (keras.layers.Conv2D(sizes[first], 1, use_bias=False, kernel_initializer=init,
                                        name=f"proj_{block}") if convolutional else
                    keras.layers.Dense(sizes[first], use_bias=False, kernel_initializer=init,
                                       name=f"proj_{block}"))(skip)
        branch = x
        for index in (first, first + 1):
            branch = _normalised_activation(keras, params, branch, index)
            branch = _weights(keras, params, sizes[index - 1], index)(branch)
            if params["model.dropout"] > 0:
                branch = keras.layers.Dropout(params["model.dropout"], name=f"dropout_{index}")(branch)
        if _option(params, "model.skip_init"):
            branch = layer_classes()["ScalarGain"](0.0, name=f"skip_gain_{block}")(branch)
        x = keras.layers.Add(name=f"add_{block}")([skip, branch])
        if convolutional:
            x = _pool(keras, x, block)
    # The stream is a sum of unnormalised branches: normalise and activate it once before the
    # classifier, as pre-activation ResNets do (its layers are numbered after the last block's).
    x = _normalised_activation(keras, params, x, len(sizes) + 1)
    return keras.layers.Flatten(name="flatten")(x) if convolutional else x


def _option(params: dict[str, Any], key: str) -> Any:
    """A key added after release 1: params read back from older runs may lack it."""
    return params.get(key, SCHEMA[key].default)


def _initializer(keras, spec: Any):
    if isinstance(spec, str):
        return keras.initializers.get(spec)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return type(keras.initializers.get(spec["name"]))(**kwargs)


BUILDERS: dict[str, Callable] = {"mlp": _mlp, "cnn": _cnn, "resmlp": _residual, "rescnn": _residual}
