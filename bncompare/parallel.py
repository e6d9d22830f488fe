"""`bncompare run --jobs N`: N worker processes share one sweep; the parent keeps one display.

Workers take runs from a queue, so no two ask for the same run; each run is still claimed on disk
as in a single process, so parallel invocations from the shell stay safe too. A worker sees one GPU
when GPUs are visible (worker i gets GPU i mod #GPUs), else an equal share of the CPU threads.
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
from bncompare.runner import Outcome
from bncompare.train import Listener

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
    if gpus:
        return {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]}
    # N TensorFlow processes each using every core would fight over them.
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {"TF_NUM_INTRAOP_THREADS": threads, "OMP_NUM_THREADS": threads}


class _Forward(Listener):
    """In a worker: sends training events to the parent's display."""

    def __init__(self, events, slot: int):
        self.events, self.slot, self.last_step = events, slot, 0.0

    def started(self, run, schedule) -> None:
        self.events.put(("started", self.slot, (run, schedule)))

    def step(self, step: int, loss: float, accuracy: float) -> None:
        now = time.monotonic()
        if now - self.last_step >= 1 / STEP_EVENTS_PER_SECOND:
            self.last_step = now
            self.events.put(("step", self.slot, (step, loss, accuracy)))

    def point(self, point: dict[str, Any]) -> None:
        self.events.put(("point", self.slot, point))


def _worker(slot: int, environment: dict[str, str], out: Path, device: str, force: bool,
            tasks, events) -> None:
    """One worker process: train runs from `tasks` until the queue says stop or an interrupt."""
    os.environ.update(environment)
    from bncompare import runner
    from bncompare.train import train_and_evaluate

    # A terminal's Ctrl-C signals the whole process group; the parent answers it by sending each
    # worker one SIGTERM, so a worker hears one signal, not two (a second means "stop at once").
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    listener = _Forward(events, slot)
    with interrupts.stop_at_safe_points((signal.SIGTERM,)):
        try:
            while (run := tasks.get()) is not None:
                interrupts.check()
                prepared = runner.prepare([run], device)  # cheap after the first: data is cached
                outcome = runner.execute_one(run, out, prepared, listener, force, train_and_evaluate)
                events.put(("finished", slot, outcome))
                if outcome.status == "interrupted":
                    break
        except KeyboardInterrupt:  # between runs: nothing to save
            pass
        except Exception as e:  # noqa: BLE001 - tell the parent instead of dying silently
            events.put(("crashed", slot, f"{type(e).__name__}: {e}"))
    events.put(("exit", slot, None))


def execute_parallel(runs: list[Run], out: Path, display, *, jobs: int, device: str,
                     force: bool = False) -> tuple[list[Outcome], bool]:
    """Train `runs` in `jobs` worker processes; return the outcomes (in run order) and whether the
    sweep was interrupted."""
    context = multiprocessing.get_context("spawn")  # fork would copy a half-initialised backend
    tasks, events = context.Queue(), context.Queue()
    for run in runs:
        tasks.put(run)
    for _ in range(jobs):
        tasks.put(None)
    gpus = visible_gpus() if device != "cpu" else []
    workers = [context.Process(target=_worker, name=f"bncompare-worker-{slot}",
                               args=(slot, worker_environment(slot, jobs, gpus), out, device, force,
                                     tasks, events))
               for slot in range(jobs)]
    for worker in workers:
        worker.start()
    display.sweep_started(runs)
    outcomes: dict[tuple[str, str], Outcome] = {}
    training: dict[int, Run] = {}  # slot -> the run it is on
    running = set(range(jobs))
    interrupted = False

    def handle(kind: str, slot: int, payload: Any) -> None:
        if kind == "started":
            training[slot] = payload[0]
            display.started(*payload, slot=slot)
        elif kind == "step":
            display.step(*payload, slot=slot)
        elif kind == "point":
            display.point(payload, slot=slot)
        elif kind == "finished":
            training.pop(slot, None)
            outcomes[key(payload.run)] = payload
            display.run_finished(payload, slot=slot)
        elif kind == "crashed":
            lost(slot, payload)
        elif kind == "exit":
            running.discard(slot)

    def lost(slot: int, why: str) -> None:
        running.discard(slot)
        run = training.pop(slot, None)
        if run is not None:  # its metrics.json still says running; readers report it interrupted
            outcomes[key(run)] = Outcome(run, "failed", note=f"worker {slot} {why}")
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
    for worker in workers:
        worker.join(timeout=5)
        if worker.is_alive():
            worker.kill()
    return [outcomes[key(r)] for r in runs if key(r) in outcomes], interrupted


def key(run: Run) -> tuple[str, str]:
    return run.experiment, run.run_id
