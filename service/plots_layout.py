"""Figures on their own canvas (new_figure: no pyplot state), and figure-level text that stays inside the image.

A legend below the axes whose columns fit the figure's width, and a title and footer wrapped to it; the figure grows
(in width only for a legend entry wider than it, in height for the lines) instead of cutting text off at its edges.
"""
from __future__ import annotations

from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

MARGIN = 0.15  # inches kept free at each edge of the figure
GAP = 0.08  # inches between the blocks stacked below the axes (legend, footer) and above them (title)
FONTSIZE = 8
DPI = 80  # as service.plots._png saves: Agg's text widths do not scale with the dpi, so measure at this one


def new_figure(*grid: int, figsize: tuple[float, float], squeeze: bool = True) -> tuple[Figure, Any]:
    """A figure on its own Agg canvas with ``grid`` (rows, cols) subplots, as ``pyplot.subplots`` returns them but
    without pyplot's process-wide state: threads may draw figures at the same time. Text is drawn as written:
    a '$' in an axis value or a sweep name is no mathtext markup (one that fails to parse would fail the plot);
    a text that wants mathtext says ``parse_math=True``."""
    matplotlib.rcParams["text.parse_math"] = False  # read by each Text made from here on; the same value always
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*grid, squeeze=squeeze)


def text_width(fig: Figure, text: str, fontsize: float = FONTSIZE) -> float:
    """``text``'s width in inches, one line, as the figure's renderer draws it."""
    renderer = fig.canvas.get_renderer()
    width, _, _ = renderer.get_text_width_height_descent(text, FontProperties(size=fontsize), ismath=False)
    return width / fig.dpi


def wrap(fig: Figure, text: str, width: float, fontsize: float = FONTSIZE, indent: str = "   ") -> list[str]:
    """``text`` broken at spaces into lines at most ``width`` inches wide (continuations start with ``indent``);
    a single word wider than that stays on its own line."""
    stripped = text.lstrip(" ")
    first, *rest = stripped.split(" ")
    lines: list[str] = []
    current = text[:len(text) - len(stripped)] + first  # its own leading spaces kept
    for word in rest:
        candidate = f"{current} {word}"
        if text_width(fig, candidate, fontsize) > width:
            lines.append(current)
            current = indent + word
        else:
            current = candidate
    return [*lines, current]


def _legend_size(fig: Figure, legend: Any) -> tuple[float, float]:
    box = legend.get_window_extent(fig.canvas.get_renderer())
    return box.width / fig.dpi, box.height / fig.dpi


def _block_height(fig: Figure, artist: Any) -> float:
    return artist.get_window_extent(fig.canvas.get_renderer()).height / fig.dpi


def layout_figure(fig: Figure, title: str, handles: list, labels: list[str], footer: list[str],
                  max_columns: int = 4, dpi: float = DPI) -> None:
    """Put ``title`` above the axes, the legend (``handles``/``labels``, as many columns as fit, at most
    ``max_columns``) and then ``footer``'s lines below them, and size the figure so that all of it lies inside:
    the axes keep the figure's current height, the width grows only if one legend entry is wider than it.
    Text is measured at ``dpi``, the one the figure is saved at."""
    fig.set_dpi(dpi)
    axes_width, axes_height = fig.get_size_inches()
    width = axes_width
    legend = None
    for ncol in range(min(max_columns, len(labels)), 0, -1):
        legend = fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=FONTSIZE)
        legend_width, legend_height = _legend_size(fig, legend)
        if legend_width <= width - 2 * MARGIN or ncol == 1:
            width = max(width, legend_width + 2 * MARGIN)
            break
        legend.remove()
    room = width - 2 * MARGIN
    title_artist = fig.suptitle("\n".join(wrap(fig, title, room, indent="")), fontsize=FONTSIZE, va="top")
    top = _block_height(fig, title_artist) + 2 * GAP
    footer_lines = [line for text in footer for line in wrap(fig, text, room)]
    footer_artist = fig.text(0, 0, "\n".join(footer_lines), fontsize=FONTSIZE, ha="left", va="bottom") \
        if footer_lines else None
    footer_height = _block_height(fig, footer_artist) + GAP if footer_artist else 0.0
    legend_height = _legend_size(fig, legend)[1] + GAP if legend else 0.0
    bottom = GAP + footer_height + legend_height
    height = axes_height + top + bottom
    fig.set_size_inches(width, height)
    if footer_artist:
        footer_artist.set_position((MARGIN / width, GAP / height))
    if legend:
        legend.set_bbox_to_anchor((0.5, (GAP + footer_height) / height), transform=fig.transFigure)
    title_artist.set_y(1 - GAP / height)
    fig.tight_layout(rect=(0, (bottom + GAP) / height, 1, 1 - top / height))
