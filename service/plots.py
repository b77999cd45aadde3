"""Matplotlib (Agg) figures from stored metric rows: NC dynamics, heatmaps, run curves, margins → PNG bytes."""
from __future__ import annotations

import io
import math
from collections import defaultdict
from typing import Any, Iterable

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sqlalchemy import select
from sqlalchemy.orm import Session

from nc_core.db.models import Metric, Run, Sweep
from nc_core.db.states import metric_step
from nc_core.db.sweeps_repo import PRIMARY_KINDS, latest_values
from nc_core.spec_fields import distinct_values, value_sort_key, value_text
from nc_core.sweep import get_path, short_names

DEFAULT_KEYS = ("nc1", "nc2_w", "nc3", "wh_b", "acc")
POINT_MARKERS = {"marker": "o", "markersize": 3}  # small: a single eval point shows, many stay a readable line
TITLES = {"nc1": "NC1", "nc2_w": "NC2 (W)", "nc3": "NC3", "wh_b": "NC4 (‖Wμ_G + b‖)", "acc": "accuracy %"}


class PlotError(ValueError):
    """A plot request that cannot be drawn (names the parameter, like SpecError)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def new_figure(*grid: int, figsize: tuple[float, float], squeeze: bool = True) -> tuple[Figure, Any]:
    """A figure on its own Agg canvas with ``grid`` (rows, cols) subplots, as ``pyplot.subplots`` returns them but
    without pyplot's process-wide state: threads may draw figures at the same time."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*grid, squeeze=squeeze)


def _png(fig: Figure) -> bytes:
    """The figure as PNG bytes (80 dpi)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def _message_png(text: str) -> bytes:
    """A small figure that only says ``text`` (nothing to plot yet)."""
    fig, ax = new_figure(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return _png(fig)


def _axis_value(run: Run, path: str) -> Any:
    if path in (run.grid or {}):
        return run.grid[path]
    return run.seed if path == "seed" else get_path(run.spec or {}, path)


def _config_label(grid: dict[str, Any]) -> str:
    items = sorted(grid.items())
    return ", ".join(f"{k}={v}" for k, (_, v) in zip(short_names([k for k, _ in items]), items)) or "base"


_sort_key = value_sort_key  # numbers by value, lists element by element, the rest by text


def sweep_runs(session: Session, sweep_id: int) -> list[Run]:
    """The runs the sweep's grid defines (as /results takes them: a validate job repeats its parent's
    epochs and would count as one more seed)."""
    return list(session.scalars(select(Run).where(Run.sweep_id == sweep_id, Run.kind.in_(PRIMARY_KINDS))
                                .order_by(Run.id)))


def metric_rows(session: Session, run_ids: Iterable[int], keys: Iterable[str]) -> list[tuple]:
    """(run_id, epoch, split, key, value) rows; NULL values (NaN) are kept as nan."""
    run_ids, keys = list(run_ids), list(keys)
    if not run_ids or not keys:
        return []
    q = select(Metric.run_id, Metric.epoch, Metric.split, Metric.key, Metric.value).where(
        Metric.run_id.in_(run_ids), Metric.key.in_(keys))
    return [(r, e, s, k, math.nan if v is None else float(v)) for r, e, s, k, v in session.execute(q)]


def run_series(session: Session, run_id: int, keys: Iterable[str]) -> dict[tuple[str, str], dict[int, float]]:
    """One run's metric points as {(split, key): {epoch: value}}."""
    by: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for _, epoch, sp, key, value in metric_rows(session, [run_id], keys):
        by[(sp, key)][epoch] = value
    return by


def run_step(session: Session, run_id: int) -> str:
    """What a run's metric epochs count, as axes name it ('iteration' for a UFM run; states.metric_step)."""
    return metric_step(session.scalars(select(Run.kind).where(Run.id == run_id)))


def plot_epochs(ax: Axes, points: dict[int, float], unit: str = "epoch", **style: Any) -> None:
    """Draw {epoch: value} as a line with small point markers (one eval point stays visible), epochs ascending,
    on integer ticks labelled ``unit`` (states.metric_step)."""
    epochs = sorted(points)
    ax.plot(epochs, [points[e] for e in epochs], lw=2, **{**POINT_MARKERS, **style})
    ax.set_xlabel(unit)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def finite_mean(values: Iterable[float]) -> float:
    """Mean of the finite values, NaN without any (as /sweeps/{id}/results' ``mean`` is null)."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return float(xs.mean()) if xs.size else math.nan


def sample_std(values: Iterable[float]) -> float:
    """Sample std (ddof 1) of the finite values, NaN with fewer than 2 (as /sweeps/{id}/results' ``std`` is null)."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return float(xs.std(ddof=1)) if xs.size > 1 else math.nan


SPREAD_NOTE = "mean ± sample std (ddof 1) over seeds; no band where fewer than 2 seeds have a finite value"


def dynamics_png(session: Session, sweep_id: int, keys: list[str] | None = None, split: str | None = None) -> bytes:
    """The sweep's NC dynamics figure (mean ± sample std over seeds per configuration); drawn in
    service/plots_dynamics.py."""
    from service.plots_dynamics import dynamics_png as draw  # it imports this module: load it lazily

    return draw(session, sweep_id, keys, split)


def final_values(session: Session, runs: list[Run], key: str, split: str) -> dict[int, float]:
    """run id → the value of `key` on `split` at the last epoch the run measured it (one index descent a run)."""
    rows = latest_values(session, split, [key], run_ids=[r.id for r in runs])
    return {rid: math.nan if value is None else float(value) for rid, _, value, _ in rows}  # NULL is a NaN


def parse_ref(ref: str | None) -> tuple[str, str]:
    """(axis path, value) of a diff_vs reference ``AXIS:VALUE``."""
    if not ref or ":" not in ref:
        raise PlotError("ref", f"expected AXIS:VALUE such as loss.name:ce, got {ref!r}")
    path, value = ref.split(":", 1)
    return path, value


def heatmap_grids(session: Session, sweep_id: int, x: str, y: str, key: str, split: str, mode: str,
                  ref: str | None = None) -> tuple[list, list, list[tuple[str, np.ndarray]]]:
    """(x values, y values, [(panel title, matrix (len y, len x))]) for the requested mode."""
    runs = sweep_runs(session, sweep_id)
    if not runs:
        raise PlotError("sweep_id", f"sweep {sweep_id} has no runs")
    finals = final_values(session, runs, key, split)
    xs = sorted(distinct_values(_axis_value(r, x) for r in runs), key=_sort_key)  # a value may be a list
    ys = sorted(distinct_values(_axis_value(r, y) for r in runs), key=_sort_key)
    sweep = session.get(Sweep, sweep_id)
    varied = [*((sweep.axes or []) if sweep is not None else []), "seed"]
    for path, vals in ((x, xs), (y, ys)):
        if vals == [None]:
            raise PlotError("x" if path == x else "y", f"{path!r} is not a field of this sweep's runs")
        if len(vals) == 1 and path not in varied:  # a constant field: one row or column averaging everything
            raise PlotError("x" if path == x else "y", f"{path!r} has one value ({vals[0]!r}) in every run of sweep "
                                                       f"{sweep_id}; expected an axis it varies: {', '.join(varied)}")

    def cells(select_run) -> np.ndarray:  # per cell over the runs select_run keeps: mean, or sample variance
        acc: dict[tuple[int, int], list[float]] = defaultdict(list)
        for r in runs:
            if select_run(r) and r.id in finals:
                acc[(ys.index(_axis_value(r, y)), xs.index(_axis_value(r, x)))].append(finals[r.id])
        m = np.full((len(ys), len(xs)), np.nan)
        for (i, j), v in acc.items():
            m[i, j] = sample_std(v) ** 2 if mode == "variance" else finite_mean(v)
        return m

    if mode == "value":
        return xs, ys, [(f"{key} [{split}] (mean)", cells(lambda r: True))]
    if mode == "variance":  # the square of /results' std: ddof 1 over the finite values, – with fewer than 2
        return xs, ys, [(f"sample variance (ddof 1) of {key} [{split}] over runs", cells(lambda r: True))]
    if mode != "diff_vs":
        raise PlotError("mode", f"expected value, diff_vs or variance, got {mode!r}")
    path, ref_value = parse_ref(ref)
    if path in (x, y):
        raise PlotError("ref", f"the reference axis {path!r} must differ from x and y (it selects the panels)")
    others = sorted({value_text(_axis_value(r, path)) for r in runs} - {ref_value})
    if ref_value not in {value_text(_axis_value(r, path)) for r in runs}:
        raise PlotError("ref", f"no run has {path}={ref_value}")
    base = cells(lambda r: value_text(_axis_value(r, path)) == ref_value)
    panels = [(f"|{key}({ref_value}) − {key}({o})| [{split}]",
               np.abs(base - cells(lambda r, o=o: value_text(_axis_value(r, path)) == o))) for o in others]
    return xs, ys, panels


def heatmap_png(session: Session, sweep_id: int, x: str, y: str, key: str = "acc", split: str = "test",
                mode: str = "value", ref: str | None = None) -> bytes:
    """Heatmap over two axes of a metric at the final epoch (value, |ref − other| per value, or sample variance
    (ddof 1, the square of /results' std; – where fewer than 2 runs have a finite value))."""
    xs, ys, panels = heatmap_grids(session, sweep_id, x, y, key, split, mode, ref)
    if not panels:
        return _message_png(f"nothing to compare against {ref}")
    fig, axes = new_figure(1, len(panels), figsize=(1.2 + 1.1 * len(xs) * len(panels) + 1.5 * len(panels),
                                                    1.5 + 0.8 * len(ys)), squeeze=False)
    for ax, (title, m) in zip(axes.flat, panels):
        im = ax.imshow(np.ma.masked_invalid(m), origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(xs)), [value_text(v) for v in xs])
        ax.set_yticks(range(len(ys)), [value_text(v) for v in ys])
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(title, fontsize=9)
        lo, hi = (np.nanmin(m), np.nanmax(m)) if np.isfinite(m).any() else (0.0, 1.0)
        for (i, j), v in np.ndenumerate(m):
            bright = np.isfinite(v) and hi > lo and (v - lo) / (hi - lo) > 0.6  # viridis turns yellow
            ax.text(j, i, "–" if np.isnan(v) else f"{v:.3g}", ha="center", va="center", fontsize=8,
                    color="k" if bright else "w")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return _png(fig)


def margins_png(session: Session, run_id: int) -> bytes:
    """The run's cosine-margin figure (sorted distribution, or statistics); drawn in service/plots_margins.py."""
    # plots_margins imports this module: load it lazily
    from service.plots_margins import margins_png as draw

    return draw(session, run_id)


def run_curves_png(session: Session, run_id: int, keys: list[str] | None = None) -> bytes:
    """A single run's metric curves (dashboard run page): one subplot per key, train and test lines."""
    keys = list(keys or DEFAULT_KEYS)
    by = run_series(session, run_id, keys)
    if not by:
        return _message_png(f"run {run_id}: no metrics stored yet")
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
