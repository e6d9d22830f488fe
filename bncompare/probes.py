"""Santurkar, Tsipras, Ilyas & Madry 2018 ("How Does Batch Normalization Help Optimization?"):
loss-landscape probes and internal covariate shift, measured at an eval point on a snapshot.

Both use one fixed *probe batch*: the first `train.batch_size` training examples (the same examples
at every eval point, so the curves show the network changing, not the batch). The loss is the
training loss: mean cross-entropy from the logits, in training mode (BN normalises with the probe
batch's own statistics, as it does during a training step; dropout and BN noise are on, with the
same random draws at every probe of one eval point because the seed state is an input of
`stateless_call`).

- `record.landscape` (Santurkar Section 3.1, Figure 4). g = grad L(W); for each step size eta in
  `train.learning_rate` x `record.landscape_factors`, W' = W - eta * g:
    loss_min, loss_max        min and max over the grid of L(W')               (the loss band)
    grad_diff_min, _max       min and max of ||grad L(W) - grad L(W')||        (gradient predictiveness)
    beta_smoothness           max of ||grad L(W) - grad L(W')|| / ||eta * g||  (effective beta-smoothness)
  W is every trainable variable (kernels, biases, BN gamma and beta), as one vector.
  The paper measures, at each training step, a range of distances along the gradient around the
  step training takes; the default factors (0.5, 1, 2, 4) are this project's choice in that spirit:
  from half the actual SGD step to four times it (for SGD, eta = learning rate is the real step).
  Cost: 1 + len(factors) forward-backward passes on the probe batch.
- `record.ics` (Santurkar Definition 2.1). For each weight layer i (Dense or Conv2D: `dense_1`,
  `dense_2`, ..., `output`; named by the Keras layer name):
    G  = grad of L with respect to layer i's kernel, at W^t, on the probe batch x_t;
    G' = the same gradient on the same batch after every trainable variable of the layers that come
         before layer i in the network (kernels, biases and BN parameters) has taken the update the
         optimizer would make from grad L(W^t) on x_t; layer i and those after it keep W^t.
    l2 = ||G - G'||, cosine = <G, G'> / (||G|| ||G'||).
  The update is the run's own optimizer (its momentum or Adam moments, its step count, weight decay)
  applied to copies of its variables: the real optimizer and model are untouched. The first layer
  has no preceding layers, so its l2 is 0 and its cosine 1 by definition.
  Cost: one forward-backward pass per weight layer but the first, plus one optimizer update
  of copies (the gradient at W^t is shared with the landscape probe).

Nothing here writes to the model or the optimizer, and nothing draws from Keras's global random
generator, so training is bit-identical with the probes on or off (tests/test_probes.py).

Gradients use each backend's own autodiff around the same `stateless_call` (Keras 3 has no
backend-neutral gradient API): tf.GradientTape in a tf.function, jax.value_and_grad under jax.jit,
torch.autograd.grad (eager).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from bncompare.backend import import_keras
from bncompare.data import Dataset
from bncompare.models import per_example_loss

DEFAULT_FACTORS = (0.5, 1.0, 2.0, 4.0)

Weights = list  # list of NumPy arrays, one per trainable variable, in model.trainable_variables order
LossAndGradients = Callable[[Weights], tuple[float, Weights]]
PerExampleLoss = Callable[[Any, Any, Any], Any]  # (keras, labels, outputs) -> per-example losses


@dataclass(frozen=True)
class WeightLayer:
    """A layer with a kernel, for ICS: where its kernel and its predecessors' variables are."""

    name: str  # the Keras layer name: dense_1, conv_2, output
    kernel: int  # index of its kernel in model.trainable_variables
    preceding: tuple[int, ...]  # indices of the trainable variables of every layer before it


# ---- entry point ---------------------------------------------------------------------------------


def probe_blocks(model, optimizer, data: Dataset, params: dict[str, Any], step: int) -> dict[str, dict]:
    """The blocks `record.landscape` and `record.ics` add to metrics.json at one eval point.

    {"landscape": {"step": step, "loss_min": float, "loss_max": float, "grad_diff_min": float,
                   "grad_diff_max": float, "beta_smoothness": float},
     "ics": {"dense_1": {"step": step, "l2": float, "cosine": float}, "dense_2": {...}, ...}}
    Each present only when its key is on ({} when neither is). Append each leaf value to the series
    of the same path in metrics.json (`results.append_series`). `optimizer` is the one training `model`
    (built on model.trainable_variables, or not yet built); neither is changed.
    """
    landscape_on, ics_on = params.get("record.landscape", False), params.get("record.ics", False)
    if not (landscape_on or ics_on):
        return {}
    x, y = probe_batch(data, params["train.batch_size"])
    loss_and_gradients = keras_loss_and_gradients(model, x, y)
    weights = current_weights(model)
    loss, gradients = loss_and_gradients(weights)
    blocks: dict[str, dict] = {}
    if landscape_on:
        factors = params.get("record.landscape_factors") or DEFAULT_FACTORS
        step_sizes = [params["train.learning_rate"] * f for f in factors]
        blocks["landscape"] = {"step": step, **landscape(loss_and_gradients, weights, step_sizes,
                                                         at=(loss, gradients))}
    if ics_on:
        updated = optimizer_update(optimizer, model, weights, gradients)
        shift = internal_covariate_shift(loss_and_gradients, weights, updated, weight_layers(model),
                                         at=gradients)
        blocks["ics"] = {layer: {"step": step, **values} for layer, values in shift.items()}
    return blocks



def probe_batch(data: Dataset, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed probe batch: the first `batch_size` training examples."""
    return data.x_train[:batch_size], data.y_train[:batch_size]


# ---- the measurements (any differentiable loss; tested against closed forms) ----------------------


def landscape(loss_and_gradients: LossAndGradients, weights: Weights, step_sizes: Sequence[float],
              at: tuple[float, Weights] | None = None) -> dict[str, float]:
    """Loss band, gradient predictiveness and effective beta-smoothness along -grad L(W).

    `at` is (L(W), grad L(W)) when already computed. NaN anywhere (a diverging network) gives NaN.
    """
    _, gradient = at if at is not None else loss_and_gradients(weights)
    gradient_norm = _norm(gradient)
    losses, differences, ratios = [], [], []
    for eta in step_sizes:
        moved = [w - np.asarray(eta, w.dtype) * g for w, g in zip(weights, gradient)]
        loss, moved_gradient = loss_and_gradients(moved)
        difference = _norm([a - b for a, b in zip(gradient, moved_gradient)])
        losses.append(loss)
        differences.append(difference)
        # ||eta g|| = 0 only at a stationary point, where smoothness along g is undefined.
        ratios.append(difference / (eta * gradient_norm) if eta * gradient_norm > 0 else math.nan)
    return {"loss_min": _extreme(min, losses), "loss_max": _extreme(max, losses),
            "grad_diff_min": _extreme(min, differences), "grad_diff_max": _extreme(max, differences),
            "beta_smoothness": _extreme(max, ratios)}


def internal_covariate_shift(loss_and_gradients: LossAndGradients, weights: Weights, updated: Weights,
                             layers: Sequence[WeightLayer],
                             at: Weights | None = None) -> dict[str, dict[str, float]]:
    """{layer: {"l2": ||G - G'||, "cosine": cos(G, G')}}, Santurkar et al. 2018 Definition 2.1.

    `updated` is every variable after this step's optimizer update; `at` is grad L(W) if known.
    """
    gradient = at if at is not None else loss_and_gradients(weights)[1]
    shift = {}
    for layer in layers:
        if not layer.preceding:  # nothing precedes the first layer: no shift, by definition
            shift[layer.name] = {"l2": 0.0, "cosine": 1.0}
            continue
        mixed = list(weights)
        for index in layer.preceding:
            mixed[index] = updated[index]
        before = gradient[layer.kernel].astype(np.float64).ravel()
        after = loss_and_gradients(mixed)[1][layer.kernel].astype(np.float64).ravel()
        norms = np.linalg.norm(before) * np.linalg.norm(after)
        cosine = float(before @ after / norms) if norms > 0 else math.nan
        shift[layer.name] = {"l2": float(np.linalg.norm(before - after)), "cosine": cosine}
    return shift


def _norm(arrays: Weights) -> float:
    """The L2 norm of several arrays taken as one vector, in float64."""
    return float(math.sqrt(sum(float(np.sum(np.square(a.astype(np.float64)))) for a in arrays)))


def _extreme(pick: Callable, values: list[float]) -> float:
    return math.nan if any(not math.isfinite(v) for v in values) else float(pick(values))


# ---- Keras wiring -----------------------------------------------------------------------------------


def current_weights(model) -> Weights:
    """Copies of the model's trainable variables, as NumPy arrays."""
    keras = import_keras()
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.trainable_variables]


def keras_loss_and_gradients(model, x: np.ndarray, y: np.ndarray,
                             per_example: PerExampleLoss = per_example_loss) -> LossAndGradients:
    """weights -> (mean loss on (x, y), its gradient per trainable variable), in training mode.

    `stateless_call` takes the weights and the model's current non-trainable values (BN moving
    statistics, seed states) as inputs and returns their updates instead of assigning them; the
    updates are dropped, so the model is never written.
    """
    keras = import_keras()
    value_and_gradients = _compiled(keras, model, per_example)
    non_trainable = [v.value for v in model.non_trainable_variables]
    x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)

    def loss_and_gradients(weights: Weights) -> tuple[float, Weights]:
        trainable = [keras.ops.convert_to_tensor(w) for w in weights]
        loss, gradients = value_and_gradients(trainable, non_trainable, x, y)
        return (float(keras.ops.convert_to_numpy(loss)),
                [np.array(keras.ops.convert_to_numpy(g)) for g in gradients])

    return loss_and_gradients


# One compiled gradient function per model (and loss), reused at every eval point: traced once,
# a gradient costs about a fifth of an eager one (measured 3.7 ms vs 19 ms, santurkar2018 BN MLP).
_COMPILED: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _compiled(keras, model, per_example: PerExampleLoss) -> Callable:
    """(trainable, non_trainable, x, y) -> (loss, gradients), with the backend's own autodiff
    (Keras 3 has no backend-neutral gradient API), compiled where the backend compiles."""
    functions = _COMPILED.setdefault(model, {})
    if per_example in functions:
        return functions[per_example]
    # A weak reference: the cache must not keep a finished run's model alive through its own value.
    model_ref = weakref.ref(model)

    def loss_of(trainable, non_trainable, x, y):
        outputs, _ = model_ref().stateless_call(trainable, non_trainable, x, training=True)
        return keras.ops.mean(per_example(keras, y, outputs))

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(reduce_retracing=True)
        def value_and_gradients(trainable, non_trainable, x, y):
            with tf.GradientTape() as tape:
                tape.watch(trainable)
                loss = loss_of(trainable, non_trainable, x, y)
            return loss, tape.gradient(loss, trainable)
    elif backend == "jax":
        import jax

        value_and_gradients = jax.jit(jax.value_and_grad(loss_of))
    elif backend == "torch":
        import torch

        def value_and_gradients(trainable, non_trainable, x, y):
            leaves = [t.detach().requires_grad_(True) for t in trainable]
            loss = loss_of(leaves, non_trainable, x, y)
            return loss.detach(), [g.detach() for g in torch.autograd.grad(loss, leaves)]
    else:
        raise NotImplementedError(f"record.landscape and record.ics support the tensorflow, jax "
                                  f"and torch backends, not {backend!r}; turn them off")
    functions[per_example] = value_and_gradients
    return value_and_gradients


def weight_layers(model) -> list[WeightLayer]:
    """Every layer with a kernel (Dense, Conv2D), in network order, for ICS."""
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    layers, seen = [], []
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and id(kernel) in index and layer.trainable:
            layers.append(WeightLayer(layer.name, index[id(kernel)], tuple(seen)))
        seen.extend(index[id(v)] for v in layer.trainable_variables if id(v) in index)
    return layers


def optimizer_update(optimizer, model, weights: Weights, gradients: Weights) -> Weights:
    """The weights after `optimizer` applies `gradients` to `weights`, leaving it untouched.

    A copy of the optimizer (same class and config) is built on copies of the variables and given
    copies of the optimizer's state (step count, momenta, Adam moments), then applies the step.
    Keras's `stateless_apply` would do this without copies, but its TensorFlow backend refuses it.
    An optimizer not built yet (no step taken) is copied as new, as its first step would see it.
    """
    keras = import_keras()
    variables = [keras.Variable(w.copy(), trainable=True, name=v.name)
                 for w, v in zip(weights, model.trainable_variables)]
    copy = type(optimizer).from_config(optimizer.get_config())
    copy.build(variables)
    if optimizer.built:
        state = [np.array(keras.ops.convert_to_numpy(v.value)) for v in optimizer.variables]
        if [s.shape for s in state] != [tuple(v.shape) for v in copy.variables]:
            raise ValueError("record.ics: the optimizer was not built on this model's trainable "
                             "variables; pass the optimizer that trains the model")
        for target, value in zip(copy.variables, state):
            target.assign(value)
    copy.apply([keras.ops.convert_to_tensor(g) for g in gradients], variables)
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables]

