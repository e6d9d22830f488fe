"""`bncompare compare`: paired statistics by seed, checked against scipy on planted per-seed numbers."""

from __future__ import annotations

import csv
import io
import json

import math
import warnings

import numpy as np
import pytest
from results_fixtures import runs_from, write_run
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from typer.testing import CliRunner

from bncompare.aggregate import Reduction, load
from bncompare.backend import cpu, import_keras
from bncompare.cli import app
from bncompare.compare import (default_baseline, holm, paired, ranked, render, rows, seeds_needed,
                               sentence, signed_rank_p, title)
from bncompare.config import load_runs

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
    """Results with the table's final val_accuracy, or (val_accuracy, test_accuracy), per seed."""
    out = tmp_path / "results"
    for run in runs_from(tmp_path, config):
        value = table[(run["train.learning_rate"], run.variant)][run.seed]
        if value is None:
            write_run(out, run, [0.5], status="diverged", diverged_at={"epoch": 1.5, "step": 15})
        else:
            val, test = value if isinstance(value, tuple) else (value, None)
            write_run(out, run, [0.5, val],
                      final=None if test is None else {"test_accuracy": test, "test_loss": 0.3})
    return out


def test_the_t_statistics_are_over_the_seeds_both_trained(tmp_path):
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
    assert (records[0]["n_diverged_variant"], records[0]["n_diverged_baseline"]) == (0, 0)
    assert (records[1]["n_pairs"], records[1]["n_diverged_baseline"]) == (4, 1)
    # Every seed counts: seed 1's diverged baseline loses to bn; seed 2: 0.81 < 0.82.
    assert (records[1]["n_seeds"], records[1]["wins"], records[1]["losses"]) == (5, 4, 1)


RATES = """\
name: rates
data: {dataset: synthetic}
train: {seeds: [0, 1, 2, 3, 4, 5]}
sweep: {train.learning_rate: [1.0, 3.0, 10.0]}
"""
# None: diverged. At 1: bn diverges in 2 seeds and wins the other 4; at 3: both diverge at seed 0 (a
# tie), no_bn alone at seed 2, bn alone at seed 3, equal at seed 4; at 10, as in the README's
# sigmoid run, bn diverges in every seed and no_bn in none.
DIVERGING = {
    (1.0, "no_bn"): [0.90, 0.91, 0.89, 0.92, 0.90, 0.93],
    (1.0, "bn"): [0.93, None, 0.93, 0.95, None, 0.94],
    (3.0, "no_bn"): [None, 0.85, None, 0.84, 0.86, 0.80],
    (3.0, "bn"): [None, 0.88, 0.83, None, 0.86, 0.82],
    (10.0, "no_bn"): [0.50, 0.52, 0.49, 0.51, 0.50, 0.48],
    (10.0, "bn"): [None] * 6,
}


def _signed_differences(bn, no_bn):
    """variant - baseline per seed, a lone diverged side as a difference larger than any other."""
    out = []
    for b, n in zip(bn, no_bn):
        out.append(0.0 if b is None and n is None else -1e3 if b is None else 1e3 if n is None else b - n)
    return out


def test_every_seed_counts_and_every_field_matches_scipy_and_statsmodels(tmp_path):
    records = rows(load(planted(tmp_path, DIVERGING, RATES)))
    assert [r["train.learning_rate"] for r in records] == [1.0, 3.0, 10.0]
    p_ranks = []
    for record in records:
        rate = record["train.learning_rate"]
        bn, no_bn = DIVERGING[(rate, "bn")], DIVERGING[(rate, "no_bn")]
        diffs = _signed_differences(bn, no_bn)
        assert record["n_seeds"] == 6
        assert record["wins"] == sum(d > 0 for d in diffs)
        assert record["losses"] == sum(d < 0 for d in diffs)
        assert record["p_rank"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
        p_ranks.append(stats.wilcoxon(diffs).pvalue)
        trained = [b - n for b, n in zip(bn, no_bn) if b is not None and n is not None]
        assert record["n_pairs"] == len(trained)
        if len(trained) >= 2:
            test = stats.ttest_1samp(trained, 0.0)
            assert record["mean_diff"] == pytest.approx(np.mean(trained))
            assert record["p_value"] == pytest.approx(test.pvalue)
            assert record["ci_low"] == pytest.approx(test.confidence_interval(0.95)[0])
            effect = abs(np.mean(trained)) / np.std(trained, ddof=1)
            assert record["seeds_needed"] == math.ceil(TTestPower().solve_power(
                effect_size=effect, alpha=0.05, power=0.8, alternative="two-sided"))
    assert [r["p_adjusted"] for r in records] == pytest.approx(multipletests(p_ranks, method="holm")[1])
    assert [(r["wins"], r["losses"]) for r in records] == [(4, 2), (3, 1), (0, 6)]
    assert records[2]["n_pairs"] == 0 and records[2]["mean_diff"] is None
    assert records[2]["seeds_needed"] is None
    # A variant that diverges cannot look better by losing its bad seeds.
    assert sentence(records[0], 3) == ("bn − no_bn: +0.0275 [+0.0075, +0.0475] over the 4 seeds both "
                                       "trained, better in 4/6 seeds; cannot tell at 6 seeds (about 7 would)")
    assert sentence(records[2], 3) == ("bn − no_bn: no seed trained in both, worse in 6/6 seeds; "
                                       "cannot tell at 6 seeds (about 7 would)")


def test_ranked_on_losses_ties_and_one_seed():
    # Lower is better: a diverged variant is worse (+), a diverged baseline makes it better (-).
    result = ranked([0.1, None, 0.3, None], [0.2, 0.2, None, None], lower_better=True)
    assert (result.n_seeds, result.wins, result.losses) == (4, 2, 1)
    assert result.p_rank == pytest.approx(stats.wilcoxon([-0.1, 1e3, -1e3, 0.0]).pvalue)
    one = ranked([0.9], [0.8], lower_better=False)
    assert (one.n_seeds, one.wins, one.p_rank) == (1, 1, pytest.approx(stats.wilcoxon([0.1]).pvalue))
    # 0.3 - 0.2 and 0.2 - 0.1 differ by rounding only: equal differences, ranked as ties (untied,
    # scipy would give 0.1875).
    rounding = ranked([0.3, 0.2, 0.5, 0.1, 0.7, 0.6], [0.2, 0.1, 0.1, 0.2, 0.6, 0.3], lower_better=False)
    assert rounding.p_rank == pytest.approx(stats.wilcoxon([0.1, 0.1, 0.4, -0.1, 0.1, 0.3]).pvalue)
    assert rounding.p_rank == pytest.approx(0.15625)
    empty = ranked([], [], lower_better=False)
    assert (empty.n_seeds, empty.wins, empty.p_rank) == (0, 0, None)


@pytest.mark.parametrize("diffs", [[1e3, 1e3, 0.1, -0.2, 0.3], [0.0, 0.1, 0.1, -0.1, 0.4, 0.2],
                                   [-1e3, -1e3, -1e3, 0.0, 0.0, 0.05, -0.02, 0.01],
                                   [0.1, 0.2, 0.3, -0.4, 0.5, 0.6, 0.7], [0.0, 0.0, 0.0]])
def test_signed_rank_p_is_scipys_wilcoxon(diffs):
    """Ties and zeros (scipy's exact permutation test, enumerated here at once) and none (scipy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = stats.wilcoxon(diffs).pvalue
    assert signed_rank_p(diffs) == pytest.approx(expected, rel=1e-12)


def test_holm_matches_statsmodels_and_leaves_missing_p_values_out():
    p_values = [0.01, None, 0.04, 0.03, 0.2, 0.001, 0.04]
    present = [p for p in p_values if p is not None]
    expected = iter(multipletests(present, method="holm")[1])
    assert holm(p_values) == [None if p is None else pytest.approx(next(expected)) for p in p_values]
    assert holm([]) == [] and holm([None]) == [None]


@pytest.mark.parametrize("diffs", [[0.03, 0.01, 0.04, 0.03, 0.01], [0.05, -0.02, 0.01],
                                   [0.001, -0.003, 0.002, 0.004, -0.001, 0.0], [0.02, 0.05]])
def test_seeds_needed_matches_statsmodels_ttest_power(diffs):
    effect = abs(np.mean(diffs)) / np.std(diffs, ddof=1)
    expected = TTestPower().solve_power(effect_size=effect, alpha=0.05, power=0.8, alternative="two-sided")
    assert seeds_needed(diffs) == max(2, math.ceil(expected))


def test_seeds_needed_is_none_when_undefined():
    assert seeds_needed([0.1]) is None  # one difference: no spread to estimate
    assert seeds_needed([0.1, 0.1]) is None  # no spread: any seed would show it
    assert seeds_needed([0.1, -0.1]) is None  # no difference to detect


def test_a_run_lacking_a_param_its_variant_sets_still_pairs(tmp_path):
    out = planted(tmp_path)
    one = next(p for p in out.rglob("metrics.json") if '"variant": "bn"' in p.read_text())
    metrics = json.loads(one.read_text())
    del metrics["params"]["model.batch_norm"]
    one.write_text(json.dumps(metrics))
    records = rows(load(out))
    assert [(r["train.learning_rate"], r["n_seeds"]) for r in records] == [(0.01, 5), (0.1, 5)]


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
    assert record["n_seeds"] == 1 and record["seeds_needed"] is None
    assert record["p_rank"] == record["p_adjusted"] == pytest.approx(stats.wilcoxon([0.1]).pvalue)


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
    # Two rows: Holm doubles the smaller p; the signed-rank test needs 7 seeds to reach 0.05 then.
    assert sentence(records[0], 2) == ("bn − no_bn: +0.0240 [+0.0073, +0.0407], better in 5/5 seeds; "
                                       "cannot tell at 5 seeds (about 7 would)")
    lines = render(results, records, "markdown").splitlines()
    assert lines[0] == ("| train.learning_rate | variant − baseline: difference [95% CI], seeds better "
                        "| p (t-test) | p (rank; Holm) | diverged (variant/baseline) |")
    assert lines[3] == ("| 0.1 | bn − no_bn: +0.0400 [-0.0262, +0.1062] over the 4 seeds both trained, "
                        "better in 4/5 seeds; cannot tell at 5 seeds (about 11 would) "
                        "| 0.150 | 0.125; 0.125 | 0/1 |")
    settled = dict(records[0], p_adjusted=0.01)
    assert sentence(settled) == "bn − no_bn: +0.0240 [+0.0073, +0.0407], better in 5/5 seeds"


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
    assert "bn − no_bn: +0.0240 [+0.0073, +0.0407], better in 5/5 seeds; cannot tell" in result.stdout


# ---- --tune and record.test ---------------------------------------------------------------------

SWEPT = """\
name: swept
data: {dataset: synthetic, validation: 0.1}
train: {seeds: [0, 1, 2]}
record: {test: true}
sweep: {train.learning_rate: [0.01, 0.1, 1.0]}
"""
# (rate, variant) -> per seed (val_accuracy, test_accuracy); None: diverged. bn's survivors at 1.0
# have the best mean, but one of its seeds diverged there: 0.1 is its best setting.
TUNED = {
    (0.01, "no_bn"): [(0.90, 0.89), (0.92, 0.90), (0.91, 0.91)],
    (0.1, "no_bn"): [(0.85, 0.84), (0.86, 0.85), (0.84, 0.83)],
    (1.0, "no_bn"): [None, None, None],
    (0.01, "bn"): [(0.88, 0.87), (0.89, 0.88), (0.90, 0.89)],
    (0.1, "bn"): [(0.94, 0.92), (0.93, 0.94), (0.95, 0.93)],
    (1.0, "bn"): [(0.99, 0.99), None, (0.99, 0.99)],
}


def test_tune_pairs_each_variant_at_its_own_best_setting_and_reports_on_test(tmp_path):
    results = load(planted(tmp_path, TUNED, SWEPT))
    [record] = rows(results, metric="test_accuracy", tune="learning_rate")
    assert "train.learning_rate" not in record  # the tuned key is no condition
    assert (record["tuned"], record["variant_value"], record["baseline_value"]) == (
        "train.learning_rate", 0.1, 0.01)
    assert record["selected_on"] == "val_accuracy" and record["metric"] == "test_accuracy"
    bn = [s[1] for s in TUNED[(0.1, "bn")]]
    no_bn = [s[1] for s in TUNED[(0.01, "no_bn")]]
    test = stats.ttest_rel(bn, no_bn)
    assert (record["n_seeds"], record["n_pairs"], record["wins"]) == (3, 3, 3)
    assert record["mean_diff"] == pytest.approx(np.mean(np.subtract(bn, no_bn)))
    assert record["p_value"] == pytest.approx(test.pvalue)
    text = render(results, [record], "markdown")
    assert "bn (learning_rate 0.1) − no_bn (learning_rate 0.01): +0.0300" in text
    assert title([record]) == ("paired comparison by seed: final test_accuracy (higher is better), "
                               "each variant at its best train.learning_rate by mean final val_accuracy")
    [same] = rows(results, tune="train.learning_rate")  # selected and reported on validation
    assert same["selected_on"] == "val_accuracy" and "optimistic" in title([same])


def test_tune_and_test_metric_errors(tmp_path):
    out = planted(tmp_path, TUNED, SWEPT)
    result = CliRunner().invoke(app, ["compare", str(out), "--tune", "depth"])
    assert result.exit_code == 2
    assert "--tune depth: not a swept key (swept: train.learning_rate)" in result.output
    result = CliRunner().invoke(app, ["compare", str(out), "--tune", "learning_rate",
                                      "--metric", "test_accuracy", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["variant_value"] == 0.1
    (tmp_path / "untested").mkdir()
    untested = planted(tmp_path / "untested")
    result = CliRunner().invoke(app, ["compare", str(untested), "--metric", "test_accuracy"])
    assert result.exit_code == 2 and "no run recorded it (record.test: true" in result.output


def test_record_test_needs_a_held_out_validation_fraction(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: {dataset: synthetic}\nrecord:\n  test: true\n")
    result = CliRunner().invoke(app, ["validate", str(config)])
    assert result.exit_code == 2
    assert f"{config}:3: record.test: the test split is already the validation data" in result.output


@pytest.mark.slow
def test_record_test_evaluates_the_final_model_on_the_test_split(tmp_path):
    """A learning rate so small that the final no-BN model is its initial one: test_loss must be
    the initial model's loss on the test split (not on the held-out validation data)."""
    from bncompare.data import test_split
    from bncompare.models import build_model

    config = tmp_path / "c.yaml"
    config.write_text("name: t\ndata: {dataset: synthetic, validation: 0.1}\nmodel: {depth: 1, width: 8}\n"
                      "train: {steps: 2, learning_rate: 1.0e-9}\nrecord: {test: true}\n"
                      "variants: {no_bn: {model.batch_norm: false}, bn: {model.batch_norm: true}}\n")
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    finals = {}
    for path in (tmp_path / "out" / "t").glob("*/metrics.json"):
        metrics = json.loads(path.read_text())
        finals[metrics["variant"]] = metrics["final"]
    assert set(finals["bn"]) >= {"test_loss", "test_accuracy", "val_loss"}
    assert (metrics["environment"]["cpu"], metrics["environment"]["cpu_isa"]) == tuple(cpu().values())
    [run] = [r for r in load_runs([config]) if r.variant == "no_bn"]
    keras = import_keras()
    keras.utils.set_random_seed(0)
    model = build_model(run.params, (28, 28, 1), 10)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x, y = test_split("synthetic")
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert finals["no_bn"]["test_loss"] == pytest.approx(loss, rel=1e-4)
    assert finals["no_bn"]["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert finals["no_bn"]["test_loss"] != pytest.approx(finals["no_bn"]["val_loss"], rel=1e-4)
