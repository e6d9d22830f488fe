"""BatchNorm's statistics at evaluation time: moving averages, PreciseBN and batch statistics.

A BatchNormalization layer normalises with the batch's own mean and variance while training and
with its moving averages at inference. The moving averages start at (0, 1) and forget them slowly:
after `steps` updates they still give their initial values `bn_momentum ** steps` of their weight
(0.99 ** 94 = 39%), so a short run's inference-mode accuracy can say more about the averages than
about what BN learned. This module evaluates a trained model three ways (`record.bn_eval`):

- ``moving``: Keras's inference mode, the stored moving averages (what `val_accuracy` always is);
- ``precise``: PreciseBN (Wu & Johnson 2021, fvcore's ``update_bn_stats``): with the weights frozen,
  run the model in training mode over the first `record.precise_examples` training examples in
  batches of `train.batch_size`, and use the equal-weight average of the per-batch means and of the
  per-batch variances as population statistics;
- ``batch``: the validation data in batches of `train.batch_size`, each normalised with its own
  statistics, as in training (dropout off, nothing updated).

Everything here is a pure function of the model's current variable values: the statistics are
computed with Keras ops on a copy of the BN state and swapped in through ``stateless_call``, so the
model's variables (and the random state of its dropout layers) are never touched, and training is
bit-identical with and without these evaluations. Keras 3 APIs only, so it runs on every backend.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np

from bncompare.backend import import_keras
from bncompare.models import per_example_loss

MODES = ("moving", "precise", "batch")
VARIANCE_CHOICES = ("biased", "unbiased")
# Inference-mode evaluation works in chunks of this many examples (as the engines' validation does).
EVAL_BATCH = 1000
# The lag warning fires when the moving averages still give their initial values more than this
# share of their weight.
LAG_THRESHOLD = 0.05


# ---- the moving averages' lag ----------------------------------------------------------------------


def moving_average_weight(bn_momentum: float, steps: int) -> float:
    """The weight BN's moving averages still give their initial values (mean 0, variance 1) after
    `steps` training updates: each update keeps `bn_momentum` of the old value."""
    return float(bn_momentum) ** int(steps)


def uses_batch_norm(params: dict[str, Any]) -> bool:
    """Whether the run's model has BatchNormalization layers (with moving averages)."""
    if "model.norm" in params:  # the second release's key; batch_norm is its shorthand
        return params["model.norm"] in ("batch", "renorm", "ghost")
    return bool(params.get("model.batch_norm"))


def lag_warning(params: dict[str, Any], step: int) -> str | None:
    """The warning for an eval point at `step` whose moving averages still weigh their initial
    values more than 5%, naming the fix; None when they do not (or the model has no BN)."""
    if not uses_batch_norm(params):
        return None
    momentum = params["model.bn_momentum"]
    weight = moving_average_weight(momentum, step)
    if weight <= LAG_THRESHOLD:
        return None
    needed = math.ceil(math.log(LAG_THRESHOLD) / math.log(momentum)) if momentum > 0 else 1
    text = (f"at step {step}, BN's moving averages still give their initial values "
            f"{weight:.0%} of their weight (model.bn_momentum {momentum:g} ** {step}); "
            f"val_loss/val_accuracy (inference with the moving averages) understate what the model "
            f"learned until step {needed}. ")
    if "precise" in params.get("record.bn_eval", ["moving"]):
        return text + "Compare val_accuracy_precise (PreciseBN), recorded for this run."
    return text + ("Fix: add PreciseBN (--set \"record.bn_eval=[moving,precise]\") or lower "
                   "model.bn_momentum (e.g. 0.9).")


# ---- which layers, and their places in the model's non-trainable values ----------------------------


def batch_norm_layers(model) -> list:
    """The model's BatchNormalization layers, in graph order. Only layers the functional graph
    calls directly can be re-run with batch statistics; BN nested inside another layer is refused
    rather than silently evaluated with its moving averages."""
    keras = import_keras()
    found = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    own = {id(layer.moving_mean) for layer in found}
    nested = [v.path for v in model.non_trainable_variables
              if v.name == "moving_mean" and id(v) not in own]
    if nested:
        raise ValueError(f"{nested[0]} belongs to a BatchNormalization layer nested inside another "
                         "layer; precise and batch evaluation need BN called by the model's graph")
    return found


def _statistic_slots(model, layers) -> list[tuple[int, int]]:
    """For each BN layer, the positions of its moving mean and moving variance in
    `model.non_trainable_variables` (matched by identity: `==` on Keras variables is elementwise)."""
    position = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    return [(position[id(layer.moving_mean)], position[id(layer.moving_variance)]) for layer in layers]


def values_per_statistic(layer, batch_size: int) -> int:
    """m in Ioffe & Szegedy's m/(m-1): the values one batch statistic averages over, i.e. the batch
    times every position the layer shares its statistics across (height x width after a Conv2D)."""
    shape = layer.input.shape
    axis = layer.axis % len(shape)
    return int(batch_size * np.prod([d for i, d in enumerate(shape[1:], start=1) if i != axis]))


def _unbiased_factor(m: int, layer) -> float:
    if m < 2:
        raise ValueError(f"model.bn_variance: unbiased needs at least 2 values per batch statistic; "
                         f"layer {layer.name} has {m} (raise train.batch_size)")
    return m / (m - 1)


def moving_statistics(model, batch_size: int, unbiased: bool = False) -> list:
    """The model's non-trainable values for inference with its moving averages; with `unbiased`,
    each moving variance times m/(m-1) (Ioffe & Szegedy 2015, Algorithm 2) for the training batch
    size (Keras stores the average of biased batch variances)."""
    keras = import_keras()
    values = [v.value for v in model.non_trainable_variables]
    if not unbiased:
        return values
    layers = batch_norm_layers(model)
    for layer, (_, var_slot) in zip(layers, _statistic_slots(model, layers)):
        factor = _unbiased_factor(values_per_statistic(layer, batch_size), layer)
        values[var_slot] = keras.ops.multiply(values[var_slot], factor)
    return values


# ---- training-mode BN with dropout off, as a second view of the same layers ----------------------


def _batch_statistics_layer_class():
    keras = import_keras()

    class BatchStatistics(keras.layers.Layer):
        """A BatchNormalization layer's training-mode forward (normalise with the batch's own mean
        and biased variance, then gamma and beta) without its moving-average update. It holds the
        original layer, so it reads the same gamma and beta variables."""

        def __init__(self, batch_norm, **kwargs):
            super().__init__(name=f"{batch_norm.name}_batch_statistics",
                             dtype=batch_norm.dtype_policy, **kwargs)
            self.batch_norm = batch_norm

        def call(self, inputs):
            bn, ops = self.batch_norm, keras.ops
            # The same steps as BatchNormalization.call in training mode (Keras 3.15): statistics in
            # float32 at least, then ops.batch_normalization, then back to the compute dtype.
            x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
            mean, variance = ops.moments(x, axes=reduction_axes(bn, len(x.shape)))
            gamma = ops.cast(bn.gamma, x.dtype) if bn.scale else None
            beta = ops.cast(bn.beta, x.dtype) if bn.center else None
            outputs = ops.batch_normalization(x, mean, variance, axis=bn.axis, offset=beta,
                                              scale=gamma, epsilon=bn.epsilon)
            return ops.cast(outputs, bn.compute_dtype)

    return BatchStatistics


def reduction_axes(layer, ndim: int) -> list[int]:
    """The axes a BN layer's statistics average over: all but its feature axis."""
    return [i for i in range(ndim) if i != layer.axis % ndim]


class _BatchViews:
    """Two functional models over the original model's own layers (shared variables): `forward`,
    the model with every BN layer in training mode but nothing updated, and `probe`, the inputs of
    every BN layer under that forward. Called with training=False, so dropout is off."""

    def __init__(self, model):
        keras = import_keras()
        BatchStatistics = _batch_statistics_layer_class()
        self.layers = batch_norm_layers(model)
        bn_inputs: dict[int, Any] = {}

        def call(layer, *args, **kwargs):
            if isinstance(layer, keras.layers.BatchNormalization):
                bn_inputs[id(layer)] = args[0]
                return BatchStatistics(layer)(args[0])
            return layer(*args, **kwargs)

        # clone_function=identity reuses the layers, so both views read the model's variables.
        self.forward = keras.models.clone_model(model, clone_function=lambda layer: layer,
                                                call_function=call)
        self.probe = keras.Model(self.forward.input, [bn_inputs[id(layer)] for layer in self.layers])


# Views are built once per model (cloning walks the graph; a few tens of milliseconds).
_VIEWS: "weakref.WeakKeyDictionary[Any, _BatchViews]" = weakref.WeakKeyDictionary()


def _views(model) -> _BatchViews:
    if model not in _VIEWS:
        _VIEWS[model] = _BatchViews(model)
    return _VIEWS[model]


def _stateless(model, x, non_trainable=None):
    """`model(x, training=False)` with the model's current weights (and the given non-trainable
    values), through stateless_call so that no variable can change."""
    trainable = [v.value for v in model.trainable_variables]
    if non_trainable is None:
        non_trainable = [v.value for v in model.non_trainable_variables]
    outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
    return outputs


# ---- PreciseBN -------------------------------------------------------------------------------------


def precise_batches(n_train: int, batch_size: int, examples: int) -> list[tuple[int, int]]:
    """The (start, stop) ranges PreciseBN averages over: full batches of `batch_size` from the first
    `examples` training examples (at least one batch; the whole training set if it is smaller)."""
    batch_size = min(batch_size, n_train)
    count = max(1, min(examples, n_train) // batch_size)
    return [(i * batch_size, (i + 1) * batch_size) for i in range(count)]


def precise_statistics(model, x, batch_size: int, examples: int, unbiased: bool = False) -> list:
    """The model's non-trainable values with every BN layer's moving mean and variance replaced by
    PreciseBN's population statistics: the mean of the per-batch means and the mean of the per-batch
    (biased, as Keras computes them; with `unbiased`, each times m/(m-1)) variances, the batches
    being full batches of `batch_size` from the first `examples` rows of `x`, run in training mode
    (each BN normalising with its batch's statistics, as upstream layers did in training; dropout
    off). Without BN layers: the model's own values."""
    keras = import_keras()
    ops = keras.ops
    values = [v.value for v in model.non_trainable_variables]
    layers = batch_norm_layers(model)
    if not layers:
        return values
    views = _views(model)
    means = [np.zeros(layer.moving_mean.shape, np.float64) for layer in layers]
    variances = [np.zeros(layer.moving_variance.shape, np.float64) for layer in layers]
    batches = precise_batches(len(x), batch_size, examples)
    for start, stop in batches:
        inputs = _stateless(views.probe, x[start:stop])
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        for i, (layer, h) in enumerate(zip(layers, inputs)):
            h = ops.cast(h, keras.backend.result_type(h.dtype, "float32"))
            mean, variance = ops.moments(h, axes=reduction_axes(layer, len(h.shape)))
            variance = ops.convert_to_numpy(variance).astype(np.float64)
            if unbiased:
                variance *= _unbiased_factor(values_per_statistic(layer, stop - start), layer)
            means[i] += ops.convert_to_numpy(mean)
            variances[i] += variance
    # fvcore accumulates the same equal-weight average incrementally: running += (x - running)/(k+1).
    for layer, (mean_slot, var_slot), mean, variance in zip(
            layers, _statistic_slots(model, layers), means, variances):
        values[mean_slot] = ops.convert_to_tensor(mean / len(batches), layer.moving_mean.dtype)
        values[var_slot] = ops.convert_to_tensor(variance / len(batches), layer.moving_variance.dtype)
    return values


# ---- evaluation --------------------------------------------------------------------------------------


def _loss_and_accuracy(keras, logits, labels) -> tuple[float, float]:
    """Summed loss and number correct of one batch."""
    losses = per_example_loss(keras, labels, logits)
    correct = keras.ops.equal(keras.ops.argmax(logits, axis=-1), keras.ops.cast(labels, "int32"))
    return (float(keras.ops.convert_to_numpy(keras.ops.sum(losses))),
            float(keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.cast(correct, "float32")))))


def inference(model, x, y, non_trainable=None, batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    """Mean loss and accuracy of `model` in inference mode on (x, y), with the given non-trainable
    values (None: the model's own moving averages)."""
    keras = import_keras()
    loss = correct = 0.0
    for start in range(0, len(x), batch_size):
        logits = _stateless(model, x[start:start + batch_size], non_trainable)
        batch_loss, batch_correct = _loss_and_accuracy(keras, logits, y[start:start + batch_size])
        loss, correct = loss + batch_loss, correct + batch_correct
    return loss / len(x), correct / len(x)


def batch_mode(model, x, y, batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy on (x, y) in batches of `batch_size`, every BN layer normalising with
    its batch's own statistics as in training, dropout off, nothing updated. The last batch may be
    smaller and is normalised with its own statistics."""
    keras = import_keras()
    forward = _views(model).forward if batch_norm_layers(model) else model
    loss = correct = 0.0
    for start in range(0, len(x), batch_size):
        logits = _stateless(forward, x[start:start + batch_size])
        batch_loss, batch_correct = _loss_and_accuracy(keras, logits, y[start:start + batch_size])
        loss, correct = loss + batch_loss, correct + batch_correct
    return loss / len(x), correct / len(x)


def evaluate(model, x, y, mode: str, *, batch_size: int, x_train=None, precise_examples: int = 2048,
             unbiased: bool = False) -> tuple[float, float]:
    """Mean loss and accuracy of `model` on (x, y) under one of MODES: `moving` (inference with the
    moving averages), `precise` (inference with PreciseBN statistics from `x_train`) or `batch`
    (batch statistics in batches of `batch_size`, the training batch size). `unbiased` applies
    m/(m-1) to the variances used at inference (moving, precise)."""
    if mode == "moving":
        return inference(model, x, y, moving_statistics(model, batch_size, unbiased))
    if mode == "precise":
        if x_train is None:
            raise ValueError("precise evaluation needs the training examples (x_train)")
        return inference(model, x, y, precise_statistics(model, x_train, batch_size,
                                                         precise_examples, unbiased))
    if mode == "batch":
        return batch_mode(model, x, y, batch_size)
    raise ValueError(f"unknown BN evaluation mode {mode!r}; expected one of {', '.join(MODES)}")


def extra_history(model, data, params: dict[str, Any],
                  moving: tuple[float, float] | None = None) -> dict[str, float]:
    """The history entries an eval point adds for the run's `record.bn_eval`, `record.train_eval`
    and `model.bn_variance`:

    - precise: val_loss_precise, val_accuracy_precise; batch: val_loss_batch, val_accuracy_batch;
    - record.train_eval N > 0: train_eval_loss, train_eval_accuracy (the first N training examples,
      inference mode, the same statistics as val_loss);
    - model.bn_variance unbiased (and BN present): val_loss and val_accuracy recomputed with the
      corrected moving variances; these replace the engine's own inference-mode numbers.

    `moving`: the engine's (val_loss, val_accuracy), reused for every mode when the model has no
    BN layers (all modes then coincide). The model's variables are never changed.
    """
    modes = params.get("record.bn_eval", ["moving"])
    train_eval = params.get("record.train_eval", 0)
    batch_size = params["train.batch_size"]
    unbiased = params.get("model.bn_variance", "biased") == "unbiased"
    has_bn = bool(batch_norm_layers(model))
    out: dict[str, float] = {}
    val = moving
    if has_bn and unbiased:
        val = inference(model, data.x_val, data.y_val, moving_statistics(model, batch_size, True))
        out["val_loss"], out["val_accuracy"] = val
    for mode in modes:
        if mode == "moving":
            continue
        if not has_bn:  # nothing to re-estimate: every mode is plain inference
            val = val or inference(model, data.x_val, data.y_val)
            loss, accuracy = val
        else:
            loss, accuracy = evaluate(model, data.x_val, data.y_val, mode, batch_size=batch_size,
                                      x_train=data.x_train,
                                      precise_examples=params.get("record.precise_examples", 2048),
                                      unbiased=unbiased)
        out[f"val_loss_{mode}"], out[f"val_accuracy_{mode}"] = loss, accuracy
    if train_eval > 0:
        n = min(train_eval, len(data.x_train))
        out["train_eval_loss"], out["train_eval_accuracy"] = inference(
            model, data.x_train[:n], data.y_train[:n],
            moving_statistics(model, batch_size, unbiased))
    return out
