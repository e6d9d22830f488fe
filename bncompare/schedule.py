"""Which optimizer steps a run takes, on which examples, and after which steps it is evaluated.

The batch order is ours, not Keras's: epoch e of seed s visits the training examples in the order of
a permutation drawn from (s, e), cut into batches of `batch_size` (the last one partial, as Keras
does). Training is fed to the engines in chunks that end at eval points and epoch boundaries, so
step-level evaluation (`record.eval_every: N`) sees exactly the batches an epoch-level run sees, and
runs with the same seed train on identical batches whatever else differs (BN or not, learning
rate...).

Everything is computed on demand: a schedule of 10^12 steps costs no memory until it is walked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np


@dataclass(frozen=True)
class Schedule:
    """Which optimizer steps happen, and after which ones the model is evaluated."""

    examples: int
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    eval_interval: int
    eval_at_start: bool = False  # an eval point at step 0, before any training

    @classmethod
    def for_run(cls, params: dict[str, Any], examples: int) -> "Schedule":
        batch_size = params["train.batch_size"]
        per_epoch = math.ceil(examples / batch_size)
        total = params["train.steps"] or params["train.epochs"] * per_epoch
        every = params["record.eval_every"]
        return cls(examples, batch_size, per_epoch, total, per_epoch if every == "epoch" else every,
                   bool(params.get("record.eval_at_start", False)))

    def is_eval(self, step: int) -> bool:
        """True when the model is evaluated after `step` steps (always at the end)."""
        if step == 0:
            return self.eval_at_start
        return step == self.total_steps or (0 < step < self.total_steps and step % self.eval_interval == 0)

    @property
    def eval_points(self) -> int:
        """How many eval points the run has (step 0 included when evaluated)."""
        return math.ceil(self.total_steps / self.eval_interval) + int(self.eval_at_start)

    def eval_steps(self) -> Iterator[int]:
        """The eval steps in order (lazily)."""
        if self.eval_at_start:
            yield 0
        yield from range(self.eval_interval, self.total_steps, self.eval_interval)
        yield self.total_steps

    def epoch_of(self, step: int) -> float | int:
        """Epochs completed after `step` (fractional between epoch ends)."""
        epoch = step / self.steps_per_epoch
        return int(epoch) if epoch.is_integer() else round(epoch, 4)

    def chunks(self) -> Iterator[tuple[int, int]]:
        """(first, last) step ranges that end at eval points and never cross an epoch end."""
        start = 0
        while start < self.total_steps:
            next_eval = (start // self.eval_interval + 1) * self.eval_interval
            next_epoch = (start // self.steps_per_epoch + 1) * self.steps_per_epoch
            stop = min(next_eval, next_epoch, self.total_steps)
            yield start, stop
            start = stop

    def permutation(self, seed: int, epoch: int) -> np.ndarray:
        """The order in which epoch `epoch` (0-based) of seed `seed` visits the examples."""
        return np.random.default_rng((seed, epoch)).permutation(self.examples)

    def batch_indices(self, seed: int, first: int, last: int) -> np.ndarray:
        """Example indices of steps first+1..last (within one epoch), in training order."""
        epoch = first // self.steps_per_epoch
        order = self.permutation(seed, epoch)
        offset = first - epoch * self.steps_per_epoch
        return order[offset * self.batch_size:(last - epoch * self.steps_per_epoch) * self.batch_size]
