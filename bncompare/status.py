"""Who decides a run's status: this module, whichever engine trained the run and executor ran it.

Two things are decided here, and nowhere else:

- the status a run's record (metrics.json) ends with, decided while it trains (the lifecycle's
  Recorder asks): `shows_divergence` and `is_bad` (the divergence rules) and `ended_by` (what
  stopped training: nothing -> completed, Ctrl-C/SIGTERM -> interrupted, an exception -> failed);
- a run's `Outcome` in this invocation, which the end table shows and the exit code is made of:
  `decide`, from the run's record when this invocation has one, else from why it has none (done
  before, busy elsewhere, the disk refused, a worker lost, the sweep stopped before reaching it).

Engines only report losses (a NaN is reported as a NaN); executors only say what they know.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Any

from bncompare.config import Run
from bncompare.results import FINISHED

__all__ = ["FINISHED", "Outcome", "decide", "ended_by", "error_text", "explosion_limit", "is_bad",
           "shows_divergence"]

# The statuses a record ends with (metrics.json; "running" while a process trains it)...
COMPLETED, DIVERGED, FAILED, INTERRUPTED, RUNNING = "completed", "diverged", "failed", "interrupted", "running"
# ...and those of runs this invocation did not train.
SKIPPED, BUSY, NOT_STARTED = "skipped", "busy", "not_started"

# A run has diverged when its loss becomes NaN/inf, or when its mean training loss over an eval
# interval exceeds EXPLOSION_FACTOR times its starting value: the untrained model's loss on the first
# START_PROBE training examples (engines/contract.py), or uniform guessing's (ln classes) if that is
# larger. Relative to the start because cross-entropy from logits is uncapped: a network with a huge
# initial weight scale starts near a loss of 90 and can still recover.
EXPLOSION_FACTOR = 10.0
INTERRUPTED_TEXT = "interrupted by the user (SIGINT/SIGTERM)"

# Why this invocation has no record of its own for a run (`decide`'s `why`).
BUSY_ELSEWHERE = "busy"  # another process holds its claim; detail: who
REFUSED = "refused"  # the disk refused its directory or a write; detail: what and why
UNREADABLE = "unreadable"  # trained here, yet its metrics.json cannot be read; detail: why
CRASHED = "crashed"  # an exception outside training's own guard; error: the exception
LOST = "lost"  # taken by a worker or a group that never reported it; detail: what happened
UNREACHED = "unreached"  # nothing reached it before the sweep ended


@dataclass
class Outcome:
    """What happened to one run in this invocation (made by `decide`)."""

    run: Run
    # completed | diverged | failed | interrupted | skipped (done before) | busy (another process)
    # | not_started (the invocation stopped before reaching it)
    status: str
    final: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def explosion_limit(start_loss: float, classes: int) -> float:
    """The training loss above which a run counts as diverged (see EXPLOSION_FACTOR)."""
    chance = math.log(classes)
    return EXPLOSION_FACTOR * (max(start_loss, chance) if math.isfinite(start_loss) else chance)


def is_bad(value: float | None) -> bool:
    """A loss that diverges the run where training reports it: missing, NaN or infinite."""
    return value is None or not math.isfinite(value)


def shows_divergence(point: dict[str, Any], limit: float) -> bool:
    """An eval point that diverges the run: its validation loss is bad, or its interval's mean
    training loss is above `limit` (explosion_limit)."""
    return is_bad(point.get("val_loss")) or (point.get("loss") is not None and point["loss"] > limit)


def ended_by(failure: BaseException | None) -> str:
    """The status of a run whose training stopped because of `failure` (None: it ran to the end)."""
    if failure is None:
        return COMPLETED
    return INTERRUPTED if isinstance(failure, KeyboardInterrupt) else FAILED


def error_text(failure: BaseException) -> str:
    """What a run's record says about the `failure` that ended it (its `error` field)."""
    if isinstance(failure, KeyboardInterrupt):
        return INTERRUPTED_TEXT
    return f"{type(failure).__name__}: {failure}\n{''.join(traceback.format_exception(failure))}"


def decide(run: Run, record: dict[str, Any] | None = None, *, earlier: bool = False,
           ended: str | None = None, why: str = "", detail: str = "",
           error: BaseException | None = None, stopped: bool = False) -> Outcome:
    """The Outcome of `run` in this invocation, whichever engine and executor had it.

    From its `record` (metrics.json) when there is one: `earlier`, finished in an earlier
    invocation (skipped); else trained here, ending `ended` (default: the record's status). A
    record still `running` was left by a final write that failed: with its claim released, it
    reads as interrupted, and so does it here.

    Else from `why` this invocation has none (the constants above), `stopped` saying whether the
    sweep was interrupted.
    """
    if record is not None:
        final = record.get("final") or {}
        if earlier:
            return Outcome(run, SKIPPED, final, f"already {record.get('status', 'finished')}")
        status = ended or record["status"]
        if status == RUNNING:
            status = INTERRUPTED
        text = record.get("error")
        note = text.splitlines()[0] if status == FAILED and isinstance(text, str) and text else ""
        return Outcome(run, status, final, note)
    if why == BUSY_ELSEWHERE:
        return Outcome(run, BUSY, note=f"being trained by {detail}")
    if why == REFUSED:
        return Outcome(run, FAILED, note=f"cannot write {detail}")
    if why == UNREADABLE:
        return Outcome(run, FAILED, note=f"metrics.json: {detail}")
    if why == CRASHED:
        return Outcome(run, FAILED, note=f"{type(error).__name__}: {error}")
    if why == LOST:
        return Outcome(run, INTERRUPTED if stopped else FAILED, note=detail)
    if why == UNREACHED:
        return (Outcome(run, NOT_STARTED, note="the sweep stopped before this run") if stopped
                else Outcome(run, FAILED, note="no worker was left to train it"))
    raise ValueError(f"decide: unknown reason {why!r}")
