"""Matplotlib (Agg) figures from stored metric rows: NC dynamics, heatmaps, run curves, margins → PNG bytes."""
from __future__ import annotations

import io
import math
from collections import defaultdict
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from nc_core.db.models import Metric, Run, Sweep  # noqa: E402
from nc_core.db.states import metric_step  # noqa: E402
from nc_core.db.sweeps_repo import PRIMARY_KINDS  # noqa: E402
from nc_core.sweep import get_path, short_names  # noqa: E402

DEFAULT_KEYS = ("nc1", "nc2_w", "nc3", "wh_b", "acc")
POINT_MARKERS = {"marker": "o", "markersize": 3}  # small: a single eval point shows, many stay a readable line
TITLES = {"nc1": "NC1", "nc2_w": "NC2 (W)", "nc3": "NC3", "wh_b": "NC4 (‖Wμ_G + b‖)", "acc": "accuracy %"}


class PlotError(ValueError):
    """A plot request that cannot be drawn (names the parameter, like SpecError)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _message_png(text: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 2))
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


def _sort_key(v: Any) -> tuple:
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


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


def plot_epochs(ax: Any, points: dict[int, float], unit: str = "epoch", **style: Any) -> None:
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


def _panels(keys: list[str], split: str | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key in keys:
        if split:
            out.append((key, split))
        elif key in ("acc", "loss"):
            out += [(key, "train"), (key, "test")]
        else:
            out.append((key, "train"))
    return out


def dynamics_png(session: Session, sweep_id: int, keys: list[str] | None = None, split: str | None = None) -> bytes:
    """One subplot per metric (acc: train and test): mean ± sample std (ddof 1, as /results) over seeds vs epoch
    (iteration for UFM runs), one line per configuration; no band where fewer than 2 seeds have a finite value."""
    keys = list(keys or DEFAULT_KEYS)
    runs = sweep_runs(session, sweep_id)
    unit = metric_step(r.kind for r in runs)
    config_of = {r.id: _config_label(r.grid or {}) for r in runs}
    series: dict[tuple[str, str], dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run_id, epoch, sp, key, value in metric_rows(session, config_of, keys):
        series[(key, sp)][config_of[run_id]][epoch].append(value)
    panels = _panels(keys, split)
    if not any(series.get(p) for p in panels):
        return _message_png(f"sweep {sweep_id}: no stored values yet for {', '.join(keys)}")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    ordered = sorted(runs, key=lambda r: tuple(_sort_key(v) for _, v in sorted((r.grid or {}).items())))
    configs = list(dict.fromkeys(config_of[r.id] for r in ordered))
    cmap = plt.cm.tab10 if len(configs) <= 10 else plt.cm.tab20
    colors = {c: cmap(i % cmap.N) for i, c in enumerate(configs)}
    for ax, (key, sp) in zip(axes.flat, panels):
        panel = series.get((key, sp), {})
        for config in (c for c in configs if c in panel):
            by_epoch = panel[config]
            epochs = sorted(by_epoch)
            mean = np.array([finite_mean(by_epoch[e]) for e in epochs])
            std = np.array([sample_std(by_epoch[e]) for e in epochs])  # NaN: fill_between leaves a gap
            ax.plot(epochs, mean, lw=2, alpha=0.8, color=colors[config], label=config, **POINT_MARKERS)
            ax.fill_between(epochs, mean - std, mean + std, color=colors[config], alpha=0.2)
        ax.set_title(f"{TITLES.get(key, key)} [{sp}]")
        ax.set_xlabel(unit)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(SPREAD_NOTE, fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * math.ceil(len(labels) / 4), 1, 1))
    return _png(fig)


def final_values(session: Session, runs: list[Run], key: str, split: str) -> dict[int, float]:
    """run id → the value of `key` on `split` at the run's last stored epoch."""
    last: dict[int, tuple[int, float]] = {}
    for run_id, epoch, sp, _, value in metric_rows(session, [r.id for r in runs], [key]):
        if sp == split and (run_id not in last or epoch > last[run_id][0]):
            last[run_id] = (epoch, value)
    return {rid: v for rid, (_, v) in last.items()}


def parse_ref(ref: str | None) -> tuple[str, str]:
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
    xs = sorted({_axis_value(r, x) for r in runs}, key=_sort_key)
    ys = sorted({_axis_value(r, y) for r in runs}, key=_sort_key)
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
    others = sorted({str(_axis_value(r, path)) for r in runs} - {ref_value})
    if ref_value not in {str(_axis_value(r, path)) for r in runs}:
        raise PlotError("ref", f"no run has {path}={ref_value}")
    base = cells(lambda r: str(_axis_value(r, path)) == ref_value)
    panels = [(f"|{key}({ref_value}) − {key}({o})| [{split}]",
               np.abs(base - cells(lambda r, o=o: str(_axis_value(r, path)) == o))) for o in others]
    return xs, ys, panels


def heatmap_png(session: Session, sweep_id: int, x: str, y: str, key: str = "acc", split: str = "test",
                mode: str = "value", ref: str | None = None) -> bytes:
    """Heatmap over two axes of a metric at the final epoch (value, |ref − other| per value, or sample variance
    (ddof 1, the square of /results' std; – where fewer than 2 runs have a finite value))."""
    xs, ys, panels = heatmap_grids(session, sweep_id, x, y, key, split, mode, ref)
    if not panels:
        return _message_png(f"nothing to compare against {ref}")
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + 1.1 * len(xs) * len(panels) + 1.5 * len(panels),
                                                    1.5 + 0.8 * len(ys)), squeeze=False)
    for ax, (title, m) in zip(axes.flat, panels):
        im = ax.imshow(np.ma.masked_invalid(m), origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
        ax.set_yticks(range(len(ys)), [str(v) for v in ys])
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
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.2), squeeze=False)
    for ax, key in zip(axes.flat, present):
        for (sp, k), pts in sorted(by.items()):
            if k == key:
                plot_epochs(ax, pts, unit, label=sp)
        ax.set_title(TITLES.get(key, key))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)
