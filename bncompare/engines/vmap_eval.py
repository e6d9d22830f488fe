"""The vmap engine's eval points that need a Keras model: one member at a time, in the template.

A vmap group trains stacked state through one template model and optimizer (engines/vmap.py). The
compiled programs never read the template's own variables: every value they use is an argument of
`stateless_call` and `stateless_apply`. So where a member's Recorder wants a model at an eval point
(`Recorder.wants_model`: BN evaluations beyond the moving averages, unbiased inference variance,
the instruments, the landscape and ICS probes, `record.test` at the final step), the member's slice
of the stacked state is assigned to the template's variables and the template is handed to
`Recorder.point`: every instrument and evaluation then runs through the code a solo run's eval point
runs, on that member's values, and what the group trains is unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np

from bncompare.engines.common import training_variables


@contextmanager
def decaying(optimizer, weight_decay) -> Iterator[None]:
    """`optimizer` applying one member's `weight_decay` (a number or a traced value) meanwhile.

    Keras reads `weight_decay` only as a number to multiply by, so the template's is swapped; a
    LossScaleOptimizer steps its inner optimizer, whose decay it is. None (decay off) is the same for
    the whole group (its key), so it is left alone."""
    decayed = getattr(optimizer, "inner_optimizer", optimizer)
    saved = decayed.weight_decay
    if saved is not None:
        decayed.weight_decay = weight_decay
    try:
        yield
    finally:
        decayed.weight_decay = saved


@contextmanager
def as_member(model, optimizer, values: list[np.ndarray], weight_decay: float | None) -> Iterator[None]:
    """The template `model` and `optimizer` holding one member's training state: `values` in
    `training_variables` order (its checkpoint's), and its weight decay.

    The learning rate is an optimizer variable, so it is loaded with the rest; the weight decay is a
    Python number that only the ICS probe reads from the optimizer (its update copies the optimizer's
    config), and it is put back afterwards, as the traced training step expects it.
    """
    for variable, value in zip(training_variables(model, optimizer), values, strict=True):
        variable.assign(value)
    with decaying(optimizer, weight_decay):
        yield
