"""`bncompare run --jobs N`: N worker processes share one sweep; the parent keeps one display.

Workers take groups of runs (as `engines.plan` makes them: a pack or a vmap group stays whole)
from a queue, so no two ask for the same run; each run is still claimed on disk
as in a single process, so parallel invocations from the shell stay safe too. A worker sees one GPU
when GPUs are visible (worker i gets GPU i mod #GPUs).
Training events come back through a queue (steps at most a few times a second) and drive the same
display a single process uses, one progress bar per worker.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bncompare.config import Run
from bncompare import interrupts
from bncompare.lifecycle import Listener, Outcome

STEP_EVENTS_PER_SECOND = 5
SHUTDOWN_SECONDS = 60  # after Ctrl-C, how long workers get to save their runs as interrupted


def visible_gpus() -> list[str]:
    """GPU ids the workers can be pinned to, found without initialising CUDA in this process
    (a framework that touches the GPUs here would hold memory the workers need)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def worker_environment(slot: int, jobs: int, gpus: list[str]) -> dict[str, str]:
    """Environment variables that give worker `slot` its share of the machine."""
    # Each process uses backend.threads() intra-op threads whatever --jobs is (the same numbers as
    # a sequential run), so N workers use about N cores.
    return {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} if gpus else {}


class _Forward(Listener):
    """In a worker: sends training events to the parent's display."""

    def __init__(self, events, slot: int):
        self.events, self.slot, self.last_step = events, slot, 0.0

    def started(self, run, schedule, slot: int = 0) -> None:
        self.events.put(("started", self.slot, (run, schedule)))

    def compiling(self, run, slot: int = 0) -> None:
        self.events.put(("compiling", self.slot, run))

    def step(self, step: int, loss: float, accuracy: float, slot: int = 0) -> None:
        now = time.monotonic()
        if now - self.last_step >= 1 / STEP_EVENTS_PER_SECOND:
            self.last_step = now
            self.events.put(("step", self.slot, (step, loss, accuracy)))

    def point(self, point: dict[str, Any], slot: int = 0) -> None:
        self.events.put(("point", self.slot, point))

    def run_finished(self, outcome: Outcome, slot: int = 0) -> None:
        self.events.put(("finished", self.slot, outcome))

    def warning(self, run, text: str, slot: int = 0) -> None:
        self.events.put(("warning", self.slot, (run, text)))


def _worker(slot: int, environment: dict[str, str], out: Path, device: str, force: bool,
            tasks, events) -> None:
    """One worker process: train groups from `tasks` until the queue says stop or an interrupt."""
    os.environ.update(environment)
    from bncompare import engines, runner
    from bncompare.lifecycle import execute_group

    # SIGINT is blocked (inherited from the parent, see execute_parallel): a terminal's Ctrl-C
    # signals the whole process group, and the parent answers it by sending each worker one
    # SIGTERM, so a worker hears one signal, not two (a second means "stop at once").
    listener = _Forward(events, slot)
    busy: list[Run] = []  # runs another process was training: waited for once the queue is empty
    stopped = False
    with interrupts.stop_at_safe_points((signal.SIGTERM,)):
        try:
            while (group := tasks.get()) is not None:
                engine, runs = group
                events.put(("took", slot, runs))
                interrupts.check()
                prepared = runner.prepare(runs, device)  # cheap after the first: data is cached
                done = execute_group(engines.get(engine), runs, out,
                                     prepared.datasets[runner.data_key(runs[0])],
                                     prepared.environment, listener, force)
                busy += [o.run for o in done if o.status == "busy"]
        except KeyboardInterrupt:  # InterruptedGroup too: its outcomes were reported
            stopped = True
        except Exception as e:  # noqa: BLE001 - tell the parent instead of dying silently
            events.put(("crashed", slot, f"{type(e).__name__}: {e}"))
            stopped = True
    if busy and not stopped:  # outcomes reach the parent through the listener, as above
        runner.execute(busy, out, runner.prepare(busy, device), listener,
                       signals=(signal.SIGTERM,))  # SIGINT stays blocked, as above
    events.put(("exit", slot, None))


def backend_name() -> str:
    """The Keras backend the workers will use, without importing it here."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def execute_parallel(runs: list[Run], out: Path, display, *, jobs: int, device: str,
                     force: bool = False) -> tuple[list[Outcome], bool]:
    """Train `runs` in `jobs` worker processes, group by group (engines.plan: packs and vmap groups
    stay whole); return an Outcome per run (in run order) and whether the sweep was interrupted.

    Every run ends with an outcome: a run a worker took but never reported is `interrupted` when the
    sweep was stopped, else `failed` (its worker died); a run no worker reached is `not_started`
    (interrupted) or `failed` (every worker died).
    """
    from bncompare import engines

    groups = engines.plan(runs, backend_name())
    context = multiprocessing.get_context("spawn")  # fork would copy a half-initialised backend
    tasks, events = context.Queue(), context.Queue()
    for group in groups:
        tasks.put((group.engine, group.runs))
    for _ in range(jobs):
        tasks.put(None)
    gpus = visible_gpus() if device != "cpu" else []
    workers = [context.Process(target=_worker, name=f"bncompare-worker-{slot}",
                               args=(slot, worker_environment(slot, jobs, gpus), out, device, force,
                                     tasks, events))
               for slot in range(jobs)]
    # Workers start with SIGINT blocked (a signal mask survives fork and exec): Ctrl-C while they
    # import would otherwise print their tracebacks; the parent stops them with SIGTERM instead.
    # Blocked, not ignored, in the parent: a Ctrl-C that arrives while the workers start stays
    # pending and is handled the moment the mask is lifted, instead of being lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for worker in workers:
            worker.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    display.sweep_started(runs)
    outcomes: dict[tuple[str, str], Outcome] = {}
    taken: dict[int, list[Run]] = {}  # slot -> the runs of the group it is on
    running = set(range(jobs))
    interrupted = False

    def handle(kind: str, slot: int, payload: Any) -> None:
        if kind == "took":
            taken[slot] = payload
        elif kind == "compiling":
            display.compiling(payload, slot=slot)
        elif kind == "started":
            display.started(*payload, slot=slot)
        elif kind == "step":
            display.step(*payload, slot=slot)
        elif kind == "point":
            display.point(payload, slot=slot)
        elif kind == "warning":
            display.warning(*payload, slot=slot)
        elif kind == "finished":
            outcomes[key(payload.run)] = payload
            display.run_finished(payload, slot=slot)
        elif kind == "crashed":
            lost(slot, payload)
        elif kind == "exit":
            running.discard(slot)
            taken.pop(slot, None)

    def lost(slot: int, why: str) -> None:
        running.discard(slot)
        for run in taken.pop(slot, []):
            if key(run) not in outcomes:  # its metrics.json says running; readers see interrupted
                outcomes[key(run)] = Outcome(run, "interrupted" if interrupted else "failed",
                                             note=f"worker {slot} {why}")
                display.run_finished(outcomes[key(run)], slot=slot)

    deadline = math.inf
    with interrupts.stop_at_safe_points():
        try:
            while running and time.monotonic() < deadline:
                if interrupts.requested() and not interrupted:  # Ctrl-C or `kill`: tell every worker
                    interrupted, deadline = True, time.monotonic() + SHUTDOWN_SECONDS
                    for worker in workers:
                        if worker.is_alive():
                            os.kill(worker.pid, signal.SIGTERM)
                try:
                    handle(*events.get(timeout=0.5))
                except queue.Empty:
                    for slot in list(running):
                        if not workers[slot].is_alive():
                            lost(slot, f"died (exit code {workers[slot].exitcode})")
        except KeyboardInterrupt:  # asked twice: stop now; runs in flight read as interrupted
            interrupted = True
        interrupted = interrupted or interrupts.requested()
    for worker in workers:
        worker.join(timeout=5)
        if worker.is_alive():
            worker.kill()
    while True:  # events sent after the loop ended (a last outcome) still count
        try:
            kind, slot, payload = events.get_nowait()
        except (queue.Empty, OSError, ValueError):
            break
        if kind == "finished":
            outcomes[key(payload.run)] = payload
    for slot in list(taken):
        lost(slot, "stopped before reporting")
    result = []
    for run in runs:
        if key(run) not in outcomes:
            outcomes[key(run)] = (Outcome(run, "not_started", note="the sweep stopped before this run")
                                  if interrupted else
                                  Outcome(run, "failed", note="no worker was left to train it"))
            display.run_finished(outcomes[key(run)])
        result.append(outcomes[key(run)])
    return result, interrupted


def key(run: Run) -> tuple[str, str]:
    return run.experiment, run.run_id
