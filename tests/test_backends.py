"""The same config on TensorFlow, JAX and PyTorch: the same runs, statuses and loss semantics.

Each backend keeps its own random number generators, so the same seed gives other initial weights
and other numbers on another backend (so a run's id names a backend other than TensorFlow); what
must agree is what a run *is*: its readable id, that a sane run
completes and an exploding one is diverged (the loss is computed from logits everywhere), and the
record of which backend and engine trained it. Each backend runs in its own process, as a user
would run it (`--backend`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """\
name: backends
data: {dataset: synthetic, train_limit: 512}
model: {hidden: [32, 16]}
train: {epochs: 2, batch_size: 64, seeds: [0], optimizer: sgd}
sweep: {train.learning_rate: [0.05, 10.0]}
variants: {no_bn: {}, bn: {model.batch_norm: true}, bn_recorded: {model.batch_norm: true, record.gradients: true, record.activations: true}}
"""


def train(tmp_path: Path, backend: str) -> dict[str, dict]:
    config = tmp_path / "backends.yaml"
    config.write_text(CONFIG)
    out = tmp_path / backend
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run([sys.executable, "-m", "bncompare", "run", str(config), "--out", str(out),
                           "--backend", backend, "--quiet"], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("backends/*/metrics.json")}


@pytest.fixture(scope="module")
def tensorflow_runs(tmp_path_factory) -> dict[str, dict]:
    return train(tmp_path_factory.mktemp("tf"), "tensorflow")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_every_backend_gives_the_same_runs_statuses_and_loss_semantics(tensorflow_runs, tmp_path, backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[test]' installs it)")
    runs = train(tmp_path, backend)
    # The same runs, named for the backend: `bn-s0-jax-1a2b3c` beside TensorFlow's `bn-s0-4d5e6f`
    # (each backend draws other initial weights, so a rerun on another must not skip them).
    readable = {run_id.rsplit("-", 1)[0]: metrics for run_id, metrics in tensorflow_runs.items()}
    assert all(run_id.rsplit("-", 2)[1] == backend for run_id in runs)
    assert sorted(run_id.rsplit("-", 2)[0] for run_id in runs) == sorted(readable)
    for run_id, metrics in runs.items():
        reference = readable[run_id.rsplit("-", 2)[0]]
        assert metrics["status"] == reference["status"], run_id
        assert metrics["environment"]["backend"] == backend
        assert metrics["engine"]["name"] in ("fit", "vmap")
        if metrics["variant"] == "bn_recorded" and metrics["status"] == "completed":
            # The instruments measure on every backend (each one's own autodiff).
            assert metrics["gradients"].keys() == reference["gradients"].keys()
            assert metrics["activations"].keys() == reference["activations"].keys()
        if metrics["status"] == "completed":
            # Cross-entropy from logits: an untrained 10-class model starts near ln 10 = 2.30 on
            # every backend (probabilities clipped at 1e-7 would cap it at 16 on JAX and PyTorch).
            assert 1.5 < metrics["history"]["loss"][0] < 4.0
            assert metrics["history"]["step"] == reference["history"]["step"]
        else:
            assert metrics["status"] == "diverged" and metrics["params"]["train.learning_rate"] == 10.0


def test_dry_run_on_jax_shows_the_vmap_groups(tmp_path):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install -e '.[test]' installs it)")
    config = tmp_path / "backends.yaml"
    config.write_text(CONFIG)
    done = subprocess.run([sys.executable, "-m", "bncompare", "run", str(config), "--dry-run",
                           "--backend", "jax"], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # no_bn and bn differ in architecture: one vmap group each (both learning rates together);
    # the runs recording instruments are a group of their own (measured at eval points per member).
    assert sum('engine="vmap group' in line for line in lines) == 6, done.stdout
    assert sum('engine="vmap group 3 (2 runs)"' in line and "record.activations=true" in line
               for line in lines) == 2, done.stdout
    assert "fit alone" not in done.stdout
    assert not (tmp_path / "backends").exists()  # a dry run writes nothing
