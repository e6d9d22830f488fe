"""`bncompare compare`: paired statistics by seed, checked against scipy on planted per-seed numbers."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from results_fixtures import runs_from, write_run
from scipy import stats
from typer.testing import CliRunner

from bncompare.aggregate import Reduction, load
from bncompare.cli import app
from bncompare.compare import default_baseline, paired, render, rows, sentence

CONFIG = """\
name: planted
data: {dataset: synthetic}
train: {seeds: [0, 1, 2, 3, 4]}
sweep: {train.learning_rate: [0.01, 0.1]}
"""
# Planted final val accuracies per (learning rate, variant), seed 0..4. None: that seed diverged.
PLANTED = {
    (0.01, "no_bn"): [0.90, 0.91, 0.89, 0.92, 0.90],
    (0.01, "bn"): [0.93, 0.92, 0.93, 0.95, 0.91],
    (0.1, "no_bn"): [0.80, None, 0.82, 0.79, 0.81],  # seed 1 diverged
    (0.1, "bn"): [0.85, 0.86, 0.81, 0.88, 0.84],
}


def planted(tmp_path, table=PLANTED, config=CONFIG):
    out = tmp_path / "results"
    for run in runs_from(tmp_path, config):
        value = table[(run["train.learning_rate"], run.variant)][run.seed]
        if value is None:
            write_run(out, run, [0.5], status="diverged", diverged_at={"epoch": 1.5, "step": 15})
        else:
            write_run(out, run, [0.5, value])
    return out


def test_rows_match_scipy_paired_t_test_with_a_diverged_seed_left_out(tmp_path):
    records = rows(load(planted(tmp_path)))
    assert [(r["train.learning_rate"], r["variant"], r["baseline"]) for r in records] == [
        (0.01, "bn", "no_bn"), (0.1, "bn", "no_bn")]
    for record in records:
        rate = record["train.learning_rate"]
        pairs = [(b, n) for b, n in zip(PLANTED[(rate, "bn")], PLANTED[(rate, "no_bn")])
                 if b is not None and n is not None]
        bn, no_bn = (np.array(side) for side in zip(*pairs))
        test = stats.ttest_rel(bn, no_bn)
        low, high = test.confidence_interval(0.95)
        assert record["n_pairs"] == len(pairs)
        assert record["mean_diff"] == pytest.approx(np.mean(bn - no_bn))
        assert (record["ci_low"], record["ci_high"]) == (pytest.approx(low), pytest.approx(high))
        assert record["p_value"] == pytest.approx(test.pvalue)
        assert record["wins"] == int(np.sum(bn > no_bn))
    assert (records[0]["n_diverged_variant"], records[0]["n_diverged_baseline"]) == (0, 0)
    assert (records[1]["n_pairs"], records[1]["n_diverged_baseline"]) == (4, 1)
    assert records[1]["wins"] == 3  # seed 2: 0.81 < 0.82


def test_the_interval_is_the_t_interval_of_the_differences():
    diffs = np.array([0.03, 0.01, 0.04, 0.03, 0.01])
    result = paired(list(diffs + 0.9), [0.9] * 5, lower_better=False)
    half = stats.t.ppf(0.975, 4) * np.std(diffs, ddof=1) / np.sqrt(5)
    assert result.ci_low == pytest.approx(diffs.mean() - half)
    assert result.ci_high == pytest.approx(diffs.mean() + half)


def test_one_pair_or_identical_differences_have_no_interval_or_p_value():
    one = paired([0.9], [0.8], lower_better=False)
    assert (one.n_pairs, one.mean_diff, one.ci_low, one.ci_high, one.p_value, one.wins) == (
        1, pytest.approx(0.1), None, None, None, 1)
    same = paired([0.9, 0.8], [0.8, 0.7], lower_better=False)
    assert same.mean_diff == pytest.approx(0.1) and same.p_value is None and same.ci_low is None
    none = paired([], [], lower_better=False)
    assert (none.n_pairs, none.mean_diff, none.wins) == (0, None, 0)


def test_a_single_seed_condition_gives_n_1_and_null_statistics(tmp_path):
    config = "name: one\ndata: {dataset: synthetic}\ntrain: {seeds: [0]}\n"
    out = tmp_path / "results"
    for run in runs_from(tmp_path, config):
        write_run(out, run, [0.5, 0.7 if run.variant == "bn" else 0.6])
    [record] = json.loads(render(load(out), rows(load(out)), "json"))
    assert record["n_pairs"] == 1 and record["mean_diff"] == pytest.approx(0.1)
    assert record["ci_low"] is None and record["p_value"] is None and record["wins"] == 1


def test_losses_win_when_lower(tmp_path):
    records = rows(load(planted(tmp_path)), metric="val_loss", reduction=Reduction("final"))
    # The fixture's val_loss is 2/i for every run: equal in every pair, so no wins and no p-value.
    assert records[0]["better"] == "lower"
    assert records[0]["mean_diff"] == 0 and records[0]["wins"] == 0 and records[0]["p_value"] is None
    result = paired([0.1, 0.2, 0.1], [0.3, 0.25, 0.2], lower_better=True)
    assert result.wins == 3 and result.mean_diff < 0


def test_reduce_best_and_last_k(tmp_path):
    out = tmp_path / "results"
    for run in runs_from(tmp_path, "name: r\ndata: {dataset: synthetic}\ntrain: {seeds: [0, 1]}\n"):
        curve = [0.9, 0.5, 0.6] if run.variant == "bn" else [0.4, 0.5, 0.5]
        write_run(out, run, [c + 0.01 * run.seed for c in curve])
    results = load(out)
    assert rows(results, reduction=Reduction.parse("best"))[0]["mean_diff"] == pytest.approx(0.4)
    assert rows(results, reduction=Reduction.parse("final"))[0]["mean_diff"] == pytest.approx(0.1)
    assert rows(results, reduction=Reduction.parse("last:2"))[0]["mean_diff"] == pytest.approx(0.05)


def test_default_baseline_is_named_like_no_bn_else_the_first():
    assert default_baseline(["bn", "no_bn"]) == "no_bn"
    assert default_baseline(["layer", "none", "batch"]) == "none"
    assert default_baseline(["a", "b"]) == "a"


def test_table_says_in_words_what_a_row_means(tmp_path):
    results = load(planted(tmp_path))
    records = rows(results)
    assert sentence(records[0]) == "bn − no_bn: +0.0240 [+0.0073, +0.0407], better in 5/5 seeds"
    lines = render(results, records, "markdown").splitlines()
    assert lines[0] == ("| train.learning_rate | variant − baseline: difference [95% CI], seeds better "
                        "| p | diverged (variant/baseline) |")
    assert lines[3] == ("| 0.1 | bn − no_bn: +0.0400 [-0.0262, +0.1062], better in 3/4 seeds (of 5) "
                        "| 0.150 | 0/1 |")


# ---- the command line ---------------------------------------------------------------------------


def test_compare_json_rows_carry_flat_condition_keys(tmp_path):
    result = CliRunner().invoke(app, ["compare", str(planted(tmp_path)), "--format", "json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert records[0]["train.learning_rate"] == 0.01
    assert {"variant", "baseline", "n_pairs", "mean_diff", "ci_low", "ci_high", "p_value", "wins",
            "n_diverged_variant", "n_diverged_baseline"} <= set(records[0])
    assert records[0]["mean_diff"] == 0.024  # rounded to 6 significant digits, not 0.02400000000000002


def test_compare_csv_and_filters(tmp_path):
    out = planted(tmp_path)
    result = CliRunner().invoke(app, ["compare", str(out), "--format", "csv", "--where", "learning_rate=0.1"])
    assert result.exit_code == 0, result.output
    [row] = list(csv.DictReader(io.StringIO(result.stdout)))
    assert row["n_pairs"] == "4" and row["n_diverged_baseline"] == "1"
    assert row["train.learning_rate"] == "0.1"  # the chosen condition, though it is the only one


def test_compare_baseline_option_and_errors(tmp_path):
    out = planted(tmp_path)
    result = CliRunner().invoke(app, ["compare", str(out), "--baseline", "bn", "--format", "json"])
    assert json.loads(result.stdout)[0]["variant"] == "no_bn"
    result = CliRunner().invoke(app, ["compare", str(out), "--baseline", "nope"])
    assert result.exit_code == 2 and "--baseline 'nope': no such variant (variants: no_bn, bn)" in result.output
    result = CliRunner().invoke(app, ["compare", str(out), "--metric", "val_acc"])
    assert result.exit_code == 2 and "--metric 'val_acc': no run recorded it" in result.output
    result = CliRunner().invoke(app, ["compare", str(out), "--reduce", "last:0"])
    assert result.exit_code == 2 and "expected final, best or last:K" in result.output
    result = CliRunner().invoke(app, ["compare", str(out), "--where", "bn=true"])
    assert result.exit_code == 2 and "unknown key" in result.output


def test_compare_table_in_a_pipe(tmp_path):
    result = CliRunner().invoke(app, ["compare", str(planted(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "paired comparison by seed: final val_accuracy (higher is better)" in result.stdout
    assert "bn − no_bn: +0.0240 [+0.0073, +0.0407], better in 5/5 seeds" in result.stdout
