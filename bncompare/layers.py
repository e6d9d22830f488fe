"""Small Keras layers that Keras 3 does not ship: ghost batch norm, noise after BN, a scalar gain.

All three use keras.ops and keras.random only, so they run on TensorFlow, JAX and PyTorch, and
under `stateless_call` (their state is ordinary Keras variables: moving statistics, seed state).
Keras is imported when `layer_classes()` is first called, not when this module is imported, so that
`bncompare --help` stays fast.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from bncompare.backend import import_keras


@cache
def layer_classes() -> dict[str, type]:
    """{"GhostBatchNormalization": cls, "NoiseAfterNorm": cls, "ScalarGain": cls}, defined once."""
    keras = import_keras()
    ops = keras.ops

    @keras.saving.register_keras_serializable(package="bncompare")
    class GhostBatchNormalization(keras.layers.Layer):
        """Batch normalization with moments computed per sub-batch of `ghost_batch_size` examples
        (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better", Algorithm 1).

        Training: the batch is cut into consecutive sub-batches of `ghost_batch_size` examples (the
        last one shorter when the batch is not a multiple, e.g. an epoch's partial last batch); each
        is normalised with its own mean and (biased) variance over its examples and, for images,
        every position. Inference: the moving statistics, as BatchNormalization.

        The moving averages are updated once per step with momentum ``momentum ** n`` for n
        sub-batches. That is what n sequential updates of momentum `momentum`, one per sub-batch
        (Hoffer et al.'s implementation), leave of the old average; the n sub-batch moments enter
        with equal weights (their mean) instead of geometrically decaying ones.
        """

        def __init__(self, ghost_batch_size: int, momentum: float = 0.99, epsilon: float = 1e-3,
                     center: bool = True, **kwargs):
            super().__init__(**kwargs)
            self.ghost_batch_size = int(ghost_batch_size)
            self.momentum = float(momentum)
            self.epsilon = float(epsilon)
            self.center = center

        def build(self, input_shape):
            shape = (input_shape[-1],)
            self.gamma = self.add_weight(shape=shape, name="gamma", initializer="ones")
            self.beta = (self.add_weight(shape=shape, name="beta", initializer="zeros")
                         if self.center else None)
            self.moving_mean = self.add_weight(shape=shape, name="moving_mean", initializer="zeros",
                                               trainable=False, autocast=False)
            self.moving_variance = self.add_weight(shape=shape, name="moving_variance",
                                                   initializer="ones", trainable=False, autocast=False)

        def call(self, inputs, training=None):
            # float16 moments overflow; compute in float32 as BatchNormalization does.
            x = ops.cast(inputs, "float32")
            if training:
                out = self._ghost_normalise(x)
            else:
                out = (x - self.moving_mean) * ops.rsqrt(self.moving_variance + self.epsilon)
            out = out * ops.cast(self.gamma, "float32")
            if self.beta is not None:
                out = out + ops.cast(self.beta, "float32")
            return ops.cast(out, self.compute_dtype)

        def _ghost_normalise(self, x):
            """x normalised by its sub-batches' moments; updates the moving averages."""
            size, rank = self.ghost_batch_size, len(x.shape)
            batch = ops.shape(x)[0]  # a Python int, or a scalar tensor in a TensorFlow graph
            pad = (-batch) % size
            # Pad to a whole number of sub-batches and mask the padding out of the moments, so a
            # batch that is not a multiple of the sub-batch size (an epoch's last) works too.
            padding = [[0, pad]] + [[0, 0]] * (rank - 1)
            grouped = ops.reshape(ops.pad(x, padding), (-1, size) + tuple(x.shape[1:]))
            ones = ops.ones_like(x[(slice(None),) + (slice(0, 1),) * (rank - 1)])
            mask = ops.reshape(ops.pad(ones, padding), (-1, size) + (1,) * (rank - 1))
            axes = tuple(range(1, rank))  # the sub-batch's examples, and positions for images
            positions = float(_product(x.shape[1:-1]))
            count = ops.sum(mask, axis=axes, keepdims=True) * positions  # (groups, 1, ..., 1)
            mean = ops.sum(grouped * mask, axis=axes, keepdims=True) / count
            variance = ops.sum(ops.square(grouped - mean) * mask, axis=axes, keepdims=True) / count
            normalised = (grouped - mean) * ops.rsqrt(variance + self.epsilon)

            # Every example weighs the same in the step's moments, whichever sub-batch it is in.
            weights = count / ops.sum(count)
            channels = (x.shape[-1],)
            step_mean = ops.reshape(ops.sum(mean * weights, axis=(0,) + axes), channels)
            step_variance = ops.reshape(ops.sum(variance * weights, axis=(0,) + axes), channels)
            keep = ops.power(self.momentum, ops.cast(ops.shape(grouped)[0], "float32"))
            self.moving_mean.assign(keep * self.moving_mean + (1 - keep) * step_mean)
            self.moving_variance.assign(keep * self.moving_variance + (1 - keep) * step_variance)
            return ops.reshape(normalised, (-1,) + tuple(x.shape[1:]))[:batch]

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "ghost_batch_size": self.ghost_batch_size,
                    "momentum": self.momentum, "epsilon": self.epsilon, "center": self.center}

    @keras.saving.register_keras_serializable(package="bncompare")
    class NoiseAfterNorm(keras.layers.Layer):
        """Noisy BN (Santurkar, Tsipras, Ilyas & Madry 2018, Section 2.1, Figure 2): random noise
        with a non-zero mean and a non-unit variance added to a normaliser's output, at training
        time only, so that each layer's input distribution keeps shifting.

        At every training step, for every unit (channel, for images) j, the layer draws the noise
        distribution itself: a mean m_j ~ U(-mean, mean) and a standard deviation s_j ~ U(0, std).
        Each example's value of that unit then gets its own draw from N(m_j, s_j^2), added. All
        draws are new at every step and come from the layer's SeedGenerator (reproducible from the
        run's seed; its state is a Keras variable, so it advances under stateless_call too).
        Inference (evaluation) passes the input through unchanged.
        """

        def __init__(self, mean: float, std: float, seed: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.mean, self.std, self.seed = float(mean), float(std), seed
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, inputs, training=None):
            if not training:
                return inputs
            units = (inputs.shape[-1],)
            mean = keras.random.uniform(units, -self.mean, self.mean, seed=self.seed_generator)
            std = keras.random.uniform(units, 0.0, self.std, seed=self.seed_generator)
            noise = keras.random.normal(ops.shape(inputs), seed=self.seed_generator)
            return inputs + ops.cast(mean + std * noise, inputs.dtype)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "mean": self.mean, "std": self.std, "seed": self.seed}

    @keras.saving.register_keras_serializable(package="bncompare")
    class ScalarGain(keras.layers.Layer):
        """x -> alpha * x with one trainable scalar alpha, initialised to `initial` (SkipInit, De &
        Smith 2020: alpha = 0 on each residual branch, so every block starts as the identity)."""

        def __init__(self, initial: float = 0.0, **kwargs):
            super().__init__(**kwargs)
            self.initial = float(initial)

        def build(self, input_shape):
            self.alpha = self.add_weight(shape=(), name="alpha",
                                         initializer=keras.initializers.Constant(self.initial))

        def call(self, inputs):
            return inputs * ops.cast(self.alpha, inputs.dtype)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "initial": self.initial}

    return {"GhostBatchNormalization": GhostBatchNormalization, "NoiseAfterNorm": NoiseAfterNorm,
            "ScalarGain": ScalarGain}


def _product(dims: Any) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out
