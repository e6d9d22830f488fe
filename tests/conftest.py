"""Shared test set-up: where real data lives, quiet TensorFlow, and a tiny config to train."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests and CI read real data from the team's shared copies beside the checkout unless told otherwise.
SHARED_DATA = ROOT.parent / "shared" / "datasets"
if "BNCOMPARE_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["BNCOMPARE_DATA_DIR"] = str(SHARED_DATA)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# What `bncompare` sets before TensorFlow starts (backend.import_keras): test modules that import
# Keras themselves must not start TensorFlow with other thread pools than a user's run has.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = """\
name: tiny
data: {dataset: synthetic, train_limit: 512}
model: {hidden: [32, 16]}
train: {epochs: 2, batch_size: 64, seeds: [0]}
"""


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A config that trains both default variants on synthetic data in about a second each."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def mnist_available() -> bool:
    folder = os.environ.get("BNCOMPARE_DATA_DIR")
    return bool(folder) and (Path(folder) / "mnist.npz").is_file()
