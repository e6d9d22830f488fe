"""`skipping.unfinished`: which runs a rerun still has to train, read from disk alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bncompare.config import load_runs
from bncompare.skipping import run_dir, unfinished


def finish(out: Path, run, status: str) -> None:
    folder = run_dir(run, out)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "schema": 1, "run_id": run.run_id, "status": status, "params": run.params, "history": {}}))


def test_only_completed_and_diverged_runs_are_done(tiny_config, tmp_path):
    runs = load_runs([tiny_config], ["train.seeds=[0, 1, 2]"])  # 6 runs
    out = tmp_path / "results"
    assert unfinished(runs, out) == runs  # nothing on disk yet
    for run, status in zip(runs, ("completed", "diverged", "failed", "interrupted")):
        finish(out, run, status)
    run_dir(runs[4], out).mkdir(parents=True)
    (run_dir(runs[4], out) / "metrics.json").write_text("{not json")
    assert unfinished(runs, out) == runs[2:]
    assert unfinished(runs, out, force=True) == runs


def test_all_finished_is_answered_without_tensorflow_or_data(tiny_config, tmp_path):
    runs = load_runs([tiny_config])
    for run in runs:
        finish(tmp_path, run, "completed")
    code = ("import sys; from bncompare.config import load_runs; from bncompare.skipping import unfinished; "
            f"print(unfinished(load_runs([{str(tiny_config)!r}]), {str(tmp_path)!r}), "
            "[m for m in ('tensorflow', 'keras', 'numpy') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[] []", done.stderr
