"""Figures from aggregated results: learning curves, sweeps, activation percentiles, gradient norms.

Built with matplotlib's object-oriented API (`Figure`, never pyplot): no global figure state to leak
between figures or tests, and no GUI backend is touched (savefig renders through the Agg, SVG or PDF
canvas). Sized for a paper: panels about 2.6 x 2 inches, 7.5-9.5 pt text, 200 dpi PNGs.

Honest by construction:
- a variant's colour depends on its name only (`colour`), so it is the same in every figure;
- each figure says in a caption line what all its panels share (dataset, model, optimizer...);
- where seeds dropped out of a mean (diverged, stopped early) the point says n=k; a single seed
  draws no error bar or band;
- diverged runs are an x at their last value, with a count when several stack at one place; runs
  that diverged before their first eval sit in a grey strip under the axis, outside its scale;
- BatchNorm evaluation modes (moving averages, PreciseBN, batch statistics) are line styles and
  markers.

Panels share their axes by setting the same limits at the end, not through matplotlib's shared
axes: those propagate every limit change to every sibling, which made a 200-panel figure take
quadratic time (100 s). Figures of more than PAGE_PANELS panels are split into pages, and past
MAX_PANELS the rest is left out with a note saying how to choose with --where.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullLocator

from bncompare.aggregate import (Condition, ExperimentResults, Results, facet_label, format_value,
                                 lower_is_better, natural)
from bncompare.results import make_directories
from bncompare.style import DIVERGED, MARKERS, MIN_WIDTH, N_LABEL, PANEL, STYLE, X_LABELS, colour, log_y

MAX_COLUMNS = 4
PAGE_PANELS = 24  # panels per figure; more go to further pages (files ...-p2-of-3)
MAX_PANELS = 96  # panels over all pages; past it, a note says how to choose with --where
MAX_FIGURES_PER_KIND = 24  # per-condition figures (activations, gradients) of one experiment
TITLE_CHARS = 38  # characters of a panel title per line at PANEL width
MAX_TITLE_LINES = 6  # past this, titles end with "... (N more lines)"
STRIP = 0.16  # axes fraction under the data for runs that diverged before their first eval
MAX_NAME = 120  # characters of a figure's file name

METRIC_LABELS = {"val_accuracy": "validation accuracy (fraction)",
                 "accuracy": "training accuracy (fraction)",
                 "val_loss": "validation loss (cross-entropy, nats)",
                 "loss": "training loss (cross-entropy, nats)",
                 "train_eval_accuracy": "training accuracy, inference mode (fraction)",
                 "train_eval_loss": "training loss, inference mode (cross-entropy, nats)"}
# BatchNorm evaluation modes: the history suffix, legend words, line style.
MODES = (("", "BN moving averages", "-"), ("_precise", "PreciseBN statistics", "--"),
         ("_batch", "batch statistics", ":"))
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


class PlotWriteError(OSError):
    """A figure could not be written (read-only or full disk); names the folder."""

    def __init__(self, folder: Path, error: OSError):
        super().__init__(error.errno, error.strerror or str(error), str(folder))
        self.folder, self.reason = folder, error.strerror or str(error)


def metric_label(metric: str) -> str:
    """Axis words for any history metric: 'validation accuracy, PreciseBN statistics (fraction)'."""
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    for suffix, words, _ in MODES[1:]:
        if metric.endswith(suffix) and metric[:-len(suffix)] in METRIC_LABELS:
            base, unit = METRIC_LABELS[metric[:-len(suffix)]].split(" (", 1)
            return f"{base}, {words} ({unit}"
    return metric.replace("_", " ")


def plot_results(results: Results, metric: str = "val_accuracy", x: str = "epoch", fmt: str = "png",
                 out: Path | None = None, seeds: bool = False,
                 note: Callable[[str], None] | None = None) -> list[Path]:
    """Write every figure the results call for; return the files written.

    Figures go to <experiment dir>/plots/, or to `out` (to out/<experiment>/ when there are several,
    the experiment's name made safe as a folder name). `note` receives messages for the user
    (panels left out). Raise PlotWriteError when a folder or a figure cannot be written.
    """
    written = []
    with rc_context(STYLE):
        for experiment in results.experiments:
            if out is None:
                below, folder = experiment.directory, experiment.directory / "plots"
            else:
                several = len(results.experiments) > 1
                below = Path(out)
                folder = below / _folder_name(experiment.name) if several else below
            try:
                make_directories(folder, below)  # a `plots` symlink must not redirect the figures
            except OSError as e:
                raise PlotWriteError(folder, e) from None
            for name, figure in figures(experiment, metric, x, seeds, note):
                written.append(save(figure, folder / f"{safe_name(name)}.{fmt}", fmt))
    return written


def figures(experiment: ExperimentResults, metric: str, x: str, seeds: bool = False,
            note: Callable[[str], None] | None = None) -> Iterator[tuple[str, Figure]]:
    """(file stem, figure) for each figure the experiment calls for, in a stable order."""
    note = note or (lambda message: None)
    recorded = {key for c in experiment.conditions for r in c.runs for key in r.metrics["history"]}
    groups = experiment.groups()
    if len(groups) > MAX_PANELS:
        note(f"{experiment.name}: {len(groups)} conditions; the curves show the first {MAX_PANELS} "
             f"(in {math.ceil(MAX_PANELS / PAGE_PANELS)} pages). Choose the rest with --where KEY=VALUE "
             f"(keys that vary: {', '.join(experiment.facet_keys)})")
    pages = [groups[i:i + PAGE_PANELS] for i in range(0, min(len(groups), MAX_PANELS), PAGE_PANELS)]
    for name in dict.fromkeys([metric, "val_accuracy", "val_loss", "loss"]):
        if name not in recorded:
            continue
        for number, page in enumerate(pages, start=1):
            suffix = f"-p{number}-of-{len(pages)}" if len(pages) > 1 else ""
            yield (f"curves-{name}-{x}{suffix}",
                   curves_figure(experiment, name, x, seeds, page, (number, len(pages))))
    for key in experiment.sweep_keys if metric in recorded else ():
        yield f"sweep-{key.split('.', 1)[-1]}-{metric}", sweep_figure(experiment, key, metric, note)
    made = Counter()
    for facets, conditions in groups:
        suffix = "".join(f"-{_slug(key, value)}" for key, value in facets)
        for kind, draw in (("activations", activations_figure), ("gradients", gradients_figure)):
            if any(c.has(kind) for c in conditions):
                made[kind] += 1
                if made[kind] <= MAX_FIGURES_PER_KIND:
                    yield f"{kind}-{x}{suffix}", draw(experiment, facets, conditions, x)
    for kind, count in made.items():
        if count > MAX_FIGURES_PER_KIND:
            note(f"{experiment.name}: {count} conditions recorded {kind}; drew the first "
                 f"{MAX_FIGURES_PER_KIND}. Choose others with --where KEY=VALUE")
    # Santurkar et al. 2018 probes (record.landscape, record.ics), when recorded.
    from bncompare import probe_plots

    yield from probe_plots.figures(experiment, {v: colour(v) for v in experiment.variants}, x)


def save(figure: Figure, path: Path, fmt: str) -> Path:
    """Write a figure atomically: a viewer reloading the file never sees half an image."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise PlotWriteError(path.parent, e) from None
    os.close(fd)
    try:
        figure.savefig(tmp, format=fmt)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise PlotWriteError(path.parent, e) from None
        raise
    return path


def render(figure: Figure, fmt: str = "svg") -> bytes:
    """A figure's file content in memory, for pages that inline their figures (`bncompare report`).

    Call inside `rc_context(STYLE)`, as `plot_results` draws. No date in the metadata: the same
    results give the same bytes.
    """
    import io

    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt in ("svg", "pdf") else None
    figure.savefig(buffer, format=fmt, metadata=metadata)
    return buffer.getvalue()


def safe_name(text: str) -> str:
    """A single, harmless file or folder name made from text read from disk: no separators, no
    leading dot (so never '.' or '..'), no control characters, bounded length (with a hash when cut,
    so two long names stay apart)."""
    name = re.sub(r"[^A-Za-z0-9._+=,-]+", "_", text).strip("._") or "unnamed"
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = f"{name[:MAX_NAME - 9]}-{digest}"
    return name


def _folder_name(name: str) -> str:
    """An experiment's folder under --out: its name when that is a safe name, else the safe name
    with a hash of the real one, so "a/b" and "a_b" do not share (and overwrite) one folder."""
    safe = safe_name(name)
    if safe == name:
        return safe
    return f"{safe[:MAX_NAME - 9]}-{hashlib.sha1(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


# ---- the figures ----------------------------------------------------------------------------------


def curves_figure(experiment: ExperimentResults, metric: str, x: str, seeds: bool = False,
                  groups: list | None = None, page: tuple[int, int] = (1, 1)) -> Figure:
    """One panel per facet combination; per variant the mean over seeds with a ±std band, one line
    style per recorded BN evaluation mode, per-seed traces under the mean when `seeds`."""
    groups = experiment.groups() if groups is None else groups
    modes = _modes(experiment, metric)
    shared_y = "accuracy" in metric
    figure, axes = _grid(len(groups), X_LABELS[x])
    marked, dropped = [], False
    for ax, (facets, conditions) in zip(axes, groups):
        points, drawn = [], False
        for condition in conditions:
            tint = colour(condition.variant)
            for suffix, _, style in modes:
                path = ("history", metric + suffix)
                if seeds:
                    for trace_x, trace_y in condition.traces(path, x):
                        ax.plot(trace_x, trace_y, color=tint, linewidth=0.7, alpha=0.45,
                                linestyle=style, zorder=1)
                curve = condition.curve(path, x)
                if curve is None:
                    continue
                _band(ax, curve.x, curve.mean, curve.std, tint, n=curve.n, style=style,
                      band=not suffix)
                dropped |= _n_labels(ax, curve.x, curve.mean, curve.n, len(condition.runs), tint)
                drawn = True
            for end_x, end_y in condition.diverged_ends(("history", metric), x):
                if math.isfinite(end_x):
                    points.append((end_x, end_y, condition.variant))
        marked.append((ax, points))
        ax.set_title(_wrap(facet_label(facets)))
        if not drawn:  # say why it is empty
            training = any(r.status == "running" for c in conditions for r in c.runs)
            ax.text(0.5, 0.55, "no eval point yet:\nstill training" if training
                    else "no eval point:\nevery run diverged first", transform=ax.transAxes,
                    ha="center", va="center", color="0.4")
    _plot_diverged_values(marked)
    _share(axes, sharey=shared_y, x_from_zero=True)
    diverged = _strip(marked, experiment.variants, shared_y)
    figure.supylabel(metric_label(metric))
    what = (f"{metric_label(metric).split(' (')[0]}, {_over(experiment.conditions)}"
            f"{'; n=k where fewer seeds had the point' if dropped else ''}")
    if page[1] > 1:
        what += f" (page {page[0]} of {page[1]})"
    _header(figure, experiment, what, diverged, modes=modes if len(modes) > 1 else (),
            seeds=seeds)
    return figure


def sweep_figure(experiment: ExperimentResults, key: str, metric: str,
                 note: Callable[[str], None] | None = None) -> Figure:
    """Final and best metric against a swept value: one line per variant, diverged runs as x.

    With one eval point per run, final and best are the same number: one column only."""
    groups = experiment.groups(without=(key,))
    if len(groups) > PAGE_PANELS:
        if note:
            note(f"{experiment.name}: sweep of {key} drawn for the first {PAGE_PANELS} of "
                 f"{len(groups)} combinations of other keys. Choose with --where KEY=VALUE")
        groups = groups[:PAGE_PANELS]
    best_word = "lowest" if lower_is_better(metric) else "best"
    columns = [("final", Condition.final)]
    if max(c.eval_points() for c in experiment.conditions) > 1:
        columns.append((f"{best_word} during training", Condition.best))
    figure = _figure(max(2, len(columns)), len(groups))
    axes = [[figure.add_subplot(len(groups), len(columns), row * len(columns) + col + 1)
             for col in range(len(columns))] for row in range(len(groups))]
    values = experiment.values(key)
    marked, dropped = [], False
    for row, (facets, conditions) in enumerate(groups):
        for col, (title, stat) in enumerate(columns):
            ax, points = axes[row][col], []
            for variant in experiment.variants:
                mine = [c for c in conditions if c.variant == variant]
                if not mine:
                    continue
                at = [dict(c.facets)[key] for c in mine]
                stats = [stat(c, metric) for c in mine]
                means = [np.nan if s.mean is None else s.mean for s in stats]
                tint = colour(variant)
                ax.plot(at, means, color=tint, marker="o", markersize=3.5, linewidth=1.4)
                # Error bars only where there is a spread to show: one seed has none.
                spread = [(a, m, s.std) for a, m, s in zip(at, means, stats) if s.std is not None]
                if spread:
                    ax.errorbar([a for a, _, _ in spread], [m for _, m, _ in spread],
                                yerr=[s for _, _, s in spread], color=tint, linestyle="none",
                                capsize=2.5, elinewidth=0.9)
                for value, mean, s, condition in zip(at, means, stats, mine):
                    if s.n and s.n < len(condition.runs):
                        ax.annotate(f"n={s.n}", (value, mean), xytext=(3, 2),
                                    textcoords="offset points", color=tint, **N_LABEL)
                        dropped = True
                    for _, end_y in condition.diverged_ends(("history", metric), "step"):
                        points.append((value, end_y, variant))
            marked.append((ax, points))
            _sweep_axis(ax, key, values)
            ax.set_title("\n".join(filter(None, [title if len(columns) > 1 else "", _wrap(facet_label(facets))])))
    _plot_diverged_values(marked)
    flat = [ax for row in axes for ax in row]
    _share(flat, sharey="accuracy" in metric, columns=len(columns))
    diverged = _strip(marked, experiment.variants, "accuracy" in metric)
    for ax in axes[-1]:
        ax.set_xlabel(KEY_LABELS.get(key, key))
    figure.supylabel(metric_label(metric))
    single = "" if len(columns) > 1 else "final "
    _header(figure, experiment, f"{single}{metric_label(metric).split(' (')[0]} against "
            f"{KEY_LABELS.get(key, key).split(' (')[0]}\n{_over(experiment.conditions)}"
            f"{', diverged seeds excluded' if diverged else ''}"
            f"{'; n=k: seeds in the mean' if dropped else ''}", diverged, exclude=(key,))
    return figure


def activations_figure(experiment: ExperimentResults, facets: tuple, conditions: list[Condition],
                       x: str) -> Figure:
    """Ioffe & Szegedy 2015 Fig. 1 (b, c): 15/50/85th percentiles of each layer's pre-activation,
    one row per layer, variants side by side on a shared y axis so their spreads compare."""
    recorded = [c for c in conditions if c.has("activations")]
    layers = sorted({layer for c in recorded for layer in c.block_keys("activations")}, key=natural)
    figure = _figure(len(recorded), len(layers), height=1.7)
    axes = figure.subplots(len(layers), len(recorded), squeeze=False, sharex=True, sharey="row")
    for col, condition in enumerate(recorded):
        tint = colour(condition.variant)
        axes[0, col].set_title(condition.variant, color=tint, fontweight="bold")
        for row, layer in enumerate(layers):
            ax = axes[row, col]
            curves = {stat: condition.curve(("activations", layer, stat), x) for stat, _ in PERCENTILES}
            for stat, width in PERCENTILES:
                if curves[stat] is not None:
                    ax.plot(curves[stat].x, curves[stat].mean, color=tint, linewidth=width)
            low, high = curves["p15"], curves["p85"]
            if low is not None and high is not None and len(low.x) == len(high.x):
                ax.fill_between(low.x, low.mean, high.mean, color=tint, alpha=0.12, linewidth=0)
            if col == 0:
                ax.set_ylabel(layer.replace("_", " "))
        axes[-1, col].set_xlabel(X_LABELS[x])
    figure.supylabel("input to the nonlinearity (15th, 50th, 85th percentile)")
    handles = [Line2D([], [], color="0.3", linewidth=1.7, label="median"),
               Line2D([], [], color="0.3", linewidth=0.9, label="15th and 85th percentiles")]
    title = (f"{experiment.name}{', ' + facet_label(facets) if facets else ''}: activation "
             f"percentiles on a probe batch\n{_over(recorded, 'mean')}")
    figure.suptitle(title)
    _legend(figure, handles, experiment)
    return figure


def gradients_figure(experiment: ExperimentResults, facets: tuple, conditions: list[Condition],
                     x: str) -> Figure:
    """Gradient L2 norm of each layer's weights over training, one panel per layer, log scale."""
    recorded = [c for c in conditions if c.has("gradients")]
    paths = sorted({p for c in recorded for p in c.block_keys("gradients")}, key=natural)
    # Kernels are "the layer's gradient"; biases and BN's gamma/beta would double the panels.
    kernels = ([p for p in paths if p.endswith("kernel")] or paths)[:MAX_PANELS]
    figure, axes = _grid(len(kernels), X_LABELS[x])
    for ax, path in zip(axes, kernels):
        for condition in recorded:
            curve = condition.curve(("gradients", path, "norm"), x)
            if curve is not None and np.any(curve.mean > 0):
                _band(ax, curve.x, curve.mean, curve.std, colour(condition.variant), floor=True, n=curve.n)
        log_y(ax)
        ax.set_title(path)
    _share(axes, sharey=False)
    figure.supylabel("gradient L2 norm (log scale)")
    variants = [v for v in experiment.variants if any(c.variant == v for c in recorded)]
    _header(figure, experiment, f"gradient norm of each layer's weights, {_over(recorded)}", None,
            facets, variants=variants)
    return figure


def forest_figure(experiment: ExperimentResults, records: list[dict[str, Any]],
                  labels: list[str]) -> Figure:
    """`bncompare compare`'s rows as a forest plot, first row on top: each row's mean paired
    difference (variant − baseline) with its 95% interval, and a line at 0. A row with one pair has
    no interval (a point); a row with no pair says so."""
    rows = len(records)
    figure = Figure(figsize=(MIN_WIDTH + 1.2, 0.3 * rows + 1.6), layout="constrained")
    ax = figure.add_subplot()
    for i, (record, label) in enumerate(zip(records, labels)):
        y, tint = rows - 1 - i, colour(record["variant"])
        if record.get("mean_diff") is None:
            ax.text(0.02, y, "no seed finished in both", transform=ax.get_yaxis_transform(),
                    va="center", color="0.4")
            continue
        if record.get("ci_low") is not None and record.get("ci_high") is not None:
            ax.plot([record["ci_low"], record["ci_high"]], [y, y], color=tint, linewidth=2,
                    solid_capstyle="butt")
        ax.plot([record["mean_diff"]], [y], color=tint, marker="o", markersize=5, linestyle="none")
    ax.axvline(0, color="0.3", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(rows), [textwrap.shorten(label, 60, placeholder="...") for label in labels][::-1])
    ax.set_ylim(-0.7, rows - 0.3)
    ax.grid(axis="y", visible=False)
    first = records[0]
    better = "lower" if lower_is_better(first["metric"]) else "higher"
    ax.margins(x=0.1)
    ax.set_xlabel(f"variant − baseline: difference in\n{metric_label(first['metric']).split(' (')[0]} "
                  f"({better} is better)")
    variants = [v for v in experiment.variants if any(r["variant"] == v for r in records)]
    _header(figure, experiment, f"paired difference by seed, mean and 95% t-interval "
            f"({first.get('reduce', 'final')} {first['metric']})", None, variants=variants)
    return figure


# ---- pieces -----------------------------------------------------------------------------------------


def _figure(columns: int, rows: int, height: float = PANEL[1]) -> Figure:
    # Extra height holds the header (title, legend) above the panels and the caption below.
    return Figure(figsize=(max(MIN_WIDTH, PANEL[0] * columns), height * rows + 1.1), layout="constrained")


def _grid(panels: int, xlabel: str) -> tuple[Figure, list[Axes]]:
    """A figure with `panels` small multiples, wrapped at MAX_COLUMNS, x labels on the lowest ones.

    (Not figure.supxlabel: it holds the caption.) The axes are independent; `_share` gives them
    common limits once everything is drawn.
    """
    columns = max(1, min(panels, MAX_COLUMNS))
    rows = max(1, math.ceil(panels / columns))
    figure = _figure(columns, rows)
    axes = [figure.add_subplot(rows, columns, i + 1) for i in range(max(panels, 1))]
    for ax in axes[max(0, panels - columns):panels]:  # the lowest panel of each column
        ax.set_xlabel(xlabel)
    return figure, axes[:panels]


def _share(axes: list[Axes], sharey: bool, x_from_zero: bool = False, columns: int | None = None) -> None:
    """Common x limits (and y limits when `sharey`) for panels, set once: linear in panels.

    Inner tick labels go: x labels stay on each column's lowest panel, y labels on the first column.
    `columns`: panels per row when they are not wrapped at MAX_COLUMNS (the sweep figure's columns
    are final and best, which share x only within a column).
    """
    if not axes:
        return
    columns = columns or min(len(axes), MAX_COLUMNS)
    if columns > 1 and columns != min(len(axes), MAX_COLUMNS):
        groups = [axes[c::columns] for c in range(columns)]  # share within each column
    else:
        groups = [axes]
    for group in groups:
        lows, highs = zip(*(ax.get_xlim() for ax in group))
        low, high = (0.0 if x_from_zero else min(lows)), max(highs)
        if high > low:
            for ax in group:
                ax.set_xlim(low, high)
    if sharey:
        limits = [ax.get_ylim() for ax in axes if ax.lines or ax.collections]
        if limits:
            low, high = min(l for l, _ in limits), max(h for _, h in limits)
            for ax in axes:
                ax.set_ylim(low, high)
    for i, ax in enumerate(axes):
        if i + columns < len(axes):
            ax.tick_params(labelbottom=False)
        if sharey and i % columns:
            ax.tick_params(labelleft=False)


def _band(ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, tint: str,
          floor: bool = False, n: np.ndarray | None = None, style: str = "-", band: bool = True) -> None:
    """A mean line with a ±std band where two or more seeds had the point (one seed has no spread);
    `floor` keeps the band positive on a log axis."""
    ax.plot(x, mean, color=tint, linewidth=1.5, linestyle=style,
            marker=MARKERS.get(style, "o") if len(x) <= 12 else None,
            markersize=2.5 if len(x) > 1 else 5)
    spread = np.ones(len(x), dtype=bool) if n is None else n > 1
    if not band or not spread.any():
        return
    low = mean - std
    if floor:
        low = np.where(low > 0, low, mean / 10)
    ax.fill_between(x, low, mean + std, where=spread, color=tint, alpha=0.2, linewidth=0)


def _n_labels(ax: Axes, x: np.ndarray, mean: np.ndarray, n: np.ndarray, seeds: int, tint: str) -> bool:
    """'n=k' where the count of seeds in the mean changes and is below `seeds`; True if any."""
    labelled = False
    for i in range(len(n)):
        if n[i] < seeds and (i == 0 or n[i] != n[i - 1]):
            ax.annotate(f"n={int(n[i])}", (x[i], mean[i]), xytext=(2, 3), textcoords="offset points",
                        color=tint, **N_LABEL)
            labelled = True
    return labelled


Points = list[tuple[float, float | None, str]]  # (x, last value or None, variant) per diverged run


def _plot_diverged_values(marked: list[tuple[Axes, Points]]) -> None:
    """An x per diverged run at its last recorded value; several at one place: one x and a count."""
    for ax, points in marked:
        stacked = Counter((x, y, variant) for x, y, variant in points if y is not None)
        for (x, y, variant), count in stacked.items():
            ax.plot([x], [y], color=colour(variant), **DIVERGED)
            if count > 1:
                ax.annotate(f"×{count}", (x, y), xytext=(4, -3), textcoords="offset points",
                            color=colour(variant), fontsize=7, ha="left", va="top")


def _strip(marked: list[tuple[Axes, Points]], variants: list[str], shared: bool) -> str | None:
    """Runs that diverged before their first eval go in a grey strip under the data, one lane per
    variant, outside the value scale: the axis line and its ticks stop where the data starts.
    Returns the legend label for diverged marks, None when there are none."""
    if not any(points for _, points in marked):
        return None
    early = [(ax, [(x, variant) for x, y, variant in points if y is None]) for ax, points in marked]
    if not any(lanes for _, lanes in early):
        return "diverged run"
    lane_of = {v: i for i, v in enumerate(variants)}
    spacing = STRIP / (len(variants) + 1)
    for ax, lanes in early:
        if not (lanes or shared):
            continue
        low, high = ax.get_ylim()
        ticks = [t for t in ax.get_yticks() if low <= t <= high]
        # The strip, plus a gap so a value at the bottom of the data is not read as in the strip.
        ax.set_ylim(low - (STRIP + 0.04) / (1 - STRIP - 0.04) * (high - low), high)
        ax.set_yticks(ticks)  # no tick, so no negative accuracy or loss, inside the strip
        ax.spines["left"].set_bounds(low, high)
        if not lanes:
            continue
        ax.add_patch(Rectangle((0, 0), 1, STRIP, transform=ax.transAxes, color="0.92",
                               linewidth=0, zorder=0))
        for (x, variant), count in Counter(lanes).items():
            y = spacing * (1 + lane_of.get(variant, 0))
            ax.plot([x], [y], color=colour(variant), transform=ax.get_xaxis_transform(),
                    clip_on=False, **DIVERGED)
            if count > 1:
                ax.annotate(f"×{count}", (x, y), xycoords=ax.get_xaxis_transform(), xytext=(4, 0),
                            textcoords="offset points", color=colour(variant), fontsize=7,
                            ha="left", va="center")
    return "diverged run (grey strip: before its first eval)"


def _modes(experiment: ExperimentResults, metric: str) -> list[tuple[str, str, str]]:
    """The BN evaluation modes recorded for `metric`, as (history suffix, words, line style)."""
    if any(metric.endswith(suffix) for suffix, _, _ in MODES[1:]):
        return [MODES[0]]  # --metric val_accuracy_precise: that series alone, solid
    recorded = {key for c in experiment.conditions for r in c.runs for key in r.metrics["history"]}
    return [mode for mode in MODES if metric + mode[0] in recorded]


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


def _header(figure: Figure, experiment: ExperimentResults, what: str, diverged: str | None,
            facets: tuple = (), modes: tuple | list = (), seeds: bool = False,
            variants: list[str] | None = None, exclude: tuple[str, ...] = ()) -> None:
    """Title (experiment: what is shown) and one legend for the whole figure above the panels, a
    caption of the settings every panel shares below them."""
    handles = [Line2D([], [], color=colour(v), linewidth=2, label=v)
               for v in (experiment.variants if variants is None else variants)]
    handles += [Line2D([], [], color="0.3", linewidth=1.5, linestyle=style, label=words,
                       marker=MARKERS[style], markersize=4)
                for _, words, style in modes]
    if seeds:
        handles.append(Line2D([], [], color="0.3", linewidth=0.6, alpha=0.5, label="one seed"))
    if diverged:
        handles.append(Line2D([], [], color="0.3", label=diverged, **DIVERGED))
    title = f"{experiment.name}{', ' + facet_label(facets) if facets else ''}: {what}"
    figure.suptitle(_fit(title, figure))
    _legend(figure, handles, experiment, exclude)


def _fit(title: str, figure: Figure) -> str:
    """Title lines wrapped to the figure's width (about 13 characters per inch at 9.5 pt)."""
    chars = int(figure.get_figwidth() * 13)
    return "\n".join(_clip([wrapped for line in title.split("\n")
                            for wrapped in textwrap.wrap(line, chars, break_on_hyphens=False)]))


def _clip(lines: list[str]) -> list[str]:
    """At most MAX_TITLE_LINES lines: a run with thousands of params would otherwise make titles
    of thousands of lines, whose text rendering takes minutes."""
    if len(lines) <= MAX_TITLE_LINES:
        return lines
    return lines[:MAX_TITLE_LINES - 1] + [f"... ({len(lines) - MAX_TITLE_LINES + 1} more lines)"]


def _legend(figure: Figure, handles: list, experiment: ExperimentResults,
            exclude: tuple[str, ...] = ()) -> None:
    """One legend for the whole figure below the panels, titled with the caption of the settings
    every panel shares (constrained layout keeps a legend clear of the panels; a free text it
    does not)."""
    # As many columns as fit the figure's width (an entry: about 0.075 inch per character at 8 pt
    # plus its line sample), so a one-panel figure's legend is not cut at the edges.
    widest = max((len(h.get_label()) for h in handles), default=1) * 0.075 + 0.55
    fit = max(1, int(figure.get_figwidth() / widest))
    columns = min(len(handles), fit)
    if columns < len(handles):
        columns = min(columns, math.ceil(len(handles) / math.ceil(len(handles) / columns)))
    text = caption(experiment, exclude)
    legend = figure.legend(handles=handles, loc="outside lower center", ncols=columns, frameon=False,
                           title=textwrap.shorten(text, 160, placeholder=" ...") or None,
                           title_fontproperties={"size": 7})
    legend.get_title().set_color("0.35")


def caption(experiment: ExperimentResults, exclude: tuple[str, ...] = ()) -> str:
    """The settings every run of the figure shares, in one line:
    'mnist, mlp 256-128 relu, adam lr 0.001, batch 32, 5 epochs, all training examples'."""
    from bncompare.callables import function_name, is_reference

    shared = {k: v for k, v in experiment.shared.items() if k not in exclude}
    if is_reference(shared.get("model.kind")):  # a researcher's model: its name, not our sizes
        shared = {k: v for k, v in shared.items() if k not in (
            "model.hidden", "model.depth", "model.width", "model.activation")}
    shared.update({k: function_name(v) for k, v in shared.items() if is_reference(v)})
    parts = []
    if "data.dataset" in shared:
        parts.append(str(shared["data.dataset"]))
    model = []
    if "model.kind" in shared:
        model.append(str(shared["model.kind"]))
    hidden = shared.get("model.hidden")
    if isinstance(hidden, list):
        model.append("-".join(format_value(h) for h in hidden))
    elif "model.depth" in shared and "model.width" in shared:
        model.append(f"{format_value(shared['model.depth'])}x{format_value(shared['model.width'])}")
    if "model.activation" in shared:
        model.append(str(shared["model.activation"]))
    if model:
        parts.append(" ".join(model))
    optimizer = []
    if "train.optimizer" in shared:
        optimizer.append(str(shared["train.optimizer"]))
    if "train.learning_rate" in shared:
        optimizer.append(f"lr {format_value(shared['train.learning_rate'])}")
    if optimizer:
        parts.append(" ".join(optimizer))
    if "train.batch_size" in shared:
        parts.append(f"batch {format_value(shared['train.batch_size'])}")
    if shared.get("train.steps") is not None:
        parts.append(f"{format_value(shared['train.steps'])} steps")
    elif "train.epochs" in shared and "train.steps" in shared:
        epochs = shared["train.epochs"]
        parts.append(f"{format_value(epochs)} epoch{'s' * (epochs != 1)}")
    if "data.train_limit" in shared:
        limit = shared["data.train_limit"]
        parts.append("all training examples" if limit is None else f"{format_value(limit)} training examples")
    return ", ".join(parts)


def _over(conditions: list[Condition], what: str = "mean ± std") -> str:
    """'mean ± std over 3 seeds', 'mean ± std over 2-3 seeds', or 'one seed (no spread)'."""
    counts = sorted({len(c.runs) for c in conditions})
    if counts[-1] == 1:
        return "one seed (no spread)"
    text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{what} over {text} seeds"


def _wrap(title: str) -> str:
    """A panel title in lines that fit the panel's width (facet labels can be long)."""
    return "\n".join(_clip(textwrap.wrap(title, TITLE_CHARS, break_on_hyphens=False)))


def _slug(key: str, value: Any) -> str:
    """'learning_rate=0.01': a file-name-safe facet, readable in a directory listing."""
    return safe_name(f"{key.split('.', 1)[-1]}={format_value(value)}")
