"""`bncompare run --jobs auto|N`: worker processes share one sweep; the parent keeps one display.

Workers ask the parent for groups of runs (as `engines.plan` makes them: a vmap group stays whole;
a tf_pack group may be split so that every core has work: `engines.plan(..., workers=)`), so no two ask for the same
run; each run is still claimed on disk as in a single process, so parallel invocations from the
shell stay safe too. A worker sees one GPU when GPUs are visible (worker i gets GPU i mod #GPUs).
Training events come back through each worker's pipe (steps at most a few times a second) and drive
the same display a single process uses, one progress bar per member in training.

Each worker talks to the parent through its own pipe, not a multiprocessing.Queue: a queue's
semaphores are registered with a resource tracker shared by every process, which reports KeyErrors
when workers are killed, and its feeder thread blocks a worker's exit forever once the parent is
gone. A worker watches its parent and stops (its runs saved as interrupted) when the parent dies.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bncompare.backend import backend_name  # the workers' backend, known without importing it
from bncompare.config import Run
from bncompare import interrupts
from bncompare.lifecycle import Listener
from bncompare.status import LOST, UNREACHED, Outcome, decide

STEP_EVENTS_PER_SECOND = 5
SHUTDOWN_SECONDS = 60  # after Ctrl-C, how long workers get to save their runs as interrupted
# --jobs auto trains in this process when the sweep has fewer member-steps than this: a worker's
# start-up (a process, the backend's import, the data) costs about as much as a few thousand steps
# of a small model, so a small sweep (and the test suite's tiny configs) finishes sooner in one.
AUTO_MIN_STEPS = 5000


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def member_steps(runs: list[Run], datasets: dict) -> int:
    """Optimizer steps of every run of the sweep, summed (a pack's members count one each)."""
    from bncompare.engines.common import data_key
    from bncompare.schedule import Schedule

    return sum(Schedule.for_run(run.params, len(datasets[data_key(run)].x_train)).total_steps
               for run in runs)


def choose_jobs(runs: list[Run], datasets: dict, jobs: int | None, available: int | None = None
                ) -> tuple[int, str]:
    """How many worker processes train `runs` (1: this process) and why, for `--jobs N` or
    `--jobs auto` (None): the machine's cores, as many as there are groups to train."""
    from bncompare import engines

    if jobs is not None:
        return jobs, f"--jobs {jobs}"
    available = available or cores()
    groups = len(engines.plan(runs, backend_name(), workers=available))
    workers = min(available, groups)
    steps = member_steps(runs, datasets)
    if workers <= 1 or steps < AUTO_MIN_STEPS:
        why = ("one core" if available == 1 else "one group to train" if groups == 1
               else f"{steps:,} steps: faster than starting workers")
        return 1, f"--jobs auto: this process ({why})"
    return workers, f"--jobs auto: {workers} worker processes ({available} cores, {groups} groups)"


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
    # a sequential run), so N workers use about N cores. TensorFlow's inter-op pool (independent
    # ops at once, such as a pack's members) gets the cores left per worker: a pool as wide as the
    # machine in every worker only hands ops between threads that compete for the same cores
    # (docs/guide.md, "Speed"). The pool runs whole kernels, so the numbers do not depend on it.
    environment = {"TF_NUM_INTEROP_THREADS": os.environ.get(
        "TF_NUM_INTEROP_THREADS", str(max(1, cores() // max(1, jobs))))}
    if gpus:
        environment["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return environment


class Forward(Listener):
    """Where training happens elsewhere: sends its events, as (kind, worker, slot, payload), to the
    process that keeps the display. `slot` is the member's slot in the worker's group."""

    def __init__(self, send, worker: int):
        self.send, self.worker, self.last_step = send, worker, 0.0

    def _put(self, kind: str, slot: int, payload: Any) -> None:
        self.send((kind, self.worker, slot, payload))

    def started(self, run, schedule, slot: int = 0) -> None:
        self._put("started", slot, (run, schedule))

    def compiling(self, run, slot: int = 0) -> None:
        self._put("compiling", slot, run)

    def step(self, step: int, loss: float, accuracy: float, slot: int = 0) -> None:
        now = time.monotonic()
        if now - self.last_step >= 1 / STEP_EVENTS_PER_SECOND:
            self.last_step = now
            self._put("step", slot, (step, loss, accuracy))

    def point(self, point: dict[str, Any], slot: int = 0) -> None:
        self._put("point", slot, point)

    def run_finished(self, outcome: Outcome, slot: int = 0) -> None:
        self._put("finished", slot, outcome)

    def warning(self, run, text: str, slot: int = 0) -> None:
        self._put("warning", slot, (run, text))


def relay(display: Listener, kind: str, slot: Any, payload: Any) -> bool:
    """Show a training event from elsewhere on `display`; False when `kind` is not one."""
    if kind == "compiling":
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
        display.run_finished(payload, slot=slot)
    else:
        return False
    return True


def _watch_parent() -> None:
    """Ask this worker to stop (its runs saved as interrupted) when its parent dies, SIGKILL
    included: nobody would read its results, and it would train the rest of the sweep for no one."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])  # readable once the parent is gone
        if not interrupts.requested():  # a second signal would mean "stop at once"
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker(slot: int, environment: dict[str, str], out: Path, device: str, force: bool,
            connection) -> None:
    """One worker process: train the groups the parent hands out until it says stop or an interrupt."""
    os.environ.update(environment)
    from bncompare import engines, runner
    from bncompare.lifecycle import execute_group

    def send(message) -> None:
        try:
            connection.send(message)
        except OSError:  # the parent is gone: nobody to tell; the watcher stops this worker
            pass

    # SIGINT is ignored (inherited from the parent, see execute_parallel): a terminal's Ctrl-C
    # signals the whole process group, and the parent answers it by sending each worker one
    # SIGTERM, so a worker hears one signal, not two (a second means "stop at once").
    listener = Forward(send, slot)
    busy: list[Run] = []  # runs another process was training: waited for once the queue is empty
    stopped = False
    with interrupts.stop_at_safe_points((signal.SIGTERM,)):
        _watch_parent()
        try:
            while True:
                interrupts.check()
                send(("next", slot, 0, None))
                group = connection.recv()
                if group is None:
                    break
                _, runs = group  # its engine is planned again below, with the data
                send(("took", slot, 0, runs))
                interrupts.check()
                prepared = runner.prepare(runs, device)  # cheap after the first: data is cached
                # The parent planned without a device; here the group is split if it would not fit
                # this device's memory (engines.plan with the data, as a single process plans).
                for part in engines.plan(runs, backend_name(), prepared.datasets):
                    done = execute_group(engines.get(part.engine), part.runs, out,
                                         prepared.datasets[runner.data_key(part.runs[0])],
                                         prepared.environment, listener, force)
                    busy += [o.run for o in done if o.status == "busy"]
        except (KeyboardInterrupt, EOFError):  # InterruptedGroup too; EOFError: the parent is gone
            stopped = True
        except Exception as e:  # noqa: BLE001 - tell the parent instead of dying silently
            send(("crashed", slot, 0, f"{type(e).__name__}: {e}"))
            stopped = True
        if busy and not stopped:  # outcomes reach the parent through the listener, as above
            runner.execute(busy, out, runner.prepare(busy, device), listener,
                           signals=(signal.SIGTERM,))  # SIGINT stays ignored, as above
    send(("exit", slot, 0, None))


def execute_parallel(runs: list[Run], out: Path, display, *, jobs: int, device: str,
                     force: bool = False) -> tuple[list[Outcome], bool]:
    """Train `runs` in `jobs` worker processes, group by group (engines.plan for `jobs` workers);
    return an Outcome per run (in run order) and whether the sweep was interrupted.

    Every run ends with an outcome: a run a worker took but never reported is `interrupted` when the
    sweep was stopped, else `failed` (its worker died); a run no worker reached is `not_started`
    (interrupted) or `failed` (every worker died).
    """
    from bncompare import engines

    groups = [(g.engine, g.runs) for g in engines.plan(runs, backend_name(), workers=jobs)]
    context = multiprocessing.get_context("spawn")  # fork would copy a half-initialised backend
    gpus = visible_gpus() if device != "cpu" else []
    pipes = [context.Pipe() for _ in range(jobs)]
    workers = [context.Process(target=_worker, name=f"bncompare-worker-{slot}",
                               args=(slot, worker_environment(slot, jobs, gpus), out, device, force,
                                     pipes[slot][1]))
               for slot in range(jobs)]
    # Workers start with SIGINT ignored, for life: Ctrl-C while they import would otherwise print
    # their tracebacks, and the parent stops them with one SIGTERM instead. An ignored disposition
    # survives exec; a blocked mask does not (multiprocessing's spawn resets it in the child).
    # In the parent SIGINT is blocked first, so one that arrives meanwhile stays pending (Linux
    # never discards a blocked signal as ignored) and reaches the restored handler at the unblock.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for worker in workers:
            worker.start()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    for _, child_end in pipes:
        child_end.close()  # the workers hold it: their death reads as EOF here
    connections = {pipes[slot][0]: slot for slot in range(jobs)}
    display.sweep_started(runs)
    outcomes: dict[tuple[str, str], Outcome] = {}
    taken: dict[int, list[Run]] = {}  # worker -> the runs of the group it is on
    running = set(range(jobs))
    interrupted = False

    def handle(kind: str, worker: int, slot: int, payload: Any) -> None:
        if kind == "next":
            reply = groups.pop(0) if groups and not interrupted else None
            try:
                pipes[worker][0].send(reply)
            except OSError:  # it died meanwhile: found below
                pass
        elif kind == "took":
            taken[worker] = payload
        elif kind == "crashed":
            lost(worker, payload)
        elif kind == "exit":
            running.discard(worker)
            taken.pop(worker, None)
        else:
            if kind == "finished":
                outcomes[key(payload.run)] = payload
            relay(display, kind, (worker, slot), payload)

    def lost(worker: int, why: str) -> None:
        running.discard(worker)
        for member, run in enumerate(taken.pop(worker, [])):
            if key(run) not in outcomes:  # its metrics.json says running; readers see interrupted
                outcomes[key(run)] = decide(run, why=LOST, stopped=interrupted,
                                            detail=f"worker {worker} {why}")
                display.run_finished(outcomes[key(run)], slot=(worker, member))

    def receive(timeout: float) -> None:
        for connection in multiprocessing.connection.wait(
                [c for c, w in connections.items() if w in running], timeout=timeout):
            worker = connections[connection]
            try:
                handle(*connection.recv())
            except (EOFError, OSError):  # the worker is gone, with or without saying so
                workers[worker].join(timeout=5)
                lost(worker, f"died (exit code {workers[worker].exitcode})")

    deadline = math.inf
    with interrupts.stop_at_safe_points():
        try:
            while running and time.monotonic() < deadline:
                if interrupts.requested() and not interrupted:  # Ctrl-C or `kill`: tell every worker
                    interrupted, deadline = True, time.monotonic() + SHUTDOWN_SECONDS
                    for worker in workers:
                        if worker.is_alive():
                            os.kill(worker.pid, signal.SIGTERM)
                receive(0.5)
        except KeyboardInterrupt:  # asked twice: stop now; runs in flight read as interrupted
            interrupted = True
        interrupted = interrupted or interrupts.requested()
    for worker in workers:
        worker.join(timeout=5)
        if worker.is_alive():
            worker.kill()
            worker.join()
    # Events sent after the loop ended (a last outcome) still count; each round reads one event
    # of a worker or finds it gone.
    while running and multiprocessing.connection.wait(
            [c for c, w in connections.items() if w in running], timeout=0):
        receive(0)
    for worker in list(taken):
        lost(worker, "stopped before reporting")
    for connection in connections:
        connection.close()
    result = []
    for run in runs:
        if key(run) not in outcomes:
            outcomes[key(run)] = decide(run, why=UNREACHED, stopped=interrupted)
            display.run_finished(outcomes[key(run)])
        result.append(outcomes[key(run)])
    return result, interrupted


def key(run: Run) -> tuple[str, str]:
    return run.experiment, run.run_id
