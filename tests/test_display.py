"""What `bncompare run` prints: wording, numbering, the end table, the live display's states."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from bncompare import display as display_module
from bncompare import terminal
from bncompare.config import Run
from bncompare.display import LiveDisplay, PlainDisplay, summary_line
from bncompare.runner import Outcome

LONG = "no_bn-lr0.001-bs64-hidden256x128x64x32-act_relu-init_glorot_uniform-drop0.1-wd0.0001-s0-abc123"


def make_run(run_id: str, experiment: str = "exp") -> Run:
    return Run(experiment, run_id.split("-")[0], run_id, {"train.seed": 0})


def console(width: int = 80, terminal_: bool = False) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=terminal_, highlight=False,
                   color_system=None)


def schedule(total: int = 10, per_epoch: int = 5):
    return SimpleNamespace(total_steps=total, steps_per_epoch=per_epoch)


POINT = {"epoch": 1, "step": 5, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.6,
         "seconds": 1.0}


def test_summary_line_wording():
    runs = [make_run(f"r{i}-s0-00000{i}") for i in range(3)]
    assert summary_line([Outcome(runs[0], "completed")], Path("out")) == "1 run: 1 completed. Results in out/exp/"
    diverged = summary_line([Outcome(r, "diverged") for r in runs[:2]], Path("out"))
    assert diverged == "2 runs: 2 diverged. Results in out/exp/"  # not "2 diverged. 2 of 2 diverged."
    stopped = summary_line([Outcome(runs[0], "interrupted"), Outcome(runs[1], "not_started"),
                            Outcome(runs[2], "not_started")], Path("out"))
    assert stopped.startswith("3 runs: 1 interrupted, 2 not started.")


def test_a_note_that_repeats_the_status_is_not_shown():
    shown = PlainDisplay(console(), Path("out"))
    run = make_run("a-s0-000001")
    shown.sweep_started([run])
    shown.run_finished(Outcome(run, "interrupted", note="interrupted"))
    shown.run_finished(Outcome(run, "failed", note="ValueError: \x1b[2Jboom"))
    text = shown.console.file.getvalue()
    assert "interrupted (interrupted)" not in text and "[1/1] a-s0-000001 interrupted\n" in text
    assert "failed (ValueError: \\x1b[2Jboom)" in text  # an error text cannot clear the screen


@pytest.mark.parametrize("terminal_", [False, True])
def test_run_ids_are_never_cut_at_80_columns(terminal_):
    shown = PlainDisplay(console(80, terminal_), Path("out"))
    runs = [make_run(LONG), make_run(LONG.replace("no_bn", "bn"))]
    shown.sweep_started(runs)
    shown.summary([Outcome(runs[0], "completed", {"val_accuracy": 0.97, "best_val_accuracy": 0.98,
                                                  "train_seconds": 12.5}),
                   Outcome(runs[1], "busy")])
    text = shown.console.file.getvalue()
    assert LONG in text and LONG.replace("no_bn", "bn") in text and "…" not in text
    assert "0.9700" in text and "busy (another process)" in text


def test_a_short_table_stays_a_table():
    shown = PlainDisplay(console(80, True), Path("out"))
    run = make_run("bn-s0-abc123")
    shown.summary([Outcome(run, "completed", {"val_accuracy": 0.5})])
    assert "┃ run" in shown.console.file.getvalue() or "│ run" in shown.console.file.getvalue()


def test_runs_are_numbered_by_their_place_in_the_sweep_even_when_packed():
    shown = PlainDisplay(console(200), Path("out"))
    runs = [make_run("a-s0-000001"), make_run("b-s0-000002")]
    shown.sweep_started(runs)
    shown.started(runs[0], schedule(), slot=0)
    shown.started(runs[1], schedule(), slot=1)  # a pack of two trains both at once
    shown.point(POINT, slot=1)
    shown.point(POINT, slot=0)
    shown.run_finished(Outcome(runs[1], "completed"), slot=1)
    lines = shown.console.file.getvalue().splitlines()
    assert lines[0].startswith("[2/2] b-s0-000002 epoch 1")
    assert lines[1].startswith("[1/2] a-s0-000001 epoch 1")
    assert lines[2].startswith("[2/2] b-s0-000002 completed")


def write_metrics(out: Path, run: Run, status: str, val_accuracy: list) -> None:
    folder = out / run.experiment / run.run_id
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "schema": 1, "run_id": run.run_id, "experiment": run.experiment, "status": status,
        "params": run.params, "history": {"step": list(range(len(val_accuracy))),
                                          "val_accuracy": val_accuracy}, "final": None}))


def test_the_end_table_shows_runs_not_started_and_the_last_value_of_an_interrupted_run(tmp_path):
    runs = [make_run("a-s0-000001"), make_run("b-s0-000002"), make_run("c-s0-000003")]
    write_metrics(tmp_path, runs[0], "interrupted", [0.5, 0.75, None])
    shown = PlainDisplay(console(120, True), tmp_path)
    shown.summary([Outcome(runs[0], "interrupted", note="interrupted"), Outcome(runs[1], "not_started"),
                   Outcome(runs[2], "interrupted")])
    rows = {line.split()[1]: line for line in shown.console.file.getvalue().splitlines()
            if line.startswith("│ ")}
    assert "0.7500" in rows["a-s0-000001"]  # its partial curve's last value, not "-"
    assert "not started" in rows["b-s0-000002"]
    assert "-" in rows["c-s0-000003"]  # no metrics on disk: nothing to show


def live(width: int = 200) -> LiveDisplay:
    return LiveDisplay(console(width, True), Path("out"))


def test_a_compiling_run_says_so_instead_of_0_of_n():
    with live() as shown:
        run = make_run("a-s0-000001")
        shown.sweep_started([run])
        shown.compiling(run)
        task = shown.progress.tasks[-1]
        assert "a-s0-000001" in task.description and task.fields["info"] == "compiling..."
        assert task.total is None  # an indeterminate bar, not 0/N
        shown.started(run, schedule())
        assert shown.progress.tasks[-1].total == 10 and len(shown.progress.tasks) == 2


def test_the_eta_counts_only_runs_trained_here(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(display_module.time, "monotonic", lambda: clock[0])
    runs = [make_run(f"r{i}-s0-00000{i}") for i in range(6)]
    with live() as shown:
        shown.sweep_started(runs)
        for run in runs[:3]:  # done before: no time at all
            shown.run_finished(Outcome(run, "skipped"))
        sweep = shown.progress.tasks[0]
        assert sweep.fields["eta"] == ""  # nothing trained yet: no estimate, rather than "0:00:00"
        shown.started(runs[3], schedule())
        clock[0] += 30
        shown.run_finished(Outcome(runs[3], "completed"))
        assert sweep.fields["eta"] == "eta 0:01:00"  # two runs left at 30 s each


def test_one_live_display_per_process():
    with live() as first, live() as second:
        assert first.live and not second.live
        run = make_run("a-s0-000001")
        second.sweep_started([run])
        second.started(run, schedule())
        second.point(POINT)
        assert "[1/1] a-s0-000001 epoch 1" in second.console.file.getvalue()  # plain lines instead
    with live() as third:
        assert third.live


def test_one_live_display_per_terminal_across_processes():
    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=False) as tty:
            assert terminal.claim_live(tty)
            code = ("import sys; from bncompare import terminal; "
                    f"print(terminal.claim_live(open({os.ttyname(follower)!r}, 'w')))")
            other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            assert other.stdout.strip() == "False", other.stderr
            terminal.release_live()
            again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            assert again.stdout.strip() == "True", again.stderr
    finally:
        terminal.release_live()
        os.close(leader)
        os.close(follower)


def test_printable_escapes_control_characters():
    assert terminal.printable("a\x1b[31mb\x07\tc\n") == "a\\x1b[31mb\\x07\tc\n"
    assert terminal.printable("a\nb", newlines=False) == "a\\nb"
    assert terminal.printable("é ü 中") == "é ü 中"


def test_a_dropping_stream_survives_a_closed_pipe():
    read_end, write_end = os.pipe()
    stream = terminal.DroppingStream(os.fdopen(write_end, "w"))
    os.close(read_end)
    stream.write("x" * 100_000)
    stream.flush()
    assert stream.dropped
    stream.write("more")
    stream.flush()  # the descriptor now points at /dev/null
    stream.stream.close()
