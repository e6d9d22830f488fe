"""Models by name (`model.kind`): an MLP and a small CNN sharing one BatchNorm-placement helper.

Every hidden layer is built as  weights -> [BN] -> nonlinearity -> [BN]  with the nonlinearity as
its own `Activation` layer, so the input to each nonlinearity (what Ioffe & Szegedy 2015 Figure 1
plots) is the output of a named layer that instruments can read.
"""

from __future__ import annotations

from typing import Any, Callable

from bncompare.backend import import_keras


def build_model(params: dict[str, Any], input_shape: tuple[int, ...], classes: int):
    """The Keras model a run's params describe (uncompiled)."""
    keras = import_keras()
    builder = BUILDERS[params["model.kind"]]
    # Layers take the dtype policy in force when they are made; restoring it afterwards keeps one
    # run's mixed precision from leaking into the next model built in this process.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(params.get("train.precision", "float32"))
    try:
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


def loss_function(keras):
    """Mean sparse categorical cross-entropy from the model's logits: the same on every backend."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def per_example_loss(keras, labels, logits):
    """Cross-entropy of each example, from logits (sums and masks need it unreduced)."""
    return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def layer_sizes(params: dict[str, Any]) -> list[int]:
    """Units (mlp) or filters (cnn) of each hidden layer: `hidden`, else depth x width."""
    return list(params["model.hidden"] or [params["model.width"]] * params["model.depth"])


def _mlp(keras, params: dict[str, Any], x):
    x = keras.layers.Flatten(name="flatten")(x)
    for i, units in enumerate(layer_sizes(params), start=1):
        x = _hidden_layer(keras, params, x, i, lambda use_bias, name: keras.layers.Dense(
            units, use_bias=use_bias, kernel_initializer=_initializer(keras, params["model.init"]),
            name=name))
    return x


def _cnn(keras, params: dict[str, Any], x):
    for i, filters in enumerate(layer_sizes(params), start=1):
        x = _hidden_layer(keras, params, x, i, lambda use_bias, name: keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=use_bias,
            kernel_initializer=_initializer(keras, params["model.init"]), name=name))
        if min(x.shape[1], x.shape[2]) >= 2:  # deep stacks stop pooling once the map is 1x1
            x = keras.layers.MaxPooling2D(2, name=f"pool_{i}")(x)
    return keras.layers.Flatten(name="flatten")(x)


def _hidden_layer(keras, params: dict[str, Any], x, index: int, weights: Callable):
    """weights -> [BN] -> activation -> [BN] -> [dropout], BN placed as the config says."""
    bn = params["model.batch_norm"]
    before = bn and params["model.bn_placement"] == "before_activation"

    def batch_norm():
        return keras.layers.BatchNormalization(momentum=params["model.bn_momentum"],
                                               epsilon=params["model.bn_epsilon"], name=f"bn_{index}")

    # BN's beta makes a bias before it redundant (Ioffe & Szegedy 2015, section 3.2).
    x = weights(not before, f"{'conv' if params['model.kind'] == 'cnn' else 'dense'}_{index}")(x)
    if before:
        x = batch_norm()(x)
    x = keras.layers.Activation(params["model.activation"], name=f"act_{index}")(x)
    if bn and not before:
        x = batch_norm()(x)
    if params["model.dropout"] > 0:
        x = keras.layers.Dropout(params["model.dropout"], name=f"dropout_{index}")(x)
    return x


def _initializer(keras, spec: Any):
    if isinstance(spec, str):
        return keras.initializers.get(spec)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return type(keras.initializers.get(spec["name"]))(**kwargs)


BUILDERS: dict[str, Callable] = {"mlp": _mlp, "cnn": _cnn}
