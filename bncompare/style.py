"""How every figure looks: colours, text sizes, panel size, markers, axis words and scales.

Shared by plots.py (curves, sweeps, internals) and probe_plots.py (loss landscape, ICS), so a
variant has one colour and a panel one size in every figure bncompare draws.
"""

from __future__ import annotations

import math
import zlib

from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

# Okabe-Ito colours (readable with colour-vision deficiencies), without yellow (invisible on white)
# and vermillion (too close to the red people read as "error").
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#000000"]
# Fixed colours for the names configs use, so BN is blue and no BN orange in every figure...
NAMED_COLOURS = {"bn": PALETTE[0], "batch": PALETTE[0], "batch_norm": PALETTE[0],
                 "no_bn": PALETTE[1], "none": PALETTE[1], "baseline": PALETTE[1],
                 "dropout": PALETTE[2], "layer": PALETTE[2], "layer_norm": PALETTE[2],
                 "bn_dropout": PALETTE[3], "group": PALETTE[3], "group_norm": PALETTE[3],
                 "rms": "#999933", "rms_norm": "#999933", "renorm": PALETTE[5],
                 "ghost": "#882255", "noisy_bn": "#44AA99", "bn_noise": "#44AA99",
                 "res_no_bn": "#CC6677", "res_bn": "#332288", "res_skipinit": "#117733"}
# ...and other names a colour from their name's hash, among colours no fixed name uses (two hashed
# names may share one; the legend and the line labels still tell them apart).
HASHED_PALETTE = ["#88CCEE", "#DDCC77", "#AA4499", "#661100", "#6699CC", "#888888", "#CC6677",
                  "#332288", "#117733"]
STYLE = {
    "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "legend.fontsize": 8,
    "xtick.labelsize": 7.5, "ytick.labelsize": 7.5, "figure.titlesize": 9.5,
    "figure.labelsize": 8.5, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "savefig.dpi": 200,
    "pdf.fonttype": 42,  # TrueType in PDFs: text stays editable in a paper's figure
    # Names and values read from results are text: a "$" in a variant name must not start TeX math
    # (a malformed formula would fail the whole figure).
    "text.parse_math": False,
}
PANEL = (2.6, 2.0)  # inches per small multiple
MIN_WIDTH = 4.8  # inches: room for a title and a legend even with one panel
DIVERGED = {"marker": "x", "markersize": 6, "markeredgewidth": 1.6, "linestyle": "none"}
N_LABEL = {"fontsize": 6.5, "ha": "left", "va": "bottom"}
# A marker per line style (plots.MODES): a curve of one eval point is a marker without a line.
MARKERS = {"-": "o", "--": "s", ":": "^"}
X_LABELS = {"epoch": "epoch", "step": "optimizer step", "time": "training time (s, evaluation excluded)"}


def colour(variant: str) -> str:
    """A variant's colour, from its name alone: the same in every figure and every directory."""
    if variant in NAMED_COLOURS:
        return NAMED_COLOURS[variant]
    return HASHED_PALETTE[zlib.crc32(variant.encode("utf-8")) % len(HASHED_PALETTE)]


def log_y(ax: Axes) -> None:
    """Log y axis labelled 0.2, 0.5, 1, 2 over a few decades (not 2x10^-1), decades beyond."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    if low > 0 and math.log10(high / low) <= 3:
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
