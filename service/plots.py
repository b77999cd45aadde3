"""Matplotlib (Agg) figures from stored metric rows: NC dynamics, heatmaps, run curves, margins → PNG bytes."""
from __future__ import annotations

import io
from collections import Counter, defaultdict
from typing import Any, Iterable, NamedTuple

import numpy as np
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sqlalchemy.orm import Session

from nc_core.db.models import Run, Sweep
from nc_core.db.states import unfinished_runs
from nc_core.spec_fields import distinct_values, value_sort_key, value_text
from nc_core.sweep import get_path, short_names
from nc_core.sweep_errors import did_you_mean
# the rows behind the figures; all of them are also imported from here (plots_*, the dashboard, tests), and
# heatmap_cells looks final_values up here (a test counts its calls)
from service.plots_data import (final_points, final_values, finite_mean, metric_rows,  # noqa: F401 - re-exported
                                run_series, run_step, sample_std, sweep_runs)
from service.plots_layout import DPI, new_figure

DEFAULT_KEYS = ("nc1", "nc2_w", "nc3", "wh_b", "acc")
POINT_MARKERS = {"marker": "o", "markersize": 3}  # small: a single eval point shows, many stay a readable line
TITLES = {"nc1": "NC1", "nc2_w": "NC2 (W)", "nc3": "NC3", "wh_b": "NC4 (‖Wμ_G + b‖)", "acc": "accuracy %"}


class PlotError(ValueError):
    """A plot request that cannot be drawn (names the parameter, like SpecError)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


#: The PNG text chunk in which a figure with nothing to draw carries its message (``ncsweep plot`` reports it).
NOTE_KEY = "ncsweep-note"


def _png(fig: Figure, note: str | None = None) -> bytes:
    """The figure as PNG bytes (at :data:`DPI`, which the layout measures text at); ``note`` in its
    :data:`NOTE_KEY` text chunk."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={NOTE_KEY: note} if note else None)
    return buf.getvalue()


def message_figure(text: str) -> Figure:
    """A small figure that only says ``text`` (nothing to plot yet)."""
    fig, ax = new_figure(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def _message_png(text: str) -> bytes:
    """A figure that only says ``text``, which its PNG also carries as its note (nothing was drawn)."""
    return _png(message_figure(text), note=text)


def _axis_value(run: Run, path: str) -> Any:
    if path in (run.grid or {}):
        return run.grid[path]
    return run.seed if path == "seed" else get_path(run.spec or {}, path)


def _config_label(grid: dict[str, Any]) -> str:
    items = sorted(grid.items())
    return ", ".join(f"{k}={value_text(v)}" for k, (_, v) in zip(short_names([k for k, _ in items]), items)) or "base"


def plot_epochs(ax: Axes, points: dict[int, float], unit: str = "epoch", **style: Any) -> None:
    """Draw {epoch: value} as a line with small point markers (one eval point stays visible), epochs ascending,
    on integer ticks labelled ``unit`` (states.metric_step)."""
    epochs = sorted(points)
    ax.plot(epochs, [points[e] for e in epochs], lw=2, **{**POINT_MARKERS, **style})
    epoch_axis(ax, epochs, unit)


def epoch_axis(ax: Axes, epochs: Iterable[int], unit: str = "epoch") -> None:
    """The x axis labelled ``unit`` on integer ticks; a single epoch e alone on its tick, in (e − 1, e + 1)."""
    ax.set_xlabel(unit)
    distinct = sorted(set(epochs))
    if len(distinct) == 1:
        ax.set_xticks(distinct)
        ax.set_xlim(distinct[0] - 1, distinct[0] + 1)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


SPREAD_NOTE = "mean ± sample std (ddof 1) over seeds; no band where fewer than 2 seeds have a finite value"


def dynamics_png(session: Session, sweep_id: int, keys: list[str] | None = None, split: str | None = None,
                 group_by: list[str] | None = None, filters: list[tuple[str, str]] | None = None,
                 log_keys: list[str] | None = None) -> bytes:
    """The sweep's NC dynamics figure (mean ± sample std over seeds per configuration, or over the runs of a
    ``group_by`` value; only the runs ``filters`` keep; ``log_keys`` on log y axes); drawn in
    service/plots_dynamics.py."""
    from service.plots_dynamics import dynamics_png as draw  # it imports this module: load it lazily

    return draw(session, sweep_id, keys, split, group_by, filters, log_keys)


def parse_ref(ref: str | None) -> tuple[str, str]:
    """(axis path, value) of a diff_vs reference ``AXIS:VALUE``."""
    if not ref or ":" not in ref:
        raise PlotError("ref", f"expected AXIS:VALUE such as loss.name:ce, got {ref!r}")
    path, value = ref.split(":", 1)
    return path, _as_label(value)


def _as_label(text: str) -> str:
    """A reference value as the axes label it (:func:`value_text`): 8.0 and 8 read 8, True reads true, 1e-3
    reads 0.001; text that is no YAML number, boolean or list stays as typed."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as text
        try:
            value = float(value)
        except ValueError:
            return text
    return value_text(value) if isinstance(value, (int, float, bool, list)) else text


HEATMAP_MAX_VALUES = 200  # values of a heatmap axis: more is refused (a cell would be under 2 px)
HEATMAP_MAX_PANELS = 9  # diff_vs panels (values of the reference axis besides the reference)
#: Per panel: cell (row i, column j) → the unfinished runs behind its value (states.unfinished_runs, as /results).
Marks = dict[tuple[int, int], list[int]]


class Heatmap(NamedTuple):
    xs: list
    ys: list
    panels: list[tuple[str, np.ndarray]]  # (title, matrix (len ys, len xs))
    unfinished: list[Marks]  # one per panel
    no_value: str | None = None  # the statuses of the runs without a value ("3 failed"), for the footnote


def status_counts(runs: list[Run]) -> str:
    """'3 failed, 1 cancelled': the runs counted by status, most first."""
    counts = Counter(r.status for r in runs)
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def heatmap_grids(session: Session, sweep_id: int, x: str, y: str, key: str, split: str, mode: str,
                  ref: str | None = None) -> tuple[list, list, list[tuple[str, np.ndarray]]]:
    """(x values, y values, [(panel title, matrix (len y, len x))]) for the requested mode (heatmap_cells)."""
    return tuple(heatmap_cells(session, sweep_id, x, y, key, split, mode, ref))[:3]


def heatmap_cells(session: Session, sweep_id: int, x: str, y: str, key: str, split: str, mode: str,
                  ref: str | None = None) -> Heatmap:
    """The heatmap's axis values, panels and, per panel, which cells' values include runs that have not succeeded
    (their last measured epoch, as /results' ``unfinished_runs``)."""
    runs = sweep_runs(session, sweep_id)
    if not runs:
        raise PlotError("sweep_id", f"sweep {sweep_id} has no runs")
    status = {r.id: r.status for r in runs}
    xs = sorted(distinct_values(_axis_value(r, x) for r in runs), key=value_sort_key)  # a value may be a list
    ys = sorted(distinct_values(_axis_value(r, y) for r in runs), key=value_sort_key)
    sweep = session.get(Sweep, sweep_id)
    varied = [*((sweep.axes or []) if sweep is not None else []), "seed"]
    for path, vals in ((x, xs), (y, ys)):
        if vals == [None]:
            raise PlotError("x" if path == x else "y", f"{path!r} is not a field of this sweep's runs; expected an "
                                                       f"axis of sweep {sweep_id}: {', '.join(varied)}"
                                                       + did_you_mean(path, varied))
        if len(vals) == 1 and path not in varied:  # a constant field: one row or column averaging everything
            raise PlotError("x" if path == x else "y", f"{path!r} has one value ({vals[0]!r}) in every run of sweep "
                                                       f"{sweep_id}; expected an axis it varies: {', '.join(varied)}")
        if len(vals) > HEATMAP_MAX_VALUES:  # 800 seeds drew a 70,616 px wide PNG
            others = [f"{a} ({n} values)" for a in varied if a not in (x, y)
                      for n in [len(distinct_values(_axis_value(r, a) for r in runs))] if n <= HEATMAP_MAX_VALUES]
            raise PlotError("x" if path == x else "y", f"{path!r} has {len(vals)} values, more than the "
                            f"{HEATMAP_MAX_VALUES} a heatmap draws legibly: expected another axis on "
                            f"{'x' if path == x else 'y'} ({', '.join(others) or 'none of this sweep has fewer'}); "
                            f"{path} is then averaged over (mode=variance shows its spread)")
    finals = final_values(session, runs, key, split)  # after the checks: a refused request asks nothing more
    without = [r for r in runs if r.id not in finals]
    no_value = f"runs with no {key} [{split}] value: {status_counts(without)}" if without else None

    def cells(select_run) -> tuple[np.ndarray, Marks]:  # per cell over the runs kept: mean, or sample variance
        ids: dict[tuple[int, int], list[int]] = defaultdict(list)
        for r in runs:
            if select_run(r) and r.id in finals:
                ids[(ys.index(_axis_value(r, y)), xs.index(_axis_value(r, x)))].append(r.id)
        m = np.full((len(ys), len(xs)), np.nan)
        for (i, j), members in ids.items():
            v = [finals[r] for r in members]
            m[i, j] = sample_std(v) ** 2 if mode == "variance" else finite_mean(v)
        marks = {c: unfinished_runs(members, status) for c, members in ids.items()}
        return m, {c: u for c, u in marks.items() if u}

    if mode in ("value", "variance"):  # variance: the square of /results' std, ddof 1 over the finite values
        m, marks = cells(lambda r: True)
        title = f"{key} [{split}] (mean)" if mode == "value" else \
            f"sample variance (ddof 1) of {key} [{split}] over runs"
        return Heatmap(xs, ys, [(title, m)], [marks], no_value)
    if mode != "diff_vs":
        raise PlotError("mode", f"expected value, diff_vs or variance, got {mode!r}")
    path, ref_value = parse_ref(ref)
    if path in (x, y):
        raise PlotError("ref", f"the reference axis {path!r} must differ from x and y (it selects the panels)")
    others = sorted({value_text(_axis_value(r, path)) for r in runs} - {ref_value})
    if ref_value not in {value_text(_axis_value(r, path)) for r in runs}:
        raise PlotError("ref", f"no run has {path}={ref_value}")
    if len(others) > HEATMAP_MAX_PANELS:
        raise PlotError("ref", f"{path!r} has {len(others) + 1} values: diff_vs draws a panel per value besides the "
                               f"reference, at most {HEATMAP_MAX_PANELS}; expected a reference axis with fewer values")
    base, base_marks = cells(lambda r: value_text(_axis_value(r, path)) == ref_value)
    panels, marks = [], []
    for o in others:
        other, other_marks = cells(lambda r, o=o: value_text(_axis_value(r, path)) == o)
        panels.append((f"|{key}({ref_value}) − {key}({o})| [{split}]", np.abs(base - other)))
        marks.append({c: sorted({*base_marks.get(c, ()), *other_marks.get(c, ())})
                      for c in {*base_marks, *other_marks}})
    return Heatmap(xs, ys, panels, marks, no_value)


def heatmap_png(session: Session, sweep_id: int, x: str, y: str, key: str = "acc", split: str = "test",
                mode: str = "value", ref: str | None = None) -> bytes:
    """Heatmap over two axes of a metric at the final epoch (value, |ref − other| per value, or sample variance
    (ddof 1, the square of /results' std; – where fewer than 2 runs have a finite value)); drawn in
    service/plots_heatmap.py, a cell whose value includes an unfinished run marked *."""
    from service.plots_heatmap import heatmap_figure  # it imports this module: load it lazily

    return _png(heatmap_figure(heatmap_cells(session, sweep_id, x, y, key, split, mode, ref), x, y, ref, key, mode))


def _unfinished(session: Session, run_id: int) -> bool:
    """Whether the run may still store values (queued or running): an empty figure then says "yet"."""
    run = session.get(Run, run_id)
    return run is not None and run.status in ("queued", "running")


def margins_png(session: Session, run_id: int) -> bytes:
    """The run's cosine-margin figure (sorted distribution, or statistics); drawn in service/plots_margins.py."""
    from service.plots_margins import margins_png as draw  # it imports this module: load it lazily

    return draw(session, run_id)


def run_curves_png(session: Session, run_id: int, keys: list[str] | None = None) -> bytes:
    """A single run's metric curves (dashboard run page): one subplot per key, train and test lines."""
    keys = list(keys or DEFAULT_KEYS)
    by = run_series(session, run_id, keys)
    if not by:
        return _message_png(f"run {run_id}: no metrics stored" + (" yet" if _unfinished(session, run_id) else ""))
    present = [k for k in keys if any(kk == k for _, kk in by)]
    unit = run_step(session, run_id)
    fig, axes = new_figure(1, len(present), figsize=(4 * len(present), 3.2), squeeze=False)
    for ax, key in zip(axes.flat, present):
        for (sp, k), pts in sorted(by.items()):
            if k == key:
                plot_epochs(ax, pts, unit, label=sp)
        ax.set_title(TITLES.get(key, key))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)
