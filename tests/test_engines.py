"""The engine contract: every engine and speed path of one backend learns what the plain path
learns, bit for bit, and hands divergence, interrupts, mixed precision and CNNs to the one
lifecycle the same way (synthetic data, seconds each).

The plain path is Keras `fit`, one step per call, no XLA, one run at a time. BN training amplifies
rounding differences about 2,000x (docs/guide.md, "Engines and reproducibility"), so "the same" means equal floats here,
not close ones: a path that reorders a float sum would fail these tests.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bncompare import engines
from bncompare.cli import app
from bncompare.config import load_runs
from bncompare.data import load_dataset
from bncompare.lifecycle import InterruptedGroup, Listener, execute_group

# Step-level evaluation with an eval point that is not at an epoch end, a partial last batch
# (300 = 4 x 64 + 44): the awkward cases of the Schedule.
CONFIG = """\
name: eng
data: {dataset: synthetic, train_limit: 300}
model: {hidden: [32, 16]}
train: {epochs: 2, batch_size: 64, seeds: [0]}
record: {eval_every: 3}
"""
PLAIN = ["train.pack=off", "train.steps_per_execution=1", "train.jit_compile=false"]
PATHS = {"fit": ["train.pack=off"], "tf_pack": []}
SWEEP = ["sweep.train.learning_rate=[0.001, 0.01]"]
ENVIRONMENT = {"backend": "test"}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "eng.yaml"
    path.write_text(CONFIG)
    return path


_TRAINED: dict[tuple, dict[str, dict]] = {}


def reference(config: Path, out: Path, overrides: list[str]) -> dict[str, dict]:
    """`run`, once per module for the same overrides: the plain path is every path's reference."""
    key = tuple(overrides)
    if key not in _TRAINED:
        _TRAINED[key] = run(config, out, overrides)
    return _TRAINED[key]


def run(config: Path, out: Path, overrides: list[str], code: int = 0) -> dict[str, dict]:
    """Train the config with `overrides`; metrics.json of every run, by run id."""
    args = ["run", str(config), "--out", str(out), "--quiet"]
    for override in overrides:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("eng/*/metrics.json"))}


def assert_same(a: dict, b: dict) -> None:
    """Same status, divergence point and history, to the last bit."""
    assert a["status"] == b["status"] and a["diverged_at"] == b["diverged_at"]
    for key in ("epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy"):
        assert a["history"][key] == b["history"][key], key


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("extra", [[], ["model.dropout=0.1"], ["train.precision=mixed_float16"],
                                   ["model.kind=cnn", "model.hidden=[4, 8]"]],
                         ids=["mlp", "dropout", "float16", "cnn"])
def test_every_path_learns_what_the_plain_path_learns(config, tmp_path, path, extra):
    plain = reference(config, tmp_path / "plain", PLAIN + SWEEP + extra)
    other = run(config, tmp_path / path, PATHS[path] + SWEEP + extra)
    assert sorted(other) == sorted(plain) and len(plain) == 4  # speed keys never enter run ids
    for run_id, metrics in other.items():
        assert metrics["engine"] == {"name": path, "members": 1 if path == "fit" else 4}
        assert_same(plain[run_id], metrics)
        assert metrics["history"]["step"] == [3, 6, 9, 10]  # eval every 3 steps and at the end


def test_the_planner_packs_same_seed_runs_and_says_why_a_run_trains_alone(config):
    runs = load_runs([config], SWEEP + ["train.seeds=[0, 1]"])
    groups = engines.plan(runs, "tensorflow")
    # Runs with different seeds see different batches: one pack per seed, each the whole sweep.
    assert [(g.engine, len(g.runs)) for g in groups] == [("tf_pack", 4), ("tf_pack", 4)]
    assert all(len({r.seed for r in g.runs}) == 1 for g in groups)
    alone = engines.plan(load_runs([config], ["train.pack=off"]), "tensorflow")
    assert [(g.engine, g.note) for g in alone] == [("fit", "train.pack: off")] * 2
    assert [g.engine for g in engines.plan(runs, "torch")] == ["fit"] * 8
    xla = engines.plan(load_runs([config], ["train.jit_compile=true"]), "tensorflow")
    assert [g.engine for g in xla] == ["fit", "fit"] and "jit_compile" in xla[0].note


@pytest.mark.parametrize("path", sorted(PATHS))
def test_nan_at_step_k_is_diverged_there_and_the_others_go_on(config, tmp_path, path):
    # SGD at learning rate 1000 blows up within a few steps; 0.01 does not.
    overrides = ["train.optimizer=sgd", "sweep.train.learning_rate=[0.01, 1000]",
                 "train.steps_per_execution=2"]
    alone = reference(config, tmp_path / "plain", overrides + ["train.pack=off"])
    # fit is the reference itself: its case checks the statuses and steps below; a pack is also
    # compared with it, to the last bit.
    other = alone if path == "fit" else run(config, tmp_path / path, overrides + PATHS[path])
    assert sorted(m["status"] for m in other.values()) == ["completed", "completed", "diverged", "diverged"]
    for run_id, metrics in other.items():
        if other is not alone:
            assert_same(alone[run_id], metrics)
        if metrics["status"] == "diverged":
            # At the end of the 2-step call in which the loss became NaN/inf; calls start at each
            # chunk (0-3, 3-5, 5-6, 6-9, 9-10: eval points and the epoch end).
            assert metrics["diverged_at"]["step"] in (2, 3, 5, 6, 8, 9, 10)
            assert metrics["error"] is None


def test_a_finite_explosion_is_diverged_at_the_eval_point(config, tmp_path, monkeypatch):
    """An eval interval whose mean loss exceeds the run's limit diverges it there, NaN or not."""
    from bncompare import lifecycle

    real = lifecycle.Recorder.start

    def start(self, start_loss):  # the bn runs get an impossible limit: they "explode" at once
        real(self, start_loss)
        if self.run.variant == "bn":
            self.limit = 0.0

    monkeypatch.setattr(lifecycle.Recorder, "start", start)
    for path, overrides in PATHS.items():
        found = run(config, tmp_path / path, overrides + SWEEP)
        for metrics in found.values():
            if metrics["variant"] == "bn":
                assert metrics["status"] == "diverged" and metrics["diverged_at"]["step"] == 3
                assert metrics["history"]["step"] == []
            else:
                assert metrics["status"] == "completed" and metrics["history"]["step"] == [3, 6, 9, 10]


@pytest.mark.parametrize("path", sorted(PATHS))
def test_an_interrupt_keeps_a_diverged_member_diverged(config, tmp_path, path):
    """Ctrl-C after one member diverged: it stays diverged; the ones still training are interrupted."""
    from bncompare import interrupts

    class SignalLate(Listener):
        def step(self, step, loss, accuracy, slot=0):
            if step >= 6:
                os.kill(os.getpid(), signal.SIGINT)

    # The diverging run first: alone (fit), it must have ended before the Ctrl-C reaches the other.
    runs = load_runs([config], ["train.optimizer=sgd", "sweep.train.learning_rate=[1000, 0.01]",
                                "train.steps_per_execution=1", "variants={bn: {model.batch_norm: true}}",
                                *PATHS[path]])
    data = load_dataset("synthetic", "test", 300)
    outcomes = []
    with interrupts.stop_at_safe_points():
        for group in engines.plan(runs, "tensorflow"):
            try:
                outcomes += execute_group(engines.get(group.engine), group.runs, tmp_path, data,
                                          ENVIRONMENT, SignalLate(), force=False)
            except InterruptedGroup as stop:
                outcomes += stop.outcomes
                break
    statuses = {o.run.params["train.learning_rate"]: o.status for o in outcomes}
    assert statuses[1000] == "diverged"
    assert statuses[0.01] == "interrupted"
    for o in outcomes:
        on_disk = json.loads((tmp_path / "eng" / o.run.run_id / "metrics.json").read_text())
        assert on_disk["status"] == o.status


def test_time_excludes_compilation(config, tmp_path):
    metrics = next(iter(run(config, tmp_path / "t", ["variants={bn: {model.batch_norm: true}}",
                                                      "record.eval_every=1"]).values()))
    seconds = metrics["history"]["seconds"]
    assert seconds == sorted(seconds) and seconds[0] >= 0
    assert metrics["final"]["compile_seconds"] > 0
    assert metrics["final"]["train_seconds"] == seconds[-1]
