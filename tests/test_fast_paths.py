"""Fast paths and packed training never change what is learned (synthetic data, seconds each).

Compared: the plain path (one step per call, no XLA, no packing), the fast unpacked path
(steps_per_execution, XLA, batches gathered from resident tensors) and packed training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bncompare.cli import app
from bncompare.config import load_runs
from bncompare.packed import plan

# Step-level evaluation with an eval point that is not at an epoch end, a partial last batch
# (300 = 4 x 64 + 44) and a dropout layer: the awkward cases of the Schedule.
CONFIG = """\
name: fast
data: {dataset: synthetic, train_limit: 300}
model: {hidden: [32, 16], dropout: 0.1}
train: {epochs: 2, batch_size: 64, seeds: [0]}
record: {eval_every: 3}
"""
PLAIN = ["train.pack=off", "train.steps_per_execution=1", "train.jit_compile=false"]
FAST = ["train.pack=off"]
# Several members in one pack: both variants x two optimizers/learning rates.
SWEEP = ["sweep.train.learning_rate=[0.001, 0.01]"]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "fast.yaml"
    path.write_text(CONFIG)
    return path


def run(config: Path, out: Path, overrides: list[str]) -> dict[str, dict]:
    """Train the config with `overrides`; metrics.json of every run, by run id."""
    args = ["run", str(config), "--out", str(out), "--quiet"]
    for override in overrides:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("fast/*/metrics.json"))}


def assert_same_learning(a: dict, b: dict, tolerance: float = 1e-4) -> None:
    """Same status, divergence point and history, floats within `tolerance` (XLA fuses
    differently from graph mode, so the last bits may differ)."""
    assert a.keys() == b.keys()
    assert a["status"] == b["status"] and a["diverged_at"] == b["diverged_at"]
    assert a["history"].keys() == b["history"].keys()
    for key in ("epoch", "step"):
        assert a["history"][key] == b["history"][key]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        for x, y in zip(a["history"][key], b["history"][key], strict=True):
            assert math.isclose(x, y, rel_tol=tolerance, abs_tol=tolerance), (key, x, y)
    assert a["params"] == b["params"] or _without_speed_keys(a["params"]) == _without_speed_keys(b["params"])


def _without_speed_keys(params: dict) -> dict:
    return {k: v for k, v in params.items()
            if k not in ("train.pack", "train.steps_per_execution", "train.jit_compile")}


def test_speed_keys_never_change_run_ids(config):
    plain = [r.run_id for r in load_runs([config], PLAIN)]
    assert plain == [r.run_id for r in load_runs([config])]


def test_fast_unpacked_path_learns_what_the_plain_path_learns(config, tmp_path):
    plain = run(config, tmp_path / "plain", PLAIN)
    fast = run(config, tmp_path / "fast", FAST)
    assert len(plain) == 2
    for run_id in plain:
        assert_same_learning(plain[run_id], fast[run_id])
        assert plain[run_id]["history"]["step"] == [3, 6, 9, 10]  # eval every 3 steps and at the end


def test_a_pack_of_one_equals_the_unpacked_run(config, tmp_path):
    unpacked = run(config, tmp_path / "off", FAST + ["variants={bn: {model.batch_norm: true}}"])
    packed = run(config, tmp_path / "pack", ["variants={bn: {model.batch_norm: true}}"])
    assert len(packed) == 1
    run_id = next(iter(packed))
    assert_same_learning(unpacked[run_id], packed[run_id])


def test_each_member_of_a_pack_matches_its_unpacked_run(config, tmp_path):
    runs = load_runs([config], SWEEP + ["train.seeds=[0, 1]"])
    groups = plan(runs, "tensorflow")
    # One pack per seed (runs with different seeds see different batches), each holding the whole
    # learning rate x BN sweep.
    assert [len(group) for group, packed in groups] == [4, 4] and all(p for _, p in groups)
    assert all(len({r.seed for r in group}) == 1 for group, _ in groups)
    unpacked = run(config, tmp_path / "off", SWEEP + FAST)
    packed = run(config, tmp_path / "pack", SWEEP)
    assert len(packed) == 4
    for run_id in packed:
        assert_same_learning(unpacked[run_id], packed[run_id])
        assert packed[run_id].keys() == unpacked[run_id].keys()


def test_a_diverging_member_is_frozen_and_recorded_while_the_others_complete(config, tmp_path):
    # SGD at learning rate 1000 blows up within a few steps; Adam at 0.001 does not.
    overrides = ["train.optimizer=sgd", "sweep.train.learning_rate=[0.01, 1000]",
                 "train.steps_per_execution=2"]
    unpacked = run(config, tmp_path / "off", overrides + FAST)
    packed = run(config, tmp_path / "pack", overrides)
    statuses = sorted(m["status"] for m in packed.values())
    assert statuses == ["completed", "completed", "diverged", "diverged"]
    for run_id, metrics in packed.items():
        assert_same_learning(unpacked[run_id], metrics)
        if metrics["status"] == "diverged":
            # Reported at the end of the 2-step call in which the loss became NaN/inf, as unpacked:
            # calls start at each chunk (0-3, 3-5, 5-6, 6-9, 9-10: eval points and the epoch end).
            assert metrics["diverged_at"]["step"] in (2, 3, 5, 6, 8, 9, 10)
            assert metrics["error"] is None


def test_runs_that_record_instruments_train_alone(config):
    runs = load_runs([config], ["record.gradients=true"])
    assert [packed for _, packed in plan(runs, "tensorflow")] == [False, False]
    assert [packed for _, packed in plan(load_runs([config]), "jax")] == [False, False]
    assert [len(g) for g, _ in plan(load_runs([config]), "tensorflow")] == [2]
