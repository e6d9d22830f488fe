"""`bncompare summary`: one row per condition, the same numbers in every format, the command line."""

from __future__ import annotations

import csv
import io
import json

import pytest
from results_fixtures import runs_from, sweep_results, write_run
from typer.testing import CliRunner

from bncompare.aggregate import load
from bncompare.cli import app
from bncompare.summary import render, rows


def test_one_row_per_condition_with_mean_std_best_time_and_statuses(tmp_path):
    records = rows(load(sweep_results(tmp_path)))
    assert [(r["train.learning_rate"], r["variant"]) for r in records] == [
        (0.01, "no_bn"), (0.01, "bn"), (0.1, "no_bn"), (0.1, "bn"), (50.0, "no_bn"), (50.0, "bn")]
    no_bn = records[0]
    assert no_bn["seeds"] == 3
    assert no_bn["final_val_accuracy_mean"] == pytest.approx(0.6)
    assert no_bn["final_val_accuracy_std"] == pytest.approx(0.1)
    assert no_bn["best_val_accuracy_mean"] == pytest.approx(0.6)
    assert no_bn["train_seconds_mean"] == 4.0
    assert (no_bn["completed"], no_bn["diverged"]) == (3, 0)
    diverged = records[4]
    assert (diverged["completed"], diverged["diverged"]) == (0, 3)
    assert diverged["final_val_accuracy_mean"] is None


def test_csv_and_json_carry_the_same_numbers(tmp_path):
    results = load(sweep_results(tmp_path))
    table = list(csv.DictReader(io.StringIO(render(results, "csv"))))
    records = json.loads(render(results, "json"))
    assert len(table) == len(records) == 6
    assert float(table[0]["final_val_accuracy_mean"]) == pytest.approx(records[0]["final_val_accuracy_mean"])
    assert table[4]["final_val_accuracy_mean"] == "" and records[4]["final_val_accuracy_mean"] is None


def test_markdown_and_table_print_mean_plus_minus_std(tmp_path):
    results = load(sweep_results(tmp_path))
    lines = render(results, "markdown").splitlines()
    assert lines[0] == ("| train.learning_rate | variant | seeds | final val acc | best val acc "
                        "| train (s) | status |")
    assert lines[1] == "| --- | --- | --- | --- | --- | --- | --- |"
    assert lines[2] == "| 0.01 | no_bn | 3 | 0.6000 ± 0.1000 | 0.6000 ± 0.1000 | 4.0 ± 0.0 | 3 completed |"
    assert lines[6] == "| 50 | no_bn | 3 | - | - | - | 3 diverged |"
    table = render(results, "table")
    assert table.row_count == 6 and [c.header for c in table.columns][:2] == ["train.learning_rate", "variant"]


def test_several_experiments_get_an_experiment_column_and_blank_foreign_keys(tmp_path):
    out = sweep_results(tmp_path)
    write_run(out, runs_from(tmp_path, "name: other\ndata: {dataset: synthetic}\n")[0], [0.5])
    lines = render(load(out), "markdown").splitlines()
    assert lines[0].startswith("| experiment | train.learning_rate | variant |")
    assert lines[2].startswith("| other |  | no_bn | 1 | 0.5000 |")


# ---- the command line ---------------------------------------------------------------------------


def test_summary_command_prints_to_stdout_and_warnings_to_stderr(tmp_path):
    out = sweep_results(tmp_path)
    killed = write_run(out, runs_from(tmp_path, "name: sweep\ndata: {dataset: synthetic}\n")[0], [0.5],
                       status=None)
    result = CliRunner().invoke(app, ["summary", str(out), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == 6
    assert result.stderr.splitlines() == [
        f"warning: skipped {killed}: interrupted",
        "18 runs summarised; skipped 1 unfinished or unreadable run (warnings above)."]


def test_summary_table_is_not_wrapped_in_a_pipe(tmp_path):
    result = CliRunner().invoke(app, ["summary", str(sweep_results(tmp_path))])
    assert result.exit_code == 0
    assert "│ 0.01                │ no_bn   │     3 │ 0.6000 ± 0.1000 │" in result.stdout


def test_summary_of_only_unfinished_runs_is_an_error_after_the_warnings(tmp_path):
    failed = write_run(tmp_path / "results", runs_from(tmp_path, "name: e\n")[0], [0.5], status="failed")
    result = CliRunner().invoke(app, ["summary", str(tmp_path / "results"), "--format", "json"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"warning: skipped {failed}: failed: RuntimeError: boom",
        f"error: {tmp_path / 'results'}: no finished runs (skipped all 1)"]
    assert result.stdout == ""
