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

Everything here reads the model's current variables and writes none of them: the statistics are
computed on copies (NumPy, float64 averages) and used through views of the model that share its
layers and weights but replace each BatchNormalization call by a layer that never updates anything,
run with dropout off. So the model's weights, moving averages and random state are untouched, and
training is bit-identical with and without these evaluations. Keras 3 APIs only: every backend.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np
import scipy.special

from bncompare.backend import import_keras

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
    from bncompare.models import BATCH_NORMS, norm_of

    # Resolved params keep model.norm null for batch (batch_norm: true is the same run).
    return norm_of(params) in BATCH_NORMS


def lag_warning(params: dict[str, Any], step: int) -> str | None:
    """The warning for an eval point at `step` whose moving averages still weigh their initial
    values more than 5%, naming the fix; None when they do not, at step 0 (nothing learned yet to
    understate) and when the model has no BN."""
    if not uses_batch_norm(params) or step == 0:
        return None
    momentum = params["model.bn_momentum"]
    weight = moving_average_weight(momentum, step)
    if weight <= LAG_THRESHOLD:
        return None
    needed = math.ceil(math.log(LAG_THRESHOLD) / math.log(momentum)) if momentum > 0 else 1
    text = (f"at step {step}, BN's moving averages still give their initial values "
            f"{weight:.0%} of their weight (model.bn_momentum {momentum:g} ** {step}); "
            f"val_loss/val_accuracy (inference with these averages) may understate what the model "
            f"has learned; that weight falls below 5% only at step {needed}. ")
    if "precise" in params.get("record.bn_eval", ["moving"]):
        return text + "Compare val_accuracy_precise (PreciseBN), recorded for this run."
    return text + ("Fix: add PreciseBN (--set \"record.bn_eval=[moving,precise]\") or lower "
                   "model.bn_momentum (e.g. 0.9).")


# ---- BN layers and their statistics ------------------------------------------------------------------


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


Statistics = list  # [(mean, variance)] as float64 NumPy arrays, one pair per batch_norm_layers(model)


def moving_statistics(model, batch_size: int, unbiased: bool = False) -> Statistics:
    """Every BN layer's moving mean and variance; with `unbiased`, each variance times m/(m-1)
    (Ioffe & Szegedy 2015, Algorithm 2) for the training batch size, since Keras stores the moving
    average of biased batch variances."""
    out = []
    for layer in batch_norm_layers(model):
        mean = np.asarray(layer.moving_mean.numpy(), np.float64)
        variance = np.asarray(layer.moving_variance.numpy(), np.float64)
        if unbiased:
            variance = variance * _unbiased_factor(values_per_statistic(layer, batch_size), layer)
        out.append((mean, variance))
    return out


# ---- views of the model: the same layers and variables, BN computed our way -------------------------
#
# Each view is a functional clone that reuses the model's own layers (clone_function=identity), so it
# reads the model's current weights, with every BatchNormalization call replaced by a small layer
# that never assigns to the model's variables. Views are run with Keras's predict_on_batch (compiled
# on TensorFlow and JAX, dropout off); on JAX it writes the variables it read back unchanged.


def _view_layers():
    keras = import_keras()
    ops = keras.ops

    def normalize(bn, inputs, mean, variance):
        # The same steps as BatchNormalization.call (Keras 3.15): statistics in float32 at least,
        # ops.batch_normalization, then back to the compute dtype.
        gamma = ops.cast(bn.gamma, inputs.dtype) if bn.scale else None
        beta = ops.cast(bn.beta, inputs.dtype) if bn.center else None
        outputs = ops.batch_normalization(inputs, mean, variance, axis=bn.axis, offset=beta,
                                          scale=gamma, epsilon=bn.epsilon)
        return ops.cast(outputs, bn.compute_dtype)

    def upcast(inputs):
        return ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))

    class BatchStatistics(keras.layers.Layer):
        """A BN layer in training mode (its batch's mean and biased variance, gamma, beta) without
        the moving-average update."""

        def __init__(self, batch_norm):
            super().__init__(name=f"{batch_norm.name}_batch", dtype=batch_norm.dtype_policy)
            self.batch_norm = batch_norm

        def call(self, inputs):
            x = upcast(inputs)
            mean, variance = ops.moments(x, axes=reduction_axes(self.batch_norm, len(x.shape)))
            return normalize(self.batch_norm, x, mean, variance)

    class FixedStatistics(keras.layers.Layer):
        """A BN layer in inference mode with statistics of its own (set before each use) in place
        of the moving averages."""

        def __init__(self, batch_norm):
            super().__init__(name=f"{batch_norm.name}_fixed", dtype=batch_norm.dtype_policy)
            self.batch_norm = batch_norm
            shape = batch_norm.moving_mean.shape
            self.mean = self.add_weight(shape=shape, initializer="zeros", trainable=False,
                                        autocast=False, name="mean")
            self.variance = self.add_weight(shape=shape, initializer="ones", trainable=False,
                                            autocast=False, name="variance")

        def call(self, inputs):
            x = upcast(inputs)
            return normalize(self.batch_norm, x, ops.cast(self.mean, x.dtype),
                             ops.cast(self.variance, x.dtype))

    return BatchStatistics, FixedStatistics


def reduction_axes(layer, ndim: int) -> list[int]:
    """The axes a BN layer's statistics average over: all but its feature axis."""
    return [i for i in range(ndim) if i != layer.axis % ndim]


def _clone(model, replace):
    """The model with every BN layer call replaced by `replace(layer)`; returns the clone and, per BN
    layer, the symbolic tensor it was called on."""
    keras = import_keras()
    bn_inputs: dict[int, Any] = {}

    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.layers.BatchNormalization):
            bn_inputs[id(layer)] = args[0]
            return replace(layer)(args[0])
        return layer(*args, **kwargs)

    clone = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    return clone, [bn_inputs[id(layer)] for layer in batch_norm_layers(model)]


class _Views:
    """`fixed`: inference with the statistics set in `fixed_layers` (by BN layer id); `batch`: every BN normalising with
    its batch's statistics; `probe`: under `batch`, each BN input's per-example mean and variance
    over the positions that share a statistic (zero variance after a Dense layer)."""

    def __init__(self, model):
        keras = import_keras()
        ops = keras.ops
        BatchStatistics, FixedStatistics = _view_layers()
        self.fixed_layers: dict[int, Any] = {}

        def fixed(layer):
            self.fixed_layers[id(layer)] = FixedStatistics(layer)
            return self.fixed_layers[id(layer)]

        self.fixed, _ = _clone(model, fixed)
        self.batch, inputs = _clone(model, BatchStatistics)
        per_example = []
        for layer, h in zip(batch_norm_layers(model), inputs):
            h = ops.cast(h, keras.backend.result_type(h.dtype, "float32"))
            axes = [i for i in reduction_axes(layer, len(h.shape)) if i != 0]
            mean, variance = ops.moments(h, axes=axes) if axes else (h, ops.zeros_like(h))
            per_example += [mean, variance]
        self.probe = keras.Model(self.batch.input, per_example) if per_example else None


# Views are built once per model (cloning walks the graph) and keep their compiled predict functions.
_VIEWS: "weakref.WeakKeyDictionary[Any, _Views]" = weakref.WeakKeyDictionary()


def _views(model) -> _Views:
    if model not in _VIEWS:
        _VIEWS[model] = _Views(model)
    return _VIEWS[model]


def _predict(view, x, batch_size: int) -> list[np.ndarray]:
    """The view's outputs on x in batches of `batch_size`, as NumPy arrays (one per output)."""
    # predict_on_batch, not predict: on PyTorch, predict's DataLoader draws from torch's global
    # random generator, which unseeded Dropout layers also use, so it would change later training.
    batches = []
    for start in range(0, len(x), batch_size):
        outputs = view.predict_on_batch(x[start:start + batch_size])
        batches.append(outputs if isinstance(outputs, (list, tuple)) else [outputs])
    return [np.concatenate(parts) for parts in zip(*batches)]


# ---- PreciseBN -------------------------------------------------------------------------------------


def precise_batches(n_train: int, batch_size: int, examples: int) -> list[tuple[int, int]]:
    """The (start, stop) ranges PreciseBN averages over: full batches of `batch_size` from the first
    `examples` training examples (at least one batch; the whole training set if it is smaller)."""
    batch_size = min(batch_size, n_train)
    count = max(1, min(examples, n_train) // batch_size)
    return [(i * batch_size, (i + 1) * batch_size) for i in range(count)]


def precise_statistics(model, x, batch_size: int, examples: int, unbiased: bool = False) -> Statistics:
    """PreciseBN's population statistics for every BN layer: the mean of the per-batch means and the
    mean of the per-batch variances (biased, as Keras computes them; with `unbiased`, each times
    m/(m-1)), over full batches of `batch_size` from the first `examples` rows of `x`, the model run
    in training mode (each BN normalising with its batch's statistics, as upstream layers did in
    training; dropout off) with its weights as they are."""
    layers = batch_norm_layers(model)
    if not layers:
        return []
    batches = precise_batches(len(x), batch_size, examples)
    size = batches[0][1]
    outputs = _predict(_views(model).probe, x[:batches[-1][1]], size)
    statistics = []
    for i, layer in enumerate(layers):
        # Per batch, the law of total variance combines the per-example means and variances into
        # the batch's mean and biased variance (every example has the same number of positions).
        means = outputs[2 * i].astype(np.float64).reshape(len(batches), size, -1)
        within = outputs[2 * i + 1].astype(np.float64).reshape(len(batches), size, -1)
        batch_means = means.mean(axis=1)
        batch_variances = (within + (means - batch_means[:, None]) ** 2).mean(axis=1)
        if unbiased:
            batch_variances *= _unbiased_factor(values_per_statistic(layer, size), layer)
        # fvcore accumulates the same equal-weight average incrementally: running += (x - running)/(k+1).
        statistics.append((batch_means.mean(axis=0), batch_variances.mean(axis=0)))
    return statistics


# ---- evaluation --------------------------------------------------------------------------------------


def loss_and_accuracy(logits, labels) -> tuple[float, float]:
    """Mean cross-entropy (from logits, as bncompare.models.per_example_loss) and accuracy."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    log_probabilities = scipy.special.log_softmax(logits, axis=-1)
    loss = -log_probabilities[np.arange(len(labels)), labels].mean()
    return float(loss), float((logits.argmax(axis=-1) == labels).mean())


def inference(model, x, y, statistics: Statistics, batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    """Mean loss and accuracy of `model` in inference mode on (x, y), every BN layer normalising
    with the given statistics (one (mean, variance) pair per batch_norm_layers(model))."""
    views = _views(model)
    for layer, (mean, variance) in zip(batch_norm_layers(model), statistics, strict=True):
        fixed = views.fixed_layers[id(layer)]
        fixed.mean.assign(mean.astype(np.float32))
        fixed.variance.assign(variance.astype(np.float32))
    return loss_and_accuracy(_predict(views.fixed, x, batch_size)[0], y)


def batch_mode(model, x, y, batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy on (x, y) in batches of `batch_size`, every BN layer normalising with
    its batch's own statistics as in training, dropout off, nothing updated. The last batch may be
    smaller and is normalised with its own statistics."""
    return loss_and_accuracy(_predict(_views(model).batch, x, batch_size)[0], y)


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
        val = evaluate(model, data.x_val, data.y_val, "moving", batch_size=batch_size, unbiased=True)
        out["val_loss"], out["val_accuracy"] = val
    for mode in modes:
        if mode == "moving":
            continue
        if not has_bn:  # nothing to re-estimate: every mode is plain inference
            val = val or inference(model, data.x_val, data.y_val, [])
            loss, accuracy = val
        else:
            loss, accuracy = evaluate(model, data.x_val, data.y_val, mode, batch_size=batch_size,
                                      x_train=data.x_train,
                                      precise_examples=params.get("record.precise_examples", 2048),
                                      unbiased=unbiased)
        out[f"val_loss_{mode}"], out[f"val_accuracy_{mode}"] = loss, accuracy
    if train_eval > 0:
        n = min(train_eval, len(data.x_train))
        out["train_eval_loss"], out["train_eval_accuracy"] = evaluate(
            model, data.x_train[:n], data.y_train[:n], "moving", batch_size=batch_size,
            unbiased=unbiased)
    return out
