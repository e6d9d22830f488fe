"""Reading results back for plots and tables: grouping into conditions, mean/std over seeds, skipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from results_fixtures import SWEEP, runs_from, sweep_results, write_run

from bncompare.aggregate import BadFilter, NoResults, Reduction, Stats, clean, load, mean_curve
from bncompare.results import Claim, METRICS_FILE


def test_conditions_group_seeds_and_facet_by_swept_key(tmp_path):
    results = load(sweep_results(tmp_path))
    [experiment] = results.experiments
    assert experiment.name == "sweep"
    # The baseline first, then in the order runs started (the config's order).
    assert experiment.variants == ["no_bn", "bn"] == results.variants
    # model.batch_norm varies too, but only between variants: it is the colour, not a facet.
    assert experiment.facet_keys == ["train.learning_rate"] == experiment.sweep_keys
    assert [(c.variant, c.facets) for c in experiment.conditions] == [
        (v, (("train.learning_rate", lr),)) for lr in (0.01, 0.1, 50.0) for v in ("no_bn", "bn")]
    assert all(len(c.runs) == 3 for c in experiment.conditions)


def test_final_and_best_are_mean_and_sample_std_over_seeds(tmp_path):
    experiment = load(sweep_results(tmp_path)).experiments[0]
    no_bn = experiment.conditions[0]
    final = no_bn.final("val_accuracy")  # seeds: 0.5, 0.6, 0.7
    assert (final.mean, final.n) == (pytest.approx(0.6), 3)
    assert final.std == pytest.approx(0.1)  # sample std (n - 1)
    assert no_bn.best("val_accuracy").mean == pytest.approx(0.6)
    assert no_bn.best("val_loss").mean == pytest.approx(1.0)  # lowest of 2/i over 2 points
    assert no_bn.train_seconds() == Stats(4.0, 0.0, 3)


def test_diverged_runs_are_counted_but_not_averaged(tmp_path):
    experiment = load(sweep_results(tmp_path)).experiments[0]
    no_bn_50, bn_50 = experiment.conditions[4:]
    assert bn_50.statuses == {"diverged": 3}
    assert bn_50.final("val_accuracy") == Stats(None, None, 0)
    # x from diverged_at, y the last recorded value; None when it diverged before any eval.
    assert bn_50.diverged_ends(("history", "val_accuracy"), "step") == [(15.0, 0.2)] * 3
    assert no_bn_50.diverged_ends(("history", "val_accuracy"), "epoch") == [(1.5, None)] * 3


def test_curves_align_eval_points_and_tolerate_seeds_that_stop_early():
    x = np.array([1.0, 2.0, 3.0])
    curve = mean_curve([(x, np.array([1.0, 2.0, 3.0])), (x, np.array([3.0, 4.0, np.nan])),
                        (x[:2], np.array([2.0, 3.0]))])
    assert curve.x.tolist() == [1.0, 2.0, 3.0]
    assert curve.mean.tolist() == [2.0, 3.0, 3.0]
    assert curve.std.tolist() == [1.0, 1.0, 0.0]  # one seed left at point 3: no band
    assert curve.n.tolist() == [3, 3, 1]
    assert mean_curve([(x, np.array([]))]) is None


def test_time_axis_averages_the_seconds_of_each_seed():
    curve = mean_curve([(np.array([1.0, 2.0]), np.array([0.5, 0.6])),
                        (np.array([3.0, 4.0]), np.array([0.5, 0.6]))])
    assert curve.x.tolist() == [2.0, 3.0]


def test_stats_of_one_value_has_no_std():
    assert Stats.of([0.5, None, math.nan]) == Stats(0.5, None, 1)
    assert Stats.of([]) == Stats(None, None, 0)


def test_unfinished_and_unreadable_runs_are_skipped_with_a_reason(tmp_path):
    out = tmp_path / "results"
    runs = runs_from(tmp_path, "name: e\ndata: {dataset: synthetic}\ntrain: {seeds: [0, 1, 2, 3, 4, 5, 6]}\n")
    good = write_run(out, runs[0], [0.5])
    failed = write_run(out, runs[1], [0.5], status="failed")
    killed = write_run(out, runs[2], [0.5], status=None)  # `running`, but no process holds it
    live = write_run(out, runs[3], [0.5], status=None)
    claim = Claim.acquire(live)
    empty, truncated, foreign = (write_run(out, r, [0.5]) for r in runs[4:7])
    (empty / METRICS_FILE).write_text("")
    text = (truncated / METRICS_FILE).read_text()
    (truncated / METRICS_FILE).write_text(text[:len(text) // 2])
    (foreign / METRICS_FILE).write_text('{"loss": [1, 2]}')
    try:
        results = load(out)
    finally:
        claim.release()
    assert [run.path for c in results.experiments[0].conditions for run in c.runs] == [good]
    reasons = dict(results.skipped)
    assert reasons[failed] == "failed: RuntimeError: boom"
    assert reasons[killed] == "interrupted"
    assert reasons[live] == "still running"
    assert "empty" in reasons[empty]
    assert "not valid JSON" in reasons[truncated]
    assert "not a bncompare metrics file" in reasons[foreign]
    assert len(results.skipped) == 6


def test_results_root_experiment_dir_and_run_dir_all_load(tmp_path):
    out = sweep_results(tmp_path)
    runs = runs_from(tmp_path, "name: other\ndata: {dataset: synthetic}\n")
    write_run(out, runs[0], [0.4])
    assert [e.name for e in load(out).experiments] == ["other", "sweep"]
    assert load(out / "sweep").runs == 18
    one = load(out / "other" / runs[0].run_id)
    assert one.runs == 1 and one.experiments[0].facet_keys == []
    assert one.experiments[0].directory == out / "other"


def test_a_sweep_made_by_a_shell_loop_of_set_overrides_is_a_sweep(tmp_path):
    out = tmp_path / "results"
    for rate in ("0.001", "0.01"):
        for run in runs_from(tmp_path, "name: loop\ndata: {dataset: synthetic}\n",
                             [f"train.learning_rate={rate}"]):
            write_run(out, run, [0.5])
    experiment = load(out).experiments[0]
    assert experiment.sweep_keys == ["train.learning_rate"]
    assert experiment.values("train.learning_rate") == [0.001, 0.01]


def test_missing_or_empty_results_dir_is_an_error(tmp_path):
    with pytest.raises(NoResults, match="no such directory"):
        load(tmp_path / "nope")
    with pytest.raises(NoResults, match="no runs found"):
        load(tmp_path)


def test_a_directory_of_only_unfinished_runs_loads_with_nothing_to_show(tmp_path):
    run = runs_from(tmp_path, SWEEP)[0]
    write_run(tmp_path / "results", run, [0.5], status="failed")
    results = load(tmp_path / "results")
    assert results.experiments == [] and len(results.skipped) == 1


# ---- filters and watching ---------------------------------------------------------------------------


def test_where_keeps_matching_runs_by_full_or_short_key_and_typed_value(tmp_path):
    out = sweep_results(tmp_path)
    assert load(out, where=["train.learning_rate=0.1"]).runs == 6
    assert load(out, where=["learning_rate=1e-1"]).runs == 6  # YAML 1.1 reads 1e-1 as text: a number here
    assert load(out, where=["learning_rate=0.1", "variant=bn"]).runs == 3
    assert load(out, where=["model.batch_norm=true"]).runs == 9
    with pytest.raises(BadFilter, match="unknown key"):
        load(out, where=["lr=0.1"])
    with pytest.raises(BadFilter, match="expected KEY=VALUE"):
        load(out, where=["learning_rate"])
    with pytest.raises(NoResults, match="no run matches --where learning_rate=0.5"):
        load(out, where=["learning_rate=0.5"])


def test_runs_left_out_by_a_filter_are_not_reported_as_skipped(tmp_path):
    out = sweep_results(tmp_path)
    write_run(out, runs_from(tmp_path, SWEEP, ["train.learning_rate=0.3"])[0], [0.5], status="failed")
    assert len(load(out).skipped) == 1
    assert load(out, where=["learning_rate=0.1"]).skipped == []


def test_experiment_option_picks_one_experiment(tmp_path):
    out = sweep_results(tmp_path)
    write_run(out, runs_from(tmp_path, "name: other\ndata: {dataset: synthetic}\n")[0], [0.4])
    assert [e.name for e in load(out, experiment="other").experiments] == ["other"]
    with pytest.raises(BadFilter, match=r"--experiment 'nope': no such experiment .*\(experiments: other, sweep\)"):
        load(out, experiment="nope")


def test_include_running_uses_live_partial_curves(tmp_path):
    out = tmp_path / "results"
    runs = runs_from(tmp_path, "name: e\ndata: {dataset: synthetic}\n")
    write_run(out, runs[0], [0.5, 0.6])
    live = write_run(out, runs[1], [0.3], status=None)
    claim = Claim.acquire(live)
    try:
        assert [why for _, why in load(out).skipped] == ["still running"]
        watched = load(out, include_running=True)
    finally:
        claim.release()
    assert watched.skipped == [] and watched.runs == 2
    condition = next(c for c in watched.experiments[0].conditions if c.variant == runs[1].variant)
    assert condition.statuses == {"running": 1}
    assert condition.curve(("history", "val_accuracy"), "epoch").mean.tolist() == [0.3]


def test_reductions_parse_and_reduce():
    values = np.array([0.2, 0.9, 0.5, 0.6])
    assert Reduction.parse("final").of(values, "val_accuracy") == 0.6
    assert Reduction.parse("best").of(values, "val_accuracy") == 0.9
    assert Reduction.parse("best").of(values, "val_loss") == 0.2
    assert Reduction.parse("last:2").of(values, "val_accuracy") == pytest.approx(0.55)
    assert Reduction.parse("last:9").of(values, "val_accuracy") == pytest.approx(0.55)
    assert Reduction.parse("final").of(np.array([0.5, np.nan]), "val_accuracy") is None
    for bad in ("last", "last:0", "last:-1", "mean", "last:2x"):
        with pytest.raises(BadFilter):
            Reduction.parse(bad)


def test_clean_rounds_floats_to_six_significant_digits():
    assert clean(0.7099999785423279) == 0.71
    assert clean({"a": [1.0000001, math.nan, 3]}) == {"a": [1.0, None, 3]}
