"""Beyond one process: --jobs workers, Ray tasks, other Keras backends. Same configs, same run
ids, same metrics for the same seeds on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bncompare.cli import app
from bncompare.results import read_run

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
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(root / "sequential")])
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


def test_jobs_gives_the_same_runs_and_metrics(sequential, tmp_path):
    config, reference = sequential
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path), "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert "4 runs: 4 completed." in result.output
    same_results(reference, histories(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='needs pip install "bncompare[ray]"')
def test_ray_gives_the_same_runs_and_metrics(sequential, tmp_path):
    config, reference = sequential
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path), "--executor", "ray"])
    assert result.exit_code == 0, result.output
    same_results(reference, histories(tmp_path))
    for run_dir in (tmp_path / "scale").iterdir():  # the driver wrote every file
        assert (run_dir / "config.yaml").is_file()


def test_ray_missing_is_a_clear_usage_error(sequential, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = CliRunner().invoke(app, ["run", str(sequential[0]), "--out", str(tmp_path / "r"),
                                      "--executor", "ray"])
    assert result.exit_code == 2 and 'pip install "bncompare[ray]"' in result.output
    assert not (tmp_path / "r").exists()


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


def test_ctrl_c_right_after_start_is_130_not_success(tmp_path):
    """Ctrl-C while the workers are still starting: no run was trained, so this is no success."""
    config = tmp_path / "long.yaml"
    config.write_text(CONFIG)
    process = _start(tmp_path, config)
    time.sleep(0.4)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "Traceback" not in output
    assert "0 runs" not in output and "not started" in output


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


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs jax (pip install jax)")
def test_jax_backend_trains_the_same_configs(sequential, tmp_path):
    config, reference = sequential
    done = subprocess.run([sys.executable, "-m", "bncompare", "run", str(config), "--out", str(tmp_path),
                           "--backend", "jax"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = [read_run(p.parent).metrics for p in tmp_path.glob("*/*/metrics.json")]
    assert sorted(m["run_id"] for m in runs) == sorted(reference)
    assert {m["environment"]["backend"] for m in runs} == {"jax"}
