"""`bncompare summary`: one row per condition, the same numbers in every format, the command line."""

from __future__ import annotations

import csv
import io
import json

import pytest
from results_fixtures import runs_from, sweep_results, write_run
from typer.testing import CliRunner

from bncompare.aggregate import Reduction, load
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


# ---- metrics, reductions, formats -------------------------------------------------------------------


def _float32_results(tmp_path):
    """Accuracies as Keras stores them (float32 widened to float64), one run packed with others."""
    import numpy as np

    from bncompare.results import write_json

    out = tmp_path / "results"
    for run in runs_from(tmp_path, "name: e\ndata: {dataset: synthetic}\ntrain: {seeds: [0, 1]}\n"):
        run_dir = write_run(out, run, [float(np.float32(0.71)), float(np.float32(0.73 + 0.01 * run.seed))])
        data = json.loads((run_dir / "metrics.json").read_text())
        data["history"]["val_accuracy_precise"] = [0.7, 0.75]
        data["engine"] = {"name": "tf_pack", "members": 4}
        write_json(run_dir / "metrics.json", data)
    return out


def test_csv_and_json_numbers_are_clean(tmp_path):
    results = load(_float32_results(tmp_path))
    records = json.loads(render(results, "json"))
    assert records[0]["final_val_accuracy_mean"] == 0.735  # not 0.7349999845027924
    assert "0.7099999785423279" not in render(results, "csv")
    assert records[0]["packed_members"] == 4


def test_any_history_metric_and_reduction(tmp_path):
    results = load(_float32_results(tmp_path))
    records = rows(results, "val_accuracy_precise", Reduction.parse("last:2"))
    assert records[0]["last2_val_accuracy_precise_mean"] == pytest.approx(0.725)
    lines = render(results, "markdown", "val_loss", Reduction.parse("best")).splitlines()
    assert lines[0] == "| variant | seeds | lowest val loss | train (s) * | status |"


def test_packed_runs_seconds_are_labelled_as_shared(tmp_path):
    text = render(load(_float32_results(tmp_path)), "markdown")
    assert text.splitlines()[2].endswith("| 4.0 ± 0.0 * | 2 completed |")
    assert text.endswith("* trained together with other runs (packed): the seconds are the whole "
                         "group's shared training time, not this run's alone")
    (tmp_path / "old").mkdir()
    assert "*" not in render(load(sweep_results(tmp_path / "old")), "markdown")


def test_latex_is_a_booktabs_tabular_with_escaped_text(tmp_path):
    text = render(load(sweep_results(tmp_path)), "latex")
    lines = text.splitlines()
    assert lines[0] == r"\begin{tabular}{llrrrrl}"
    assert lines[2] == r"train.learning\_rate & variant & seeds & final val acc & best val acc & train (s) & status \\"
    assert lines[4] == r"0.01 & no\_bn & 3 & 0.6000 $\pm$ 0.1000 & 0.6000 $\pm$ 0.1000 & 4.0 $\pm$ 0.0 & 3 completed \\"
    assert lines[-1] == r"\end{tabular}"


def test_rows_follow_the_config_order_of_variants(tmp_path):
    out = tmp_path / "results"
    config = ("name: e\ndata: {dataset: synthetic}\nvariants:\n  zeta: {model.dropout: 0.1}\n"
              "  alpha: {model.dropout: 0.2}\n  no_bn: {model.batch_norm: false}\n")
    for run in runs_from(tmp_path, config):
        run_dir = write_run(out, run, [0.5])
        data = json.loads((run_dir / "metrics.json").read_text())
        data["started_at"] = {"zeta": "2026-01-01T00:00:01", "alpha": "2026-01-01T00:00:02",
                              "no_bn": "2026-01-01T00:00:03"}[run.variant]
        (run_dir / "metrics.json").write_text(json.dumps(data))
    # The baseline first, then in the order the runs started (zeta before alpha), not alphabetical.
    assert [r["variant"] for r in rows(load(out))] == ["no_bn", "zeta", "alpha"]


def test_summary_command_metric_reduce_and_latex(tmp_path):
    out = _float32_results(tmp_path)
    result = CliRunner().invoke(app, ["summary", str(out), "--metric", "val_accuracy_precise",
                                      "--reduce", "best", "--format", "latex"])
    assert result.exit_code == 0, result.output
    assert r"best val\_accuracy\_precise" in result.stdout
    result = CliRunner().invoke(app, ["summary", str(out), "--reduce", "worst"])
    assert result.exit_code == 2 and "--reduce 'worst'" in result.output
