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


# ---- hardening (issues 16 and 17): conventions, no-ops, paths, signals, pipes ----------------------


def test_help_conventions():
    short, long = invoke("-h"), invoke("--help")
    assert short.exit_code == 0 and short.output == long.output
    assert "--install-completion" in long.output  # Typer's shell completion
    for command in ("run", "validate", "plot", "summary"):
        result = invoke(command, "-h")
        assert result.exit_code == 0 and "<bool>" not in result.output, command
    assert "--dry-run" in invoke("run", "-h").output


def test_validate_takes_several_configs_and_reports_each():
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    result = invoke("validate", *configs)
    assert result.exit_code == 0, result.output
    assert all(f"{path}: valid" in result.output for path in configs)


def test_validate_reports_every_invalid_config_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {depth: 0}\n")
    result = invoke("validate", ROOT / "configs" / "mnist.yaml", bad)
    assert result.exit_code == 2
    assert "configs/mnist.yaml: valid" in result.output
    assert f"error: {bad}:1: model.depth: expected an integer from 1 to 256, got 0" in result.output
    assert "1 of 2 configs are invalid" in result.output


@pytest.mark.parametrize("override, expected", [
    ("model.depth=4", "--set model.depth=4: has no effect: model.hidden = [256, 128]"),
    ("model.batch_norm=true", "are the same config, trained twice under two names"),
])
def test_no_op_overrides_fail_before_anything_is_written(tmp_path, override, expected):
    out = tmp_path / "results"
    result = invoke("run", ROOT / "configs" / "mnist.yaml", "--set", override, "--out", out)
    assert result.exit_code == 2 and expected in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_out_naming_a_file_is_a_usage_error(tmp_path, tiny_config):
    afile = tmp_path / "afile"
    afile.write_text("")
    for out in (afile, afile / "inner"):
        result = invoke("run", tiny_config, "--out", out)
        assert result.exit_code == 2
        assert result.output.strip() == f"error: --out {out}: {afile} is a file; give a directory for the results"
    assert afile.read_text() == ""


def test_out_is_checked_before_tensorflow_is_imported(tmp_path, tiny_config):
    afile = tmp_path / "afile"
    afile.write_text("")
    code = ("import sys; from bncompare.cli import app; "
            f"app(['run', {str(tiny_config)!r}, '--out', {str(afile)!r}], standalone_mode=False); ")
    done = subprocess.run([sys.executable, "-c", code + "print('tensorflow' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert "is a file" in done.stderr and "True" not in done.stdout


def test_control_characters_in_echoed_keys_are_escaped(tmp_path, tiny_config):
    result = invoke("validate", tiny_config, "--set", "model.\x1b[31mdepth\x07=3")
    assert result.exit_code == 2
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "model.\\x1b[31mdepth\\x07=3: unknown key" in result.output


HUGE_SWEEP = "data: {dataset: synthetic}\ntrain: {seeds: [%s]}\nsweep: {train.learning_rate: [%s]}\n" % (
    ", ".join(map(str, range(100))), ", ".join(f"0.{i + 1:03d}" for i in range(100)))


def _wait_for_handlers(pid: int, timeout: float = 30.0) -> None:
    """Wait until process `pid` catches SIGTERM: bncompare's first lines have run. Before that,
    Python is still starting and its defaults apply, which no program can change."""
    import signal

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return  # exited already
        caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.001)
    raise AssertionError("bncompare did not install its signal handlers")


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_signal_during_start_up_exits_130_quietly(tmp_path, signal_name, command):
    """From the moment bncompare's first line installs its handlers (before that only Python's own
    start-up runs), a signal at any time gives 130 and no traceback."""
    import signal

    config = tmp_path / "huge.yaml"
    config.write_text(HUGE_SWEEP)  # 20,000 runs: expanding and listing them takes a while
    args = [config] if command == "validate" else [config, "--dry-run", "--out", tmp_path / "r"]
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux's /proc to see when the handlers are in")
    for delay in (0.0, 0.02, 0.1, 0.3):
        child = subprocess.Popen([sys.executable, "-m", "bncompare", command, *map(str, args)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for_handlers(child.pid)
        time.sleep(delay)
        child.send_signal(getattr(signal, signal_name))
        _, err = child.communicate(timeout=60)
        assert child.returncode == 130 and "Traceback" not in err, (delay, child.returncode, err[-500:])
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_closed_stdout_drops_output_and_training_finishes(tiny_config, tmp_path):
    """`bncompare run ... | head -1`: the reader goes away; the runs still complete, exit 0."""
    out = tmp_path / "results"
    child = subprocess.Popen([sys.executable, "-m", "bncompare", "run", str(tiny_config), "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.stdout.readline()
    child.stdout.close()  # as `head -1` does
    err = child.stderr.read()
    assert child.wait(timeout=300) == 0, err
    assert "standard output was closed" in err and "Traceback" not in err
    assert {m["status"] for m in read_metrics(out).values()} == {"completed"}
