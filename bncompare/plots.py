"""Figures from aggregated results: learning curves, sweeps, activation percentiles, gradient norms.

Built with matplotlib's object-oriented API (`Figure`, never pyplot): no global figure state to leak
between figures or tests, and no GUI backend is touched (savefig renders through the Agg, SVG or PDF
canvas). Sized for a paper: panels about 2.6 x 2 inches, 7.5-9.5 pt text, 200 dpi PNGs.

Every figure colours a variant the same way (its index among all variants, sorted by name), marks
diverged runs with an x in that colour, and names variants as the config does.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from bncompare.aggregate import (Condition, ExperimentResults, Results, facet_label, format_value,
                                 natural)

# Okabe-Ito colours (readable with colour-vision deficiencies), without yellow (invisible on white)
# and vermillion (too close to the red people read as "error").
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#000000"]
STYLE = {
    "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "legend.fontsize": 8,
    "xtick.labelsize": 7.5, "ytick.labelsize": 7.5, "figure.titlesize": 9.5,
    "figure.labelsize": 8.5, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "savefig.dpi": 200,
    "pdf.fonttype": 42,  # TrueType in PDFs: text stays editable in a paper's figure
}
PANEL = (2.6, 2.0)  # inches per small multiple
MIN_WIDTH = 4.8  # inches: room for a title and a legend even with one panel
MAX_COLUMNS = 4
TITLE_CHARS = 38  # characters of a panel title per line at PANEL width
STRIP = 0.18  # axes fraction under the data for runs that diverged before their first eval
DIVERGED = {"marker": "x", "markersize": 6, "markeredgewidth": 1.6, "linestyle": "none"}

METRIC_LABELS = {"val_accuracy": "validation accuracy (fraction)",
                 "accuracy": "training accuracy (fraction)",
                 "val_loss": "validation loss (cross-entropy, nats)",
                 "loss": "training loss (cross-entropy, nats)"}
X_LABELS = {"epoch": "epoch", "step": "optimizer step", "time": "training time (s, evaluation excluded)"}
# Sweep axes with units; other keys are labelled by their name.
KEY_LABELS = {"train.learning_rate": "learning rate", "train.weight_decay": "weight decay",
              "train.batch_size": "batch size (examples)", "train.momentum": "momentum",
              "train.epochs": "epochs", "train.steps": "optimizer steps",
              "model.depth": "depth (hidden layers)", "model.width": "width (units or filters per layer)",
              "model.dropout": "dropout rate", "model.bn_momentum": "BN moving-average momentum",
              "model.bn_epsilon": "BN epsilon", "data.train_limit": "training examples"}
# Keys that are multiplicative by nature: log axis even when they span less than 1.5 decades.
LOG_KEYS = ("train.learning_rate", "train.weight_decay", "model.bn_epsilon")
PERCENTILES = (("p15", 0.9), ("p50", 1.7), ("p85", 0.9))  # (stat, line width): the median stands out


def plot_results(results: Results, metric: str = "val_accuracy", x: str = "epoch", fmt: str = "png",
                 out: Path | None = None) -> list[Path]:
    """Write every figure the results call for; return the files written.

    Figures go to <experiment dir>/plots/, or to `out` (to out/<experiment>/ when there are several).
    """
    colours = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(results.variants)}
    written = []
    with rc_context(STYLE):
        for experiment in results.experiments:
            if out is None:
                folder = experiment.directory / "plots"
            else:
                folder = Path(out) / experiment.name if len(results.experiments) > 1 else Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            for name, figure in figures(experiment, colours, metric, x):
                written.append(save(figure, folder / f"{name}.{fmt}", fmt))
    return written


def figures(experiment: ExperimentResults, colours: dict[str, str], metric: str,
            x: str) -> Iterator[tuple[str, Figure]]:
    """(file stem, figure) for each figure the experiment calls for, in a stable order."""
    for name in dict.fromkeys([metric, "val_accuracy", "val_loss", "loss"]):
        yield f"curves-{name}-{x}", curves_figure(experiment, colours, name, x)
    for key in experiment.sweep_keys:
        yield f"sweep-{key.split('.', 1)[-1]}-{metric}", sweep_figure(experiment, colours, key, metric)
    for facets, conditions in experiment.groups():
        suffix = "".join(f"-{_slug(key, value)}" for key, value in facets)
        if any(c.has("activations") for c in conditions):
            yield f"activations-{x}{suffix}", activations_figure(experiment, colours, facets, conditions, x)
        if any(c.has("gradients") for c in conditions):
            yield f"gradients-{x}{suffix}", gradients_figure(experiment, colours, facets, conditions, x)


def save(figure: Figure, path: Path, fmt: str) -> Path:
    """Write a figure atomically: a viewer reloading the file never sees half an image."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        figure.savefig(tmp, format=fmt)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---- the figures ----------------------------------------------------------------------------------


def curves_figure(experiment: ExperimentResults, colours: dict[str, str], metric: str, x: str) -> Figure:
    """One panel per facet combination; per variant the mean over seeds with a ±std band."""
    groups = experiment.groups()
    shared_y = "accuracy" in metric
    figure, axes = _grid(len(groups), X_LABELS[x], sharey=shared_y)
    marked = []
    for ax, (facets, conditions) in zip(axes, groups):
        points, drawn = [], False
        for condition in conditions:
            colour = colours[condition.variant]
            curve = condition.curve(("history", metric), x)
            if curve is not None:
                _band(ax, curve.x, curve.mean, curve.std, colour)
                drawn = True
            for end_x, end_y in condition.diverged_ends(("history", metric), x):
                if math.isfinite(end_x):
                    points.append((end_x, end_y, colour, experiment.variants.index(condition.variant)))
        marked.append((ax, points))
        ax.set_title(_wrap(facet_label(facets)))
        if not drawn:  # say why it is empty; unshared y ticks would be a placeholder range
            if not shared_y:
                ax.tick_params(labelleft=False)
            ax.text(0.5, 0.55, "no eval point:\nevery run diverged first", transform=ax.transAxes,
                    ha="center", va="center", color="0.4")
    axes[0].set_xlim(left=0)  # training starts at 0 (x is shared): a lone eval point is not centred
    figure.supylabel(METRIC_LABELS[metric])
    _header(figure, experiment, colours, f"{METRIC_LABELS[metric].split(' (')[0]}, "
            f"mean ± std over {_seeds(experiment.conditions)}", _mark_diverged(marked))
    return figure


def sweep_figure(experiment: ExperimentResults, colours: dict[str, str], key: str, metric: str) -> Figure:
    """Final and best metric against a swept value: one line per variant, diverged runs as x."""
    groups = experiment.groups(without=(key,))
    figure = _figure(2, len(groups))
    axes = figure.subplots(len(groups), 2, squeeze=False, sharey="row" if "accuracy" in metric else False)
    values = experiment.values(key)
    best_word = "lowest" if "loss" in metric else "best"
    marked = []
    for row, (facets, conditions) in enumerate(groups):
        for col, (title, stat) in enumerate((("final", Condition.final),
                                             (f"{best_word} during training", Condition.best))):
            ax, points = axes[row, col], []
            for variant in experiment.variants:
                mine = [c for c in conditions if c.variant == variant]
                if not mine:
                    continue
                at = [dict(c.facets)[key] for c in mine]
                stats = [stat(c, metric) for c in mine]
                ax.errorbar(at, [np.nan if s.mean is None else s.mean for s in stats],
                            yerr=[s.std or 0.0 for s in stats], color=colours[variant], marker="o",
                            markersize=3.5, linewidth=1.4, capsize=2.5, elinewidth=0.9)
                for value, condition in zip(at, mine):
                    for _, end_y in condition.diverged_ends(("history", metric), "step"):
                        points.append((value, end_y, colours[variant], experiment.variants.index(variant)))
            marked.append((ax, points))
            _sweep_axis(ax, key, values)
            ax.set_title("\n".join(filter(None, [title, _wrap(facet_label(facets))])))
    diverged = _mark_diverged(marked)
    for ax in axes[-1]:
        ax.set_xlabel(KEY_LABELS.get(key, key))
    figure.supylabel(METRIC_LABELS[metric])
    _header(figure, experiment, colours, f"{METRIC_LABELS[metric].split(' (')[0]} against "
            f"{KEY_LABELS.get(key, key).split(' (')[0]}\nmean ± std over {_seeds(experiment.conditions)}"
            f"{', diverged seeds excluded' if diverged else ''}", diverged)
    return figure


def activations_figure(experiment: ExperimentResults, colours: dict[str, str], facets: tuple,
                       conditions: list[Condition], x: str) -> Figure:
    """Ioffe & Szegedy 2015 Fig. 1 (b, c): 15/50/85th percentiles of each layer's pre-activation,
    one row per layer, variants side by side on a shared y axis so their spreads compare."""
    recorded = [c for c in conditions if c.has("activations")]
    layers = sorted({layer for c in recorded for layer in c.block_keys("activations")}, key=natural)
    figure = _figure(len(recorded), len(layers), height=1.7)
    axes = figure.subplots(len(layers), len(recorded), squeeze=False, sharex=True, sharey="row")
    for col, condition in enumerate(recorded):
        colour = colours[condition.variant]
        axes[0, col].set_title(condition.variant, color=colour, fontweight="bold")
        for row, layer in enumerate(layers):
            ax = axes[row, col]
            curves = {stat: condition.curve(("activations", layer, stat), x) for stat, _ in PERCENTILES}
            for stat, width in PERCENTILES:
                if curves[stat] is not None:
                    ax.plot(curves[stat].x, curves[stat].mean, color=colour, linewidth=width)
            low, high = curves["p15"], curves["p85"]
            if low is not None and high is not None and len(low.x) == len(high.x):
                ax.fill_between(low.x, low.mean, high.mean, color=colour, alpha=0.12, linewidth=0)
            if col == 0:
                ax.set_ylabel(layer.replace("_", " "))
        axes[-1, col].set_xlabel(X_LABELS[x])
    figure.supylabel("input to the nonlinearity (15th, 50th, 85th percentile)")
    handles = [Line2D([], [], color="0.3", linewidth=1.7, label="median"),
               Line2D([], [], color="0.3", linewidth=0.9, label="15th and 85th percentiles")]
    title = (f"{experiment.name}{', ' + facet_label(facets) if facets else ''}: activation "
             f"percentiles on a probe batch\nmean over {_seeds(recorded)}")
    figure.suptitle(title)
    figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    return figure


def gradients_figure(experiment: ExperimentResults, colours: dict[str, str], facets: tuple,
                     conditions: list[Condition], x: str) -> Figure:
    """Gradient L2 norm of each layer's weights over training, one panel per layer, log scale."""
    recorded = [c for c in conditions if c.has("gradients")]
    paths = sorted({p for c in recorded for p in c.block_keys("gradients")}, key=natural)
    # Kernels are "the layer's gradient"; biases and BN's gamma/beta would double the panels.
    kernels = [p for p in paths if p.endswith("kernel")] or paths
    figure, axes = _grid(len(kernels), X_LABELS[x])
    for ax, path in zip(axes, kernels):
        for condition in recorded:
            curve = condition.curve(("gradients", path, "norm"), x)
            if curve is not None and np.any(curve.mean > 0):
                _band(ax, curve.x, curve.mean, curve.std, colours[condition.variant], floor=True)
        _log_y(ax)
        ax.set_title(path)
    figure.supylabel("gradient L2 norm (log scale)")
    variants = sorted({c.variant for c in recorded}, key=experiment.variants.index)
    _header(figure, experiment, {v: colours[v] for v in variants},
            f"gradient norm of each layer's weights, mean ± std over {_seeds(recorded)}", None, facets)
    return figure


# ---- pieces -----------------------------------------------------------------------------------------


def _figure(columns: int, rows: int, height: float = PANEL[1]) -> Figure:
    # Extra height holds the two-line header (title and legend) above the panels.
    return Figure(figsize=(max(MIN_WIDTH, PANEL[0] * columns), height * rows + 0.8), layout="constrained")


def _grid(panels: int, xlabel: str, sharey: bool = False) -> tuple[Figure, list[Axes]]:
    """A figure with `panels` small multiples, wrapped at MAX_COLUMNS, x labels on the lowest ones.

    (Not figure.supxlabel: constrained layout does not keep it clear of a legend below the panels.)
    """
    columns = min(panels, MAX_COLUMNS)
    rows = math.ceil(panels / columns)
    figure = _figure(columns, rows)
    # Shared axes compare honestly across panels, and inner tick labels go (less to lay out).
    axes = list(figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=sharey).ravel())
    for ax in axes[panels:]:
        figure.delaxes(ax)
    for ax in axes[max(0, panels - columns):panels]:  # the lowest panel of each column
        ax.set_xlabel(xlabel)
        ax.xaxis.set_tick_params(labelbottom=True)
    return figure, axes[:panels]


def _band(ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, colour: str,
          floor: bool = False) -> None:
    """A mean line with a ±std band; `floor` keeps the band positive on a log axis."""
    low = mean - std
    if floor:
        low = np.where(low > 0, low, mean / 10)
    ax.plot(x, mean, color=colour, linewidth=1.5, marker="o" if len(x) <= 12 else None, markersize=2.5)
    ax.fill_between(x, low, mean + std, color=colour, alpha=0.2, linewidth=0)


def _mark_diverged(marked: list[tuple[Axes, list[tuple[float, float | None, str, int]]]]) -> str | None:
    """An x per diverged run (x, last value or None, colour, variant index) at its last recorded
    value. Runs that recorded none go in a grey strip under the data, one lane per variant.
    Returns the legend label for these marks, None when there are none.

    Called once per figure, after every panel is drawn: panels that share a y axis must be
    extended for the strip once, not once each.
    """
    extended: set[int] = set()
    if not any(points for _, points in marked):
        return None
    for ax, points in marked:
        for x, y, colour, _ in points:
            if y is not None:
                ax.plot([x], [y], color=colour, **DIVERGED)
    for ax, points in marked:
        lanes = [(x, colour, lane) for x, y, colour, lane in points if y is None]
        if not lanes:
            continue
        siblings = ax.get_shared_y_axes().get_siblings(ax)
        if not extended.intersection(map(id, siblings)):
            ax.autoscale_view()
            low, high = ax.get_ylim()
            ax.set_ylim(low - STRIP / (1 - STRIP) * (high - low), high)
            extended.update(map(id, siblings))
        # A strip, not a value: these runs never reached an eval point.
        ax.add_patch(Rectangle((0, 0), 1, STRIP, transform=ax.transAxes, color="0.92",
                               linewidth=0, zorder=0))
        for x, colour, lane in lanes:
            ax.plot([x], [0.045 + 0.06 * lane], color=colour, transform=ax.get_xaxis_transform(),
                    clip_on=False, **DIVERGED)
    if extended:
        return "diverged run (grey strip: before its first eval)"
    return "diverged run"


def _log_y(ax: Axes) -> None:
    """Log y axis labelled 0.2, 0.5, 1, 2 over a few decades (not 2x10^-1), decades beyond."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    if low > 0 and math.log10(high / low) <= 3:
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def _sweep_axis(ax: Axes, key: str, values: list[Any]) -> None:
    """Log scale for rates and for values spanning 1.5 decades or more; ticks at the swept values."""
    positive = [v for v in values if v > 0]
    wide = len(positive) > 1 and max(positive) / min(positive) >= 10 ** 1.5
    if positive and (key in LOG_KEYS or wide):
        if len(positive) == len(values):
            ax.set_xscale("log")
        else:  # e.g. weight_decay [0, 1e-4, 1e-3]: linear around zero, log beyond
            ax.set_xscale("symlog", linthresh=min(positive))
    if len(values) <= 8:
        ax.set_xticks(values, [format_value(v) for v in values])
        ax.xaxis.set_minor_locator(NullLocator())


def _header(figure: Figure, experiment: ExperimentResults, colours: dict[str, str], what: str,
            diverged: str | None, facets: tuple = ()) -> None:
    """Title (experiment: what is shown) above the panels, one legend for the whole figure below."""
    handles = [Line2D([], [], color=colours[v], linewidth=2, label=v)
               for v in experiment.variants if v in colours]
    if diverged:
        handles.append(Line2D([], [], color="0.3", label=diverged, **DIVERGED))
    figure.suptitle(f"{experiment.name}{', ' + facet_label(facets) if facets else ''}: {what}")
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)


def _seeds(conditions: list[Condition]) -> str:
    counts = sorted({len(c.runs) for c in conditions})
    text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{text} seed{'s' * (counts[-1] != 1)}"


def _wrap(title: str) -> str:
    """A panel title in lines that fit the panel's width (facet labels can be long)."""
    return "\n".join(textwrap.wrap(title, TITLE_CHARS, break_on_hyphens=False))


def _slug(key: str, value: Any) -> str:
    """'learning_rate=0.01': a file-name-safe facet, readable in a directory listing."""
    text = re.sub(r"[^A-Za-z0-9._+-]+", "_", format_value(value)).strip("_")
    return f"{key.split('.', 1)[-1]}={text}"
