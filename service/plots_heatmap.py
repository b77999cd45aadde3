"""Heatmap figure of a sweep (service.plots.heatmap_cells): one panel per matrix, each cell's value in it."""
from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from nc_core.db.states import UNFINISHED_NOTE
from nc_core.spec_fields import value_text
from service.plots import Heatmap, message_figure, new_figure

FOOTNOTE_IDS = 12  # run ids the footnote names before "…"
NO_VALUE_TEXT = "0.25"  # a cell without a finite value is masked (white): dark grey text, never white on white
PERCENT_KEYS = ("acc", "running_acc")  # in %: a value's colour scale never runs past [0, 100]
LABEL_VALUES = 40  # with more columns or rows than this, cells carry no text (their colour and the bar tell)
MAX_WIDTH_IN, MAX_HEIGHT_IN = 40.0, 30.0  # the figure's largest size: 3,200 × 2,400 px at plots_layout.DPI
CELL_IN = (1.1, 0.8)  # a labelled cell's (width, height) in inches, as far as the largest size allows
SMALL_CELL_IN = (0.3, 0.2)  # an unlabelled cell's
LABEL_MIN_IN = (0.45, 0.22)  # the least cell (and tick) spacing a value's text needs
PANEL_COLUMNS = 3  # diff_vs panels per row
NOTE_IN = 0.3  # inches the footnote takes under the panels


def cell_label(v: float, unfinished: bool) -> str:
    """A cell's text: 3 significant digits, – without a finite value; * when it includes an unfinished run."""
    return ("–" if np.isnan(v) else f"{v:.3g}") + ("*" if unfinished else "")


def cell_colour(v: float, lo: float, hi: float) -> str:
    """Black on viridis' bright (yellow) end, white on its dark end, dark grey on a masked (no value) cell."""
    if not np.isfinite(v):
        return NO_VALUE_TEXT
    return "k" if hi > lo and (v - lo) / (hi - lo) > 0.6 else "w"


def colour_range(m: np.ndarray, key: str | None, mode: str) -> tuple[float, float]:
    """The colour scale's ends: the finite values' least and greatest, within [0, 100] for a percent key's value;
    a single value on a scale from 0 (a percent value: [0, 100]), never matplotlib's ±5% around it."""
    finite = m[np.isfinite(m)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if key in PERCENT_KEYS and mode == "value":
        lo, hi = max(lo, 0.0), min(hi, 100.0)
        return (lo, hi) if lo < hi else (0.0, 100.0)
    if lo < hi:
        return lo, hi
    return (lo, 0.0) if lo < 0 else (0.0, hi or 1.0)


def footnote(heatmap: Heatmap) -> str | None:
    """The line under the figure naming the unfinished runs behind * cells and counting, by status, the runs
    without a value (– cells, or fewer runs in a cell) (None without either)."""
    ids = sorted({r for marks in heatmap.unfinished for runs in marks.values() for r in runs})
    parts = []
    if ids:
        shown = ", ".join(map(str, ids[:FOOTNOTE_IDS])) + (f", … ({len(ids)} runs)" if len(ids) > FOOTNOTE_IDS else "")
        parts.append(f"{UNFINISHED_NOTE}: run{'s' if len(ids) > 1 else ''} {shown}")
    if heatmap.no_value:
        parts.append(heatmap.no_value)
    return "; ".join(parts) or None


def cell_size(nx: int, ny: int, rows: int, cols: int) -> tuple[float, float, bool]:
    """(width, height) of a cell in inches so that the figure stays within MAX_WIDTH_IN × MAX_HEIGHT_IN (a footnote
    included), and whether the cells are large and few enough to carry their values."""
    w = min(CELL_IN[0] if nx <= LABEL_VALUES else SMALL_CELL_IN[0], ((MAX_WIDTH_IN - 1.2) / cols - 1.5) / nx)
    h = min(CELL_IN[1] if ny <= LABEL_VALUES else SMALL_CELL_IN[1], ((MAX_HEIGHT_IN - NOTE_IN) / rows - 1.5) / ny)
    return w, h, nx <= LABEL_VALUES and ny <= LABEL_VALUES and w >= LABEL_MIN_IN[0] and h >= LABEL_MIN_IN[1]


def _ticks(n: int, cell: float, least: float) -> range:
    """Every value's tick where a label fits in a cell, else every k-th (labels at least ``least`` inches apart)."""
    return range(0, n, max(1, math.ceil(least / cell)))


def heatmap_figure(heatmap: Heatmap, x: str, y: str, ref: str | None = None, key: str | None = None,
                   mode: str = "value") -> Figure:
    """The heatmap as a figure, the first value of each axis at the top left as in the dashboard's matrix (its
    texts say each cell's value, * where it includes an unfinished run; above LABEL_VALUES columns or rows only
    the colours, and a star on such cells)."""
    xs, ys, panels, unfinished = heatmap.xs, heatmap.ys, heatmap.panels, heatmap.unfinished
    if not panels:
        return message_figure(f"nothing to compare against {ref}")
    note = footnote(heatmap)
    cols = min(PANEL_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / cols)
    w, h, labelled = cell_size(len(xs), len(ys), rows, cols)
    if not labelled:
        note = "; ".join(filter(None, [f"{len(ys)} × {len(xs)} cells: values on the colour bar", note]))
    height = rows * (1.5 + h * len(ys)) + (NOTE_IN if note else 0.0)
    fig, axes = new_figure(rows, cols, figsize=(1.2 + cols * (w * len(xs) + 1.5), height), squeeze=False)
    for ax, (title, m), marks in zip(axes.flat, panels, unfinished):
        lo, hi = colour_range(m, key, mode)
        im = ax.imshow(np.ma.masked_invalid(m), origin="upper", cmap="viridis", aspect="auto", vmin=lo, vmax=hi)
        ticks_x, ticks_y = _ticks(len(xs), w, LABEL_MIN_IN[0]), _ticks(len(ys), h, LABEL_MIN_IN[1])
        ax.set_xticks(ticks_x, [value_text(xs[j]) for j in ticks_x])
        ax.set_yticks(ticks_y, [value_text(ys[i]) for i in ticks_y])
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(title, fontsize=9)
        if labelled:
            for (i, j), v in np.ndenumerate(m):
                ax.text(j, i, cell_label(v, (i, j) in marks), ha="center", va="center", fontsize=8,
                        color=cell_colour(v, lo, hi))
        elif marks:  # one artist for every marked cell, not a text per cell; the image's limits kept
            limits = ax.get_xlim(), ax.get_ylim()
            ax.scatter([j for _, j in marks], [i for i, _ in marks], marker="*", s=16, c="w", edgecolors="k",
                       linewidths=0.4)
            ax.set_xlim(limits[0])
            ax.set_ylim(limits[1])
        wide = w * len(xs) + 1.5  # a wide panel's bar and its gap keep their usual inches, not 15% and 5% of it
        fig.colorbar(im, ax=ax, shrink=0.8, fraction=min(0.15, 0.9 / wide), pad=min(0.05, 0.2 / wide))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if note:
        fig.text(0.01, 0.01, note, ha="left", va="bottom", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, NOTE_IN / height if note else 0, 1, 1))
    return fig
