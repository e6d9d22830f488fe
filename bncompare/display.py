"""What `bncompare run` shows while it works: live progress in a terminal, plain lines otherwise.

Both displays receive the same events (from the runner and, per batch, from training) and end with
the same summary table, so a log file of a sweep reads like the terminal did.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from bncompare.lifecycle import Listener

STATUS_STYLE = {"completed": "green", "diverged": "yellow", "failed": "bold red",
                "interrupted": "bold red", "skipped": "dim", "busy": "cyan",
                "not_started": "dim"}
STATUS_WORD = {"skipped": "skipped (done before)", "busy": "busy (another process)",
               "not_started": "not started"}


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class PlainDisplay(Listener):
    """One line per eval point and per run: for logs, pipes, CI, and `--quiet` (summary only).

    `slot` tells parallel workers (`--jobs`) apart; a single process is always slot 0.
    """

    def __init__(self, console: Console, out: Path, quiet: bool = False):
        self.console, self.out, self.quiet = console, out, quiet
        self.total = self.index = 0
        self.current: dict[int, tuple] = {}  # slot -> (run, schedule)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def sweep_started(self, runs) -> None:
        self.total, self.index = len(runs), 0

    def started(self, run, schedule, slot: int = 0) -> None:
        self.current[slot] = (run, schedule)

    def step(self, step: int, loss: float, accuracy: float, slot: int = 0) -> None:
        """Plain output has no per-step line: a log gets one line per eval point."""

    def point(self, point: dict[str, Any], slot: int = 0) -> None:
        if self.quiet:
            return
        run, schedule = self.current[slot]
        self.console.print(
            f"[{self.index + 1}/{self.total}] {run.run_id} epoch {point['epoch']} "
            f"step {point['step']}/{schedule.total_steps} loss {_fmt(point['loss'])} "
            f"acc {_fmt(point['accuracy'])} val_loss {_fmt(point['val_loss'])} "
            f"val_acc {_fmt(point['val_accuracy'])} ({point['seconds']:.1f} s)",
            highlight=False, soft_wrap=True)

    def run_finished(self, outcome, slot: int = 0) -> None:
        self.index += 1
        if self.quiet and outcome.status not in ("failed", "interrupted"):
            return
        final = outcome.final or {}
        seconds = final.get("train_seconds")
        detail = (f"val_acc {_fmt(final.get('val_accuracy'))}"
                  + (f" in {seconds:.1f} s" if seconds is not None else "")) if final else ""
        note = f" ({escape(outcome.note)})" if outcome.note else ""  # error texts hold [brackets]
        self.console.print(f"[{self.index}/{self.total}] {outcome.run.run_id} "
                           f"[{STATUS_STYLE[outcome.status]}]{outcome.status}[/] {detail}{note}",
                           highlight=False, soft_wrap=True)

    def waiting(self, runs) -> None:
        if not self.quiet:
            self.console.print(f"waiting for {len(runs)} run{'s' * (len(runs) != 1)} that another "
                               f"process is training", highlight=False, soft_wrap=True)

    def summary(self, outcomes) -> None:
        if not self.quiet:
            self.console.print(summary_table(outcomes))
        self.console.print(summary_line(outcomes, self.out), highlight=False, soft_wrap=True)


class LiveDisplay(PlainDisplay):
    """Progress bars for the sweep and the current run (steps, loss, accuracy) in a terminal."""

    def __init__(self, console: Console, out: Path):
        super().__init__(console, out)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=console, transient=True)
        self.sweep_task = None
        self.run_tasks: dict[int, Any] = {}  # slot -> progress task of the run it trains

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def sweep_started(self, runs) -> None:
        super().sweep_started(runs)
        self.sweep_task = self.progress.add_task("runs", total=len(runs), info="")

    def started(self, run, schedule, slot: int = 0) -> None:
        super().started(run, schedule, slot)
        if slot in self.run_tasks:
            self.progress.remove_task(self.run_tasks[slot])
        self.run_tasks[slot] = self.progress.add_task(run.run_id, total=schedule.total_steps, info="")

    def step(self, step: int, loss: float, accuracy: float, slot: int = 0) -> None:
        schedule = self.current[slot][1]
        epochs = -(-schedule.total_steps // schedule.steps_per_epoch)
        epoch = min(step // schedule.steps_per_epoch + 1, epochs)
        self.progress.update(self.run_tasks[slot], completed=step,
                             info=f"epoch {epoch}/{epochs}  loss {loss:.4f}  acc {accuracy:.4f}")

    def run_finished(self, outcome, slot: int = 0) -> None:
        super().run_finished(outcome, slot)
        if slot in self.run_tasks:  # a finished run's bar goes; the runs bar counts it
            self.progress.remove_task(self.run_tasks.pop(slot))
        self.progress.advance(self.sweep_task)


def summary_table(outcomes) -> Table:
    table = Table(title="bncompare run", title_justify="left", header_style="bold")
    for column in ("run", "status", "val_acc", "best", "seconds"):
        table.add_column(column, justify="left" if column in ("run", "status") else "right")
    for o in outcomes:
        final = o.final or {}
        seconds = final.get("train_seconds")
        table.add_row(o.run.run_id, f"[{STATUS_STYLE[o.status]}]{STATUS_WORD.get(o.status, o.status)}[/]",
                      _fmt(final.get("val_accuracy")), _fmt(final.get("best_val_accuracy")),
                      "-" if seconds is None else f"{seconds:.1f}")
    return table


def summary_line(outcomes, out: Path) -> str:
    counts = Counter(o.status for o in outcomes)
    parts = [f"{n} {STATUS_WORD.get(s, s)}" for s, n in counts.items()]
    text = f"{len(outcomes)} run{'s' * (len(outcomes) != 1)}: {', '.join(parts)}."
    if counts["diverged"]:
        text += f" {counts['diverged']} of {len(outcomes)} diverged."
    experiments = sorted({o.run.experiment for o in outcomes})
    where = ", ".join(str(out / e) for e in experiments)
    return f"{text} Results in {where}/" if experiments else text
