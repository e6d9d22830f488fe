"""Results directories as untrusted input: what plot, summary and compare do with hostile files.

Every case ends in a skipped-run warning or a one-line error, never a hang, a memory kill, a
traceback or a file written outside the plots folder.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat

import pytest
from results_fixtures import runs_from, sweep_results, write_run
from typer.testing import CliRunner

from bncompare import plots, results
from bncompare.aggregate import load
from bncompare.cli import app
from bncompare.results import METRICS_FILE, MetricsFile, read_run

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def alarm():
    """Fail instead of hanging forever (a FIFO opened without O_NONBLOCK blocks)."""
    def timeout(*_):
        raise TimeoutError("the reader hung")
    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _results_with(tmp_path, count: int = 2):
    out = tmp_path / "results"
    runs = runs_from(tmp_path, "name: e\ndata: {dataset: synthetic}\n")  # no_bn and bn, seed 0
    return out, [write_run(out, run, [0.5, 0.6]) for run in runs[:count]]


def _edit(run_dir, change) -> None:
    data = json.loads((run_dir / METRICS_FILE).read_text())
    change(data)
    (run_dir / METRICS_FILE).write_text(json.dumps(data))


def _skipped(out, **options) -> dict:
    return {path.name: why for path, why in load(out, **options).skipped}


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path, alarm):
    out, (good, fifo) = _results_with(tmp_path)
    (fifo / METRICS_FILE).unlink()
    os.mkfifo(fifo / METRICS_FILE)
    assert _skipped(out) == {fifo.name: "metrics.json is not a regular file"}


def test_a_symlink_to_dev_zero_is_refused_without_reading_it(tmp_path, alarm):
    out, (good, zero) = _results_with(tmp_path)
    (zero / METRICS_FILE).unlink()
    (zero / METRICS_FILE).symlink_to("/dev/zero")
    assert _skipped(out) == {zero.name: "metrics.json is not a regular file"}


def test_a_huge_file_is_refused_by_its_size(tmp_path):
    out, (good, huge) = _results_with(tmp_path)
    with open(huge / METRICS_FILE, "r+b") as f:
        f.truncate(results.MAX_METRICS_BYTES + 1)  # sparse: costs no disk
    assert _skipped(out) == {huge.name: "metrics.json is larger than 64 MB"}


@pytest.mark.parametrize("change, reason", [
    (lambda d: d.update(status="failed", error={"message": "x"}), "has error of the wrong type (dict, not str)"),
    (lambda d: d.update(schema=True), "is not a bncompare metrics file (schema 1)"),
    (lambda d: d.update(schema=1.0), "is not a bncompare metrics file (schema 1)"),
    (lambda d: d.update(status=["completed"]), "has a run_id or status that is not text"),
    (lambda d: d.update(params=[1, 2]), "has params or history of the wrong type"),
    (lambda d: d["history"].update(val_accuracy=["0.5", "0.6"]), "has a history 'val_accuracy' that is not a list of numbers"),
    (lambda d: d["history"].update(loss=[True, False]), "has a history 'loss' that is not a list of numbers"),
    (lambda d: d.update(engine="fit"), "has engine of the wrong type (str, not dict)"),
    (lambda d: d["params"].update(deep=json.loads("[" * 40 + "]" * 40)), "is nested too deeply"),
])
def test_wrong_types_are_skipped_runs_with_a_reason(tmp_path, change, reason):
    out, (good, bad) = _results_with(tmp_path)
    _edit(bad, change)
    assert _skipped(out) == {bad.name: f"metrics.json {reason}"}


def test_json_nested_far_beyond_the_recursion_limit_is_a_skipped_run(tmp_path):
    out, (good, bad) = _results_with(tmp_path)
    (bad / METRICS_FILE).write_text('{"schema": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert _skipped(out) == {bad.name: "metrics.json is nested too deeply"}


@pytest.mark.parametrize("number", ["1" + "0" * 400, "1" + "0" * 5000, "1e400", "-1e400"])
def test_numbers_beyond_float_range_are_missing_values_not_tracebacks(tmp_path, number):
    out, (first, second) = _results_with(tmp_path)
    text = (second / METRICS_FILE).read_text()
    data = json.loads(text)
    data["history"]["val_accuracy"] = [0.5, 12345.5]
    data["history"]["seconds"] = [2.0, 12345.5]
    (second / METRICS_FILE).write_text(json.dumps(data).replace("12345.5", number))
    assert _skipped(out) == {}
    runner = CliRunner()
    for command in (["summary", str(out), "--format", "json"], ["compare", str(out), "--format", "json"],
                    ["plot", str(out), "--x", "time"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, (command, result.output)
    summary = json.loads(runner.invoke(app, ["summary", str(out), "--format", "json"]).stdout)
    assert [r["final_val_accuracy_mean"] for r in summary] == [0.6, None]


def test_unreadable_files_and_directories_are_skipped_naming_them(tmp_path, monkeypatch):
    """Works as root too: the operating system's refusal is simulated where it would come from."""
    out = sweep_results(tmp_path)
    experiment = out / "sweep"
    locked_run, locked_file = sorted(p for p in experiment.iterdir() if p.is_dir())[:2]
    real_scandir, real_open = os.scandir, os.open

    def scandir(path):
        if os.fspath(path) == os.fspath(locked_run):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    def open_(path, *args, **kwargs):
        if os.fspath(path) in (os.fspath(locked_run / METRICS_FILE), os.fspath(locked_file / METRICS_FILE)):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(results.os, "scandir", scandir)
    monkeypatch.setattr(results.os, "open", open_)
    skipped = _skipped(out)
    assert skipped == {locked_run.name: "cannot read metrics.json (Permission denied)",
                       locked_file.name: "cannot read metrics.json (Permission denied)"}


@pytest.mark.skipif(AS_ROOT, reason="root reads mode-000 files: the permission cannot be tested for real")
def test_mode_000_run_experiment_and_file_are_skipped_for_real(tmp_path):
    out = sweep_results(tmp_path)
    other = runs_from(tmp_path, "name: other\ndata: {dataset: synthetic}\n")[0]
    write_run(out, other, [0.5])
    runs = sorted(p for p in (out / "sweep").iterdir() if p.is_dir())
    locked = [runs[0], runs[1] / METRICS_FILE, out / "other"]
    for path in locked:
        path.chmod(0)
    try:
        result = CliRunner().invoke(app, ["summary", str(out), "--format", "csv"])
    finally:
        for path in locked:
            path.chmod(0o755)
    assert result.exit_code == 0, result.output
    for path in (runs[0], runs[1], out / "other"):
        assert f"warning: skipped {path}:" in result.stderr


# ---- a reader racing a writer -------------------------------------------------------------------


def test_a_run_that_finishes_while_being_read_is_not_called_interrupted(tmp_path, monkeypatch):
    run = runs_from(tmp_path, "name: e\ndata: {dataset: synthetic}\n")[0]
    run_dir = tmp_path / "e" / run.run_id
    run_dir.mkdir(parents=True)
    writer = MetricsFile(run_dir, experiment="e", run_id=run.run_id, variant=run.variant,
                         params=run.params, environment={})

    def writer_finishes_first(path):
        # The reader has read `running`; before it checks the claim, the writer saves its final
        # status and releases the claim.
        writer.finish("completed")
        return False

    monkeypatch.setattr(results, "is_claimed", writer_finishes_first)
    assert read_run(run_dir).status == "completed"
    # A file that still says running once the claim is free belongs to a dead process.
    writer.data["status"] = "running"
    writer.save()
    monkeypatch.setattr(results, "is_claimed", lambda path: False)
    assert read_run(run_dir).status == "interrupted"


# ---- names read from disk are data, never paths ----------------------------------------------------


def test_figure_names_from_hostile_params_stay_in_the_plots_folder(tmp_path):
    out = tmp_path / "results"
    config = ("name: e\ndata: {dataset: synthetic}\nsweep: {model.depth: [1, 2]}\n"
              "record: {activations: true}\n")
    for run in runs_from(tmp_path, config):
        run_dir = write_run(out, run, [0.5])
        # A facet key and value that would climb out of plots/ if used as a path.
        _edit(run_dir, lambda d: d["params"].update({
            "model./../../../escape": d["params"]["model.depth"] * 1.5,
            "x/../../y": f"../../../{d['params']['model.depth']}/z",
            "model.depth": 3}) or d.update(activations={"layer_1": {"p15": [-1], "p50": [0], "p85": [1]}}))
    result = CliRunner().invoke(app, ["plot", str(out)])
    assert result.exit_code == 0, result.output
    plots_dir = out / "e" / "plots"
    written = [line for line in result.stdout.splitlines() if line.startswith("/")]
    assert written and all(os.path.dirname(path) == str(plots_dir) for path in written)
    assert sorted(p.name for p in tmp_path.rglob("*.png") if p.parent != plots_dir) == []
    assert "sweep-_.._.._.._escape-val_accuracy.png" in os.listdir(plots_dir)


@pytest.mark.parametrize("name", ["../../outside", "/abs/olute", "..", ".", "a\nb", "x" * 400])
def test_experiment_names_from_disk_are_one_safe_folder_under_out(tmp_path, monkeypatch, name):
    monkeypatch.setattr(plots, "figures", lambda *args: iter([("figure", plots.Figure())]))
    out = sweep_results(tmp_path)
    other = write_run(out, runs_from(tmp_path, "name: other\ndata: {dataset: synthetic}\n")[0], [0.5])
    _edit(other, lambda d: d.update(experiment=name))
    written = plots.plot_results(load(out), out=tmp_path / "figs")
    for path in written:
        assert path.parent.parent == tmp_path / "figs" and path.parent.name not in (".", "..")
        assert len(path.parent.name) <= plots.MAX_NAME


def test_plot_on_a_read_only_or_full_disk_is_one_line_suggesting_out(tmp_path, monkeypatch):
    out = sweep_results(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plots.tempfile, "mkstemp", full)
    result = CliRunner().invoke(app, ["plot", str(out)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: cannot write figures to {out / 'sweep' / 'plots'} (No space "
                                     f"left on device); write them elsewhere with --out DIR")
    monkeypatch.undo()
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        result = CliRunner().invoke(app, ["plot", str(out), "--out", str(read_only / "figs")])
    finally:
        read_only.chmod(0o755)
    if not AS_ROOT:
        assert result.exit_code == 2 and "write them elsewhere with --out DIR" in result.output


def test_warnings_print_names_from_disk_as_text_not_terminal_commands(tmp_path):
    out, (good, bad) = _results_with(tmp_path)
    _edit(bad, lambda d: d.update(status="failed", error="\x1b[2J\x1b]0;pwned\x07boom"))
    result = CliRunner().invoke(app, ["summary", str(out), "--format", "csv"])
    assert "\x1b" not in result.stderr and "\\x1b[2J" in result.stderr


def test_dollar_signs_and_braces_in_names_are_text_not_tex(tmp_path):
    out = tmp_path / "results"
    config = "name: e\ndata: {dataset: synthetic}\nsweep: {train.learning_rate: [0.01, 0.1]}\n"
    for run in runs_from(tmp_path, config):
        run_dir = write_run(out, run, [0.5, 0.6])
        _edit(run_dir, lambda d: d.update(variant="$\\frac{" + d["variant"] + "$"))
    result = CliRunner().invoke(app, ["plot", str(out)])
    assert result.exit_code == 0, result.output


def test_experiments_whose_names_clean_to_the_same_text_get_separate_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "figures", lambda *args: iter([("figure", plots.Figure())]))
    out = tmp_path / "results"
    for index, name in enumerate(["a/b", "a_b"]):
        run = runs_from(tmp_path, f"name: e{index}\ndata: {{dataset: synthetic}}\n")[0]
        _edit(write_run(out, run, [0.5]), lambda d: d.update(experiment=name))
    written = plots.plot_results(load(out), out=tmp_path / "figs")
    assert len({path.parent for path in written}) == 2
    assert (tmp_path / "figs" / "a_b" / "figure.png") in written
