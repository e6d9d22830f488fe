"""metrics.json writes (issue 25, part 3): a training run's file is rewritten when its WritePacer
says so, not at every eval point, and is strict JSON at every instant, written on every way a run
ends, and byte for byte the file that writing every point gave.

Nothing trains: a scripted engine reports eval points to the real lifecycle (`train_group`), and a
fake clock stands for time, so how many writes happen is exact and the tests take milliseconds.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from bncompare import lifecycle, results
from bncompare.config import load_runs
from bncompare.results import METRICS_FILE, MetricsFile, WritePacer, read_run

CONFIG = """\
name: writes
data: {dataset: synthetic}
train: {steps: 20000, seeds: [0]}
record: {eval_every: 10}
"""
POINTS = 2000  # CONFIG's eval points
# Through the lifecycle, runs stop after LIFECYCLE_POINTS: writing every point, the reference they
# are compared with, costs the square of the points (benchmarks/metrics_writes.py compares 2,000).
LIFECYCLE_POINTS = 300
TRAINING = 0.001  # simulated seconds of training per eval interval
PER_POINT, FIXED = 1e-6, 1e-3  # simulated cost of a write: per eval point in the file, and fsync's


class Clock:
    """Time that passes only when the test says so: training between points, and each write."""

    def __init__(self) -> None:
        self.now = 0.0
        self.writing = 0.0  # seconds spent in writes

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """A fake clock for every WritePacer, and writes that cost it time like real ones (a fixed
    fsync plus the file's size); timestamps fixed, so two runs' files can be compared byte for byte."""
    fake = Clock()
    real_write = results.write_json

    def costly_write(path: Path, data: dict) -> None:
        real_write(path, data)
        cost = FIXED + PER_POINT * len(data["history"]["step"])
        fake.now += cost
        fake.writing += cost

    monkeypatch.setattr(results, "write_json", costly_write)
    monkeypatch.setattr(results.os, "fsync", lambda fd: None)  # the clock says what a write costs
    monkeypatch.setattr(results, "now", lambda: "2026-12-04T00:00:00+00:00")
    monkeypatch.setattr(lifecycle, "WritePacer", functools.partial(WritePacer, clock=fake))
    return fake


def strict_file(path: Path) -> dict[str, Any]:
    """The file parsed as strict JSON (no NaN/Infinity) and as bncompare reads a run."""
    data = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert read_run(path.parent).metrics["history"] == data["history"]
    return data


def point(i: int) -> dict[str, Any]:
    """Eval point i; an infinite training accuracy now and then (written as null)."""
    return {"epoch": i // 100 + 1, "step": 10 * i, "loss": 1.0 / i,
            "accuracy": math.inf if i % 7 == 0 else 0.5, "val_loss": 2.0 / i,
            "val_accuracy": 0.9 - 1 / (i + 1), "seconds": round(0.01 * i, 3)}


def new_file(directory: Path, pacer: WritePacer) -> MetricsFile:
    directory.mkdir(exist_ok=True)
    return MetricsFile(directory, experiment="e", run_id=directory.name, variant="bn", params={},
                       environment={}, pacer=pacer)


class Scripted:
    """An engine that trains nothing: every member reports `points` eval points (the fake clock
    moving TRAINING seconds before each), then the group ends as `end` says."""

    name = "fit"

    def __init__(self, clock: Clock, points: int = LIFECYCLE_POINTS, end: BaseException | None = None,
                 diverge: int | None = None, checkpointing: bool = False):
        self.clock, self.points, self.end, self.diverge = clock, points, end, diverge
        self.checkpointing = checkpointing  # offer a checkpoint state at every point

    def train(self, members, data) -> float:
        for member in members:
            member.recorder.start(2.3)
        state = (lambda: ([np.zeros(3, np.float32)], None)) if self.checkpointing else None
        for i in range(1, self.points + 1):
            self.clock.now += TRAINING
            for member in members:
                values = point(i)
                if self.diverge == i and member.slot == 1:
                    values["val_loss"] = math.nan  # a NaN validation loss: the run diverged
                member.recorder.point(values, {"landscape": {"loss_min": 0.1 * i}}, state=state)
        if self.end is not None:
            raise self.end
        return 0.25  # compile seconds: the run ends with exclude_compile's write, after finish


def train(tmp_path: Path, engine: Scripted, name: str) -> list[Path]:
    runs = load_runs([write_config(tmp_path)])
    run_dirs = [tmp_path / name / run.run_id for run in runs]
    for run_dir in run_dirs:
        run_dir.mkdir(parents=True)
    data = SimpleNamespace(x_train=np.zeros((200, 4), np.float32), x_val=np.zeros((8, 4), np.float32),
                           y_val=np.zeros(8, np.int64), classes=10)
    try:
        lifecycle.train_group(engine, runs, run_dirs, data, environment={"backend": "test"})
    except BaseException as e:  # noqa: BLE001 - the end under test
        assert engine.end is not None and type(e) is type(engine.end)
    return run_dirs


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "writes.yaml"
    path.write_text(CONFIG)
    return path


def every_point(monkeypatch, clock: Clock) -> None:
    """The policy before the pacer: every eval point rewrites the file."""
    monkeypatch.setattr(lifecycle, "WritePacer", functools.partial(WritePacer, spacing=0.0, clock=clock))


# ---- the policy on its own ------------------------------------------------------------------------


def test_a_file_is_strict_json_after_every_call_and_never_ahead_of_the_run(tmp_path, clock):
    metrics = new_file(tmp_path, WritePacer(clock=clock))
    written = [0]
    for i in range(1, 301):
        clock.now += TRAINING
        metrics.add_point(point(i), {"activations": {"layer_1": {"p50": math.inf}}})
        on_disk = strict_file(metrics.path)["history"]
        steps = on_disk["step"]
        assert steps == metrics.data["history"]["step"][:len(steps)]  # a prefix: never torn
        assert len(steps) in (written[-1], i)  # unchanged, or everything so far
        written.append(len(steps))
    assert 1 < len(set(written)) < 300  # some points were held back, some written
    metrics.finish("completed")
    assert strict_file(metrics.path)["history"]["step"] == [10 * i for i in range(1, 301)]


def test_writes_for_2000_points_are_few_and_take_a_bounded_share_of_the_time(tmp_path, clock):
    metrics = new_file(tmp_path, WritePacer(clock=clock))
    for i in range(1, POINTS + 1):
        clock.now += TRAINING
        metrics.add_point(point(i))
    # Every point would be 2,001 writes. Paced: each write waits WRITE_SPACING times its cost, and
    # a write's cost grows with the file, so the gaps widen.
    assert metrics.writes < 60
    assert clock.writing <= clock.now / results.WRITE_SPACING + 2 * (FIXED + PER_POINT * POINTS)
    metrics.finish("completed")
    assert metrics.writes < 61


def test_a_group_shares_one_spacing_instead_of_writing_every_member_each_point(tmp_path, clock):
    """64 members with one pacer spend about the share of time writing that one file does: their
    spacing is WRITE_SPACING times what writing all 64 costs, not 64 files at every eval point."""
    pacer = WritePacer(clock=clock)
    files = [new_file(tmp_path / str(k), pacer) for k in range(64)]
    written = []  # writes at each eval point
    for i in range(1, 501):
        clock.now += 0.01  # a group's step takes longer than one run's
        before = sum(f.writes for f in files)
        for f in files:
            f.add_point(point(i))
        written.append(sum(f.writes for f in files) - before)
    # Every member is written again (3 or 4 times each: about every 1.5 s of the 5 s), but a
    # pacer per member would write each one every 3 points (each file's own spacing is 30 ms).
    assert 64 * 2 <= sum(written) <= 64 * 5
    assert all(f.pending or f.writes > 1 for f in files)
    one_round = 64 * (FIXED + PER_POINT * 500)
    assert clock.writing <= clock.now / results.WRITE_SPACING + 2 * one_round


def test_a_finished_file_leaves_the_group_spacing(tmp_path, clock):
    pacer = WritePacer(clock=clock)
    a, b = new_file(tmp_path / "a", pacer), new_file(tmp_path / "b", pacer)
    assert not pacer.due(clock.now)  # two files' costs to wait for
    b.finish("diverged")
    clock.now += results.WRITE_SPACING * FIXED
    assert pacer.due(a.written_at)  # one file's cost only, now


# ---- through the lifecycle: every end, byte for byte --------------------------------------------


# How each end is provoked (a fresh exception each time: one raised twice carries both tracebacks).
ENDS = {
    "completed": lambda: {},
    "diverged": lambda: {"diverge": 200},  # the run in slot 1 (bn) diverges, no_bn completes
    "failed": lambda: {"end": RuntimeError("the engine broke")},
    "interrupted": lambda: {"end": KeyboardInterrupt()},
    "a BaseException train_group does not handle": lambda: {"end": SystemExit(3)},
}


@pytest.mark.parametrize("end", ENDS)
def test_the_last_file_is_the_bytes_writing_every_point_gave(tmp_path, monkeypatch, clock, end):
    paced = train(tmp_path, Scripted(clock, **ENDS[end]()), "paced")
    writes_paced = clock.writing
    every_point(monkeypatch, clock)
    clock.writing = 0.0
    old = train(tmp_path, Scripted(clock, **ENDS[end]()), "every_point")
    assert writes_paced < clock.writing / 5  # the old policy wrote far more
    for new_dir, old_dir in zip(paced, old):
        new, before = (new_dir / METRICS_FILE).read_bytes(), (old_dir / METRICS_FILE).read_bytes()
        assert new == before, end
        data = strict_file(new_dir / METRICS_FILE)
        assert len(data["history"]["step"]) >= 199
    statuses = {strict_file(d / METRICS_FILE)["status"] for d in paced}
    expected = {"completed": {"completed"}, "diverged": {"completed", "diverged"},
                "failed": {"failed"}, "interrupted": {"interrupted"},
                "a BaseException train_group does not handle": {"running"}}[end]
    assert statuses == expected


def test_metrics_json_is_written_before_each_checkpoint(tmp_path, monkeypatch, clock):
    """A killed run's metrics.json is never behind the checkpoint it will resume from."""
    monkeypatch.setattr(lifecycle, "CHECKPOINT_SPACING", 0.0)  # a checkpoint at every eval point
    behind = []

    def save(run_dir, identity, saved):
        on_disk = json.loads((Path(run_dir) / METRICS_FILE).read_text())["history"]["step"]
        behind.append(saved.metrics["history"]["step"][-1] - on_disk[-1])
        return 0

    monkeypatch.setattr(lifecycle.checkpoint, "save", save)
    train(tmp_path, Scripted(clock, points=100, checkpointing=True), "checkpointed")
    assert len(behind) == 2 * 100 and set(behind) == {0}
