"""Every command through Typer's CliRunner: exit codes, what the user sees, what is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bncompare import __version__
from bncompare.cli import app
from tests.conftest import mnist_available

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_version_and_help():
    assert invoke("--version").output.strip() == f"bncompare {__version__}"
    result = invoke("--help")
    assert result.exit_code == 0 and "run" in result.output and "validate" in result.output


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys, time; t = time.perf_counter(); from bncompare.cli import app; "
            "heavy = [m for m in ('tensorflow', 'keras', 'numpy', 'matplotlib') if m in sys.modules]; "
            "print(heavy, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("[] "), out
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bncompare", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - started < 3.0  # well under a second on an idle machine; CI is busy


def test_validate_prints_the_runs(tiny_config):
    result = invoke("validate", tiny_config, "--set", "sweep.train.learning_rate=[0.01, 0.1]")
    assert result.exit_code == 0, result.output
    assert f"{tiny_config}: valid" in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("tiny/")]
    assert len(lines) == 4 and "train.learning_rate=0.01" in lines[0]


def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  depth: 2\n  widht: 64\n")
    out = tmp_path / "results"
    for command in (["validate", bad], ["run", bad, "--out", out]):
        result = invoke(*command)
        assert result.exit_code == 2
        assert result.output.strip() == (f"error: {bad}:3: model.widht: unknown key "
                                         f"(did you mean model.width?)")
    assert not out.exists()


def test_missing_config_file_is_a_usage_error(tmp_path):
    result = invoke("run", tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_dry_run_trains_and_writes_nothing(tiny_config, tmp_path):
    result = invoke("run", tiny_config, "--out", tmp_path / "results", "--dry-run")
    assert result.exit_code == 0
    assert result.output.count("tiny/") == 2
    assert not (tmp_path / "results").exists()


def read_metrics(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/*/metrics.json")}


def test_run_then_rerun_skips_then_force_retrains(tiny_config, tmp_path):
    out = tmp_path / "results"
    result = invoke("run", tiny_config, "--out", out)
    assert result.exit_code == 0, result.output
    assert "2 runs: 2 completed." in result.output
    metrics = read_metrics(out)
    assert len(metrics) == 2 and {m["status"] for m in metrics.values()} == {"completed"}
    for run_id, m in metrics.items():
        assert (out / "tiny" / run_id / "config.yaml").is_file()
        assert m["run_id"] == run_id and m["experiment"] == "tiny" and len(m["history"]["step"]) == 2
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/metrics.json")}

    again = invoke("run", tiny_config, "--out", out)
    assert again.exit_code == 0 and "2 skipped (done before)" in again.output
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("*/*/metrics.json")}

    forced = invoke("run", tiny_config, "--out", out, "--force", "--quiet")
    assert forced.exit_code == 0 and forced.output.strip().startswith("2 runs: 2 completed.")
    assert all(stamps[p] != p.stat().st_mtime_ns for p in stamps)


def test_missing_data_says_which_file_to_put_where(tmp_path, monkeypatch, tiny_config):
    import keras

    def offline():
        raise OSError("network is unreachable")

    monkeypatch.setenv("BNCOMPARE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    out = tmp_path / "results"
    result = invoke("run", tiny_config, "--out", out, "--set", "data.dataset=mnist")
    assert result.exit_code == 2
    assert "mnist.npz" in result.output and "BNCOMPARE_DATA_DIR" in result.output
    assert "network is unreachable" in result.output
    assert not out.exists()


def test_gpu_request_without_gpu_fails_clearly(tiny_config, tmp_path):
    from bncompare.backend import gpu_names

    if gpu_names():
        pytest.skip("a GPU is visible here")
    result = invoke("run", tiny_config, "--out", tmp_path / "r", "--device", "gpu")
    assert result.exit_code == 2 and "no GPU is visible" in result.output
    assert not (tmp_path / "r").exists()


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "bncompare", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"bncompare {__version__}"


@pytest.mark.slow
@pytest.mark.skipif(not mnist_available(), reason="needs mnist.npz in $BNCOMPARE_DATA_DIR")
def test_end_to_end_on_real_mnist(tmp_path):
    """The shipped origin config on a slice of real MNIST, as a user runs it: a real process."""
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bncompare", "run", ROOT / "configs" / "mnist.yaml", "--out", out,
         "--set", "data.train_limit=6000", "--set", "train.epochs=2"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""  # no TensorFlow log noise
    metrics = read_metrics(out)
    assert {m["variant"] for m in metrics.values()} == {"no_bn", "bn"}
    for m in metrics.values():
        assert m["status"] == "completed" and m["history"]["step"] == [188, 376]
        assert m["final"]["val_accuracy"] > 0.9, m["final"]  # 6,000 MNIST digits, 2 epochs
        assert m["environment"]["backend"] == "tensorflow" and m["environment"]["tensorflow"]
