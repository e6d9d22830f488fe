"""Beyond one process: --jobs workers, Ray tasks, other Keras backends. Same configs, same run
ids, same metrics for the same seeds on CPU.

Tests that start processes (workers, Ray) are in the slow tier; the multi-node Ray cluster is in
tests/test_ray_cluster.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import threading
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from bncompare import engines, parallel
from bncompare.cli import app
from bncompare.config import load_runs
from bncompare.engines import Group
from bncompare.engines.common import data_key
from bncompare.results import Claim, read_run

ROOT = Path(__file__).resolve().parents[1]
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason='needs pip install "bncompare[ray]"')

CONFIG = """\
name: scale
data: {dataset: synthetic, train_limit: 512}
model: {hidden: [32, 16]}
train: {epochs: 2, batch_size: 64, seeds: [0, 1]}
"""


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> tuple[Path, dict]:
    """The reference: the config trained in this process, one run after another."""
    root = tmp_path_factory.mktemp("scale")
    config = root / "scale.yaml"
    config.write_text(CONFIG)
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(root / "sequential"),
                                      "--jobs", "1"])
    assert result.exit_code == 0, result.output
    return config, histories(root / "sequential")


def histories(out: Path) -> dict[str, dict]:
    found = {}
    for path in out.glob("*/*/metrics.json"):
        metrics = json.loads(path.read_text())
        assert metrics["status"] == "completed", metrics.get("error")
        found[metrics["run_id"]] = metrics["history"]
    return found


def same_results(reference: dict, other: dict) -> None:
    """Same run ids and metrics, to the last bit: every process uses the same number of threads
    (backend.threads), so workers sum floats in the same order as a sequential run."""
    assert sorted(other) == sorted(reference)  # same run ids
    for run_id, history in reference.items():
        for key in ("step", "loss", "accuracy", "val_loss", "val_accuracy"):
            assert other[run_id][key] == history[key], (run_id, key)


def test_jobs_auto_trains_small_sweeps_here_and_gives_every_core_a_group():
    runs = load_runs([ROOT / "configs" / "mnist.yaml"])  # one pack of two runs, 9,375 steps each
    mnist = {data_key(runs[0]): SimpleNamespace(x_train=range(60_000))}
    assert parallel.choose_jobs(runs, mnist, None, available=2) == (
        2, "--jobs auto: 2 worker processes (2 cores, 2 groups)")  # the pack is split
    assert parallel.choose_jobs(runs, mnist, None, available=8)[0] == 2  # no more groups than that
    assert parallel.choose_jobs(runs, mnist, None, available=1) == (1, "--jobs auto: this process (one core)")
    assert parallel.choose_jobs(runs, mnist, 3, available=1) == (3, "--jobs 3")
    small = {data_key(runs[0]): SimpleNamespace(x_train=range(512))}  # 80 steps a run
    assert parallel.choose_jobs(runs, small, None, available=2) == (
        1, "--jobs auto: this process (160 steps: faster than starting workers)")
    # Only groups whose members learn what they learn alone are split.
    assert [len(g.runs) for g in engines.spread([Group("vmap", runs)], 2)] == [2]
    assert [len(g.runs) for g in engines.spread([Group("tf_pack", runs * 2)], 3)] == [1, 1, 2]


def test_a_split_pack_gives_each_worker_as_much_to_train():
    """A sweep lists every no_bn run before every bn run; halving it in the middle would give one
    worker all the BN runs (the slower ones). Each half gets half of each, in the runs' order."""
    rates = "[0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3]"
    runs = load_runs([ROOT / "configs" / "mnist.yaml"], [f"sweep.train.learning_rate={rates}"])
    halves = engines.plan(runs, "tensorflow", workers=2)
    assert [g.engine for g in halves] == ["tf_pack", "tf_pack"]
    for half in halves:
        assert sorted(r.variant for r in half.runs) == ["bn"] * 4 + ["no_bn"] * 4
        assert half.runs == sorted(half.runs, key=runs.index)
    assert halves[0].runs[0] is runs[0]
    assert sorted(halves[0].runs + halves[1].runs, key=runs.index) == runs
    quarters = engines.plan(runs, "tensorflow", workers=4)
    assert [sorted(r.variant for r in q.runs) for q in quarters] == [["bn"] * 2 + ["no_bn"] * 2] * 4


def test_workers_share_the_cores_between_their_inter_op_pools(monkeypatch):
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)
    monkeypatch.setattr(parallel, "cores", lambda: 8)
    assert parallel.worker_environment(0, 2, []) == {"TF_NUM_INTEROP_THREADS": "4"}
    assert parallel.worker_environment(1, 8, ["0", "1"]) == {"TF_NUM_INTEROP_THREADS": "1",
                                                             "CUDA_VISIBLE_DEVICES": "1"}
    assert parallel.worker_environment(0, 16, [])["TF_NUM_INTEROP_THREADS"] == "1"
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "3")  # the user's own choice is kept
    assert parallel.worker_environment(0, 2, [])["TF_NUM_INTEROP_THREADS"] == "3"


@pytest.mark.parametrize("jobs", ["0", "lots"])
def test_jobs_is_auto_or_a_positive_number(tiny_config, tmp_path, jobs):
    result = CliRunner().invoke(app, ["run", str(tiny_config), "--out", str(tmp_path / "r"), "--jobs", jobs])
    assert result.exit_code == 2
    assert result.output == f"error: --jobs {jobs}: give auto or a number of worker processes (1 or more)\n"
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_jobs_auto_gives_the_same_runs_and_metrics_on_every_core(sequential, tmp_path, monkeypatch):
    """Two worker processes (as on a 2-core machine, for a sweep big enough) give the numbers of
    `--jobs 1` to the last bit, and every progress line names its own run."""
    config, reference = sequential
    monkeypatch.setattr(parallel, "AUTO_MIN_STEPS", 0)  # the tiny sweep, as if it were a big one
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("--jobs auto: 2 worker processes (2 cores, 2 groups)\n")
    assert "4 runs: 4 completed." in result.output
    same_results(reference, histories(tmp_path))
    places = {run.run_id: place for place, run in enumerate(load_runs([config]), start=1)}
    lines = [line.split()[:3] for line in result.output.splitlines() if " epoch " in line]
    assert len(lines) == 8  # 4 runs x 2 epochs
    for number, run_id, _ in lines:  # a pack's members each report under their own id
        assert number == f"[{places[run_id]}/4]", result.output


@pytest.fixture(scope="module")
def ray_session():
    """A Ray session of this test process (as a caller's own would be): bncompare must use it and
    leave it running."""
    ray = pytest.importorskip("ray")
    # A cluster of these tests only: no token shared through ~/.ray with other clusters on the
    # machine, so that a `bncompare` subprocess can join it too.
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield ray
    ray.shutdown()
    if previous is None:
        os.environ.pop("RAY_AUTH_MODE")
    else:
        os.environ["RAY_AUTH_MODE"] = previous


@pytest.mark.slow
@needs_ray
def test_ray_gives_the_same_runs_and_metrics_in_the_callers_session(sequential, ray_session, tmp_path):
    config, reference = sequential
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path), "--executor", "ray"])
    assert result.exit_code == 0, result.output
    same_results(reference, histories(tmp_path))
    for run_dir in (tmp_path / "scale").iterdir():  # the driver wrote every file
        assert (run_dir / "config.yaml").is_file()
    assert ray_session.is_initialized()  # the caller's session is left as it was
    assert " epoch 1 step 8/16 " in result.output  # progress from the tasks while they train


@pytest.mark.slow
@needs_ray
def test_ray_waits_for_a_run_another_process_holds_and_trains_it_when_that_one_dies(
        sequential, ray_session, tmp_path):
    config, reference = sequential
    held = tmp_path / "scale" / load_runs([config])[1].run_id
    held.mkdir(parents=True)
    claim = Claim.acquire(held)  # as another `bncompare run` would, which then dies without a result
    threading.Timer(3.0, claim.release).start()
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path), "--executor", "ray"])
    assert result.exit_code == 0, result.output
    assert "waiting for 1 run that another process is training" in result.output
    assert "4 runs: 4 completed." in result.output  # trained here once the other process was gone
    same_results(reference, histories(tmp_path))


@pytest.mark.slow
@needs_ray
def test_ray_task_failing_in_bncompare_is_that_failure_with_its_traceback(
        sequential, ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "nonexistent")  # forwarded to the tasks, which fail importing
    result = CliRunner().invoke(app, ["run", str(sequential[0]), "--out", str(tmp_path),
                                      "--executor", "ray"])
    assert result.exit_code == 1, result.output
    assert "4 runs: 4 failed." in result.output and "lost on the Ray cluster" not in result.output
    for path in tmp_path.glob("scale/*/metrics.json"):
        metrics = json.loads(path.read_text())
        assert metrics["status"] == "failed"
        assert metrics["error"].startswith("ValueError: ") and "Traceback" in metrics["error"]
        assert "nonexistent" in metrics["error"]


@pytest.mark.slow
@needs_ray
def test_sigterm_to_a_ray_driver_saves_every_run_and_exits_130(ray_session, tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(CONFIG.replace("epochs: 2", "steps: 100000") + "record: {eval_every: 20}\n")
    address = ray_session.get_runtime_context().gcs_address  # this session's cluster: started once
    process = subprocess.Popen([sys.executable, "-m", "bncompare", "run", str(config), "--out",
                                str(tmp_path / "r"), "--executor", "ray", "--address", address],
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"},
                               start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        lines, training = [], set()
        for line in process.stdout:  # progress streams from the tasks while they train
            lines.append(line)
            if " epoch " in line:
                training.add(line.split()[1])
            if len(training) == 4:
                break
        process.send_signal(signal.SIGTERM)
        output = "".join(lines) + process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output
    assert "4 runs: 4 interrupted." in output and "┃ run" in output  # the end table
    assert "Traceback" not in output and "SIGTERM received" not in output, output
    for path in tmp_path.glob("r/*/*/metrics.json"):
        metrics = json.loads(path.read_text())
        assert metrics["status"] == "interrupted" and metrics["history"]["step"]  # curve kept


@pytest.mark.parametrize("address, says", [
    ("127.0.0.1:1", "no Ray cluster answers there"),
    ("ray://127.0.0.1:1", "no Ray cluster answers there"),
    ("head-node", "not a Ray address"),
])
@needs_ray
def test_a_bad_ray_address_is_a_prompt_usage_error(tiny_config, tmp_path, address, says):
    result = CliRunner().invoke(app, ["run", str(tiny_config), "--out", str(tmp_path / "r"),
                                      "--executor", "ray", "--address", address])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: --address {address}: {says}")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_ray_missing_is_a_clear_usage_error(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = CliRunner().invoke(app, ["run", str(tiny_config), "--out", str(tmp_path / "r"),
                                      "--executor", "ray"])
    assert result.exit_code == 2 and 'pip install "bncompare[ray]"' in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_saves_their_runs(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(CONFIG.replace("epochs: 2", "steps: 100000") + "record: {eval_every: 20}\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, "-m", "bncompare", "run", str(config), "--out",
                                str(tmp_path / "r"), "--jobs", "2"], env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240  # two TensorFlow start-ups on a busy 2-core machine
    # Two packs (one per seed) of two runs: each worker trains one pack.
    while len(list(tmp_path.glob("r/*/*/metrics.json"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(list(tmp_path.glob("r/*/*/metrics.json"))) == 4, "the workers never started"
    time.sleep(2)  # both workers are training
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    statuses = [read_run(p.parent).status for p in tmp_path.glob("r/*/*/metrics.json")]
    assert statuses == ["interrupted"] * 4, output
    assert "Traceback" not in output


def _start(tmp_path: Path, config: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-m", "bncompare", "run", str(config), "--out",
                             str(tmp_path / "r"), "--jobs", "2"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _workers(pid: int) -> list[int]:
    """Worker processes of a bncompare parent (multiprocessing also starts a resource tracker)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    workers = []
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(int(child))
        except OSError:  # it ended meanwhile
            pass
    return workers


@pytest.mark.slow
@pytest.mark.parametrize("when", ["start-up", "workers starting"])
def test_ctrl_c_before_any_run_trained_is_130_not_success(tmp_path, when):
    """Ctrl-C during start-up, or while the workers still import TensorFlow: no run was trained,
    so this is no success, and no process prints a traceback."""
    config = tmp_path / "long.yaml"
    config.write_text(CONFIG)
    process = _start(tmp_path, config)
    if when == "start-up":
        time.sleep(0.4)
    else:
        deadline = time.monotonic() + 60
        while len(_workers(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "Traceback" not in output and "0 runs" not in output
    if when == "workers starting":  # each run is interrupted (a worker had taken it) or not started
        summary = next(line for line in output.splitlines() if line.startswith("4 runs: "))
        assert "completed" not in summary and "not started" in summary, output


@pytest.mark.slow
def test_workers_killed_before_their_first_run_fail_the_invocation(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(CONFIG)
    process = _start(tmp_path, config)
    deadline = time.monotonic() + 60
    while len(_workers(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in _workers(process.pid):  # as the OOM killer would, while they import TensorFlow
        os.kill(pid, signal.SIGKILL)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output
    assert "4 runs" in output and "completed" not in output
    assert "Traceback" not in output  # nor the resource tracker's KeyErrors


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_workers_stop_and_save_their_runs_when_the_parent_is_killed(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text(CONFIG.replace("epochs: 2", "steps: 100000") + "record: {eval_every: 20}\n")
    process = _start(tmp_path, config)
    workers = []
    try:
        deadline = time.monotonic() + 240
        while len(list(tmp_path.glob("r/*/*/metrics.json"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        workers = _workers(process.pid)
        assert len(workers) == 2, "the workers never started"
        process.kill()  # SIGKILL: the parent cannot tell anyone
        process.wait()
        deadline = time.monotonic() + 60
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, workers)), "workers went on training for a dead parent"
    finally:
        for pid in [process.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    statuses = [json.loads(p.read_text())["status"] for p in tmp_path.glob("r/*/*/metrics.json")]
    assert statuses == ["interrupted"] * 4  # written by the workers as they stopped


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs jax (pip install jax)")
def test_jax_backend_trains_the_same_configs(sequential, tmp_path):
    config, reference = sequential
    done = subprocess.run([sys.executable, "-m", "bncompare", "run", str(config), "--out", str(tmp_path),
                           "--backend", "jax"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = [read_run(p.parent).metrics for p in tmp_path.glob("*/*/metrics.json")]
    # The same runs, named for the backend (`bn-s0-jax-1a2b3c` beside `bn-s0-08d484`).
    assert sorted(m["run_id"].rsplit("-", 2)[0] for m in runs) == sorted(r.rsplit("-", 1)[0] for r in reference)
    assert {m["run_id"].rsplit("-", 2)[1] for m in runs} == {"jax"}
    assert {m["environment"]["backend"] for m in runs} == {"jax"}
