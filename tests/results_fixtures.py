"""Results directories for plot and summary tests, written through bncompare's own writer.

Runs come from real configs (`load_runs`), metrics from `MetricsFile`: the fixtures cannot drift from
the on-disk format. Nothing trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bncompare.config import Run, load_runs
from bncompare.results import MetricsFile

SWEEP = """\
name: sweep
data: {dataset: synthetic}
train: {seeds: [0, 1, 2], optimizer: sgd}
sweep: {train.learning_rate: [0.01, 0.1, 50.0]}
"""


def runs_from(tmp_path: Path, text: str, overrides: list[str] | None = None) -> list[Run]:
    """The runs a config text expands to."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_runs([path], overrides)


def write_run(out: Path, run: Run, val_accuracy: list[float], *, status: str = "completed",
              diverged_at: dict | None = None, blocks: list[dict] | None = None,
              final: dict | None = None) -> Path:
    """A run directory whose history has one eval point per value of `val_accuracy`.

    Point i (from 1) is epoch i, step 10*i, at 2*i seconds, with loss 1/i. `status` None leaves
    the run `running` (as a killed process would). `final`: extra entries of `final` (test scores).
    """
    run_dir = out / run.experiment / run.run_id
    run_dir.mkdir(parents=True)
    metrics = MetricsFile(run_dir, experiment=run.experiment, run_id=run.run_id, variant=run.variant,
                          params=run.params, environment={"bncompare": "test"})
    for i, accuracy in enumerate(val_accuracy, start=1):
        point: dict[str, Any] = {"epoch": i, "step": 10 * i, "loss": 1 / i, "accuracy": accuracy,
                                 "val_loss": 2 / i, "val_accuracy": accuracy, "seconds": 2.0 * i}
        metrics.add_point(point, blocks[i - 1] if blocks else None)
    if status is not None:
        metrics.finish(status, diverged_at=diverged_at, final=final,
                       error="RuntimeError: boom\ntraceback..." if status == "failed" else None)
    return run_dir


def internals(layers: int, points: int, scale: float) -> list[dict]:
    """Per-eval-point blocks in the recorder's format: activations per layer, gradient norms."""
    return [{"activations": {f"layer_{k}": {"p15": -scale * i, "p50": 0.1 * i, "p85": scale * i,
                                            "mean": 0.0, "std": scale}
                             for k in range(1, layers + 1)},
             "gradients": {**{f"dense_{k}/kernel": {"norm": scale / i} for k in range(1, layers + 1)},
                           "output/kernel": {"norm": 0.5 / i}, "output/bias": {"norm": 0.1 / i}}}
            for i in range(1, points + 1)]


def sweep_results(tmp_path: Path) -> Path:
    """2 variants x 3 learning rates x 3 seeds; lr 50 diverges (no_bn before any eval, bn after 1).

    Final val accuracy of seed s is 0.5 + 0.1 * s (+0.05 for bn); the first point is 0.3.
    """
    out = tmp_path / "results"
    for run in runs_from(tmp_path, SWEEP):
        bonus = 0.05 if run.variant == "bn" else 0.0
        if run["train.learning_rate"] == 50.0:
            points = [0.2] if run.variant == "bn" else []
            write_run(out, run, points, status="diverged", diverged_at={"epoch": 1.5, "step": 15})
        else:
            write_run(out, run, [0.3, 0.5 + 0.1 * run.seed + bonus])
    return out
