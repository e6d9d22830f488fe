"""Seeding a run's random draws exactly as `keras.utils.set_random_seed` does, without its
TensorFlow import on the other backends.

Keras's function seeds TensorFlow whenever TensorFlow is installed, whatever the backend: on JAX or
PyTorch that imports it (about 2 s) and prints its C++ start-up log lines, for a seed nothing reads
(bncompare feeds those backends NumPy arrays, never tf.data). Everything else it does is repeated
here step for step, so the same seed draws the same initial weights, dropout masks and Keras
SeedGenerators as before (tests/test_startup.py compares the draws with Keras's own function).
"""

from __future__ import annotations

import random

import numpy as np

from bncompare.backend import import_keras


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy, Keras's global SeedGenerator and the backend, as Keras does."""
    keras = import_keras()
    backend = keras.backend.backend()
    if backend == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    # keras/src/utils/rng_utils.py (Keras 3.15), less `tf.random.set_seed`.
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    if not isinstance(seed, int):
        raise ValueError(f"Expected `seed` argument to be an integer. Received: seed={seed} "
                         f"(of type {type(seed)})")
    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    # The global SeedGenerator is recreated from Python's generator (seeded below) when next used.
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
    if backend == "torch":
        import torch

        torch.manual_seed(seed)
