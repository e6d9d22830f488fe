"""A real two-node Ray cluster on this machine: a head node and a worker node started with
`ray start` (separate temp dirs, ports and node addresses; the worker node's working directory is
not the results directory), `bncompare run --executor ray --address`, and the worker node killed
mid-sweep. Every process of both nodes is killed at the end, whether the test passes or not.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bncompare.cli import app

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None or not shutil.which("ray"),
                                 reason='needs pip install "bncompare[ray]"')]

# Two groups (one per seed, each a pack of no_bn and bn): one trains on each node.
CONFIG = """\
name: cluster
data: {dataset: synthetic, train_limit: 512}
model: {hidden: [32, 16]}
train: {steps: 1500, batch_size: 64, seeds: [0, 1]}
record: {eval_every: 100}
"""
# A cluster of this test only: no token shared through ~/.ray with other clusters on the machine.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
       "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports() -> list[str]:
    """Every port a node listens on, free ones: two nodes on one machine must not share any."""
    return [arg for name in ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                             "--runtime-env-agent-port")
            for arg in (name, str(free_port()))]


def alive_nodes(address: str) -> int:
    done = subprocess.run([sys.executable, "-c", "import ray; ray.init(address=%r, logging_level='error'); "
                           "print(sum(n['Alive'] for n in ray.nodes()))" % address],
                          env=ENV, capture_output=True, text=True, timeout=60)
    return int(done.stdout.split()[-1]) if done.returncode == 0 and done.stdout.split() else 0


@pytest.fixture
def cluster():
    """(address, worker node process, the worker node's working directory); both nodes killed after."""
    base = Path(tempfile.mkdtemp(prefix="bnc-ray-", dir="/tmp"))  # short: Ray's socket paths
    nodes: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        (base / name).mkdir()
        node = subprocess.Popen(["ray", "start", "--block", "--disable-usage-stats", "--num-cpus", "1",
                                 "--temp-dir", str(base / name / "ray"), *node_ports(), *args],
                                cwd=base / name, env=ENV, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nodes.append(node)
        return node

    try:
        port = free_port()
        address = f"127.0.0.1:{port}"
        start("head", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
              "--include-dashboard", "false", "--dashboard-port", str(free_port()),
              "--ray-client-server-port", str(free_port()))
        worker = start("worker", "--address", address, "--node-ip-address", "127.0.0.2")
        deadline = time.monotonic() + 60
        while alive_nodes(address) < 2:
            assert time.monotonic() < deadline, "the two-node cluster did not come up"
            time.sleep(1)
        yield address, worker, base / "worker"
    finally:
        for node in nodes:  # `ray start --block` and every process it started share its group
            try:
                os.killpg(node.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            node.wait()
        for pid in _processes_under(base):  # a worker process that left the group
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def _processes_under(base: Path) -> list[int]:
    """Processes whose command line names this test's temp dir (its Ray nodes' own processes)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(base).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def run(config: Path, out: Path, address: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bncompare", "run", str(config), "--out", str(out),
                             "--executor", "ray", "--address", address], cwd=config.parent, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def histories(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/*/metrics.json")}


def test_a_worker_node_killed_mid_sweep_loses_no_run_and_changes_no_number(cluster, tmp_path):
    address, worker, worker_dir = cluster
    config = tmp_path / "cluster.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    driver = run(config, out, address)
    try:
        lines, training = [], set()
        for line in driver.stdout:  # kill the worker node once every run is training
            lines.append(line)
            if " epoch " in line:
                training.add(line.split()[1])
            if len(training) == 4:
                break
        assert len(training) == 4, "".join(lines)
        os.killpg(worker.pid, signal.SIGKILL)
        output = "".join(lines) + driver.communicate(timeout=180)[0]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    summaries = [line for line in output.splitlines() if line.startswith("4 runs: ")]
    assert summaries, f"exit {driver.returncode}, no end table:\n{output}"
    summary = summaries[0]
    if driver.returncode == 0:  # Ray retried the lost group on the head node
        assert summary.startswith("4 runs: 4 completed."), output
    else:  # or reported it failed, never as a success; a rerun on the head node trains it
        assert driver.returncode == 1 and "lost on the Ray cluster" in output, output
        again = run(config, out, address)
        rerun = again.communicate(timeout=180)[0]
        assert again.returncode == 0, rerun
    found = histories(out)
    assert {m["status"] for m in found.values()} == {"completed"}, output

    local = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "local"), "--jobs", "1"])
    assert local.exit_code == 0, local.output
    reference = histories(tmp_path / "local")
    assert sorted(found) == sorted(reference)  # the same run ids
    for run_id, metrics in reference.items():
        for key in ("step", "loss", "accuracy", "val_loss", "val_accuracy"):
            assert found[run_id]["history"][key] == metrics["history"][key], (run_id, key)
    assert not list(worker_dir.glob("**/metrics.json"))  # the results were written by the driver only
