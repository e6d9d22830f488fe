"""`bncompare plot`: which figures a results directory calls for, what is in them, the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from results_fixtures import internals, runs_from, sweep_results, write_run
from typer.testing import CliRunner

from bncompare import plots
from bncompare.aggregate import load
from bncompare.cli import app
from bncompare.results import Claim, write_json

CURVES = ["curves-val_accuracy-epoch", "curves-val_loss-epoch", "curves-loss-epoch"]


def _names(paths) -> list[str]:
    return [p.name for p in paths]


def test_a_learning_rate_sweep_gives_curves_and_a_sweep_plot(tmp_path):
    out = sweep_results(tmp_path)
    written = plots.plot_results(load(out))
    assert _names(written) == [f"{n}.png" for n in CURVES] + ["sweep-learning_rate-val_accuracy.png"]
    assert all(p.parent == out / "sweep" / "plots" and p.stat().st_size > 10_000 for p in written)
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_have_one_panel_per_learning_rate_and_a_line_and_band_per_variant(tmp_path):
    results = load(sweep_results(tmp_path))
    figure = plots.curves_figure(results.experiments[0], "val_accuracy", "epoch")
    axes = figure.axes
    assert [ax.get_title() for ax in axes] == ["learning_rate=0.01", "learning_rate=0.1", "learning_rate=50"]
    first = axes[0]
    # Colours by name: no_bn orange, bn blue, whatever else is in the directory.
    assert [to_hex(line.get_color()) for line in first.lines] == ["#e69f00", "#0072b2"]
    assert len(first.collections) == 2  # the ±std bands
    assert first.get_xlabel() == "epoch"
    # lr 50: bn recorded one point then diverged (x at its value), no_bn diverged before any eval
    # (x in the strip under the data).
    diverged = [line for line in axes[2].lines if line.get_marker() == "x"]
    assert len(diverged) == 2  # 3 seeds each at one place: one x per variant...
    counts = [t.get_text() for t in axes[2].texts]
    assert counts == ["×3", "×3"]  # ...with its count
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [
        "no_bn", "bn", "diverged run (grey strip: before its first eval)"]


def test_a_panel_where_every_run_diverged_before_an_eval_says_so(tmp_path):
    results = load(sweep_results(tmp_path))
    figure = plots.curves_figure(results.experiments[0], "val_loss", "epoch")
    assert "no eval point" not in str([t.get_text() for t in figure.axes[2].texts])  # bn has one
    out = tmp_path / "only"
    run = runs_from(tmp_path, "name: e\ndata: {dataset: synthetic}\n")[0]
    write_run(out, run, [], status="diverged", diverged_at={"epoch": 0.5, "step": 5})
    results = load(out)
    figure = plots.curves_figure(results.experiments[0], "loss", "step")
    assert [t.get_text() for t in figure.axes[0].texts] == ["no eval point:\nevery run diverged first"]


def test_sweep_plot_uses_a_log_axis_for_learning_rates_with_ticks_at_the_swept_values(tmp_path):
    results = load(sweep_results(tmp_path))
    figure = plots.sweep_figure(results.experiments[0], "train.learning_rate", "val_accuracy")
    final, best = figure.axes
    assert (final.get_title(), best.get_title()) == ("final", "best during training")
    assert final.get_xscale() == "log"
    assert [t.get_text() for t in final.get_xticklabels()] == ["0.01", "0.1", "50"]
    assert final.get_xlabel() == "learning rate"


@pytest.mark.parametrize("values, scale", [([32, 64, 128], "linear"), ([8, 64, 512], "log"),
                                           ([0.0, 1e-4, 1e-2], "symlog")])
def test_sweep_axis_is_log_only_over_decades(tmp_path, values, scale):
    key = "train.weight_decay" if scale == "symlog" else "train.batch_size"
    out = tmp_path / "results"
    for value in values:
        for run in runs_from(tmp_path, "name: e\ndata: {dataset: synthetic}\n", [f"{key}={value}"]):
            write_run(out, run, [0.5, 0.6])
    results = load(out)
    figure = plots.sweep_figure(results.experiments[0], key, "val_accuracy")
    assert figure.axes[0].get_xscale() == scale


def test_recorded_internals_give_activation_and_gradient_figures(tmp_path):
    out = tmp_path / "results"
    config = ("name: inside\ndata: {dataset: synthetic}\ntrain: {seeds: [0, 1]}\n"
              "record: {activations: true, gradients: true}\n")
    for run in runs_from(tmp_path, config):
        write_run(out, run, [0.5, 0.6, 0.7], blocks=internals(2, 3, 1.0 + run.seed))
    results = load(out)
    written = plots.plot_results(results, x="step", fmt="svg")
    assert _names(written)[-2:] == ["activations-step.svg", "gradients-step.svg"]
    assert all(p.stat().st_size > 0 for p in written)

    experiment = results.experiments[0]
    figure = plots.activations_figure(experiment, (), experiment.conditions, "step")
    # rows = layers, columns = variants side by side; three percentile lines per panel.
    assert len(figure.axes) == 4
    assert [ax.get_title() for ax in figure.axes[:2]] == ["no_bn", "bn"]
    assert [len(ax.lines) for ax in figure.axes] == [3] * 4
    assert figure.axes[0].get_ylabel() == "layer 1"
    figure = plots.gradients_figure(experiment, (), experiment.conditions, "step")
    assert [ax.get_title() for ax in figure.axes] == ["dense_1/kernel", "dense_2/kernel", "output/kernel"]
    assert figure.axes[0].get_yscale() == "log"


def test_internals_are_drawn_per_facet_value(tmp_path):
    out = tmp_path / "results"
    config = ("name: inside\ndata: {dataset: synthetic}\nsweep: {model.depth: [1, 2]}\n"
              "record: {activations: true}\n")
    for run in runs_from(tmp_path, config):
        write_run(out, run, [0.5], blocks=[{"activations": internals(1, 1, 1.0)[0]["activations"]}])
    results = load(out)
    names = [name for name, _ in plots.figures(results.experiments[0], "loss", "epoch")]
    assert names == ["curves-loss-epoch", "curves-val_accuracy-epoch", "curves-val_loss-epoch",
                     "sweep-depth-loss", "activations-epoch-depth=1", "activations-epoch-depth=2"]


def test_pdf_figures(tmp_path):
    results = load(sweep_results(tmp_path))
    figure = plots.sweep_figure(results.experiments[0], "train.learning_rate", "loss")
    path = plots.save(figure, tmp_path / "sweep.pdf", "pdf")
    assert path.read_bytes().startswith(b"%PDF")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_out_dir_holds_one_folder_per_experiment_when_there_are_several(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "figures", lambda *args: iter([("figure", Figure())]))  # only folders here
    out = sweep_results(tmp_path)
    write_run(out, runs_from(tmp_path, "name: other\ndata: {dataset: synthetic}\n")[0], [0.5])
    written = plots.plot_results(load(out), out=tmp_path / "figs")
    assert {p.parent for p in written} == {tmp_path / "figs" / "other", tmp_path / "figs" / "sweep"}
    written = plots.plot_results(load(out / "sweep"), out=tmp_path / "one")
    assert {p.parent for p in written} == {tmp_path / "one"}


# ---- the command line ---------------------------------------------------------------------------


def test_plot_command_writes_figures_and_reports_skipped_runs(tmp_path):
    out = sweep_results(tmp_path)
    broken = write_run(out, runs_from(tmp_path, "name: sweep\ndata: {dataset: synthetic}\n")[0], [0.5],
                       status="failed")
    result = CliRunner().invoke(app, ["plot", str(out), "--metric", "val_loss", "--x", "time"])
    assert result.exit_code == 0, result.output
    assert f"warning: skipped {broken}: failed: RuntimeError: boom" in result.output
    assert "4 figures from 18 runs; skipped 1 unfinished or unreadable run" in result.output
    assert (out / "sweep" / "plots" / "curves-val_loss-time.png").is_file()
    assert (out / "sweep" / "plots" / "sweep-learning_rate-val_loss.png").is_file()


def test_plot_command_fails_clearly_without_runs(tmp_path):
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'nope'}: no such directory"
    result = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == 2 and "no runs found" in result.output
    result = CliRunner().invoke(app, ["plot", str(tmp_path), "--format", "gif"])
    assert result.exit_code == 2


def test_help_does_not_import_matplotlib_or_numpy():
    code = ("import sys; from bncompare.cli import app; "
            "print(sorted(m for m in ('matplotlib', 'numpy', 'tensorflow') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


# ---- honest figures -------------------------------------------------------------------------------


def _modes_results(tmp_path, seeds=(0, 1, 2), diverge_seed=None, points=3):
    """Runs that recorded BN evaluation modes (PreciseBN, batch statistics) beside the usual keys."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "results"
    seeds_text = ", ".join(map(str, seeds))
    for run in runs_from(tmp_path, f"name: modes\ndata: {{dataset: synthetic, train_limit: 500}}\n"
                                   f"train: {{seeds: [{seeds_text}]}}\n"):
        if run.seed == diverge_seed and run.variant == "bn":
            write_run(out, run, [0.4] * (points - 1), status="diverged",
                      diverged_at={"epoch": points - 0.5, "step": 10 * points - 5})
            continue
        run_dir = write_run(out, run, [0.3 + 0.1 * i + 0.01 * run.seed for i in range(points)])
        data = json.loads((run_dir / "metrics.json").read_text())
        history = data["history"]
        history["val_accuracy_precise"] = [v + 0.02 for v in history["val_accuracy"]]
        history["val_accuracy_batch"] = [v - 0.05 for v in history["val_accuracy"]]
        data["engine"] = {"name": "tf_pack", "members": 6}
        write_json(run_dir / "metrics.json", data)
    return out


def test_a_variant_has_the_same_colour_whatever_else_is_plotted(tmp_path):
    out = tmp_path / "results"
    config = ("name: e\ndata: {dataset: synthetic}\nvariants:\n  aardvark: {model.dropout: 0.1}\n"
              "  bn: {model.batch_norm: true}\n  zebra: {model.dropout: 0.2}\n")
    for run in runs_from(tmp_path, config):
        write_run(out, run, [0.5, 0.6])
    everything = load(out)
    only_bn = load(out, where=["variant=bn"])
    for results in (everything, only_bn):
        figure = plots.curves_figure(results.experiments[0], "val_accuracy", "epoch")
        by_label = {h.get_label(): to_hex(h.get_color()) for h in figure.legends[0].legend_handles}
        assert by_label["bn"] == "#0072b2"
    assert plots.colour("zebra") == plots.colour("zebra") != ""
    assert plots.colour("no_bn") == "#E69F00"


def test_bn_evaluation_modes_are_line_styles_explained_in_the_legend(tmp_path):
    results = load(_modes_results(tmp_path))
    figure = plots.curves_figure(results.experiments[0], "val_accuracy", "epoch")
    ax = figure.axes[0]
    styles = sorted({line.get_linestyle() for line in ax.lines})
    assert styles == ["--", "-", ":"] or set(styles) == {"-", "--", ":"}
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels == ["no_bn", "bn", "BN moving averages", "PreciseBN statistics", "batch statistics"]
    # --metric val_accuracy_precise: that series alone, labelled as such.
    figure = plots.curves_figure(results.experiments[0], "val_accuracy_precise", "epoch")
    assert {line.get_linestyle() for line in figure.axes[0].lines} == {"-"}
    assert figure.get_supylabel() == "validation accuracy, PreciseBN statistics (fraction)"


def test_old_results_without_new_keys_draw_one_solid_line_per_variant(tmp_path):
    results = load(sweep_results(tmp_path))
    figure = plots.curves_figure(results.experiments[0], "val_accuracy", "epoch")
    assert {line.get_linestyle() for line in figure.axes[0].lines} == {"-"}


def test_n_is_shown_where_seeds_dropped_out_and_one_seed_draws_no_band(tmp_path):
    results = load(_modes_results(tmp_path, diverge_seed=1, points=3))
    figure = plots.curves_figure(results.experiments[0], "val_accuracy", "epoch")
    texts = [t.get_text() for t in figure.axes[0].texts]
    # bn's moving-average curve at its last point (seed 1 diverged before it), and its PreciseBN and
    # batch-statistics curves from the start (the diverged seed recorded neither).
    assert texts == ["n=2"] * 3
    assert "n=k where fewer seeds had the point" in figure.get_suptitle().replace("\n", " ")
    one = load(_modes_results(tmp_path / "one", seeds=(0,)))
    figure = plots.curves_figure(one.experiments[0], "val_accuracy", "epoch")
    assert len(figure.axes[0].collections) == 0  # no zero-width band
    assert figure.get_suptitle() == "modes: validation accuracy, one seed (no spread)"


def test_sweep_with_one_seed_draws_no_error_bars_and_says_n_where_seeds_dropped(tmp_path):
    out = tmp_path / "results"
    for run in runs_from(tmp_path, "name: e\ndata: {dataset: synthetic}\ntrain: {seeds: [0, 1]}\n"
                                   "sweep: {train.learning_rate: [0.01, 0.1]}\n"):
        if run.seed == 1 and run["train.learning_rate"] == 0.1:
            write_run(out, run, [0.2], status="diverged", diverged_at={"epoch": 1.5, "step": 15})
        else:
            write_run(out, run, [0.5, 0.6 + 0.1 * run.seed])
    figure = plots.sweep_figure(load(out).experiments[0], "train.learning_rate", "val_accuracy")
    final = figure.axes[0]
    assert sorted(t.get_text() for t in final.texts) == ["n=1", "n=1"]  # lr 0.1, both variants
    # Error bars only at lr 0.01 (two seeds): one bar segment collection per variant, one segment.
    bars = [c for c in final.collections if len(c.get_segments()) > 0]
    assert [len(c.get_segments()) for c in bars] == [1, 1]


def test_one_eval_point_draws_final_only(tmp_path):
    out = tmp_path / "results"
    for run in runs_from(tmp_path, "name: e\ndata: {dataset: synthetic}\n"
                                   "sweep: {train.learning_rate: [0.01, 0.1]}\n"):
        write_run(out, run, [0.5])
    figure = plots.sweep_figure(load(out).experiments[0], "train.learning_rate", "val_accuracy")
    assert len(figure.axes) == 1
    assert figure.get_suptitle().startswith("e: final validation accuracy against learning rate")


def test_the_diverged_strip_has_no_ticks_so_no_negative_accuracy_or_loss(tmp_path):
    results = load(sweep_results(tmp_path))
    for metric in ("val_accuracy", "val_loss"):
        figure = plots.curves_figure(results.experiments[0], metric, "epoch")
        figure.canvas.draw()  # tick labels exist once drawn
        strip_panel = figure.axes[2]
        low, _ = strip_panel.get_ylim()
        bottom, _ = strip_panel.spines["left"].get_bounds()
        assert low < bottom  # the strip sits below where the axis line ends
        assert all(t >= bottom - 1e-12 for t in strip_panel.get_yticks())
        assert not any(label.get_text().startswith(("−", "-")) for ax in figure.axes
                       for label in ax.get_yticklabels())


def test_each_figure_has_a_caption_of_what_its_panels_share(tmp_path):
    results = load(sweep_results(tmp_path))
    figure = plots.curves_figure(results.experiments[0], "val_accuracy", "epoch")
    assert figure.legends[0].get_title().get_text() == (
        "synthetic, mlp 2x128 relu, sgd, batch 32, 5 epochs, all training examples")
    results = load(_modes_results(tmp_path))
    assert plots.caption(results.experiments[0]) == (
        "synthetic, mlp 2x128 relu, adam lr 0.001, batch 32, 5 epochs, 500 training examples")


def test_seeds_option_draws_each_seed_under_the_mean(tmp_path):
    results = load(_modes_results(tmp_path))
    plain = plots.curves_figure(results.experiments[0], "val_accuracy", "epoch")
    traced = plots.curves_figure(results.experiments[0], "val_accuracy", "epoch", seeds=True)
    # 2 variants x 3 modes x 3 seeds thin lines more, drawn below the means.
    assert len(traced.axes[0].lines) - len(plain.axes[0].lines) == 18
    thin = [line for line in traced.axes[0].lines if line.get_linewidth() < 1]
    assert len(thin) == 18 and all(line.get_zorder() < 2 for line in thin)


def test_many_panels_go_to_pages_and_past_the_cap_a_note_says_what_to_filter(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "PAGE_PANELS", 2)
    monkeypatch.setattr(plots, "MAX_PANELS", 4)
    out = tmp_path / "results"
    for run in runs_from(tmp_path, "name: e\ndata: {dataset: synthetic}\n"
                                   "sweep: {model.width: [1, 2, 3, 4, 5]}\n"):
        write_run(out, run, [0.5, 0.6])
    notes = []
    names = [name for name, _ in plots.figures(load(out).experiments[0], "val_accuracy", "epoch",
                                               note=notes.append)]
    assert names[:2] == ["curves-val_accuracy-epoch-p1-of-2", "curves-val_accuracy-epoch-p2-of-2"]
    assert notes == ["e: 5 conditions; the curves show the first 4 (in 2 pages). Choose the rest with "
                     "--where KEY=VALUE (keys that vary: model.width)"]


def test_plot_time_is_linear_in_panels(tmp_path):
    """Panels share limits without matplotlib's shared axes, whose sibling updates were quadratic."""
    import time

    out = tmp_path / "results"
    rates = ", ".join(str(0.001 * (i + 1)) for i in range(48))
    for run in runs_from(tmp_path, f"name: e\ndata: {{dataset: synthetic}}\ntrain: {{seeds: [0]}}\n"
                                   f"sweep: {{train.learning_rate: [{rates}]}}\nvariants: {{bn: {{}}}}\n"):
        write_run(out, run, [0.5, 0.6])
    experiment = load(out).experiments[0]
    groups = experiment.groups()
    timings = {}
    for count in (6, 24):
        start = time.perf_counter()
        plots.curves_figure(experiment, "val_accuracy", "epoch", groups=groups[:count])
        timings[count] = time.perf_counter() - start
    assert timings[24] < 4 * timings[6] * 2.5  # 4x the panels: well under 16x the time


def test_plot_command_metric_filters_and_include_running(tmp_path):
    out = _modes_results(tmp_path)
    live = write_run(out, runs_from(tmp_path, "name: modes\ndata: {dataset: synthetic, train_limit: 500}\n"
                                               "train: {seeds: [7]}\n")[0], [0.5], status=None)
    claim = Claim.acquire(live)
    try:
        result = CliRunner().invoke(app, ["plot", str(out), "--metric", "val_accuracy_precise",
                                          "--include-running", "--where", "variant=no_bn", "--seeds"])
    finally:
        claim.release()
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.output
    assert (out / "modes" / "plots" / "curves-val_accuracy_precise-epoch.png").is_file()
    result = CliRunner().invoke(app, ["plot", str(out), "--metric", "nope"])
    assert result.exit_code == 2 and "--metric 'nope': no run recorded it" in result.output
    result = CliRunner().invoke(app, ["plot", str(out), "--experiment", "other"])
    assert result.exit_code == 2 and "--experiment 'other': no such experiment" in result.output


def test_sweep_lr_script_writes_to_its_own_directory_by_default(tmp_path):
    """After the Quick start (results/mnist), the sweep's runs must not land beside those runs, where
    `plot results/` would read their other differences as a sweep (a nonsense sweep-epochs figure)."""
    from pathlib import Path

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "bncompare"
    fake.write_text('#!/bin/sh\necho "$@" >> "$CALLS"\n')
    fake.chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "scripts" / "sweep_lr.sh"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(tmp_path / "calls"), "LRS": "0.1 1.0"}
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[:2] == [f"run configs/mnist.yaml --out results/sweep_lr --set train.learning_rate={lr}"
                         for lr in ("0.1", "1.0")]
    assert calls[-1] == "plot results/sweep_lr"
