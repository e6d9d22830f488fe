"""`bncompare run --executor ray [--address ADDR]`: each run becomes a Ray task.

The driver (this process) decides what to train, claims each run on disk exactly as a local run
does, and writes every file itself: a task trains in a temporary directory on whichever node Ray
picks and returns the finished metrics, so workers need no shared filesystem. A task lost with its
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
from bncompare.results import METRICS_FILE, Claim, MetricsFile, write_json
from bncompare.runner import Outcome, claim_run, data_key

# Variables a task needs to behave like a local run; the data directory is forwarded as a path,
# which must exist on the nodes (or leave it unset and let each node download into its cache).
FORWARDED = ("KERAS_BACKEND", "BNCOMPARE_DATA_DIR", "TF_CPP_MIN_LOG_LEVEL")
RETRIES = 1


def import_ray():
    try:
        import ray
    except ImportError:
        raise DeviceError('--executor ray needs Ray: pip install "bncompare[ray]"') from None
    return ray


def _train_task(run: Run, device: str) -> dict[str, Any]:
    """Runs on a Ray worker: train one run in a scratch directory and return its metrics."""
    from bncompare import runner
    from bncompare.train import train_and_evaluate

    prepared = runner.prepare([run], device)
    with tempfile.TemporaryDirectory(prefix="bncompare-") as scratch:
        train_and_evaluate(run, Path(scratch), prepared.datasets[data_key(run)],
                           environment=prepared.environment)
        return json.loads((Path(scratch) / METRICS_FILE).read_text())


def execute_ray(runs: list[Run], out: Path, display, *, address: str | None, device: str,
                force: bool = False) -> tuple[list[Outcome], bool]:
    """Train `runs` as Ray tasks; return the outcomes in run order and whether interrupted."""
    ray = import_ray()
    env = {k: os.environ[k] for k in FORWARDED if k in os.environ}
    # One thread per task: Ray gives each task one CPU, and TF would otherwise use every core.
    env.update(TF_NUM_INTRAOP_THREADS="1", OMP_NUM_THREADS="1")
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="warning",
             ignore_reinit_error=True, runtime_env={"env_vars": env})
    gpus = ray.cluster_resources().get("GPU", 0)
    if device == "gpu" and not gpus:
        raise DeviceError("--device gpu: the Ray cluster has no GPUs")
    task = ray.remote(num_cpus=1, num_gpus=1 if (gpus and device != "cpu") else 0,
                      max_retries=RETRIES)(_train_task)

    display.sweep_started(runs)
    outcomes: dict[int, Outcome] = {}
    pending: dict[Any, tuple[int, Run, Path, Claim]] = {}
    for index, run in enumerate(runs):
        run_dir, claim, outcome = claim_run(run, out, force)
        if outcome is not None:
            outcomes[index] = outcome
            display.run_finished(outcome)
            continue
        pending[task.remote(run, device)] = (index, run, run_dir, claim)

    interrupted = False
    try:
        with interrupts.stop_at_safe_points():  # Ctrl-C and SIGTERM alike
            while pending:
                interrupts.check()
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    index, run, run_dir, claim = pending.pop(ref)
                    try:
                        metrics = ray.get(ref)
                        write_json(run_dir / METRICS_FILE, metrics)
                        outcome = Outcome(run, metrics["status"], metrics.get("final") or {},
                                          (metrics.get("error") or "").split("\n")[0])
                    except ray.exceptions.RayError as e:  # lost with its node, after the retry
                        _record(run, run_dir, "failed", f"lost on the Ray cluster after {RETRIES} "
                                                        f"retry: {type(e).__name__}: {e}")
                        outcome = Outcome(run, "failed", note=f"lost on the Ray cluster ({type(e).__name__})")
                    finally:
                        claim.release()
                    outcomes[index] = outcome
                    display.run_finished(outcome)
    except KeyboardInterrupt:
        interrupted = True
        for ref, (index, run, run_dir, claim) in pending.items():
            ray.cancel(ref, force=True)
            _record(run, run_dir, "interrupted", "interrupted by the user (SIGINT/SIGTERM)")
            claim.release()
            outcomes[index] = Outcome(run, "interrupted", note="interrupted")
    finally:
        ray.shutdown()
    return [outcomes[i] for i in sorted(outcomes)], interrupted


def _record(run: Run, run_dir: Path, status: str, error: str) -> None:
    """A metrics.json for a run that never came back, so readers and reruns know its fate."""
    metrics = MetricsFile(run_dir, experiment=run.experiment, run_id=run.run_id,
                          variant=run.variant, params=run.params, environment={})
    metrics.finish(status, error=error)
