"""One run: the batch schedule, a smoke run of the real origin config, reproducibility, divergence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from bncompare.config import load_runs
from bncompare.data import load_dataset
from bncompare.schedule import Schedule
from train_one import train_one

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT = {"backend": "test"}


def schedule(examples=100, batch_size=32, epochs=2, steps=None, every="epoch") -> Schedule:
    return Schedule.for_run({"train.batch_size": batch_size, "train.epochs": epochs, "train.steps": steps,
                             "record.eval_every": every}, examples)


def test_epoch_schedule_has_a_partial_last_batch_like_keras():
    s = schedule()
    assert (s.steps_per_epoch, s.total_steps, list(s.eval_steps())) == (4, 8, [4, 8])
    assert list(s.chunks()) == [(0, 4), (4, 8)]
    for first, last in s.chunks():
        indices = s.batch_indices(seed=3, first=first, last=last)
        assert sorted(indices) == list(range(100))  # each epoch visits every example once


def test_step_schedule_splits_at_eval_points_and_epoch_ends():
    s = schedule(steps=10, every=3)
    assert list(s.eval_steps()) == [3, 6, 9, 10] and s.eval_points == 4
    assert [step for step in range(11) if s.is_eval(step)] == [3, 6, 9, 10]
    assert list(s.chunks()) == [(0, 3), (3, 4), (4, 6), (6, 8), (8, 9), (9, 10)]
    assert s.epoch_of(6) == 1.5 and s.epoch_of(8) == 2
    # Chunks of one epoch concatenate to that epoch's permutation: eval points do not change batches.
    whole = s.batch_indices(seed=1, first=4, last=8)
    parts = np.concatenate([s.batch_indices(1, 4, 6), s.batch_indices(1, 6, 8)])
    assert np.array_equal(whole, parts)


def test_a_huge_schedule_costs_nothing_until_walked():
    s = schedule(examples=60_000, steps=10**12, every=1)
    assert s.eval_points == 10**12 and s.is_eval(10**12) and not s.is_eval(0)
    assert next(iter(s.chunks())) == (0, 1)


def test_eval_at_start_adds_step_0():
    s = Schedule.for_run({"train.batch_size": 32, "train.epochs": 1, "train.steps": None,
                          "record.eval_every": "epoch", "record.eval_at_start": True}, 100)
    assert list(s.eval_steps()) == [0, 4] and s.is_eval(0)


def test_batch_order_depends_on_seed_and_epoch_only():
    a, b = schedule(), schedule(examples=100, batch_size=32, epochs=5)
    assert np.array_equal(a.batch_indices(0, 0, 4), b.batch_indices(0, 0, 4))
    assert not np.array_equal(a.batch_indices(0, 0, 4), a.batch_indices(0, 4, 8))
    assert not np.array_equal(a.batch_indices(0, 0, 4), a.batch_indices(1, 0, 4))


def origin_on_synthetic(tmp_path, variant="bn", extra=()):
    """The real origin config, shrunk onto synthetic data (the smoke test STYLE.md asks for)."""
    overrides = ["data.dataset=synthetic", "data.train_limit=256", "train.epochs=2", *extra]
    return next(r for r in load_runs([ROOT / "configs" / "mnist.yaml"], overrides) if r.variant == variant)


def train(run, out: Path) -> tuple[str, dict]:
    """Train `run` under the results root `out`; its status and metrics.json."""
    data = load_dataset(run["data.dataset"], run["data.validation"], run["data.train_limit"])
    status, run_dir = train_one(run, out, data, environment=ENVIRONMENT)
    text = (run_dir / "metrics.json").read_text()
    return status, json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))


def test_origin_config_trains_on_synthetic_data(tmp_path):
    run = origin_on_synthetic(tmp_path)
    status, metrics = train(run, tmp_path / run.run_id)
    assert status == "completed" == metrics["status"]
    history = metrics["history"]
    assert history["epoch"] == [1, 2] and history["step"] == [8, 16]  # 256 examples / batch 32
    assert all(len(history[k]) == 2 for k in history)
    assert metrics["final"]["val_accuracy"] == history["val_accuracy"][-1]
    assert metrics["final"]["best_val_accuracy"] == max(history["val_accuracy"])
    assert history["seconds"][0] < history["seconds"][1] == metrics["final"]["train_seconds"]
    assert metrics["params"] == run.params and metrics["environment"] == ENVIRONMENT
    # Learning happened: well above chance (0.1). Training accuracy, because after 16 steps BN's
    # moving statistics (momentum 0.99) still mostly hold their initial values, which is what
    # validation uses; that lag is real BN behaviour, not a bug.
    assert history["accuracy"][-1] > 0.3


def test_same_seed_same_metrics(tmp_path):
    run = origin_on_synthetic(tmp_path, extra=["model.dropout=0.2"])
    _, first = train(run, tmp_path / "a")
    _, second = train(run, tmp_path / "b")
    assert first["history"]["loss"] == second["history"]["loss"]
    assert first["history"]["val_accuracy"] == second["history"]["val_accuracy"]
    other = origin_on_synthetic(tmp_path, extra=["model.dropout=0.2", "train.seeds=[1]"])
    _, third = train(other, tmp_path / "c")
    assert third["history"]["loss"] != first["history"]["loss"]


def test_step_level_evaluation(tmp_path):
    run = origin_on_synthetic(tmp_path, "no_bn", ["train.steps=10", "record.eval_every=4"])
    _, metrics = train(run, tmp_path / "r")
    assert metrics["history"]["step"] == [4, 8, 10]
    assert metrics["history"]["epoch"] == [0.5, 1, 1.25]


def test_exploding_sgd_is_recorded_as_diverged(tmp_path):
    run = origin_on_synthetic(tmp_path, "no_bn", ["train.optimizer=sgd", "train.learning_rate=1000"])
    status, metrics = train(run, tmp_path / "r")
    assert status == "diverged" == metrics["status"]
    assert set(metrics["diverged_at"]) == {"epoch", "step"} and metrics["diverged_at"]["step"] >= 1
    assert metrics["error"] is None


def test_a_broken_run_is_recorded_as_failed(tmp_path, monkeypatch):
    import bncompare.engines.fit as train_module

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory on layer 3")

    monkeypatch.setattr(train_module, "build_model", broken)
    status, metrics = train(origin_on_synthetic(tmp_path), tmp_path / "r")
    assert status == "failed" == metrics["status"]
    assert metrics["error"].startswith("RuntimeError: out of memory on layer 3")
    assert "Traceback" in metrics["error"]


def test_validation_fraction_and_train_limit():
    data = load_dataset("synthetic", 0.25, 100)
    assert len(data.x_train) == 100 and len(data.x_val) == 500  # 25% of 2000 held out
    assert data.input_shape == (28, 28, 1) and data.classes == 10
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0


def test_config_yaml_written_by_the_runner_is_a_valid_config(tmp_path):
    run = origin_on_synthetic(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(run.to_config()))
    assert load_runs([path])[0].params == run.params


def test_a_signal_mid_fit_is_saved_as_interrupted_not_failed(tmp_path):
    """A signal delivered inside TensorFlow's fit used to surface as a RuntimeError from a device
    scope (recorded `failed`, sweep went on); now it stops at the next safe point."""
    import os
    import signal

    from bncompare import interrupts
    from bncompare.lifecycle import Listener

    class SignalAtStep(Listener):
        def step(self, step, loss, accuracy, slot=0):
            if step >= 3:
                os.kill(os.getpid(), signal.SIGINT)

    run = origin_on_synthetic(tmp_path, "bn", ["train.steps_per_execution=1", "train.pack=off"])
    data = load_dataset("synthetic", "test", 256)
    with interrupts.stop_at_safe_points(), pytest.raises(KeyboardInterrupt):
        train_one(run, tmp_path, data, environment=ENVIRONMENT, listener=SignalAtStep())
    metrics = json.loads((tmp_path / run.experiment / run.run_id / "metrics.json").read_text())
    assert metrics["status"] == "interrupted", metrics["error"]
