"""Sweeps that survive real life (issue 4): real `bncompare run` processes killed, interrupted,
run side by side, diverging, and writing to a read-only or full disk; plus scripts/sweep_lr.sh.

Every subprocess pays the TensorFlow import (seconds on a busy CPU), so each test starts as few as it
can and checks many things on one results directory. Models are tiny, data synthetic.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from bncompare import runner
from bncompare.config import load_runs
from bncompare.display import PlainDisplay
from bncompare.results import METRICS_FILE, MetricsFile, read_run, write_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1",
       # scripts/sweep_lr.sh calls `bncompare`: the one installed beside this interpreter.
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

# 2 variants x 2 seeds = 4 runs of 20 steps, evaluated every 2 steps: 10 eval points each. Runs of
# one seed see the same batches and train together by default (`train.pack`), so the killed process
# leaves the first seed's runs completed and the second's half-trained, packed or not.
SWEEP = """\
name: sweep
data: {dataset: synthetic, train_limit: 256}
model: {hidden: [16]}
train: {optimizer: sgd, learning_rate: 0.05, steps: 20, batch_size: 32, seeds: [0, 1]}
variants: {no_bn: {}, bn: {model.batch_norm: true}}
record: {eval_every: 2}
"""
POINTS = 10
STATUS_LINE = re.compile(r"^\[\d+/\d+\] (\S+) (completed|diverged|failed|interrupted|skipped|busy)\b",
                         re.MULTILINE)


def start(*args: str, cwd: Path) -> subprocess.Popen:
    """`bncompare ARGS` as a real process in its own session (signals go to it alone)."""
    return subprocess.Popen([sys.executable, "-m", "bncompare", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"bncompare did not finish in {timeout} s:\n{output}")
    return proc.returncode, output


def _reject(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json(path: Path):
    """Parse as the strictest reader would: no NaN, no Infinity, no half-written file."""
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject)


def all_metrics(root: Path) -> dict[str, dict]:
    """Every metrics.json under `root`, parsed strictly, by run id (the folder's name)."""
    return {p.parent.name: strict_json(p) for p in sorted(root.rglob(METRICS_FILE))}


def wait_for_points(proc: subprocess.Popen, metrics: Path, points: int, timeout: float = 90) -> dict:
    """Poll a run's metrics.json until it holds `points` eval points, parsing every read strictly."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"bncompare exited early:\n{proc.communicate()[0]}"
        if metrics.exists():
            data = strict_json(metrics)  # any instant: never half a file, never NaN
            if len(data["history"]["step"]) >= points:
                return data
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"{metrics} never reached {points} eval points:\n{proc.communicate()[0]}")


def fingerprint(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    """(mtime_ns, bytes) of each file of a run: proof that a skipped run was not touched."""
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(run_dir.iterdir())}


def assert_complete(data: dict, points: int = POINTS, every: int = 2) -> None:
    assert data["status"] == "completed", data.get("error")
    assert data["history"]["step"] == list(range(every, every * points + 1, every))
    assert all(len(series) == points for series in data["history"].values())
    assert data["started_at"] and data["finished_at"]


# ---- processes killed, interrupted, run side by side ------------------------------------------


def test_sigkill_mid_sweep_then_parallel_rerun_trains_each_missing_run_once(tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    runs = load_runs([tmp_path / "sweep.yaml"])
    experiment = tmp_path / "out" / "sweep"
    assert len(runs) == 4

    # SIGKILL once some run has completed and another is part-way: no chance to clean up.
    proc = start("run", "sweep.yaml", "--out", "out", cwd=tmp_path)
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        seen = all_metrics(experiment) if experiment.exists() else {}  # strict, at any instant
        if any(d["status"] == "completed" for d in seen.values()) and any(
                d["status"] == "running" and d["history"]["step"] for d in seen.values()):
            break
        time.sleep(0.02)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL

    killed = all_metrics(experiment)
    assert set(killed) <= {r.run_id for r in runs}
    done = {run_id for run_id, d in killed.items() if d["status"] == "completed"}
    cut = set(killed) - done
    assert done and cut
    for run_id in done:
        assert_complete(killed[run_id])
    for run_id in cut:
        assert killed[run_id]["status"] == "running"  # what the dead process last wrote...
        assert read_run(experiment / run_id).status == "interrupted"  # ...and what readers report
        assert len(killed[run_id]["history"]["step"]) <= POINTS  # all points, maybe, but unfinished
    done_before = {run_id: fingerprint(experiment / run_id) for run_id in done}

    # Re-run as three processes launched together into the same directory.
    procs = [start("run", "sweep.yaml", "--out", "out", cwd=tmp_path) for _ in range(3)]
    results = [finish(p) for p in procs]
    outputs = "\n".join(output for _, output in results)
    assert [rc for rc, _ in results] == [0, 0, 0], outputs

    lines = STATUS_LINE.findall(outputs)
    assert {run_id: fingerprint(experiment / run_id) for run_id in done} == done_before  # untouched
    trained = sorted(run_id for run_id, status in lines if status == "completed")
    assert trained == sorted({r.run_id for r in runs} - done), outputs  # each missing run, once
    # Every process reports every run with a result: what it did not train itself (done before, or
    # trained meanwhile by another process, which it waited for) it reports as skipped.
    skipped = sorted(run_id for run_id, status in lines if status == "skipped")
    assert skipped == sorted(list(done) * 3 + trained * 2), outputs
    # No collisions, nothing duplicated or mislabelled: one directory per run, each its own params.
    assert sorted(p.name for p in experiment.iterdir()) == sorted(r.run_id for r in runs)
    final = all_metrics(experiment)
    for run in runs:
        assert_complete(final[run.run_id])
        assert final[run.run_id]["run_id"] == run.run_id
        assert final[run.run_id]["params"] == run.params
        assert read_run(experiment / run.run_id).status == "completed"


INTERRUPTIBLE = """\
name: long
data: {dataset: synthetic, train_limit: 256}
model: {hidden: [16]}
train: {optimizer: sgd, learning_rate: 0.01, steps: 2000, batch_size: 32, seeds: [0, 1]}
variants: {no_bn: {}}
record: {eval_every: 2}
"""


def test_sigint_and_sigterm_save_the_run_as_interrupted_and_exit_130(tmp_path: Path) -> None:
    (tmp_path / "long.yaml").write_text(INTERRUPTIBLE)
    first, second = load_runs([tmp_path / "long.yaml"])
    signals = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}  # both at once: one wait
    procs = {name: start("run", "long.yaml", "--out", name, cwd=tmp_path) for name in signals}
    for name, proc in procs.items():
        wait_for_points(proc, tmp_path / name / "long" / first.run_id / METRICS_FILE, 2)
        proc.send_signal(signals[name])
    for name, proc in procs.items():
        rc, output = finish(proc, timeout=60)
        assert rc == 130, f"{name}: {output}"
        data = strict_json(tmp_path / name / "long" / first.run_id / METRICS_FILE)
        assert data["status"] == "interrupted", name  # written by the process itself, not inferred
        assert "interrupted" in data["error"] and data["finished_at"]
        assert 2 <= len(data["history"]["step"]) < 1000  # the partial curve is kept
        assert not (tmp_path / name / "long" / second.run_id).exists()  # the sweep stopped
        assert re.search(rf"{first.run_id} interrupted", output), f"{name}: {output}"


# ---- divergence -------------------------------------------------------------------------------

DIVERGING = """\
name: div
data: {dataset: synthetic, train_limit: 256}
model: {hidden: [16]}
train: {optimizer: sgd, steps: 8, batch_size: 32, seeds: [0]}
variants: {no_bn: {}}
sweep: {train.learning_rate: [1000.0, 0.05]}
record: {eval_every: 1}
"""


def test_plain_sgd_with_a_huge_learning_rate_diverges_and_the_sweep_goes_on(tmp_path: Path) -> None:
    (tmp_path / "div.yaml").write_text(DIVERGING)
    blown, fine = load_runs([tmp_path / "div.yaml"])
    rc, output = finish(start("run", "div.yaml", "--out", "out", cwd=tmp_path))
    assert rc == 0, output  # diverging is a result, not an error
    assert "2 runs: 1 diverged, 1 completed. Results in" in output

    data = strict_json(tmp_path / "out" / "div" / blown.run_id / METRICS_FILE)
    assert data["status"] == "diverged" and data["error"] is None
    at = data["diverged_at"]
    assert set(at) == {"epoch", "step"} and 1 <= at["step"] <= 8
    assert at["epoch"] == pytest.approx(at["step"] / 8)  # 256 examples / batch 32 = 8 steps an epoch
    history = data["history"]
    assert history["step"] and history["step"][-1] < at["step"]  # the points before it are kept...
    assert all(v is not None for series in history.values() for v in series)  # ...all finite
    assert data["final"]["val_loss"] == history["val_loss"][-1]  # last finite metrics
    assert data["final"]["val_accuracy"] == history["val_accuracy"][-1]
    assert_complete(strict_json(tmp_path / "out" / "div" / fine.run_id / METRICS_FILE), 8, 1)


# ---- the disk says no -------------------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: str):
    """A small tmpfs mounted at `path` (needs root or CAP_SYS_ADMIN), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to simulate a read-only or full disk: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


ONE_RUN = """\
name: {name}
data: {{dataset: synthetic, train_limit: 256}}
model: {{hidden: [16]}}
train: {{optimizer: sgd, learning_rate: 0.05, steps: 200, batch_size: 32, seeds: [0]}}
variants: {{no_bn: {{}}}}
record: {{eval_every: 2}}
"""


def test_read_only_and_full_results_dirs_fail_the_run_naming_the_path(tmp_path: Path) -> None:
    # Root ignores file modes (chmod 0o555 stops nothing), so the read-only directory is a tmpfs
    # remounted read-only (EROFS for everyone), and the full disk is a tiny tmpfs filled up.
    out = tmp_path / "out"
    for name in ("ro", "full"):
        (tmp_path / f"{name}.yaml").write_text(ONE_RUN.format(name=name))
    [ro_run], [full_run] = load_runs([tmp_path / "ro.yaml"]), load_runs([tmp_path / "full.yaml"])
    with tmpfs(out / "ro", "1m") as ro, tmpfs(out / "full", "64k") as full:
        earlier = ro / "no_bn-earlier"  # results of an earlier invocation, which must survive
        earlier.mkdir()
        write_config(earlier / "config.yaml", {"name": "ro"}, "earlier")
        metrics = MetricsFile(earlier, experiment="ro", run_id=earlier.name, variant="no_bn",
                              params={}, environment={})
        metrics.add_point({"step": 1, "val_accuracy": 0.5})
        metrics.finish("completed")
        before = fingerprint(earlier)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        # Leave room for .claim, config.yaml, run.log, metrics.json and its temporary copy while
        # it is small (one 4 KiB page each); the run fails once its growing curve needs a second page.
        stat = os.statvfs(full)
        (full / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 5 * 4096))

        rc, output = finish(start("run", "ro.yaml", "full.yaml", "--out", "out", cwd=tmp_path))
        assert rc == 1, output
        ro_dir, full_dir = ro / ro_run.run_id, full / full_run.run_id
        refused = [(ro_dir, "Read-only file system"), (full_dir / METRICS_FILE, "No space left on device")]
        for path, reason in refused:  # each failure names the path that could not be written
            where = re.escape(str(path.relative_to(tmp_path)))
            assert re.search(rf" failed\s+\(cannot write {where}: {reason}\)", output), output
        assert fingerprint(earlier) == before  # earlier results intact
        assert not ro_dir.exists()
        # The full disk could not take a `failed` file either: what is there is the last complete
        # write, strict JSON with a partial curve, and it reads as interrupted (retrained next time).
        partial = strict_json(full_dir / METRICS_FILE)
        assert partial["status"] == "running" and 1 <= len(partial["history"]["step"]) < 100
        assert read_run(full_dir).status == "interrupted"
        assert not list(full_dir.glob("*.tmp"))  # the failed temporary file was cleaned up


# ---- one run breaks, the sweep goes on (in-process: a bug cannot be provoked from a config) -----


# These tests replace the engine with a fake one (engines.get), so they train one run at a time,
# and tell the runner it is on TensorFlow without importing it.
SOLO = """\
name: sweep
data: {dataset: synthetic, train_limit: 256}
train: {steps: 2, pack: "off"}
variants: {no_bn: {}, bn: {model.batch_norm: true}}
sweep: {train.learning_rate: [0.01, 0.1]}
"""
FAKE_KERAS = SimpleNamespace(backend=SimpleNamespace(backend=lambda: "tensorflow"))


def _execute(tmp_path: Path, force: bool = False):
    runs = load_runs([tmp_path / "sweep.yaml"])
    prepared = runner.Prepared({runner.data_key(runs[0]): SimpleNamespace(x_train=[0] * 64, x_val=[], y_val=[], classes=10)},
                               {"bncompare": "test"})
    display = PlainDisplay(Console(file=io.StringIO(), width=200), tmp_path / "out")
    outcomes, _ = runner.execute(runs, tmp_path / "out", prepared, display, force=force)
    display.summary(outcomes)
    return runs, outcomes, display.console.file.getvalue()


class FakeEngine:
    """Trains nothing: reports one eval point, then ends as `ends(run)` says (an engine's contract)."""

    name = "fit"

    def __init__(self, ends):
        self.ends = ends

    def train(self, members, data):
        (member,) = members
        member.recorder.start(2.3)
        end = self.ends(member.run)
        if end == "diverged":
            member.recorder.block(2, float("nan"), float("nan"))
            return 0.0
        member.recorder.point({"epoch": 1, "step": 2, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.0,
                               "val_accuracy": 0.5, "seconds": 0.1})
        if end == "failed":
            raise RuntimeError("boom in training")
        if end == "interrupted":  # as a Ctrl-C would: the sweep stops here
            raise KeyboardInterrupt
        return 0.0


def _fake(monkeypatch, ends) -> None:
    monkeypatch.setattr("bncompare.backend.import_keras", lambda: FAKE_KERAS)
    monkeypatch.setattr("bncompare.engines.get", lambda name: FakeEngine(ends))


def test_an_exception_in_one_run_fails_it_and_the_sweep_goes_on(tmp_path: Path, monkeypatch) -> None:
    from bncompare import lifecycle

    def ends(run):
        return "failed" if run.params["model.batch_norm"] and run.params["train.learning_rate"] == 0.01 else "completed"

    real = lifecycle.Schedule.for_run

    def broken_outside(params, examples):  # a bug outside training's own guard
        if params["model.batch_norm"] and params["train.learning_rate"] == 0.1:
            raise TypeError("boom outside training")
        return real(params, examples)

    (tmp_path / "sweep.yaml").write_text(SOLO)
    _fake(monkeypatch, ends)
    monkeypatch.setattr(lifecycle.Schedule, "for_run", broken_outside)
    runs, outcomes, output = _execute(tmp_path)
    assert [o.status for o in outcomes] == ["completed", "completed", "failed", "failed"], output
    assert runner.exit_code(outcomes) == runner.EXIT_FAILED
    assert outcomes[2].note == "RuntimeError: boom in training"
    assert outcomes[3].note == "TypeError: boom outside training"
    data = strict_json(tmp_path / "out" / "sweep" / runs[2].run_id / METRICS_FILE)
    assert data["status"] == "failed" and data["finished_at"]
    assert data["error"].startswith("RuntimeError: boom in training\nTraceback")
    outside = strict_json(tmp_path / "out" / "sweep" / runs[3].run_id / METRICS_FILE)
    assert outside["status"] == "failed" and outside["error"].startswith("TypeError: boom outside")
    assert "4 runs: 2 completed, 2 failed." in output


def test_rerun_skips_finished_runs_untouched_and_retrains_the_rest(tmp_path: Path, monkeypatch) -> None:
    ends = iter(["completed", "diverged", "failed", "interrupted"])
    trained = []

    def end(run):
        trained.append(run.run_id)
        return next(ends, "completed")

    (tmp_path / "sweep.yaml").write_text(SOLO)
    _fake(monkeypatch, end)
    runs, outcomes, _ = _execute(tmp_path)
    assert [o.status for o in outcomes] == ["completed", "diverged", "failed", "interrupted"]
    assert runner.exit_code(outcomes) == runner.EXIT_INTERRUPTED
    dirs = [tmp_path / "out" / "sweep" / r.run_id for r in runs]
    finished = {d: fingerprint(d) for d in dirs[:2]}

    trained.clear()
    _, outcomes, output = _execute(tmp_path)
    assert [o.status for o in outcomes] == ["skipped", "skipped", "completed", "completed"], output
    assert trained == [runs[2].run_id, runs[3].run_id]  # only what was missing
    assert all(fingerprint(d) == before for d, before in finished.items())
    assert runner.exit_code(outcomes) == runner.EXIT_OK

    trained.clear()
    _, outcomes, _ = _execute(tmp_path, force=True)
    assert [o.status for o in outcomes] == ["completed"] * 4
    assert trained == [r.run_id for r in runs]
    assert fingerprint(dirs[0]) != finished[dirs[0]]


def test_an_interrupted_sweep_ends_every_run_with_an_outcome(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sweep.yaml").write_text(SOLO)
    _fake(monkeypatch, lambda run: "interrupted")
    _, outcomes, output = _execute(tmp_path)
    assert [o.status for o in outcomes] == ["interrupted", "not_started", "not_started", "not_started"]
    assert runner.exit_code(outcomes) == runner.EXIT_INTERRUPTED


def test_a_run_busy_in_another_process_is_waited_for_then_skipped(tmp_path: Path, monkeypatch) -> None:
    """Another process holds one run's claim: this invocation trains the rest, waits, and reports
    the other process's result instead of claiming success it did not see."""
    import threading

    from bncompare.results import Claim, MetricsFile

    (tmp_path / "sweep.yaml").write_text(SOLO)
    _fake(monkeypatch, lambda run: "completed")
    runs = load_runs([tmp_path / "sweep.yaml"])
    busy_dir = tmp_path / "out" / "sweep" / runs[1].run_id
    busy_dir.mkdir(parents=True)
    claim = Claim.acquire(busy_dir)

    def other_process_finishes():
        metrics = MetricsFile(busy_dir, experiment="sweep", run_id=runs[1].run_id, variant="no_bn",
                              params=runs[1].params, environment={})
        metrics.finish("diverged", diverged_at={"epoch": 1, "step": 1})
        claim.release()

    timer = threading.Timer(1.5, other_process_finishes)
    timer.start()
    _, outcomes, output = _execute(tmp_path)
    timer.join()
    assert [o.status for o in outcomes] == ["completed", "skipped", "completed", "completed"], output
    assert outcomes[1].note == "already diverged"
    assert "waiting for 1 run that another process is training" in output
    assert runner.exit_code(outcomes) == runner.EXIT_OK


# ---- scripts/sweep_lr.sh ----------------------------------------------------------------------

SHELL_SWEEP = """\
name: shell
data: {dataset: synthetic, train_limit: 128}
model: {hidden: [8]}
train: {optimizer: sgd, steps: 4, batch_size: 32, seeds: [0]}
variants: {no_bn: {}}
"""


def test_sweep_lr_script_runs_parallel_jobs_into_one_results_dir(tmp_path: Path) -> None:
    (tmp_path / "shell.yaml").write_text(SHELL_SWEEP)
    script = ROOT / "scripts" / "sweep_lr.sh"
    done = subprocess.run(["bash", str(script), "--parallel", "shell.yaml", "out", "--quiet"],
                          cwd=tmp_path, env={**ENV, "LRS": "0.01 0.5"}, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("1 run: 1 completed.") == 2, done.stdout
    metrics = all_metrics(tmp_path / "out" / "shell")
    by_rate = {data["params"]["train.learning_rate"]: (run_id, data) for run_id, data in metrics.items()}
    assert sorted(by_rate) == [0.01, 0.5]
    for rate, (run_id, data) in by_rate.items():
        assert data["status"] == "completed" and f"lr{rate}" in run_id  # not mislabelled
        assert data["history"]["step"] == [4]
