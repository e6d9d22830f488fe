"""Figures of Santurkar et al. 2018's probes (record.landscape, record.ics), mean over seeds.

- `landscape_figure`: per facet combination (a row), three panels against training progress, one
  colour per variant (their Figure 4): the loss band (min to max of L(W - eta g) over the step-size
  grid), the gradient-predictiveness band (min to max of ||grad L(W) - grad L(W - eta g)||) and the
  effective beta-smoothness. Bands are the seed means of the min and of the max.
- `ics_figure`: per facet combination two rows, ICS l2 distance and cosine, one panel per weight
  layer (their Figure 3's quantities). The first weight layer is left out: nothing precedes it, so
  its ICS is 0 (cosine 1) by definition.

Same conventions as bncompare/plots.py (which calls `figures`) and its styling (bncompare/style.py): matplotlib's object-oriented API
only (no pyplot state), the caller's colour per variant, drawn inside the caller's rc_context.
"""

from __future__ import annotations

import textwrap
from typing import Iterator

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bncompare.aggregate import (X_SERIES, Condition, Curve, ExperimentResults, facet_label, mean_curve,
                                 natural, series)
from bncompare.style import MIN_WIDTH, PALETTE, PANEL, X_LABELS, log_y

LANDSCAPE_PANELS = (
    ("loss_min", "loss_max", "loss band: L(W − η g) over the η grid", "training loss (nats)", False),
    ("grad_diff_min", "grad_diff_max", "gradient predictiveness", "‖∇L(W) − ∇L(W − η g)‖", True),
    ("beta_smoothness", None, "effective β-smoothness", "max over η of ‖Δ∇L‖ / ‖η g‖", True),
)
ICS_ROWS = (("l2", "ICS: ‖G − G′‖ (log scale)", True), ("cosine", "ICS: cos(G, G′)", False))


def figures(experiment: ExperimentResults, colours: dict[str, str], x: str) -> Iterator[tuple[str, Figure]]:
    """(file stem, figure) for each probe figure the experiment's runs recorded."""
    landscape = landscape_figure(experiment, x, colours)
    if landscape is not None:
        yield f"landscape-{x}", landscape
    ics = ics_figure(experiment, x, colours)
    if ics is not None:
        yield f"ics-{x}", ics


def landscape_figure(experiment: ExperimentResults, x: str = "step",
                     colours: dict[str, str] | None = None) -> Figure | None:
    """Santurkar Fig. 4: loss band, gradient-predictiveness band, beta-smoothness; None if no run
    recorded `record.landscape`."""
    groups = _groups_with(experiment, "landscape")
    if not groups:
        return None
    colours = colours or _default_colours(experiment)
    figure = _figure(len(LANDSCAPE_PANELS), len(groups))
    axes = figure.subplots(len(groups), len(LANDSCAPE_PANELS), squeeze=False, sharex=True)
    for row, (facets, conditions) in enumerate(groups):
        for col, (low_key, high_key, title, ylabel, log) in enumerate(LANDSCAPE_PANELS):
            ax = axes[row, col]
            for condition in conditions:
                colour = colours[condition.variant]
                low = block_curve(condition, ("landscape", low_key), x)
                high = block_curve(condition, ("landscape", high_key), x) if high_key else None
                if low is None:
                    continue
                if high is not None and len(high.x) == len(low.x):
                    ax.fill_between(low.x, low.mean, high.mean, color=colour, alpha=0.3, linewidth=0)
                    ax.plot(low.x, low.mean, color=colour, linewidth=0.8)
                    ax.plot(high.x, high.mean, color=colour, linewidth=0.8)
                else:
                    ax.plot(low.x, low.mean, color=colour, linewidth=1.5)
                    ax.fill_between(low.x, low.mean - low.std, low.mean + low.std, color=colour,
                                    alpha=0.2, linewidth=0)
            if log:
                log_y(ax)
            ax.set_title("\n".join(filter(None, [title, facet_label(facets)])))
            ax.set_ylabel(ylabel)
        for col in range(len(LANDSCAPE_PANELS)):
            axes[-1, col].set_xlabel(X_LABELS[x])
    _header(figure, experiment, colours, groups,
            "loss landscape along −∇L(W) (Santurkar et al. 2018, Fig. 4); bands: mean over "
            f"{_seeds(groups)} of the min and the max over the step sizes η")
    return figure


def ics_figure(experiment: ExperimentResults, x: str = "step",
               colours: dict[str, str] | None = None) -> Figure | None:
    """Santurkar Def. 2.1 per weight layer: l2 and cosine of G vs G'; None if no run recorded
    `record.ics`."""
    groups = _groups_with(experiment, "ics")
    if not groups:
        return None
    colours = colours or _default_colours(experiment)
    layers = sorted({layer for _, conditions in groups for c in conditions
                     for layer in c.block_keys("ics")}, key=_network_order)
    shown = [layer for layer in layers if not _first_layer(groups, layer)] or layers
    figure = _figure(len(shown), len(groups) * len(ICS_ROWS))
    axes = figure.subplots(len(groups) * len(ICS_ROWS), len(shown), squeeze=False, sharex=True,
                           sharey="row")
    for group, (facets, conditions) in enumerate(groups):
        for offset, (stat, ylabel, log) in enumerate(ICS_ROWS):
            row = group * len(ICS_ROWS) + offset
            for col, layer in enumerate(shown):
                ax = axes[row, col]
                for condition in conditions:
                    curve = block_curve(condition, ("ics", layer, stat), x)
                    if curve is None or (log and not np.any(curve.mean > 0)):
                        continue
                    colour = colours[condition.variant]
                    low = curve.mean - curve.std
                    if log:  # a ±std band that dips below zero would vanish on a log axis
                        low = np.where(low > 0, low, curve.mean / 10)
                    ax.plot(curve.x, curve.mean, color=colour, linewidth=1.5)
                    ax.fill_between(curve.x, low, curve.mean + curve.std, color=colour, alpha=0.2,
                                    linewidth=0)
                if log:
                    log_y(ax)
                if offset == 0:
                    ax.set_title("\n".join(filter(None, [layer, facet_label(facets)])))
                if col == 0:
                    ax.set_ylabel(ylabel)
    for col in range(len(shown)):
        axes[-1, col].set_xlabel(X_LABELS[x])
    omitted = [layer for layer in layers if layer not in shown]
    note = f"; {', '.join(omitted)} omitted (no preceding layer, so no shift)" if omitted else ""
    _header(figure, experiment, colours, groups,
            "internal covariate shift (Santurkar et al. 2018, Def. 2.1): G = a layer's gradient, "
            f"G′ = the same after the preceding layers' update; mean ± std over {_seeds(groups)}{note}")
    return figure


def block_curve(condition: Condition, path: tuple[str, ...], x: str) -> Curve | None:
    """Mean over seeds of a probe series against epoch, step or time.

    Probe blocks carry their own "step" series (an eval point at step 0 may have no history
    point); epoch and time are read off the history's (step, epoch | seconds) pairs, with step 0
    at epoch 0 and time 0.
    """
    columns = []
    for run in condition.runs:
        steps, values = series(run, path[:-1] + ("step",)), series(run, path)
        if x != "step":
            history_steps, history_x = series(run, ("history", "step")), series(run, ("history", X_SERIES[x]))
            n = min(len(history_steps), len(history_x))
            known = np.isfinite(history_steps[:n]) & np.isfinite(history_x[:n])
            steps = np.interp(steps, np.concatenate([[0.0], history_steps[:n][known]]),
                              np.concatenate([[0.0], history_x[:n][known]]))
        columns.append((steps, values))
    return mean_curve(columns)


def _groups_with(experiment: ExperimentResults, block: str) -> list[tuple[tuple, list[Condition]]]:
    """The facet groups, each with only its conditions that recorded `block`."""
    groups = []
    for facets, conditions in experiment.groups():
        recorded = [c for c in conditions if c.has(block)]
        if recorded:
            groups.append((facets, recorded))
    return groups


def _network_order(layer: str) -> tuple:
    """dense_1, dense_2, ..., output: the output layer is last."""
    return (layer == "output", natural(layer))


def _first_layer(groups: list, layer: str) -> bool:
    """True when every recorded l2 of the layer is 0: the first weight layer (Def. 2.1 gives 0)."""
    values = [series(run, ("ics", layer, "l2")) for _, conditions in groups
              for c in conditions for run in c.runs]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.empty(0)
    return len(finite) > 0 and not np.any(finite != 0)


def _figure(columns: int, rows: int) -> Figure:
    return Figure(figsize=(max(MIN_WIDTH, PANEL[0] * columns), PANEL[1] * rows + 0.9), layout="constrained")



def _header(figure: Figure, experiment: ExperimentResults, colours: dict[str, str], groups: list,
            what: str) -> None:
    """Title above the panels, one legend (the variants drawn) below them."""
    drawn = {c.variant for _, conditions in groups for c in conditions}
    handles = [Line2D([], [], color=colours[v], linewidth=2, label=v)
               for v in experiment.variants if v in drawn]
    # Wrapped to the figure's width (about 11 characters per inch at the title's 9.5 pt).
    width = int(figure.get_figwidth() * 11)
    figure.suptitle("\n".join(textwrap.wrap(f"{experiment.name}: {what}", width)))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)


def _seeds(groups: list) -> str:
    counts = sorted({len(c.runs) for _, conditions in groups for c in conditions})
    text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{text} seed{'s' * (counts[-1] != 1)}"


def _default_colours(experiment: ExperimentResults) -> dict[str, str]:
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(experiment.variants)}
