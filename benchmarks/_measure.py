"""Shared helpers: run a command in a child process and measure it; the machine's load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Runs `argv` as a grandchild and prints its peak RSS and CPU time: RUSAGE_CHILDREN of a process
# that has exactly one child is that child's own figure.
_WRAP = """
import json, resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": code, "peak_rss_mb": usage.ru_maxrss / 1024,
                  "cpu_s": usage.ru_utime + usage.ru_stime}))
"""


def measure(argv: list[str], env: dict[str, str] | None = None) -> dict:
    """Wall seconds, CPU seconds, peak RSS (MB) and exit code of one command."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _WRAP, *argv], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, cwd=ROOT)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result['rc']}")
    return {"wall_s": wall, **result}


def load() -> str:
    """1-minute load average and cores, to judge how noisy a timing is."""
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def data_dir() -> str:
    return os.environ.get("BNCOMPARE_DATA_DIR") or str(ROOT.parent / "shared" / "datasets")


def matmul_peak() -> float:
    """Float32 matmul GFLOP/s of this machine (NumPy, 2048 x 2048, best of 5)."""
    import numpy as np

    n = 2048
    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def train_alone(run, out: Path, data, environment: dict | None = None) -> str:
    """Train one run through the fit engine under the results root `out`, as `bncompare run` does
    (claim, train, settle: lifecycle.execute_group); return its status."""
    from bncompare import engines
    from bncompare.lifecycle import Listener, execute_group

    (outcome,) = execute_group(engines.get("fit"), [run], Path(out), data, environment or {},
                               Listener(), force=False)
    return outcome.status
