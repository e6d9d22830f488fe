"""The `bncompare` command line: the only module that reads it. Each command is a few lines.

Nothing here imports TensorFlow (or NumPy, or matplotlib) at module level: `bncompare --help`
must answer at once; the heavy imports happen inside the command that needs them.
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup, TyperOption

try:  # Typer 0.2x carries its own copy of Click; older Typers use Click itself
    from typer._click import exceptions as _click
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click import exceptions as _click

from bncompare import __version__, interrupts, terminal
from bncompare.backend import BACKENDS
from bncompare.config import ConfigError, Run, load_runs, varying_keys

_NO_ARGS = getattr(_click, "NoArgsIsHelpError", ())


class OneLineErrors(TyperGroup):
    """Usage errors (a missing config, `--jobs 0`, an unknown option) as one `error:` line, like
    every other error, instead of Typer's boxed usage text."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _click.ClickException as e:
            if isinstance(e, _NO_ARGS):  # `bncompare run` alone: its help, as Typer shows it
                e.show()
                sys.exit(e.exit_code)
            context = getattr(e, "ctx", None)
            command = context.command_path if context is not None else "bncompare"
            fail(f"{command}: {e.format_message().rstrip('.')} (see {command} --help)", e.exit_code)
            sys.exit(e.exit_code)
        except typer.Abort:
            stderr.print("Aborted.")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    help="Train networks with and without Batch Normalization from a YAML config, and compare them.",
    no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False, cls=OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"]})
stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


def _flag_type(option: TyperOption, ctx) -> str | None:
    """No `<bool>` after a flag in --help: a flag takes no value (Typer shows one for every option)."""
    return None if option.is_flag else _option_type(option, ctx)


# Typer's rich help asks each option for its type label through this method (Typer 0.16 and
# newer); older Typers have no such hook and show no `<bool>` to begin with.
_option_type = getattr(TyperOption, "display_type_rich", None)
if _option_type is not None:
    TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum of fixed choices, as Typer wants for options like --device auto|cpu|gpu."""
    return Enum(name, {value: value for value in values}, type=str)


Backend = _choices("Backend", BACKENDS)
Executor = _choices("Executor", ("local", "ray"))
Device = _choices("Device", ("auto", "cpu", "gpu"))


ConfigPaths = Annotated[list[Path], typer.Argument(
    exists=True, dir_okay=False, readable=True, metavar="CONFIG.yaml...",
    help="Experiment config files (YAML).")]
Overrides = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE",
    help="Override a config key, e.g. --set train.learning_rate=0.1 (value read as YAML; repeatable).")]
Sweeps = Annotated[Optional[list[str]], typer.Option(
    "--sweep", metavar="KEY=V1,V2,...",
    help="A sweep axis, crossed like `sweep:` in the file (replaces the file's axis of KEY), e.g. "
    "--sweep train.learning_rate=0.01,0.1 (values read as YAML; repeatable).")]
OnlyVariants = Annotated[Optional[str], typer.Option(
    "--variants", metavar="A,B", help="Only these variants of the configs (run ids unchanged).")]


def _version(value: bool) -> None:
    if value:
        stdout.print(f"bncompare {__version__}")
        raise typer.Exit()


@app.callback()
def main(ctx: typer.Context,
         version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Train networks with and without Batch Normalization from a YAML config, and compare them."""
    # The console script installs the signal handlers before importing this module; in-process
    # callers (tests, `app()` from Python) get them here, for this command only.
    if interrupts.install():
        ctx.call_on_close(interrupts.uninstall)
    if ctx.invoked_subcommand == "run":  # from here on a first Ctrl-C stops at a safe point
        interrupts.defer()
    elif ctx.invoked_subcommand in ("plot", "report", "export"):
        interrupts.writes_files()
    previous = terminal.protect_stdout()  # `bncompare run ... | head`: see terminal.DroppingStream
    ctx.call_on_close(lambda: terminal.restore_stdout(previous))


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print a one-line error to stderr; the caller raises the returned Exit."""
    message = terminal.printable(message, newlines=False)
    if len(message) > 2000:  # a key of a megabyte is echoed as much as a user can read
        message = f"{message[:1000]}... ({len(message):,} characters)"
    stderr.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def _given_path(text: str | Path) -> Path:
    """An --out path from its text; `--out ''` is an error, not Path('.'), the current directory."""
    if not str(text).strip():
        raise fail("--out '': empty; give a directory")
    return Path(text)


def _results_root(text: str | Path) -> Path:
    """--out must be a directory or a path where one can be made: checked before anything loads."""
    out = _given_path(text)
    try:
        for folder in (out, *out.parents):
            if folder.exists() or folder.is_symlink():
                if not folder.is_dir():
                    what = "is a file" if folder.is_file() else "exists and is not a directory"
                    raise fail(f"--out {out}: {folder} {what}; give a directory for the results")
                break
    except OSError as e:  # a 300-character name: ENAMETOOLONG
        raise fail(f"--out {out}: {e.strerror or e}") from None
    return out


def _backend_name(chosen: str | None = None) -> str:
    """The Keras backend runs will train on: --backend, else $KERAS_BACKEND, else tensorflow."""
    return chosen or os.environ.get("KERAS_BACKEND") or "tensorflow"


def _load(configs: list[Path], overrides: list[str] | None, sweeps: list[str] | None = None,
          only_variants: str | None = None, backend: str | None = None) -> list[Run]:
    """The runs of the configs, with ids for the Keras backend they will train on."""
    try:
        return load_runs(configs, overrides, sweeps, only_variants, backend=_backend_name(backend))
    except ConfigError as e:
        raise fail(str(e)) from None


def print_runs(runs: list[Run], training: dict[int, str] | None = None) -> None:
    """The expanded run list with the params that differ between runs, and (`training`, by
    id(run)) how each will train: its engine group, or why it trains alone.

    A table in a terminal; in a pipe, one `experiment/run_id key=value ...` line per run, which
    shell scripts can grep and cut.
    """
    keys = varying_keys(runs)
    training = training or {}
    if not stdout.is_terminal:
        for run in runs:
            values = " ".join(f"{k}={json.dumps(run.params[k])}" for k in keys)
            how = f" engine={json.dumps(training[id(run)])}" if id(run) in training else ""
            stdout.print(f"{run.experiment}/{run.run_id} variant={run.variant} {values} "
                         f"seed={run.seed}{how}".replace("  ", " "), soft_wrap=True)
        return
    experiments = sorted({r.experiment for r in runs})
    table = Table(header_style="bold", title_justify="left",
                  title=f"{', '.join(experiments)}: {len(runs)} run{'s' * (len(runs) != 1)}")
    # Run ids are what users copy into paths: never cut them.
    table.add_column("run id", no_wrap=True)
    if len(experiments) > 1:
        table.add_column("experiment")
    for key in keys:
        table.add_column(key, overflow="fold")
    if training:
        table.add_column("trains", overflow="fold")
    for run in runs:
        table.add_row(run.run_id, *([run.experiment] if len(experiments) > 1 else []),
                      *(json.dumps(run.params[k]) for k in keys),
                      *([training.get(id(run), "")] if training else []))
    stdout.print(table)


def training_plan(runs: list[Run], backend: str) -> dict[int, str]:
    """How each run will train, by id(run): "tf_pack 1 (4 runs)", "fit (train.pack: off)"..."""
    from bncompare import engines

    described = {}
    for number, group in enumerate(engines.plan(runs, backend), start=1):
        text = (f"{group.engine} group {number} ({len(group.runs)} runs)" if len(group.runs) > 1
                else f"{group.engine} alone" + (f" ({group.note})" if group.note else ""))
        for run in group.runs:
            described[id(run)] = text
    return described


@app.command()
def run(
    configs: ConfigPaths,
    overrides: Overrides = None,
    sweeps: Sweeps = None,
    only_variants: OnlyVariants = None,
    out: Annotated[Path, typer.Option("--out", parser=_results_root,
                                      help="Results root directory.")] = Path("results"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the expanded run list; train nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Retrain runs that already completed.")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Train interrupted runs from step 0 instead of resuming them from their checkpoint.")] = False,
    device: Annotated[Device, typer.Option("--device", help="auto: a GPU if one is visible; gpu fails without one.")] = Device.auto,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress; print only the final summary line and errors.")] = False,
    jobs: Annotated[str, typer.Option("--jobs", metavar="auto|N", help="Worker processes sharing the runs (each pinned to one GPU when GPUs are visible); auto: one per core, or this process for one group or a small sweep.")] = "auto",
    backend: Annotated[Optional[Backend], typer.Option("--backend", help="Keras backend (default: $KERAS_BACKEND, else tensorflow).")] = None,
    executor: Annotated[Executor, typer.Option("--executor", help="local: this machine (see --jobs); ray: one Ray task per group of runs.")] = Executor.local,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (default: start a local Ray instance).")] = None,
) -> None:
    """Train every run the configs expand to, skipping runs that already finished and resuming
    interrupted ones from their last checkpoint.

    Writes <out>/<experiment>/<run_id>/{config.yaml,metrics.json,run.log}. Exit code: 0 when
    every run completed or diverged, 1 when a run failed, 2 for a bad config, 130 when interrupted.
    """
    workers = _jobs(jobs)
    runs = _load(configs, overrides, sweeps, only_variants, backend.value if backend else None)
    if dry_run:
        from bncompare.backend import select_backend

        select_backend(backend.value if backend else None)  # the planner reads its name (no import)
        print_runs(runs, training_plan(runs, _backend_name()))
        return
    from bncompare import executors, interrupts, runner
    from bncompare.backend import DeviceError, select_backend
    from bncompare.callables import CallableError
    from bncompare.data import DataError
    from bncompare.display import LiveDisplay, PlainDisplay, RunLog
    from bncompare.skipping import finished_record, run_dir, unfinished
    from bncompare.status import decide

    if not unfinished(runs, out, force):  # a rerun of finished work: no TensorFlow, no data
        outcomes = [decide(one, finished_record(run_dir(one, out)) or {}, earlier=True) for one in runs]
        PlainDisplay(stdout, out, quiet).summary(outcomes)
        raise typer.Exit(runner.exit_code(outcomes))
    try:  # everything the user must fix fails here, before anything is written
        select_backend(backend.value if backend else None)
        with interrupts.stop_at_safe_points():  # `kill` while TensorFlow loads exits 130 too
            prepared, workers, how = executors.check(runs, executor.value, workers, device.value, address)
            interrupts.check()
    except (DataError, DeviceError, CallableError) as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None
    if how and not quiet:
        stdout.print(how, highlight=False, soft_wrap=True)
    if restart:
        from bncompare.lifecycle import discard_partial

        discard_partial(runs, out)
    live = stdout.is_terminal and not quiet
    display = LiveDisplay(stdout, out) if live else PlainDisplay(stdout, out, quiet)
    try:
        with display:
            outcomes, interrupted = executors.train(runs, out, RunLog(display, out), prepared,
                                                    executor.value, workers, device.value, address, force)
    except DeviceError as e:  # a Ray cluster without the GPUs asked for; nothing was written
        raise fail(str(e)) from None
    display.summary(outcomes)
    raise typer.Exit(runner.exit_code(outcomes, interrupted))


def _jobs(text: str) -> int | None:
    """--jobs: a number of worker processes, or None for auto."""
    if text.strip().lower() == "auto":
        return None
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise fail(f"--jobs {text}: give auto or a number of worker processes (1 or more)")
    return jobs


@app.command()
def validate(configs: ConfigPaths, overrides: Overrides = None, sweeps: Sweeps = None,
             only_variants: OnlyVariants = None) -> None:
    """Check configs and print the runs each expands to. Exit code 2 when any is invalid."""
    invalid = 0
    for config in configs:
        try:
            runs = load_runs([config], overrides, sweeps, only_variants, backend=_backend_name())
        except ConfigError as e:
            fail(str(e))
            invalid += 1
            continue
        stdout.print(f"{escape(terminal.printable(str(config)))}: valid", soft_wrap=True)
        print_runs(runs)
    if invalid:
        if len(configs) > 1:
            stderr.print(f"{invalid} of {len(configs)} configs are invalid", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE)


XAxis = _choices("XAxis", ("epoch", "step", "time"))
ImageFormat = _choices("ImageFormat", ("png", "svg", "pdf"))
TableFormat = _choices("TableFormat", ("table", "csv", "json", "markdown"))
SummaryFormat = _choices("SummaryFormat", ("table", "csv", "json", "markdown", "latex"))


ResultsDir = Annotated[Path, typer.Argument(
    metavar="RESULTS_DIR", help="A results root, one experiment's directory, or one run's directory.")]
IncludeRunning = Annotated[bool, typer.Option(
    "--include-running", help="Use runs still training too (their curves so far), to watch a sweep.")]
Where = Annotated[Optional[list[str]], typer.Option(
    "--where", metavar="KEY=VALUE", help="Only runs whose param KEY has VALUE (YAML-typed; KEY may be "
    "a full key, its last part, variant or experiment; repeatable: all must match).")]
ExperimentName = Annotated[Optional[str], typer.Option(
    "--experiment", metavar="NAME", help="Only the runs of this experiment.")]
MetricName = Annotated[str, typer.Option(
    "--metric", metavar="METRIC", help="Any metric in the runs' history: val_accuracy, val_loss, "
    "accuracy, loss, val_accuracy_precise, train_eval_loss...")]
Reduce = Annotated[str, typer.Option(
    "--reduce", metavar="final|best|last:K", help="One number per run: the final value, the best "
    "(lowest for losses), or the mean of the last K eval points.")]


def _results(root: Path, include_running: bool = False, where: list[str] | None = None,
             experiment: str | None = None, metric: str | None = None):
    """The usable runs under `root`, after one warning per skipped run; exit 2 when none, or when a
    filter or the metric names nothing in them."""
    from bncompare.aggregate import BadFilter, NoResults, check_metric, load

    try:
        results = load(root, include_running=include_running, where=where or (), experiment=experiment)
    except (NoResults, BadFilter) as e:
        raise fail(str(e)) from None
    for path, reason in results.skipped:
        # Names read from disk may hold terminal escapes: print them as text, not as commands.
        stderr.print(f"[yellow]warning:[/] skipped {escape(_printable(str(path)))}: "
                     f"{escape(_printable(reason))}", soft_wrap=True)
    if not results.experiments:
        running = sum(reason == "still running" for _, reason in results.skipped)
        hint = (f"; {running} still running: add --include-running to use their curves so far"
                if running and not include_running else "")
        raise fail(f"{root}: no finished runs (skipped all {len(results.skipped)}){hint}")
    if metric is not None:
        try:
            check_metric(results, metric)
        except BadFilter as e:
            raise fail(str(e)) from None
    return results


def _printable(text: str) -> str:
    """Control characters (escape sequences, newlines) shown as escapes."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _reduction(text: str):
    from bncompare.aggregate import BadFilter, Reduction

    try:
        return Reduction.parse(text)
    except BadFilter as e:
        raise fail(str(e)) from None


def _skipped_note(results) -> str:
    n = len(results.skipped)
    return f"; skipped {n} unfinished or unreadable run{'s' * (n != 1)} (warnings above)" if n else ""


def _print_rendered(rendered) -> None:
    """A string as it is; a rich table at its full width when stdout is not a terminal."""
    if isinstance(rendered, str):
        typer.echo(rendered)
    elif stdout.is_terminal:
        stdout.print(rendered)
    else:  # a pipe or a file: rich would wrap the cells at 80 columns; give the table its width
        width = stdout.measure(rendered, options=stdout.options.update_width(1000)).maximum
        Console(width=width, highlight=False).print(rendered)


@app.command()
def plot(
    results_dir: ResultsDir,
    out: Annotated[Optional[Path], typer.Option(
        "--out", parser=_given_path, help="Write figures here instead of <experiment>/plots/.")] = None,
    metric: MetricName = "val_accuracy",
    x: Annotated[XAxis, typer.Option("--x", help="Horizontal axis of curves (time: training seconds).")] = XAxis.epoch,
    image_format: Annotated[ImageFormat, typer.Option("--format", help="Image file format.")] = ImageFormat.png,
    seeds: Annotated[bool, typer.Option("--seeds", help="Draw each seed's own curve under the mean.")] = False,
    include_running: IncludeRunning = False,
    where: Where = None,
    experiment: ExperimentName = None,
) -> None:
    """Draw learning curves, sweep plots and recorded internals for every experiment in RESULTS_DIR.

    --metric's curves come first and sweep plots show its final and best value. Runs still running,
    failed or unreadable are skipped with a warning; diverged runs are marked. Exit code 2 when the
    figures cannot be written (read-only or full disk: use --out).
    """
    results = _results(results_dir, include_running, where, experiment, metric)
    from bncompare.plots import PlotWriteError, plot_results

    def note(message: str) -> None:
        stderr.print(f"[yellow]note:[/] {escape(_printable(message))}", soft_wrap=True)

    try:
        written = plot_results(results, metric, x.value, image_format.value, out, seeds, note)
    except PlotWriteError as e:
        raise fail(f"cannot write figures to {e.folder} ({e.reason}); "
                   f"write them elsewhere with --out DIR") from None
    for path in written:
        stdout.print(escape(str(path)), soft_wrap=True)
    stdout.print(f"{len(written)} figure{'s' * (len(written) != 1)} from {results.runs} "
                 f"run{'s' * (results.runs != 1)}{_skipped_note(results)}.", soft_wrap=True)


@app.command()
def summary(
    results_dir: ResultsDir,
    table_format: Annotated[SummaryFormat, typer.Option(
        "--format", metavar="FORMAT", help="table, csv, json, markdown or latex.")] = SummaryFormat.table,
    metric: MetricName = "val_accuracy",
    reduce: Reduce = "final",
    include_running: IncludeRunning = False,
    where: Where = None,
    experiment: ExperimentName = None,
) -> None:
    """Print one row per condition (runs differing only in seed): the metric's mean ± std over
    seeds, its best, training time and status counts. Skipped runs are reported on stderr."""
    reduction = _reduction(reduce)
    results = _results(results_dir, include_running, where, experiment, metric)
    from bncompare.summary import render

    _print_rendered(render(results, table_format.value, metric, reduction))
    if results.skipped:
        stderr.print(f"{results.runs} run{'s' * (results.runs != 1)} summarised"
                     f"{_skipped_note(results)}.", soft_wrap=True)


@app.command()
def compare(
    results_dir: ResultsDir,
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", metavar="VARIANT", help="The variant others are compared with (default: one "
        "named like no_bn, else the first).")] = None,
    metric: MetricName = "val_accuracy",
    reduce: Reduce = "final",
    table_format: Annotated[TableFormat, typer.Option(
        "--format", metavar="FORMAT", help="table, csv, json or markdown.")] = TableFormat.table,
    include_running: IncludeRunning = False,
    where: Where = None,
    experiment: ExperimentName = None,
    tune: Annotated[Optional[str], typer.Option(
        "--tune", metavar="KEY", help="Compare each variant at its own best value of this swept key "
        "(best mean over seeds; with --metric test_accuracy, chosen by val_accuracy).")] = None,
) -> None:
    """Paired comparison by seed of each variant with the baseline, per condition: every seed's
    wins (a diverged run loses), a signed-rank test Holm-adjusted over the rows, and over the seeds
    both trained the mean difference (variant − baseline) with its 95% t-interval, the t-test's
    p-value and the seeds that would give it 80% power."""
    reduction = _reduction(reduce)
    results = _results(results_dir, include_running, where, experiment)
    from bncompare.aggregate import BadFilter
    from bncompare.compare import check_metric, render, rows

    try:
        check_metric(results, metric, tune)
        records = rows(results, metric, reduction, baseline, tune)
    except BadFilter as e:
        raise fail(str(e)) from None
    if not records:
        raise fail(f"{results_dir}: nothing to compare (one variant only: "
                   f"{', '.join(results.variants)})")
    _print_rendered(render(results, records, table_format.value))
    if results.skipped:
        stderr.print(f"{results.runs} runs compared{_skipped_note(results)}.", soft_wrap=True)


@app.command()
def report(
    results_dir: ResultsDir,
    out: Annotated[Optional[Path], typer.Option(
        "--out", metavar="FILE.html", help="Write the page here (default: RESULTS_DIR/report.html).")] = None,
    metric: MetricName = "val_accuracy",
    include_running: IncludeRunning = False,
    where: Where = None,
    experiment: ExperimentName = None,
) -> None:
    """Write one self-contained HTML page of the results, to read and send: per experiment, what
    each variant sets, the paired comparison in words, as a table and a forest plot, the figures,
    the summary, warnings, settings, environment and the commands that reproduce it.

    Nothing in the page loads from the network or runs a script. Exit code 2 when it cannot be
    written (use --out).
    """
    target = out if out is not None else results_dir / "report.html"
    if target.is_dir():
        raise fail(f"--out {target}: is a directory; give a file name, e.g. --out report.html")
    results = _results(results_dir, include_running, where, experiment, metric)
    from bncompare.report import write

    command = " ".join(shlex.quote(part) for part in ["bncompare", *sys.argv[1:]]) \
        if Path(sys.argv[0]).name in ("bncompare", "__main__.py") else ""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        figures = write(results, target, metric, command)
    except OSError as e:
        raise fail(f"cannot write {target} ({e.strerror or e}); write it elsewhere with --out FILE.html") from None
    stdout.print(escape(str(target)), soft_wrap=True)
    stdout.print(f"{len(results.experiments)} experiment{'s' * (len(results.experiments) != 1)}, "
                 f"{figures} figure{'s' * (figures != 1)}, {results.runs} "
                 f"run{'s' * (results.runs != 1)}{_skipped_note(results)}.", soft_wrap=True)


ExportFormat = _choices("ExportFormat", ("csv", "parquet", "jsonl"))


@app.command()
def export(
    results_dir: ResultsDir,
    table_format: Annotated[Optional[ExportFormat], typer.Option(
        "--format", help="csv | parquet | jsonl (default: from --out's suffix, else csv).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", metavar="FILE", help="Write the table here (default: stdout; parquet needs a file).")] = None,
    include_running: IncludeRunning = False,
    where: Where = None,
    experiment: ExperimentName = None,
) -> None:
    """Every eval point of every run as one table, for pandas: one row per run and eval point with
    experiment, run_id, variant, status, seed, every param, step, epoch and every history series.
    From Python: bncompare.load(RESULTS_DIR)."""
    suffix = out.suffix.lstrip(".").lower() if out is not None else ""
    fmt = table_format.value if table_format else suffix if suffix in ("csv", "parquet", "jsonl") else "csv"
    if fmt == "parquet" and out is None:
        raise fail("--format parquet is binary: give a file with --out FILE.parquet")
    results = _results(results_dir, include_running, where, experiment)
    from bncompare.export import ExportError, frame, render
    from bncompare.results import write_bytes_atomic

    try:
        table = frame(results)
        content = render(table, fmt)
        if out is None:
            typer.echo(content.decode(), nl=False)  # csv or jsonl: text
            return
        write_bytes_atomic(out, content)
    except ExportError as e:
        raise fail(str(e)) from None
    except OSError as e:
        raise fail(f"--out {out}: cannot write: {e.strerror or e}") from None
    stdout.print(f"{len(table):,} rows ({results.runs} run{'s' * (results.runs != 1)}) written to "
                 f"{escape(str(out))}{_skipped_note(results)}.", soft_wrap=True)


def _paragraphs(text: str) -> str:
    """A docstring's paragraphs as single lines: Typer keeps a docstring's line breaks, so a line
    that the terminal wraps again would end mid-sentence, a short fragment on its own line."""
    return "\n\n".join(" ".join(part.split()) for part in text.split("\n\n"))


for _command in app.registered_commands:
    _command.help = _paragraphs(inspect.getdoc(_command.callback) or "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
