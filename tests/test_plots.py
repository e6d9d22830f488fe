"""`bncompare plot`: which figures a results directory calls for, what is in them, the command line."""

from __future__ import annotations

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
