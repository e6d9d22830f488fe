"""Resume: a run interrupted or killed at any moment, rerun, ends exactly as an uninterrupted run of
the same config (every history series bit for bit, wall-clock seconds aside); a checkpoint that is
unreadable or not this run's is never used (bncompare/checkpoint.py).

Interruptions happen in-process at chosen eval points, in the two places that matter: after the
point's checkpoint is written (as Ctrl-C is handled), and between metrics.json and the checkpoint
(metrics.json one point ahead of the weights); one test SIGKILLs a real `bncompare run`. The engines
of other backends run in a subprocess each (a process has one Keras backend), where the tests
marked for that backend run and the others are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bncompare import checkpoint, runner
from bncompare.checkpoint import CHECKPOINT_FILE
from bncompare.cli import app
from bncompare.config import load_runs
from bncompare.lifecycle import Listener

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
# Eval points at 2, 4, ..., 12; an epoch of 8 steps ends with a partial batch (250 = 7 x 32 + 26).
# `boom` has bn_drop's architecture, so it shares bn_drop's group on every engine, and diverges
# at its first step: every resumed group has lost a member, the one before the others.
CONFIG = """\
name: res
data: {dataset: synthetic, train_limit: 250}
model: {hidden: [32, 16]}
train: {steps: 12, batch_size: 32, seeds: [0]}
record: {eval_every: 2}
variants:
  boom: {model.batch_norm: true, model.dropout: 0.2, train.learning_rate: 1000.0}
  bn_drop: {model.batch_norm: true, model.dropout: 0.2}
"""
FLOAT16 = "variants.f16={model.batch_norm: true, train.precision: mixed_float16}"
# (step, how): "checkpointed" stops after the point's checkpoint, "ahead" between metrics.json and
# the checkpoint: the run resumes from the point before, and metrics.json's extra point is dropped.
KILLS = [(4, "checkpointed"), (8, "ahead"), (10, "checkpointed")]


@pytest.fixture(autouse=True)
def every_point(monkeypatch):
    """A checkpoint at every eval point: these tiny runs train faster than a checkpoint is written,
    which would space their checkpoints out (lifecycle.CHECKPOINT_SPACING, tested on its own)."""
    monkeypatch.setattr("bncompare.lifecycle.CHECKPOINT_SPACING", 0.0)


def on(backend: str):
    return pytest.mark.skipif(BACKEND != backend, reason=f"runs in test_other_backends' {backend} process")


class Stop(Listener):
    """Interrupts the sweep when run `victim` records eval point `step`."""

    def __init__(self, victim: str, step: int | None = None, how: str = ""):
        self.victim, self.at, self.how, self.training = victim, step, how, {}

    def started(self, run, schedule, slot=0):
        self.training[slot] = run.variant

    def point(self, point, slot=0):
        if self.training.get(slot) == self.victim and point["step"] == self.at:
            if self.how == "ahead":  # raised inside Recorder.point, before its checkpoint
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)  # handled at the engine's next safe point


def train(config: Path, out: Path, overrides: list[str], listener: Listener) -> dict[str, str]:
    """`bncompare run` in this process, with `listener`; the status of each variant."""
    runs = load_runs([config], overrides)
    outcomes, _ = runner.execute(runs, out, runner.prepare(runs, "cpu"), listener)
    return {o.run.variant: o.status for o in outcomes}


def metrics(out: Path) -> dict[str, dict]:
    return {p.parent.name.split("-")[0]: json.loads(p.read_text())
            for p in sorted(out.glob("res/*/metrics.json"))}


def assert_same_run(expected: dict, got: dict) -> None:
    """Equal to the last bit: status, divergence, final scores and every series but seconds."""
    assert got["status"] == expected["status"] and got["diverged_at"] == expected["diverged_at"]
    assert set(got["history"]) == set(expected["history"])
    for key, series in expected["history"].items():
        if key != "seconds":
            assert got["history"][key] == series, key
    drop = ("train_seconds", "compile_seconds")
    assert ({k: v for k, v in got["final"].items() if k not in drop}
            == {k: v for k, v in expected["final"].items() if k not in drop})


def interrupted_thrice(config: Path, tmp_path: Path, overrides: list[str], victim: str) -> dict:
    """Train with KILLS applied to `victim`, then to the end; compare with an uninterrupted run.
    Returns the resumed runs' metrics.json, by variant."""
    expected = train(config, tmp_path / "whole", overrides, Listener())
    out = tmp_path / "resumed"
    for step, how in KILLS:
        statuses = train(config, out, overrides, Stop(victim, step, how))
        assert statuses[victim] == "interrupted" and statuses["boom"] in ("diverged", "skipped", "not_started")
        on_disk = metrics(out)[victim]
        run_dir = next(out.glob(f"res/{victim}-*"))
        saved, why = checkpoint.load(run_dir, _identity(run_dir))
        assert why is None and saved.step == (step if how == "checkpointed" else step - 2)
        assert on_disk["history"]["step"][-1] == step  # "ahead": metrics.json has one point more
    assert train(config, out, overrides, Listener())[victim] == expected[victim]
    for variant, record in metrics(tmp_path / "whole").items():
        resumed = metrics(out)[variant]
        assert_same_run(record, resumed)
        if variant == victim:  # its pack-mates were interrupted with it, at the same points
            assert resumed["resumes"] == [4, 6, 10]
        assert resumed.get("warnings") == record.get("warnings")  # said once, as uninterrupted
    assert not list(out.glob(f"res/*/{CHECKPOINT_FILE}"))  # removed when a run ends
    return metrics(out)


def _identity(run_dir: Path) -> dict:
    """The identity a checkpoint in `run_dir` was written with (read from its own header)."""
    with np.load(run_dir / CHECKPOINT_FILE) as archive:
        header = json.loads(archive["header"].tobytes())
    return {key: header[key] for key in ("format", "bncompare", "backend", "engine", "run_id", "params")}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "res.yaml"
    path.write_text(CONFIG)
    return path


@on("tensorflow")
def test_three_interruptions_end_as_if_never_interrupted(config, tmp_path):
    """tf_pack: BN, dropout, Adam, mixed float16, a diverged member; after the "ahead" kill the
    members resume at different steps (bn_drop, before the victim, had written that checkpoint)."""
    resumed = interrupted_thrice(config, tmp_path, [FLOAT16], "f16")
    assert resumed["bn_drop"]["resumes"] == [4, 8, 10]  # trained apart from f16 from step 6 to 8


@on("jax")
def test_vmap_resumes_on_jax(config, tmp_path):
    """The resumed group lost its first member: bn_drop moves to lane 0 of the padded group."""
    interrupted_thrice(config, tmp_path, [], "bn_drop")


@on("torch")
def test_fit_resumes_on_torch(config, tmp_path):
    """Unseeded dropout draws from torch's global generator, saved with the checkpoint."""
    interrupted_thrice(config, tmp_path, [], "bn_drop")


@pytest.mark.slow
@on("tensorflow")
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends(backend):
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "resumes_on"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "1 passed" in done.stdout, done.stdout[-2000:]


@on("tensorflow")
def test_sigkill_mid_run_then_rerun_continues_from_the_last_checkpoint(config, tmp_path):
    """A real SIGKILL of `bncompare run` (fit: BN, dropout, Adam, mixed float16), whenever it lands
    after 3 points; the rerun continues from the last checkpoint."""
    args = [str(config), "--quiet", "--set", "train.pack=off", "--set", "train.steps=60",
            "--set", "record.eval_every=4", "--set", "variants={f16: {model.batch_norm: true, "
            "model.dropout: 0.2, train.precision: mixed_float16}}"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "bncompare", "run", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(metrics(out).get("f16", {}).get("history", {}).get("step", [])) >= 3:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed = metrics(out)["f16"]
    assert killed["status"] == "running" and killed["history"]["step"][-1] < 60  # it died mid-run
    for where in (out, tmp_path / "whole"):
        result = CliRunner().invoke(app, ["run", *args, "--out", str(where)])
        assert result.exit_code == 0, (where, result.output)
    resumed, whole = metrics(out)["f16"], metrics(tmp_path / "whole")["f16"]
    assert_same_run(whole, resumed)
    assert len(resumed["resumes"]) == 1 and resumed["resumes"][0] % 4 == 0
    assert not list(out.glob(f"res/*/{CHECKPOINT_FILE}"))


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupted(path: Path) -> None:
    content = bytearray(path.read_bytes())
    middle = len(content) // 2
    content[middle:middle + 64] = bytes(64)  # inside an array: the zip checksum no longer matches
    path.write_bytes(bytes(content))


def _other_backend(path: Path) -> None:
    run_dir = path.parent
    saved, _ = checkpoint.load(run_dir, _identity(run_dir))
    checkpoint.save(run_dir, {**_identity(run_dir), "backend": "jax"}, saved)


def _symlink(path: Path) -> None:
    target = path.with_name("elsewhere.npz")
    path.rename(target)
    path.symlink_to(target.name)


@on("tensorflow")
def test_a_bad_checkpoint_is_never_used_and_restart_discards_a_good_one(config, tmp_path, monkeypatch):
    """Truncated, corrupted, another backend's, a symlink: never used, and the run trains from step 0
    saying why. `run --restart` discards a valid one; `record.keep_checkpoint` keeps the last.
    Checkpoints that take far longer to write than the run trains are spaced out."""
    from bncompare.lifecycle import resume_point

    overrides = ["variants={bn_drop: {model.batch_norm: true, model.dropout: 0.2}}"]
    interrupted = tmp_path / "interrupted"
    train(config, interrupted, overrides, Stop("bn_drop", 4, "checkpointed"))
    run_dir = next(interrupted.glob("res/*"))
    identity = _identity(run_dir)
    assert checkpoint.load(run_dir, identity)[0].step == 4
    assert "another run" in checkpoint.load(run_dir, {**identity, "params": "0"})[1]
    assert "this is 0.0" in checkpoint.load(run_dir, {**identity, "bncompare": "0.0"})[1]
    reasons = {_truncated: "unreadable", _corrupted: "unreadable", _other_backend: "jax backend",
               _symlink: "symbolic link"}
    for spoil, reason in reasons.items():
        out = tmp_path / spoil.__name__
        shutil.copytree(interrupted, out, symlinks=True)
        spoil(next(out.glob(f"res/*/{CHECKPOINT_FILE}")))
        found, why = resume_point(next(out.glob("res/*")), identity)
        assert found is None and reason in why, (spoil.__name__, why)
        assert not os.path.lexists(out / run_dir.relative_to(interrupted) / CHECKPOINT_FILE)

    out = tmp_path / "trained"  # from step 0, saying why; with slow writes, spaced checkpoints
    shutil.copytree(interrupted, out)
    _truncated(next(out.glob(f"res/*/{CHECKPOINT_FILE}")))
    monkeypatch.setattr("bncompare.lifecycle.CHECKPOINT_SPACING", 10.0)
    saved_at, save = [], checkpoint.save

    def slow_save(run_dir, identity, saved):
        saved_at.append(saved.step)
        time.sleep(0.5)  # the next one is due after 5 s of training; this run trains ~1 s
        return save(run_dir, identity, saved)

    monkeypatch.setattr("bncompare.checkpoint.save", slow_save)
    assert train(config, out, overrides, Listener()) == {"bn_drop": "completed"}
    assert saved_at == [2]
    from_zero = metrics(out)["bn_drop"]
    assert from_zero["resumes"] == [] and from_zero["warnings"][0].startswith("trains from step 0: ")
    monkeypatch.undo()

    args = ["run", str(config), "--out", str(interrupted), "--quiet", "--restart",
            "--set", "record.keep_checkpoint=true"] + [a for o in overrides for a in ("--set", o)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    restarted = metrics(interrupted)["bn_drop"]
    assert_same_run(from_zero, restarted)  # both trained from step 0 without a stop
    assert restarted["resumes"] == [] and restarted["warnings"] == from_zero["warnings"][1:]
    kept, _ = checkpoint.load(run_dir, identity)
    assert kept.step == 12 and kept.metrics["history"]["step"][-1] == 12
