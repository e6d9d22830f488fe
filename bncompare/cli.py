"""The `bncompare` command line: the only module that reads it. Each command is a few lines.

Nothing here imports TensorFlow (or NumPy, or matplotlib) at module level: `bncompare --help`
must answer at once; the heavy imports happen inside the command that needs them.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from bncompare import __version__
from bncompare.config import ConfigError, Run, load_runs, varying_keys

app = typer.Typer(
    help="Train networks with and without Batch Normalization from a YAML config, and compare them.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


ConfigPaths = Annotated[list[Path], typer.Argument(
    exists=True, dir_okay=False, readable=True, metavar="CONFIG.yaml...",
    help="Experiment config files (YAML).")]
Overrides = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE",
    help="Override a config key, e.g. --set train.learning_rate=0.1 (value read as YAML; repeatable).")]


def _version(value: bool) -> None:
    if value:
        stdout.print(f"bncompare {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Train networks with and without Batch Normalization from a YAML config, and compare them."""


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print a one-line error to stderr; the caller raises the returned Exit."""
    stderr.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


def _load(configs: list[Path], overrides: list[str] | None) -> list[Run]:
    try:
        return load_runs(configs, overrides)
    except ConfigError as e:
        raise fail(str(e)) from None


def print_runs(runs: list[Run]) -> None:
    """The expanded run list with the params that differ between runs.

    A table in a terminal; in a pipe, one `experiment/run_id key=value ...` line per run, which
    shell scripts can grep and cut.
    """
    keys = varying_keys(runs)
    if not stdout.is_terminal:
        for run in runs:
            values = " ".join(f"{k}={json.dumps(run.params[k])}" for k in keys)
            stdout.print(f"{run.experiment}/{run.run_id} variant={run.variant} {values} "
                         f"seed={run.seed}".replace("  ", " "), soft_wrap=True)
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
    for run in runs:
        table.add_row(run.run_id, *([run.experiment] if len(experiments) > 1 else []),
                      *(json.dumps(run.params[k]) for k in keys))
    stdout.print(table)


@app.command()
def run(
    configs: ConfigPaths,
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option("--out", help="Results root directory.")] = Path("results"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the expanded run list; train nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Retrain runs that already completed.")] = False,
    device: Annotated[Device, typer.Option("--device", help="auto: a GPU if one is visible; gpu fails without one.")] = Device.auto,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress; print only the final summary line and errors.")] = False,
) -> None:
    """Train every run the configs expand to, skipping runs that already finished.

    Writes <out>/<experiment>/<run_id>/{config.yaml,metrics.json}. Exit code: 0 when every run
    completed or diverged, 1 when a run failed, 2 for a bad config, 130 when interrupted.
    """
    runs = _load(configs, overrides)
    if dry_run:
        print_runs(runs)
        return
    from bncompare import runner
    from bncompare.backend import DeviceError
    from bncompare.data import DataError
    from bncompare.display import LiveDisplay, PlainDisplay

    try:
        prepared = runner.prepare(runs, device.value)
    except (DataError, DeviceError) as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None
    live = stdout.is_terminal and not quiet
    display = LiveDisplay(stdout, out) if live else PlainDisplay(stdout, out, quiet)
    with display:
        outcomes = runner.execute(runs, out, prepared, display, force=force)
    display.summary(outcomes)
    raise typer.Exit(runner.exit_code(outcomes))


@app.command()
def validate(config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, metavar="CONFIG.yaml",
                                                    help="Experiment config file (YAML).")],
             overrides: Overrides = None) -> None:
    """Check a config and print the runs it expands to. Exit code 2 when it is invalid."""
    runs = _load([config], overrides)
    stdout.print(f"{config}: valid")
    print_runs(runs)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
