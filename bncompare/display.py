"""What `bncompare run` shows while it works: live progress in a terminal, plain lines otherwise.

Both displays receive the same events (from the runner and, per batch, from training) and end with
the same summary, so a log file of a sweep reads like the terminal did. Run ids are never cut:
they are what users copy into paths.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from bncompare import terminal
from bncompare.lifecycle import Listener

STATUS_STYLE = {"completed": "green", "diverged": "yellow", "failed": "bold red",
                "interrupted": "bold red", "skipped": "dim", "busy": "cyan", "not_started": "dim"}
STATUS_WORD = {"skipped": "skipped (done before)", "busy": "busy (another process)",
               "not_started": "not started"}
# Outcomes of runs this invocation did not train: they say nothing about how long training takes.
NOT_TRAINED = ("skipped", "busy", "not_started")


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _note(outcome) -> str:
    """The outcome's note, unless it only repeats the status ("interrupted (interrupted)")."""
    note = terminal.printable(outcome.note or "", newlines=False)
    return "" if note.strip().lower() in ("", outcome.status, STATUS_WORD.get(outcome.status, "")) else note


class PlainDisplay(Listener):
    """One line per eval point and per run: for logs, pipes, CI, and `--quiet` (summary only).

    `slot` tells parallel workers (`--jobs`) and pack members apart; a lone run is slot 0. Each run
    is numbered by its place in the sweep ([3/8]), whichever order runs train and finish in.
    """

    def __init__(self, console: Console, out: Path, quiet: bool = False):
        self.console, self.out, self.quiet = console, out, quiet
        self.total = self.finished = 0
        self.numbers: dict[tuple[str, str], int] = {}  # (experiment, run_id) -> 1-based place
        self.current: dict[int, tuple] = {}  # slot -> (run, schedule)
        self.warnings = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def sweep_started(self, runs) -> None:
        self.total, self.finished = len(runs), 0
        self.numbers = {(run.experiment, run.run_id): i + 1 for i, run in enumerate(runs)}

    def number(self, run) -> str:
        """`[3/8]`: the run's place in the sweep."""
        place = self.numbers.get((run.experiment, run.run_id))
        return f"[{place}/{self.total}]" if place else f"[?/{self.total}]"

    def compiling(self, run, slot: int = 0) -> None:
        """The run (or pack) is being compiled: its first step can take 10-20 s."""

    def started(self, run, schedule, slot: int = 0) -> None:
        self.current[slot] = (run, schedule)

    def step(self, step: int, loss: float, accuracy: float, slot: int = 0) -> None:
        """Plain output has no per-step line: a log gets one line per eval point."""

    def point(self, point: dict[str, Any], slot: int = 0) -> None:
        if self.quiet:
            return
        run, schedule = self.current[slot]
        self.console.print(
            f"{escape(self.number(run))} {run.run_id} epoch {point['epoch']} "
            f"step {point['step']}/{schedule.total_steps} loss {_fmt(point['loss'])} "
            f"acc {_fmt(point['accuracy'])} val_loss {_fmt(point['val_loss'])} "
            f"val_acc {_fmt(point['val_accuracy'])} ({point['seconds']:.1f} s)",
            highlight=False, soft_wrap=True)

    def run_finished(self, outcome, slot: int = 0) -> None:
        self.finished += 1
        if self.quiet and outcome.status not in ("failed", "interrupted"):
            return
        final = _final(outcome, self.out)
        seconds = final.get("train_seconds")
        detail = (f" val_acc {_fmt(final.get('val_accuracy'))}"
                  + (f" in {seconds:.1f} s" if seconds is not None else "")) if final else ""
        note = _note(outcome)
        self.console.print(f"{escape(self.number(outcome.run))} {outcome.run.run_id} "
                           f"[{STATUS_STYLE[outcome.status]}]{STATUS_WORD.get(outcome.status, outcome.status)}[/]"
                           f"{detail}{f' ({escape(note)})' if note else ''}",  # errors hold [brackets]
                           highlight=False, soft_wrap=True)

    def warning(self, run, text: str, slot: int = 0) -> None:
        """The first warning in full; later ones (every BN run of a short sweep gets the same lag
        warning) are counted and mentioned once at the end, so they do not bury the progress."""
        self.warnings += 1
        if not self.quiet and self.warnings == 1:
            self.console.print(f"[yellow]warning:[/] {escape(run.run_id)}: {escape(text)}",
                               highlight=False, soft_wrap=True)

    def waiting(self, runs) -> None:
        if not self.quiet:
            self.console.print(f"waiting for {len(runs)} run{'s' * (len(runs) != 1)} that another "
                               f"process is training", highlight=False, soft_wrap=True)

    def summary(self, outcomes) -> None:
        if self.warnings > 1 and not self.quiet:
            more = self.warnings - 1
            self.console.print(f"[yellow]warning:[/] {more} more run{'s' * (more != 1)} got a warning "
                               f"(each run's metrics.json has its own under \"warnings\")",
                               highlight=False, soft_wrap=True)
        if not self.quiet:
            print_summary_table(self.console, outcomes, self.out)
        self.console.print(summary_line(outcomes, self.out), highlight=False, soft_wrap=True)


class LiveDisplay(PlainDisplay):
    """Progress bars for the sweep and the runs training now (steps, loss, accuracy) in a terminal.

    One live display per terminal: a second bncompare in the same terminal (a shell script's
    `&`), or a second display in one process, prints plain lines instead of fighting over the
    cursor (see `terminal.claim_live`).
    """

    def __init__(self, console: Console, out: Path):
        super().__init__(console, out)
        # The run id column keeps its width (see sweep_started); the others give way to it.
        self.id_column = Column(no_wrap=True)
        self.progress = Progress(
            TextColumn("{task.description}", table_column=self.id_column), BarColumn(bar_width=12),
            MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=9)),
            TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}", table_column=Column(no_wrap=True, min_width=12)),
            console=console, transient=True)
        self.live = False
        self.sweep_task = None
        self.run_tasks: dict[int, Any] = {}  # slot -> progress task of the run it trains
        self.trained_seconds: list[float] = []  # wall time of each run trained so far
        self.run_started: dict[int, float] = {}  # slot -> when its run started

    def __enter__(self):
        self.live = terminal.claim_live(self.console.file)
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.progress.stop()
            terminal.release_live()
            self.live = False

    def sweep_started(self, runs) -> None:
        super().sweep_started(runs)
        numbers = len(f"[{len(runs)}/{len(runs)}] ")
        self.id_column.min_width = max((numbers + len(run.run_id) for run in runs), default=0)
        if self.live:
            self.sweep_task = self.progress.add_task("runs", total=len(runs), info="", eta="")

    def compiling(self, run, slot: int = 0) -> None:
        if not self.live:
            return super().compiling(run, slot)
        self._replace_task(slot, f"{self.number(run)} {run.run_id}", None, "compiling...")

    def started(self, run, schedule, slot: int = 0) -> None:
        super().started(run, schedule, slot)
        self.run_started[slot] = time.monotonic()
        if self.live:
            # Engines report `started` before their first compiled call, which compiles: until the
            # first step comes back, say so rather than show a bar stuck at 0.
            self._replace_task(slot, f"{self.number(run)} {run.run_id}", schedule.total_steps,
                               "compiling...")

    def _replace_task(self, slot: int, description: str, total: int | None, info: str) -> None:
        if slot in self.run_tasks:
            self.progress.remove_task(self.run_tasks[slot])
        self.run_tasks[slot] = self.progress.add_task(escape(description), total=total, info=info,
                                                      eta="")

    def step(self, step: int, loss: float, accuracy: float, slot: int = 0) -> None:
        if not self.live:
            return
        schedule = self.current[slot][1]
        epochs = -(-schedule.total_steps // schedule.steps_per_epoch)
        epoch = min(step // schedule.steps_per_epoch + 1, epochs)
        self.progress.update(self.run_tasks[slot], completed=step,
                             info=f"epoch {epoch}/{epochs}  loss {loss:.4f}  acc {accuracy:.4f}")
        self._update_eta()

    def point(self, point: dict[str, Any], slot: int = 0) -> None:
        if not self.live:
            super().point(point, slot)

    def run_finished(self, outcome, slot: int = 0) -> None:
        started = self.run_started.pop(slot, None)
        if started is not None and outcome.status not in NOT_TRAINED:
            self.trained_seconds.append(time.monotonic() - started)
        if not self.live:
            return super().run_finished(outcome, slot)
        super().run_finished(outcome, slot)
        if slot in self.run_tasks:  # a finished run's bar goes; the runs bar counts it
            self.progress.remove_task(self.run_tasks.pop(slot))
        self.progress.advance(self.sweep_task)
        self._update_eta()

    def _update_eta(self) -> None:
        """Time left from the runs trained in this invocation only: runs skipped as done before,
        or found busy, take no time and would make the estimate far too short."""
        if self.sweep_task is None:
            return
        left = self.total - self.finished
        if not self.trained_seconds or left <= 0:
            self.progress.update(self.sweep_task, eta="")
            return
        mean = sum(self.trained_seconds) / len(self.trained_seconds)
        now = time.monotonic()
        running = sum(min(now - t, mean) for t in self.run_started.values())
        seconds = max(mean * left - running, 0.0)
        self.progress.update(self.sweep_task, eta=f"eta {_duration(seconds)}")


class RunLog(Listener):
    """Passes every event on to the display, and appends what the plain display shows for a run to
    that run's run.log: a header when it starts, its eval-point lines, its warnings (each in full:
    the terminal shows only the sweep's first) and its final status. A retried run's log keeps the
    earlier attempts above the new header. One short append per eval point: training does not
    notice it."""

    def __init__(self, display: Listener, out: Path):
        import io

        self.display, self.out = display, out
        self.buffer = io.StringIO()
        # Plain text whatever the terminal: no colours, no wrapping of long lines.
        self.plain = PlainDisplay(Console(file=self.buffer, width=100_000, no_color=True,
                                          highlight=False, force_terminal=False), out)
        self.runs: dict[int, Any] = {}  # slot -> the run it trains

    def _printed(self) -> str:
        """What the plain display printed since the last call."""
        text = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        return text

    def _append(self, run, text: str) -> None:
        from bncompare.results import RUN_LOG, append_atomic, make_directories
        from bncompare.skipping import run_dir

        try:
            folder = run_dir(run, self.out)
            make_directories(folder, self.out)  # refuses a run directory that is a symbolic link
            append_atomic(folder / RUN_LOG, text)
        except OSError:  # a full or read-only disk (or a planted link) fails the run, which says so
            pass

    def sweep_started(self, runs) -> None:
        self.plain.sweep_started(runs)
        self.display.sweep_started(runs)

    def compiling(self, run, slot: int = 0) -> None:
        self.display.compiling(run, slot)

    def started(self, run, schedule, slot: int = 0) -> None:
        from bncompare import __version__
        from bncompare.results import now

        self.runs[slot] = run
        self.plain.started(run, schedule, slot)
        self._append(run, f"bncompare {__version__}: {self.plain.number(run)} {run.run_id} started "
                          f"at {now()} ({schedule.total_steps} steps)\n")
        self.display.started(run, schedule, slot)

    def step(self, step: int, loss: float, accuracy: float, slot: int = 0) -> None:
        self.display.step(step, loss, accuracy, slot)

    def point(self, point: dict[str, Any], slot: int = 0) -> None:
        self.plain.point(point, slot)
        self._append(self.runs[slot], self._printed())
        self.display.point(point, slot)

    def warning(self, run, text: str, slot: int = 0) -> None:
        self._append(run, f"warning: {run.run_id}: {text}\n")
        self.display.warning(run, text, slot)

    def run_finished(self, outcome, slot: int = 0) -> None:
        self.plain.run_finished(outcome, slot)
        printed = self._printed()
        if outcome.status == "failed":  # the terminal shows the error's first line; this, all of it
            printed += _error_of(outcome.run, self.out)
        if outcome.status not in NOT_TRAINED:  # else its directory is another invocation's record
            self._append(outcome.run, printed)
        self.display.run_finished(outcome, slot)

    def waiting(self, runs) -> None:
        self.display.waiting(runs)


def _error_of(run, out: Path) -> str:
    """A failed run's error with its traceback, from its metrics.json, indented under the line
    that reports it ("" when there is none to read)."""
    from bncompare.results import UnreadableRun, read_run
    from bncompare.skipping import run_dir

    try:
        error = read_run(run_dir(run, out)).metrics.get("error")
    except (UnreadableRun, OSError, ValueError):
        return ""
    return "".join(f"    {line}\n" for line in error.splitlines()) if isinstance(error, str) else ""


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _final(outcome, out: Path) -> dict[str, Any]:
    """The outcome's final metrics; for an interrupted run without them, its last eval point read
    back from its metrics.json (the partial curve it saved)."""
    final = dict(outcome.final or {})
    if final.get("val_accuracy") is not None or outcome.status != "interrupted":
        return final
    from bncompare.results import UnreadableRun, read_run
    from bncompare.skipping import run_dir

    try:
        history = read_run(run_dir(outcome.run, out)).metrics.get("history") or {}
    except (UnreadableRun, OSError, ValueError):
        return final
    values = [v for v in history.get("val_accuracy") or [] if isinstance(v, (int, float))]
    if values:
        final.setdefault("val_accuracy", values[-1])
        final.setdefault("best_val_accuracy", max(values))
    return final


def summary_rows(outcomes, out: Path) -> list[tuple[str, str, str, str, str, str]]:
    """(run id, status, val_acc, best, seconds, style) per outcome."""
    rows = []
    for o in outcomes:
        final = _final(o, out)
        seconds = final.get("train_seconds")
        rows.append((o.run.run_id, STATUS_WORD.get(o.status, o.status), _fmt(final.get("val_accuracy")),
                     _fmt(final.get("best_val_accuracy")), "-" if seconds is None else f"{seconds:.1f}",
                     STATUS_STYLE[o.status]))
    return rows


def summary_table(outcomes, out: Path = Path(".")) -> Table:
    table = Table(title="bncompare run", title_justify="left", header_style="bold")
    for column in ("run", "status", "val_acc", "best", "seconds"):
        table.add_column(column, justify="left" if column in ("run", "status") else "right",
                         no_wrap=column == "run")
    for run_id, status, val, best, seconds, style in summary_rows(outcomes, out):
        table.add_row(run_id, f"[{style}]{status}[/]", val, best, seconds)
    return table


def print_summary_table(console: Console, outcomes, out: Path) -> None:
    """The end-of-sweep table; plain aligned lines when the table would not fit the console width,
    so that no run id is ever cut short ("…") at 80 columns or in a pipe."""
    table = summary_table(outcomes, out)
    needed = console.measure(table, options=console.options.update_width(10_000)).maximum
    if needed <= console.width:
        console.print(table)
        return
    rows = summary_rows(outcomes, out)
    header = ("run", "status", "val_acc", "best", "seconds", "")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(5)]
    console.print("bncompare run", highlight=False, soft_wrap=True)
    for row in [header] + rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])] + [
            row[i].rjust(widths[i]) for i in (2, 3, 4)]
        line = "  ".join(escape(c) for c in cells)
        if row[5]:
            line = line.replace(escape(cells[1]), f"[{row[5]}]{escape(cells[1])}[/]", 1)
        console.print(line, highlight=False, soft_wrap=True)


def summary_line(outcomes, out: Path) -> str:
    counts = Counter(o.status for o in outcomes)
    parts = [f"{n} {STATUS_WORD.get(s, s)}" for s, n in counts.items()]
    text = f"{len(outcomes)} run{'s' * (len(outcomes) != 1)}: {', '.join(parts)}."
    experiments = sorted({o.run.experiment for o in outcomes})
    where = ", ".join(str(out / e) for e in experiments)
    return f"{text} Results in {where}/" if experiments else text
