"""The contract between the lifecycle and the engines: what an engine is given, what it must do, and
the few numbers both sides agree on.

An engine trains a group of runs (`Member`s) on one dataset and reports each member's progress to
the member's recorder (`Reporter`, a `lifecycle.Recorder`); it decides nothing about a run's status:
a NaN/inf loss is reported as such, the recorder applies the divergence rules (bncompare/status.py)
and the lifecycle everything else (bncompare/lifecycle.py). Both sides import this module; it
imports neither, so no engine reaches back into the lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Protocol, runtime_checkable

from bncompare.checkpoint import Checkpoint
from bncompare.config import Run
from bncompare.schedule import Schedule

# The untrained model's loss is measured on this many training examples: the start of the
# divergence rules' scale (status.explosion_limit).
START_PROBE = 1000
EVAL_BATCH_SIZE = 1000  # inference only: the batch size changes speed, not the numbers


class Reporter(Protocol):
    """What an engine calls on a member's recorder (lifecycle.Recorder implements it)."""

    @property
    def active(self) -> bool:
        """False once the run has ended (diverged, failed): the engine stops reporting it."""

    def start(self, start_loss: float) -> None:
        """The untrained model's mean loss on the first START_PROBE training examples."""

    def block(self, step: int, loss: float, accuracy: float) -> bool:
        """After a compiled call: the mean training loss and accuracy since the last eval point
        (NaN when it was not finite). False when the run has ended."""

    def point(self, point: dict[str, Any], blocks: dict | None = None, model=None, optimizer=None,
              state: Callable[[], tuple[list, Any]] | None = None) -> bool:
        """An eval point (see lifecycle.Recorder.point). False when the run has ended."""

    def trained_in(self, members: int) -> None:
        """The size of the program the run trains in, when it is not the group's: a resumed vmap
        group padded to the size its members were trained at (recorded in metrics.json's engine)."""


@dataclass
class Member:
    """One run of a group, as an engine sees it."""

    run: Run
    schedule: Schedule
    recorder: Reporter  # a lifecycle.Recorder
    slot: int
    resume: Checkpoint | None = None  # the state it continues from (engines.common.restore)


@runtime_checkable
class Engine(Protocol):
    """A training engine (bncompare/engines/: fit, tf_pack, vmap)."""

    name: str

    def refuses(self, run: Run) -> str | None:
        """Why this engine cannot train `run` in a group (it then trains alone through fit), or None."""

    def group_key(self, run: Run) -> Hashable:
        """Runs with equal keys may train as one group."""

    def max_members(self, run: Run, data=None) -> int:
        """The most runs like `run` one group may hold (with `data`, sized by device memory)."""

    def train(self, members: list[Member], data) -> float | None:
        """Train `members` to the end of their schedule, reporting to their recorders; return the
        seconds spent compiling (taken out of the runs' times), or None."""


class Stopwatch:
    """Training seconds, and an estimate of the compilation hidden in them.

    The first call of a compiled training function also traces and compiles it. `compile` is that
    call's time minus its steps times the mean per-step time of the calls after it (0 when there
    were none); the lifecycle takes it out of the run's times when the run ends, so `--x time`
    compares training cost, not compile time.
    """

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None
        self.later_seconds, self.later_steps = 0.0, 0

    def add(self, seconds: float, steps: int) -> None:
        if self.first is None:
            self.first = (seconds, steps)
        else:
            self.later_seconds += seconds
            self.later_steps += steps

    @property
    def training(self) -> float:
        """Seconds so far, compilation included."""
        return (self.first[0] if self.first else 0.0) + self.later_seconds

    @property
    def compile(self) -> float:
        if self.first is None or not self.later_steps:
            return 0.0
        seconds, steps = self.first
        return max(0.0, seconds - steps * self.later_seconds / self.later_steps)
