"""`bncompare run --executor ray [--address ADDR]`: each run becomes a Ray task.

The driver (this process) decides what to train, claims each run on disk exactly as a local run
does, and writes every file itself: a task trains one group (engines.plan) through the same
lifecycle (`lifecycle.train_group`) in a temporary directory on whichever node Ray picks, and
returns each run's metrics and files, so workers need no shared filesystem. A task lost with its
node is retried once by Ray, then recorded as failed. bncompare grows no scheduler of its own.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bncompare import interrupts
from bncompare.backend import DeviceError
from bncompare.config import Run
from bncompare.engines.common import data_key
from bncompare.lifecycle import Outcome, cannot_write, claim_run
from bncompare.results import METRICS_FILE, Claim, MetricsFile, write_bytes_atomic, write_json

# Variables a task needs to behave like a local run; the data directory is forwarded as a path,
# which must exist on the nodes (or leave it unset and let each node download into its cache).
FORWARDED = ("KERAS_BACKEND", "BNCOMPARE_DATA_DIR", "TF_CPP_MIN_LOG_LEVEL")
RETRIES = 1
IN_FLIGHT_PER_CPU = 2  # groups submitted per cluster CPU: enough to keep every worker busy


def import_ray():
    try:
        import ray
    except ImportError:
        raise DeviceError('--executor ray needs Ray: pip install "bncompare[ray]"') from None
    return ray


def _train_task(engine: str, runs: list[Run], device: str) -> list[dict[str, Any]]:
    """Runs on a Ray worker: train one group in scratch directories; return, per run, its metrics
    and any other files it wrote (TensorBoard events), for the driver to write."""
    from bncompare import engines, runner
    from bncompare.lifecycle import train_group

    prepared = runner.prepare(runs, device)
    with tempfile.TemporaryDirectory(prefix="bncompare-") as scratch:
        run_dirs = [Path(scratch) / str(i) for i in range(len(runs))]
        for run_dir in run_dirs:
            run_dir.mkdir()
        train_group(engines.get(engine), runs, run_dirs, prepared.datasets[data_key(runs[0])],
                    environment=prepared.environment)
        return [{"metrics": json.loads((run_dir / METRICS_FILE).read_text()),
                 "files": {p.name: p.read_bytes() for p in run_dir.iterdir()
                           if p.is_file() and p.name != METRICS_FILE}}
                for run_dir in run_dirs]


def execute_ray(runs: list[Run], out: Path, display, *, address: str | None, device: str,
                force: bool = False) -> tuple[list[Outcome], bool]:
    """Train `runs` as Ray tasks, one per group (engines.plan); return an Outcome per run (in run
    order) and whether the sweep was interrupted.

    Runs are claimed only when their group is submitted, and at most IN_FLIGHT_PER_CPU x the
    cluster's CPUs groups are in flight, so a 1,000-run sweep holds a few claims (open files) at a
    time, not 1,000.
    """
    from bncompare import engines
    from bncompare.parallel import backend_name

    ray = import_ray()
    env = {k: os.environ[k] for k in FORWARDED if k in os.environ}
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="warning",
             ignore_reinit_error=True, runtime_env={"env_vars": env})
    gpus = ray.cluster_resources().get("GPU", 0)
    if device == "gpu" and not gpus:
        ray.shutdown()
        raise DeviceError("--device gpu: the Ray cluster has no GPUs")
    task = ray.remote(num_cpus=1, num_gpus=1 if (gpus and device != "cpu") else 0,
                      max_retries=RETRIES)(_train_task)
    in_flight = max(2, int(ray.cluster_resources().get("CPU", 1) * IN_FLIGHT_PER_CPU))

    display.sweep_started(runs)
    outcomes: dict[tuple[str, str], Outcome] = {}
    pending: dict[Any, list[tuple[Run, Path, Claim]]] = {}
    waiting = list(engines.plan(runs, backend_name()))

    def settle(outcome: Outcome) -> None:
        outcomes[key(outcome.run)] = outcome
        display.run_finished(outcome)

    interrupted = False
    try:
        with interrupts.stop_at_safe_points():  # Ctrl-C and SIGTERM alike
            while waiting or pending:
                interrupts.check()
                while waiting and len(pending) < in_flight:
                    group = waiting.pop(0)
                    claimed = []
                    for run in group.runs:
                        run_dir, claim, outcome = claim_run(run, out, force)
                        if outcome is not None:
                            settle(outcome)
                        else:
                            claimed.append((run, run_dir, claim))
                    if claimed:
                        pending[task.remote(group.engine, [c[0] for c in claimed], device)] = claimed
                if not pending:
                    continue
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    claimed = pending.pop(ref)
                    try:
                        results = ray.get(ref)
                    except ray.exceptions.RayError as e:  # lost with its node, after the retry
                        results = [None] * len(claimed)
                        why = f"lost on the Ray cluster after {RETRIES} retry: {type(e).__name__}: {e}"
                    for (run, run_dir, claim), result in zip(claimed, results):
                        try:
                            settle(_store(run, run_dir, result, why if result is None else ""))
                        finally:
                            claim.release()
    except KeyboardInterrupt:
        interrupted = True
        for ref, claimed in pending.items():
            ray.cancel(ref, force=True)
            for run, run_dir, claim in claimed:
                try:
                    _record(run, run_dir, "interrupted", "interrupted by the user (SIGINT/SIGTERM)")
                    settle(Outcome(run, "interrupted", note="interrupted"))
                except OSError as e:
                    settle(cannot_write(run, run_dir, e))
                finally:
                    claim.release()
    finally:
        ray.shutdown()
    result = []
    for run in runs:
        if key(run) not in outcomes:
            settle(Outcome(run, "not_started", note="the sweep stopped before this run"))
        result.append(outcomes[key(run)])
    return result, interrupted


def _store(run: Run, run_dir: Path, result: dict[str, Any] | None, lost: str) -> Outcome:
    """Write what a task returned into the run's directory; its Outcome (never raises OSError)."""
    try:
        if result is None:
            _record(run, run_dir, "failed", lost)
            return Outcome(run, "failed", note=lost.split(":")[0])
        for name, content in result["files"].items():  # TensorBoard events, kept with the run
            write_bytes_atomic(run_dir / Path(name).name, content)
        write_json(run_dir / METRICS_FILE, result["metrics"])
    except OSError as e:
        return cannot_write(run, run_dir, e)
    metrics = result["metrics"]
    error = metrics.get("error")
    return Outcome(run, metrics["status"], metrics.get("final") or {},
                   error.split("\n")[0] if isinstance(error, str) and metrics["status"] == "failed" else "")


def _record(run: Run, run_dir: Path, status: str, error: str) -> None:
    """A metrics.json for a run that never came back, so readers and reruns know its fate."""
    metrics = MetricsFile(run_dir, experiment=run.experiment, run_id=run.run_id,
                          variant=run.variant, params=run.params, environment={})
    metrics.finish(status, error=error)


def key(run: Run) -> tuple[str, str]:
    return run.experiment, run.run_id
