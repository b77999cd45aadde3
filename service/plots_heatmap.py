"""Heatmap figure of a sweep (service.plots.heatmap_cells): one panel per matrix, each cell's value written in it,
a cell whose value includes an unfinished run marked * with a footnote under the figure."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from nc_core.db.states import UNFINISHED_NOTE
from nc_core.spec_fields import value_text
from service.plots import Heatmap, message_figure, new_figure

FOOTNOTE_IDS = 12  # run ids the footnote names before "…"
NO_VALUE_TEXT = "0.25"  # a cell without a finite value is masked (white): dark grey text, never white on white


def cell_label(v: float, unfinished: bool) -> str:
    """A cell's text: 3 significant digits, – without a finite value; * when it includes an unfinished run."""
    return ("–" if np.isnan(v) else f"{v:.3g}") + ("*" if unfinished else "")


def cell_colour(v: float, lo: float, hi: float) -> str:
    """Black on viridis' bright (yellow) end, white on its dark end, dark grey on a masked (no value) cell."""
    if not np.isfinite(v):
        return NO_VALUE_TEXT
    return "k" if hi > lo and (v - lo) / (hi - lo) > 0.6 else "w"


def footnote(heatmap: Heatmap) -> str | None:
    """The line under the figure naming the unfinished runs behind * cells (None without any)."""
    ids = sorted({r for marks in heatmap.unfinished for runs in marks.values() for r in runs})
    if not ids:
        return None
    shown = ", ".join(map(str, ids[:FOOTNOTE_IDS])) + (f", … ({len(ids)} runs)" if len(ids) > FOOTNOTE_IDS else "")
    return f"{UNFINISHED_NOTE}: run{'s' if len(ids) > 1 else ''} {shown}"


def heatmap_figure(heatmap: Heatmap, x: str, y: str, ref: str | None = None) -> Figure:
    """The heatmap as a figure (its texts say each cell's value, * where it includes an unfinished run)."""
    xs, ys, panels, unfinished = heatmap
    if not panels:
        return message_figure(f"nothing to compare against {ref}")
    note = footnote(heatmap)
    height = 1.5 + 0.8 * len(ys) + (0.3 if note else 0.0)
    fig, axes = new_figure(1, len(panels), figsize=(1.2 + 1.1 * len(xs) * len(panels) + 1.5 * len(panels), height),
                           squeeze=False)
    for ax, (title, m), marks in zip(axes.flat, panels, unfinished):
        im = ax.imshow(np.ma.masked_invalid(m), origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(xs)), [value_text(v) for v in xs])
        ax.set_yticks(range(len(ys)), [value_text(v) for v in ys])
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(title, fontsize=9)
        lo, hi = (np.nanmin(m), np.nanmax(m)) if np.isfinite(m).any() else (0.0, 1.0)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, cell_label(v, (i, j) in marks), ha="center", va="center", fontsize=8,
                    color=cell_colour(v, lo, hi))
        fig.colorbar(im, ax=ax, shrink=0.8)
    if note:
        fig.text(0.01, 0.01, note, ha="left", va="bottom", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.3 / height if note else 0, 1, 1))
    return fig
