"""Results written by the first release (commit ae3ef5b) keep their run ids after an upgrade.

`tests/data/release1_run_ids.json` holds the run ids that release gave every shipped config (and two
command lines from its README). A new key with a default must never rename these runs: a renamed run
is retrained from scratch and its old results are orphaned.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bncompare.config import load_runs

ROOT = Path(__file__).resolve().parents[1]
RELEASE1 = json.loads((ROOT / "tests" / "data" / "release1_run_ids.json").read_text())


@pytest.mark.parametrize("command", sorted(RELEASE1))
def test_release1_run_ids_are_unchanged(command: str) -> None:
    config, *rest = command.split(" --set ")
    runs = load_runs([ROOT / "configs" / config], rest)
    assert [run.run_id for run in runs] == RELEASE1[command]


def test_results_of_release1_are_skipped_as_finished(tmp_path: Path) -> None:
    """An upgrade never retrains: runs finished under release-1 ids are skipped, without training."""
    import subprocess
    import sys

    from bncompare.results import MetricsFile

    runs = load_runs([ROOT / "configs" / "mnist.yaml"])
    for run, run_id in zip(runs, RELEASE1["mnist.yaml"]):
        (tmp_path / "mnist" / run_id).mkdir(parents=True)
        metrics = MetricsFile(tmp_path / "mnist" / run_id, experiment="mnist", run_id=run_id,
                              variant=run.variant, params=run.params, environment={})
        metrics.add_point({"epoch": 1, "step": 1875, "loss": 0.2, "accuracy": 0.9, "val_loss": 0.1,
                           "val_accuracy": 0.97, "seconds": 4.0})
        metrics.finish("completed")
    done = subprocess.run([sys.executable, "-m", "bncompare", "run", str(ROOT / "configs" / "mnist.yaml"),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 runs: 2 skipped (done before)." in done.stdout, done.stdout
