"""`bncompare run --executor ray [--address ADDR]`: each group of runs becomes a Ray task.

The driver (this process) runs the local lifecycle around a remote `train_group`: it claims a
group's runs (`lifecycle.claim_group`) when it submits the group; the task trains them through
`lifecycle.train_group` in scratch directories on whichever node Ray picks and returns each run's
metrics.json and other files; the driver writes them into the run directories and settles the
group (`lifecycle.settle_group`) exactly as a local group is settled. So workers need no shared
filesystem, and busy runs, failures, interrupts and exit codes mean what they mean locally
(`runner.sweep`). Progress and a stop request travel through one small actor (`Channel`).

Ray retries a task lost with its node or worker once (`max_retries`); an exception raised in
bncompare's own code is never retried: it is the run's failure, recorded with its traceback.
bncompare grows no scheduler of its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from bncompare import interrupts
from bncompare.backend import DeviceError, backend_name
from bncompare.config import Run
from bncompare.lifecycle import InterruptedGroup, claim_group, settle_group
from bncompare.parallel import SHUTDOWN_SECONDS, Forward, relay
from bncompare.results import METRICS_FILE, write_bytes_atomic, write_json
from bncompare.status import Outcome

# Variables a task needs to behave like a local run; the data directory is forwarded as a path,
# which must exist on the nodes (or leave it unset and let each node download into its cache).
FORWARDED = ("KERAS_BACKEND", "BNCOMPARE_DATA_DIR", "TF_CPP_MIN_LOG_LEVEL", "BNCOMPARE_THREADS",
             "TF_NUM_INTEROP_THREADS")
RETRIES = 1
IN_FLIGHT_PER_CPU = 2  # groups submitted per cluster CPU: enough to keep every worker busy
CONNECT_SECONDS = 5  # an address where nothing answers this fast is reported as unreachable
POLL_SECONDS = 0.2  # how often the driver shows progress and looks for finished tasks
ADDRESS = re.compile(r"(?:ray://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


def import_ray():
    try:
        import ray
    except ImportError:
        raise DeviceError('--executor ray needs Ray: pip install "bncompare[ray]"') from None
    return ray


def check_address(address: str) -> None:
    """Fail at once (DeviceError) on an address that is not a Ray address, or where nothing answers:
    Ray itself retries such an address for half a minute, or forever."""
    if address in ("auto", "local"):  # Ray's own words: the cluster of this machine, or a new one
        return
    match = ADDRESS.fullmatch(address.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise DeviceError(f"--address {address}: not a Ray address; give HOST:PORT of a head node "
                          f"(`ray start --head` prints it), ray://HOST:PORT of a Ray client server, "
                          f"or auto")
    host, port = match.group(1).strip("[]"), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise DeviceError(f"--address {address}: no Ray cluster answers there "
                          f"({e.strerror or type(e).__name__}); start one with `ray start --head` "
                          f"or check the address") from None


class Channel:
    """A Ray actor between the driver and its tasks: progress events up, a stop request down."""

    def __init__(self) -> None:
        self.events: list = []
        self.stopping = False

    def put(self, event) -> None:
        self.events.append(event)

    def drain(self) -> list:
        events, self.events = self.events, []
        return events

    def stop(self) -> None:
        self.stopping = True

    def stopped(self) -> bool:
        return self.stopping


def _watch_driver(channel) -> threading.Event:
    """In a task: ask training to stop at its next safe point when the driver asks, or is gone
    (its actor with it). Set the returned event to end the watch."""
    import _thread

    import ray

    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            try:
                stop = ray.get(channel.stopped.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - the channel died with the driver: nobody is waiting
                stop = True
            if stop:
                _thread.interrupt_main(signal.SIGTERM)  # the handler of stop_at_safe_points
                return

    threading.Thread(target=watch, name="driver-watch", daemon=True).start()
    return done


def _train_task(engine: str, runs: list[Run], device: str, channel, number: int) -> dict[str, Any]:
    """Runs on a Ray worker: train one group in scratch directories through the lifecycle; return,
    per run, its metrics.json and any other files it wrote (TensorBoard events) for the driver to
    write, and whether training was interrupted."""
    from bncompare import engines, runner
    from bncompare.engines.common import data_key
    from bncompare.lifecycle import record_failure, train_group
    from bncompare.skipping import finished_record

    listener = Forward(lambda event: channel.put.remote(event), number)
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="bncompare-") as scratch, \
            interrupts.stop_at_safe_points():
        run_dirs = [Path(scratch) / str(i) for i in range(len(runs))]
        watching = _watch_driver(channel)
        try:
            for run_dir in run_dirs:
                run_dir.mkdir()
            prepared = runner.prepare(runs, device)
            interrupts.check()
            train_group(engines.get(engine), runs, run_dirs, prepared.datasets[data_key(runs[0])],
                        environment=prepared.environment, listener=listener)
        except KeyboardInterrupt:  # train_group recorded the runs it had started as interrupted
            interrupted = True
        except Exception as e:  # noqa: BLE001 - outside training's own guard: these runs' failure
            for run, run_dir in zip(runs, run_dirs):
                if finished_record(run_dir) is None:
                    record_failure(run, run_dir, e)
        finally:
            watching.set()
        return {"interrupted": interrupted,
                "runs": [{"metrics": json.loads((run_dir / METRICS_FILE).read_text()),
                          "files": {p.name: p.read_bytes() for p in run_dir.iterdir()
                                    if p.is_file() and p.name != METRICS_FILE}}
                         if (run_dir / METRICS_FILE).is_file() else None
                         for run_dir in run_dirs]}


class LostOnCluster(RuntimeError):
    """A task that Ray could not bring back: its node or worker died (after the retry)."""


@contextmanager
def connected(ray, address: str | None) -> Iterator[bool]:
    """Ray, started or joined for this block unless the caller's own session is already up (that
    one is used and left running). Yields whether this block started it."""
    if ray.is_initialized():
        yield False
        return
    # ray.init installs its own SIGINT/SIGTERM handlers (SIGTERM: exit 1 after a C++ stack dump);
    # the command's handlers stop at a safe point, save every run and exit 130.
    handlers = {number: signal.getsignal(number) for number in interrupts.SIGNALS}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="error")
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:
        raise DeviceError(f"--address {address}: cannot connect to the Ray cluster "
                          f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
                          ) from None
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    try:
        yield True
    finally:
        ray.shutdown()


def execute_ray(runs: list[Run], out: Path, display, *, address: str | None, device: str,
                force: bool = False) -> tuple[list[Outcome], bool]:
    """Train `runs` as Ray tasks, one per group (engines.plan); return an Outcome per run (in run
    order) and whether the sweep was interrupted.

    Runs are claimed only when their group is submitted, and at most IN_FLIGHT_PER_CPU x the
    cluster's CPUs groups are in flight, so a 1,000-run sweep holds a few claims (open files) at a
    time, not 1,000.
    """
    from bncompare import runner

    ray = import_ray()
    with connected(ray, address):
        gpus = ray.cluster_resources().get("GPU", 0)
        if device == "gpu" and not gpus:
            raise DeviceError("--device gpu: the Ray cluster has no GPUs")
        env = {k: os.environ[k] for k in FORWARDED if k in os.environ}
        env.setdefault("TF_NUM_INTEROP_THREADS", "1")  # a task holds one CPU (see parallel.worker_environment)
        task = ray.remote(_train_task).options(
            num_cpus=1, num_gpus=1 if (gpus and device != "cpu") else 0, max_retries=RETRIES,
            runtime_env={"env_vars": env})
        # On the driver's own node: the channel lives as long as the sweep does, and a worker node
        # that dies mid-sweep (its tasks retried elsewhere) must not take the progress with it.
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        channel = ray.remote(num_cpus=0)(Channel).options(scheduling_strategy=here).remote()
        try:
            sweep = _Sweep(ray, task, channel, out, display, device)
            return runner.sweep(runs, out, display, sweep.train, force=force)
        finally:
            ray.kill(channel)


class _Sweep:
    """Submits groups as tasks and settles them as they finish, for `runner.sweep`."""

    def __init__(self, ray, task, channel, out: Path, display, device: str):
        self.ray, self.task, self.channel, self.out = ray, task, channel, out
        self.display, self.device = display, device
        self.in_flight = max(2, int(ray.cluster_resources().get("CPU", 1) * IN_FLIGHT_PER_CPU))
        self.numbers = iter(range(1, 1 << 62))  # a group's number: its members' display slots

    def show(self, event) -> None:
        kind, number, slot, payload = event
        relay(self.display, kind, (number, slot), payload)

    def train(self, runs: list[Run], force: bool) -> tuple[list[Outcome], bool]:
        """One pass over `runs`: an Outcome per run (busy ones included) and whether interrupted."""
        from bncompare import engines

        waiting = list(engines.plan(runs, backend_name()))
        pending: dict[Any, tuple[int, Any]] = {}  # task -> (group number, ClaimedGroup)
        done: list[Outcome] = []
        try:
            while waiting or pending:
                interrupts.check()
                while waiting and len(pending) < self.in_flight:
                    group, number = waiting.pop(0), next(self.numbers)
                    claimed = claim_group(group.runs, self.out, force)
                    if claimed.claimed and not claimed.interrupted:
                        pending[self.task.remote(group.engine, [c[1] for c in claimed.claimed],
                                                 self.device, self.channel, number)] = (number, claimed)
                    else:
                        done += settle_group(claimed, {}, None, Forward(self.show, number))
                self._progress()
                if pending:
                    ready, _ = self.ray.wait(list(pending), num_returns=len(pending),
                                             timeout=POLL_SECONDS)
                    for ref in ready:
                        done += self._settle(ref, *pending.pop(ref))
        except InterruptedGroup as stop:  # a task that stopped on a second Ctrl-C
            done += stop.outcomes
            return done + self._stop(pending), True
        except KeyboardInterrupt:
            return done + self._stop(pending), True
        return done, False

    def _progress(self) -> None:
        for event in self.ray.get(self.channel.drain.remote()):
            self.show(event)

    def _stop(self, pending: dict) -> list[Outcome]:
        """Ctrl-C/SIGTERM: every task stops at its next safe point and sends back its runs, saved
        as interrupted (those that completed or diverged keep that); a task that does not within
        SHUTDOWN_SECONDS, or a second Ctrl-C, is cancelled and its runs recorded as interrupted."""
        done: list[Outcome] = []
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        try:
            self.ray.get(self.channel.stop.remote())
            while pending and time.monotonic() < deadline:
                ready, _ = self.ray.wait(list(pending), num_returns=len(pending), timeout=POLL_SECONDS)
                self._progress()
                for ref in ready:
                    done += self._settled(ref, *pending.pop(ref))
        except KeyboardInterrupt:  # asked twice: stop now
            pass
        for ref, (number, claimed) in pending.items():
            self.ray.cancel(ref, force=True)
            done += self._settled(None, number, claimed)
        return done

    def _settled(self, ref, number: int, claimed) -> list[Outcome]:
        """`_settle` while stopping: the group's outcomes, interrupted or not."""
        try:
            return self._settle(ref, number, claimed) if ref is not None else settle_group(
                claimed, {}, KeyboardInterrupt(), Forward(self.show, number))
        except InterruptedGroup as stop:
            return stop.outcomes

    def _settle(self, ref, number: int, claimed) -> list[Outcome]:
        """Write what a finished task returned into its runs' directories, then settle the group as
        a local one is (InterruptedGroup when the task was interrupted)."""
        ray, failure, statuses, result = self.ray, None, {}, None
        try:
            result = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            failure = KeyboardInterrupt()
        except ray.exceptions.RayTaskError as e:  # raised outside even the task's guard
            failure = e
        except ray.exceptions.RayError as e:  # the node or worker died, and again on the retry
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            failure = LostOnCluster(f"lost on the Ray cluster after {RETRIES} retry: "
                                    f"{type(e).__name__}: {first}")
        if result is not None:
            failure = KeyboardInterrupt() if result["interrupted"] else None
            try:
                for (i, _, run_dir, _), stored in zip(claimed.claimed, result["runs"]):
                    if stored is not None:
                        for name, content in stored["files"].items():  # TensorBoard events
                            write_bytes_atomic(run_dir / Path(name).name, content)
                        write_json(run_dir / METRICS_FILE, stored["metrics"])
                        statuses[i] = stored["metrics"]["status"]
            except OSError as e:  # this machine's disk refused
                failure = e
        self._progress()  # the task's last points before its outcome
        return settle_group(claimed, statuses, failure, Forward(self.show, number))
