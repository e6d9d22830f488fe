"""How a run becomes a result, in one place: claim -> train -> record -> outcome -> release.

Engines (bncompare/engines/) only train: they turn a group of runs plus data into per-member progress
and eval points. Everything else about a run lives here, the same for every engine and executor:

- the claim on its directory and its config.yaml (`claim_run`);
- its metrics.json, kept by a `Recorder` that the engine reports to;
- the divergence rules applied as training reports (a loss that becomes NaN/inf, or an eval
  interval whose mean training loss explodes: see bncompare/status.py);
- how it ends: completed, diverged, failed (an exception) or interrupted (Ctrl-C/SIGTERM), and the
  `Outcome` the display and the exit code are made from. What each status means, and every
  Outcome, is decided by bncompare/status.py; this module says when.

A single run is a group of one. What an engine is given and must do: bncompare/engines/contract.py.
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bncompare import __version__, checkpoint
from bncompare.checkpoint import Checkpoint
from bncompare.config import Run
from bncompare.engines.contract import Engine, Member
from bncompare.results import (CONFIG_FILE, FINISHED, METRICS_FILE, Claim, MetricsFile, UnreadableRun,
                               WritePacer, claim_holder, make_directories, now, read_run,
                               remove_stale_temporaries, strict, write_config)
from bncompare.schedule import Schedule
from bncompare.skipping import finished_record, run_dir as run_dir_of
from bncompare.status import (BUSY_ELSEWHERE, CRASHED, DIVERGED, INTERRUPTED, LOST, REFUSED, RUNNING,
                              UNREADABLE, Outcome, decide, ended_by, error_text, explosion_limit, is_bad,
                              shows_divergence)

# An eval point is checkpointed only when the training since the run's last checkpoint took at least
# CHECKPOINT_SPACING times as long as writing that checkpoint did, so checkpoints cost at most about
# 1/CHECKPOINT_SPACING of the training time. Writing one costs tens of milliseconds for the shipped
# models (benchmarks/checkpoint_cost.py): more than a tiny model's eval interval, a few percent of a
# shipped config's. A killed run then loses at most one eval interval or CHECKPOINT_SPACING writes'
# time of training, whichever is longer.
CHECKPOINT_SPACING = 10.0


class Listener:
    """Hooks for a progress display; the default does nothing.

    `slot` tells apart runs trained at the same time (parallel workers, members of a group).
    """

    def sweep_started(self, runs: list[Run]) -> None: ...

    def started(self, run: Run, schedule: Schedule, slot: int = 0) -> None: ...

    def compiling(self, run: Run, slot: int = 0) -> None: ...

    def step(self, step: int, loss: float, accuracy: float, slot: int = 0) -> None: ...

    def point(self, point: dict[str, Any], slot: int = 0) -> None: ...

    def run_finished(self, outcome: "Outcome", slot: int = 0) -> None: ...

    def warning(self, run: Run, text: str, slot: int = 0) -> None:
        """Something the user should know about a run's numbers (said once per run)."""

    def waiting(self, runs: list[Run]) -> None:
        """Runs being trained by another process, waited for before this invocation ends."""


def _fails_alone(point):
    """Recorder.point, where a member's own failure (an extra evaluation or an instrument raising
    on its model) fails that member only: it ends `failed` with the traceback, and the engine drops
    it as it drops a diverged member, so its pack-mates train on. A disk error stays the group's."""

    @functools.wraps(point)
    def guarded(self: "Recorder", *args, **kwargs) -> bool:
        try:
            return point(self, *args, **kwargs)
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - recorded as this run's failure
            self.finish(ended_by(e), error=error_text(e))
            return False

    return guarded


class Recorder:
    """One run's record: its metrics.json and the divergence rules. Engines report to it."""

    def __init__(self, run: Run, run_dir: Path, schedule: Schedule, data, *, environment: dict[str, Any],
                 engine: dict[str, Any], listener: Listener, slot: int,
                 resume: Checkpoint | None = None, identity: dict[str, Any] | None = None,
                 pacer: WritePacer | None = None):
        from bncompare.instruments import Instruments  # NumPy only; Keras is imported when measuring

        self.run, self.schedule, self.listener, self.slot = run, schedule, listener, slot
        self.run_dir = Path(run_dir)
        self.classes = data.classes
        # With `resume`, the run continues from its checkpoint: history and series as they stood
        # then, and the times of the earlier processes added to this one's (see `point`).
        self.resume, self.identity = resume, identity
        restored = resume.metrics if resume else None
        self.metrics = MetricsFile(run_dir, experiment=run.experiment, run_id=run.run_id,
                                   variant=run.variant, params=run.params, environment=environment,
                                   engine=engine, restored=restored, resumed_at=resume and resume.step,
                                   pacer=pacer or WritePacer())  # the group's (train_group), or its own
        self.first_point = len(self.metrics.data["history"]["step"])  # the first of this process
        seconds = self.metrics.data["history"]["seconds"]
        self.seconds_before = (seconds[-1] or 0.0) if resume and seconds else 0.0
        self.keep_checkpoint = bool(run.params.get("record.keep_checkpoint"))
        self.checkpoint_seconds = 0.0  # time spent writing checkpoints, for cost reports
        self.checkpointed_at, self.last_write = self.seconds_before, 0.0  # see CHECKPOINT_SPACING
        self.instruments = Instruments(run.params, data, Path(run_dir))
        self.data = data
        self.probing = bool(run.params.get("record.landscape") or run.params.get("record.ics"))
        params = run.params
        # Evaluations only a model can give (record.train_eval alone an engine may put in the point).
        self.model_evaluations = (set(params.get("record.bn_eval", ["moving"])) != {"moving"}
                                  or params.get("model.bn_variance", "biased") == "unbiased")
        self.extra_evaluations = self.model_evaluations or params.get("record.train_eval", 0) > 0
        self.testing = bool(params.get("record.test"))
        self.tested: dict[str, float] | None = None  # record.test's scores, taken at the final point
        self.lag_warned = bool(resume and resume.lag_warned)
        self.limit = math.inf
        self.status: str | None = None  # set when the run ends

    @property
    def active(self) -> bool:
        return self.status is None

    def start(self, start_loss: float) -> None:
        """The untrained model's mean loss on the first START_PROBE training examples."""
        self.limit = explosion_limit(float(start_loss), self.classes)
        self.listener.started(self.run, self.schedule, slot=self.slot)
        problem = self.instruments.start_session(self.run)
        if problem:
            self.warn(problem)

    def trained_in(self, members: int) -> None:
        """See engines.contract.Reporter.trained_in: a second resume reads it to pad alike."""
        self.metrics.data["engine"] = {**self.metrics.data["engine"], "members": members}

    def block(self, step: int, loss: float, accuracy: float) -> bool:
        """After a compiled call: the mean training loss and accuracy since the last eval point."""
        if not self.active:
            return False
        if is_bad(loss):  # stop at the first NaN/inf instead of training on garbage
            self.diverged(step)
        else:
            self.listener.step(step, float(loss), float(accuracy), slot=self.slot)
        return self.active

    def wants_model(self, step: int) -> bool:
        """Whether `point` at `step` needs the member's model: for the BN evaluations beyond the
        moving averages, the instruments, the probes, or (at the final step) `record.test`. An engine
        that trains without a Keras model per member loads one only then; `record.train_eval` alone
        it may put in the point itself."""
        return (self.model_evaluations or self.instruments.on or self.probing
                or (self.testing and step >= self.schedule.total_steps))

    @_fails_alone
    def point(self, point: dict[str, Any], blocks: dict | None = None, model=None,
              optimizer=None, state: Callable[[], tuple[list, Any]] | None = None) -> bool:
        """Record an eval point, or the divergence it shows. With `model` (and the `optimizer`
        training it, default `model.optimizer`), the run's instruments (`record.activations`,
        `record.landscape`...) measure it first, on a snapshot: training is not changed; at the
        final step, `record.test` evaluates it (so an engine may hand every member the same model
        object, loaded with that member's weights). With `state` (() -> (variables, torch_rng), see
        checkpoint.py), the point is checkpointed."""
        if not self.active:
            return False
        point = {key: float(value) if hasattr(value, "dtype") else value for key, value in point.items()}
        if self.seconds_before and point.get("seconds") is not None:
            point["seconds"] = round(point["seconds"] + self.seconds_before, 3)
        if model is not None and self.extra_evaluations and not is_bad(point.get("val_loss")):
            from bncompare.bn_eval import extra_history  # record.bn_eval, train_eval, bn_variance

            point.update(extra_history(model, self.data, self.run.params,
                                       moving=(point["val_loss"], point["val_accuracy"])))
        if shows_divergence(point, self.limit):
            self.diverged(point["step"])
            return False
        self._warn_lag(point["step"])
        measured = dict(blocks or {})
        if model is not None:
            measured.update(self.instruments.measure(model, point))
            if self.probing:
                from bncompare.probes import probe_blocks

                measured.update(probe_blocks(model, optimizer or model.optimizer, self.data,
                                             self.run.params, point["step"]))
        if model is not None and self.testing and point["step"] >= self.schedule.total_steps:
            self.tested = self._test(model)
        self.metrics.add_point(point, measured)
        self.listener.point(point, slot=self.slot)
        if state is not None and self._checkpoint_due(point):
            self._checkpoint(point, state)
        return True

    def _checkpoint_due(self, point: dict[str, Any]) -> bool:
        if point["step"] >= self.schedule.total_steps:  # the run ends here: kept or never read
            return self.keep_checkpoint
        trained = (point.get("seconds") or 0.0) - self.checkpointed_at
        return trained >= CHECKPOINT_SPACING * self.last_write

    def _checkpoint(self, point: dict[str, Any], state: Callable[[], tuple[list, Any]]) -> None:
        """Save the training state at this eval point (after metrics.json: see checkpoint.py)."""
        self.metrics.flush()  # so that a killed run's metrics.json is never behind its checkpoint
        started = time.perf_counter()
        variables, torch_rng = state()
        try:
            checkpoint.save(self.run_dir, self.identity, Checkpoint(
                point["step"], variables, strict(self.metrics.data), self.lag_warned, torch_rng))
        except OSError as e:  # a full disk: the results matter more than resuming; train on
            self.last_write = math.inf
            self.warn(f"no more checkpoints: cannot write {e.filename}: {e.strerror or e}")
            return
        self.last_write = time.perf_counter() - started
        self.checkpoint_seconds += self.last_write
        self.checkpointed_at = point.get("seconds") or 0.0

    def warn(self, text: str) -> None:
        """A warning in metrics.json and on the terminal."""
        self.metrics.data.setdefault("warnings", []).append(text)
        self.metrics.save()
        self.listener.warning(self.run, text, slot=self.slot)

    def _warn_lag(self, step: int) -> None:
        """Once per run: BN's moving averages still lean on their initial values (bn_eval.py)."""
        if self.lag_warned:
            return
        from bncompare.bn_eval import lag_warning

        text = lag_warning(self.run.params, step)
        if text:
            self.lag_warned = True
            self.warn(text)

    def test_scores(self) -> dict[str, float]:
        """`record.test`: the final model's test_loss and test_accuracy on the test split (taken
        when its final point was recorded); {} when not asked for or the run did not train to the end."""
        if not self.testing or not self.active:
            return {}
        if self.tested is None:
            raise RuntimeError("record.test: the engine reported no model at the final point")
        return self.tested

    def _test(self, model) -> dict[str, float]:
        """`model`'s scores on the test split, with the statistics val_loss uses."""
        from bncompare.bn_eval import evaluate
        from bncompare.data import test_split

        x, y = test_split(self.run.params["data.dataset"])
        loss, accuracy = evaluate(model, x, y, "moving", batch_size=self.run.params["train.batch_size"],
                                  unbiased=self.run.params.get("model.bn_variance") == "unbiased")
        return {"test_loss": loss, "test_accuracy": accuracy}

    def diverged(self, step: int) -> None:
        self.finish(DIVERGED, diverged_at={"epoch": self.schedule.epoch_of(step), "step": step})

    def finish(self, status: str, *, diverged_at: dict | None = None, error: str | None = None,
               final: dict[str, Any] | None = None) -> None:
        if not self.active:
            return
        self.status = status
        self.metrics.finish(status, diverged_at=diverged_at, error=error, final=final)
        steps = self.metrics.data["history"].get("step") or [0]
        self.instruments.end_session(status, self.metrics.data.get("final") or {}, steps[-1])
        # An interrupted run resumes from its checkpoint; no other end ever reads it again.
        if status != INTERRUPTED and not self.keep_checkpoint:
            checkpoint.remove(self.run_dir)


def train_group(engine: Engine, runs: list[Run], run_dirs: list[Path], data, *, environment: dict[str, Any],
                listener: Listener | None = None, first_slot: int = 0) -> list[Recorder]:
    """Train `runs` together with `engine`; every run ends with a status in its metrics.json.

    KeyboardInterrupt marks the runs still training `interrupted` (the diverged keep their status)
    and is re-raised, so the caller stops the sweep. Any other exception marks them `failed`; an
    OSError from the disk while doing so is re-raised for the caller to report.
    """
    listener = listener or Listener()
    recorders: list[Recorder] = []
    try:
        return _train_group(engine, runs, run_dirs, data, environment, listener, first_slot, recorders)
    finally:  # an exit that skipped a run's finish (a second Ctrl-C, a disk error while finishing)
        _flush(recorders)


def _flush(recorders: list[Recorder]) -> None:
    """Write the eval points each run's pacer held back (a no-op for runs that ended), so that a
    run that stops without `finish` leaves all it recorded on disk, as when every point was written."""
    for recorder in recorders:
        try:
            recorder.metrics.flush()
        except OSError:
            pass  # the disk refused: the error that brought us here is the one to report


def _train_group(engine, runs, run_dirs, data, environment, listener, first_slot,
                 recorders: list[Recorder]) -> list[Recorder]:
    """train_group's body; `recorders` gets each run's Recorder as it is made."""
    engine_record = {"name": engine.name, "members": len(runs)}
    pacer = WritePacer()  # one for the group: its files share the spacing (results.WritePacer)
    for offset, (run, run_dir) in enumerate(zip(runs, run_dirs)):
        schedule = Schedule.for_run(run.params, len(data.x_train))
        identity = checkpoint.identity(run, environment.get("backend", ""), engine.name)
        resume, why_not = resume_point(run_dir, identity)
        recorders.append(Recorder(run, run_dir, schedule, data, environment=environment,
                                  engine=engine_record, listener=listener, slot=first_slot + offset,
                                  resume=resume, identity=identity, pacer=pacer))
        if why_not:
            recorders[-1].warn(f"trains from step 0: {why_not}")
        elif resume:
            listener.warning(run, f"resumes at step {resume.step} from its checkpoint",
                             slot=first_slot + offset)
    members = [Member(r.run, r.schedule, r, r.slot, r.resume) for r in recorders]
    for member in members:
        listener.compiling(member.run, slot=member.slot)
    compile_seconds: dict[int, float] = {}
    try:
        # Members resuming at different steps (a kill between two members' checkpoint writes, or
        # a run added to the sweep) cannot share batches: each step trains as its own group.
        # Partitioned groups do not mix with each other's sizes either (see _by_resume_step).
        for part in _by_resume_step(members):
            seconds = engine.train(part, data) or 0.0
            compile_seconds.update({id(member.recorder): seconds for member in part})
        tested = [recorder.test_scores() for recorder in recorders]  # taken at each final point
    except KeyboardInterrupt as e:
        _finish_rest(recorders, ended_by(e), error_text(e))
        raise
    except Exception as e:  # noqa: BLE001 - one broken group must not stop the sweep
        refused = _finish_rest(recorders, ended_by(e), error_text(e))
        if refused:  # not even the failure could be written: the caller says which file and why
            raise refused from e
        return recorders
    for recorder, scores in zip(recorders, tested):
        recorder.finish(ended_by(None), final=scores)
        seconds = compile_seconds.get(id(recorder))
        if seconds and recorder.status in FINISHED:
            recorder.metrics.exclude_compile(seconds, first=recorder.first_point)
    return recorders


def resume_point(run_dir: Path, identity: dict[str, Any]) -> tuple[Checkpoint | None, str | None]:
    """The checkpoint an unfinished run continues from, or (None, why it is not used: None when
    there is nothing to say). The caller holds the run's claim."""
    found, why_not = checkpoint.load(run_dir, identity)
    if found is None and why_not is None:
        return None, None
    try:
        status = read_run(run_dir).status
    except UnreadableRun:
        status = None  # killed before its first metrics.json: the checkpoint cannot be from this try
    # "running" under our own claim: the process that wrote it died (SIGKILL, power loss).
    if status in FINISHED:  # retrained by --force: its kept checkpoint is the old run's end
        found, why_not = None, None
    elif found is not None and status not in (INTERRUPTED, RUNNING):
        found, why_not = None, f"its checkpoint belongs to a run that ended {status or 'unrecorded'}"
    if found is None:
        checkpoint.remove(run_dir)
    return found, why_not


def _by_resume_step(members: list[Member]) -> list[list[Member]]:
    """The members grouped by the step they start from and the size of the group they were
    trained in (the vmap engine pads a resumed group to it), in order of first appearance."""
    parts: dict[tuple, list[Member]] = {}
    for member in members:
        saved = member.resume
        key = (saved.step, (saved.metrics.get("engine") or {}).get("members")) if saved else (0, None)
        parts.setdefault(key, []).append(member)
    return list(parts.values())


def _finish_rest(recorders: list[Recorder], status: str, error: str) -> OSError | None:
    """Record `status` for every run still training; the first write the disk refused, if any."""
    refused = None
    for recorder in recorders:
        try:
            recorder.finish(status, error=error)
        except OSError as e:
            recorder.status = recorder.status or status
            refused = refused or e
    return refused


# ---- claims, outcomes ---------------------------------------------------------------------------


def claim_run(run: Run, out: Path, force: bool) -> tuple[Path, Claim | None, Outcome | None]:
    """Skip a finished run, else claim it and write its config.yaml.

    Returns (run_dir, claim, None) when this process is to train the run, else
    (run_dir, None, outcome) saying why not (done before, busy elsewhere, disk refused).
    """
    run_dir = run_dir_of(run, out)
    done = None if force else finished_record(run_dir)
    if done:
        return run_dir, None, decide(run, done, earlier=True)
    try:
        make_directories(run_dir, out)
        claim = Claim.acquire(run_dir)
    except OSError as e:
        return run_dir, None, cannot_write(run, run_dir, e)
    if claim is None:
        return run_dir, None, decide(run, why=BUSY_ELSEWHERE, detail=claim_holder(run_dir))
    # Another process may have finished it between our first look and our claim.
    done = None if force else finished_record(run_dir)
    if done:
        claim.release()
        return run_dir, None, decide(run, done, earlier=True)
    try:
        remove_stale_temporaries(run_dir)  # left by a process killed inside an atomic write
        write_config(run_dir / CONFIG_FILE, run.to_config(),
                     f"bncompare {__version__}: resolved config of run {run.run_id} "
                     f"(`bncompare run` this file to reproduce it)")
    except OSError as e:
        claim.release()
        return run_dir, None, cannot_write(run, run_dir, e)
    return run_dir, claim, None


def discard_partial(runs: list[Run], out: Path) -> int:
    """`run --restart`: delete the checkpoints of unfinished runs that no live process is training,
    so that they train from step 0; return how many were deleted."""
    discarded = 0
    for run in runs:
        run_dir = run_dir_of(run, out)
        if not os.path.lexists(run_dir / checkpoint.CHECKPOINT_FILE) or finished_record(run_dir):
            continue  # a finished run's kept checkpoint is never resumed from: it stays
        try:
            claim = Claim.acquire(run_dir)
        except OSError:
            continue  # the run cannot be trained here either; its own error comes later
        if claim is None:
            continue  # a live process is training it: not a partial run
        try:
            checkpoint.remove(run_dir)
            discarded += 1
        finally:
            claim.release()
    return discarded


def cannot_write(run: Run, run_dir: Path, error: OSError) -> Outcome:
    return decide(run, why=REFUSED, detail=f"{error.filename or run_dir}: {error.strerror or error}")


def outcome_of(run: Run, run_dir: Path, status: str | None) -> Outcome:
    """The Outcome of a run this process trained, from its metrics.json."""
    try:
        metrics = read_run(run_dir).metrics
    except UnreadableRun as e:
        return decide(run, why=UNREADABLE, detail=str(e))
    return decide(run, metrics, ended=status)


@dataclass
class ClaimedGroup:
    """A group after its claim half (`claim_group`): what each run will do in this process."""

    runs: list[Run]
    outcomes: dict[int, Outcome] = field(default_factory=dict)  # runs not trained here, by index
    claimed: list[tuple[int, Run, Path, Claim]] = field(default_factory=list)  # runs to train
    interrupted: bool = False  # a second Ctrl-C while claiming


def claim_group(runs: list[Run], out: Path, force: bool) -> ClaimedGroup:
    """The claim half of `execute_group`: claim each run (or say why it is not trained here)."""
    group = ClaimedGroup(runs)
    try:
        for i, run in enumerate(runs):
            run_dir, claim, outcome = claim_run(run, out, force)
            if outcome is not None:
                group.outcomes[i] = outcome
            else:
                group.claimed.append((i, run, run_dir, claim))
    except KeyboardInterrupt:
        group.interrupted = True
    return group


def execute_group(engine, runs: list[Run], out: Path, data, environment: dict[str, Any],
                  listener: Listener, force: bool, first_slot: int = 0) -> list[Outcome]:
    """Claim each run, train the claimed ones as one group, release; an Outcome per run, in order.

    KeyboardInterrupt is re-raised after the outcomes are settled and reported to the listener
    (runs that had diverged or completed keep that status); the caller reads them from
    `InterruptedGroup.outcomes`.
    """
    group = claim_group(runs, out, force)
    statuses: dict[int, str | None] = {}
    failure: BaseException | None = None
    if group.claimed and not group.interrupted:
        try:
            recorders = train_group(engine, [c[1] for c in group.claimed],
                                    [c[2] for c in group.claimed], data, environment=environment,
                                    listener=listener, first_slot=first_slot)
            statuses = {c[0]: r.status for c, r in zip(group.claimed, recorders)}
        except BaseException as e:  # noqa: BLE001 - settle_group decides what each one means
            failure = e
    return settle_group(group, statuses, failure, listener, first_slot)


def settle_group(group: ClaimedGroup, statuses: dict[int, str | None], failure: BaseException | None,
                 listener: Listener, first_slot: int = 0) -> list[Outcome]:
    """The settle half of `execute_group`: record what `failure` means for the claimed runs, release
    their claims, and report an Outcome per run (in order) to the listener.

    `statuses` (by run index) are the statuses training ended with; runs without one are read back
    from their metrics.json. `failure` is what stopped training: KeyboardInterrupt (the runs were
    interrupted: InterruptedGroup is raised once all is settled), OSError (the disk refused), any
    other Exception (a bug outside training's own guard: the runs fail, with its traceback); any
    other BaseException is re-raised once the claims are released.
    """
    runs, outcomes, claimed = group.runs, dict(group.outcomes), group.claimed
    interrupted = group.interrupted or isinstance(failure, KeyboardInterrupt)
    try:
        if isinstance(failure, KeyboardInterrupt):
            for _, run, run_dir, _ in claimed:  # a run that never got a record of its own
                record_failure(run, run_dir, failure, only_missing=True)
        elif isinstance(failure, OSError):  # the disk refused (read-only, full)
            for i, run, run_dir, _ in claimed:
                done = finished_record(run_dir)  # members that finished before the disk said no
                outcomes[i] = decide(run, done) if done else cannot_write(run, run_dir, failure)
        elif isinstance(failure, Exception):  # a bug outside training's own guard
            for i, run, run_dir, _ in claimed:
                if finished_record(run_dir) is None:
                    record_failure(run, run_dir, failure)
                    outcomes[i] = decide(run, why=CRASHED, error=failure)
    finally:
        for _, _, _, claim in claimed:
            claim.release()
    if failure is not None and not isinstance(failure, (Exception, KeyboardInterrupt)):
        raise failure
    for i, run, run_dir, _ in claimed:
        if i not in outcomes:  # from its metrics.json: a diverged run stays diverged after Ctrl-C
            outcomes[i] = outcome_of(run, run_dir, statuses.get(i))
    for i, run in enumerate(runs):
        outcomes.setdefault(i, decide(run, why=LOST, stopped=interrupted,
                                      detail="interrupted" if interrupted else "not trained"))
    slots = {i: first_slot + n for n, (i, *_) in enumerate(claimed)}
    result = [outcomes[i] for i in range(len(runs))]
    for i, outcome in enumerate(result):
        if outcome.status != "busy":  # reported once settled: the runner waits for it (runner.py)
            listener.run_finished(outcome, slot=slots.get(i, first_slot))
    if interrupted:
        raise InterruptedGroup(result)
    return result


def record_failure(run: Run, run_dir: Path, error: BaseException, only_missing: bool = False) -> None:
    """Mark a run that broke outside training's own error handling as failed (interrupted for
    Ctrl-C/SIGTERM: status.ended_by), on disk; with `only_missing`, only a run that has no
    metrics.json yet."""
    from bncompare.results import write_json

    try:
        metrics = read_run(run_dir).metrics
        if only_missing:
            return
    except UnreadableRun:  # it broke before its metrics.json existed
        metrics = {"schema": 1, "experiment": run.experiment, "run_id": run.run_id,
                   "variant": run.variant, "params": run.params, "history": {}, "final": {}}
    if metrics.get("status") in (None, RUNNING, INTERRUPTED):
        metrics.update(status=ended_by(error), finished_at=now(), error=error_text(error))
        try:
            write_json(run_dir / METRICS_FILE, metrics)
        except OSError:
            pass


class InterruptedGroup(KeyboardInterrupt):
    """Ctrl-C/SIGTERM during a group: carries the group's settled outcomes."""

    def __init__(self, outcomes: list[Outcome]):
        super().__init__("interrupted")
        self.outcomes = outcomes
