"""NC dynamics figure of a sweep: mean ± sample std over seeds per configuration, aggregated in SQL."""
from __future__ import annotations

import math
import sys
from collections import defaultdict
from typing import Iterable

import matplotlib
import numpy as np
from matplotlib.ticker import MaxNLocator
from sqlalchemy import Integer, and_, case, column, func, or_, select, values
from sqlalchemy.orm import Session

from nc_core.db.models import Metric
from nc_core.db.states import metric_step
from nc_core.spec_fields import value_sort_key
from service.plots import (DEFAULT_KEYS, POINT_MARKERS, SPREAD_NOTE, TITLES, _config_label, _message_png, _png,
                           new_figure, sweep_runs)
from service.plots_layout import layout_figure

#: One configuration's curve on one panel: {epoch: (mean, sample std)}, NaN where undefined.
Curve = dict[int, tuple[float, float]]


def panels(keys: list[str], split: str | None) -> list[tuple[str, str]]:
    """The (key, split) pairs the figure draws, in panel order: ``split`` for every key if given, else train, and
    train plus test for acc and loss."""
    out: list[tuple[str, str]] = []
    for key in keys:
        if split:
            out.append((key, split))
        elif key in ("acc", "loss"):
            out += [(key, "train"), (key, "test")]
        else:
            out.append((key, "train"))
    return out


def _pairs_condition(pairs: Iterable[tuple[str, str]]):  # noqa: ANN202 - a SQL boolean expression
    """metric.(key, split) is one of ``pairs`` (one ``key IN`` per split: portable, and uses the metric index)."""
    keys_by_split: dict[str, list[str]] = defaultdict(list)
    for key, split in dict.fromkeys(pairs):
        keys_by_split[split].append(key)
    return or_(*(and_(Metric.split == sp, Metric.key.in_(ks)) for sp, ks in keys_by_split.items()))


def config_curves(session: Session, config_of_run: dict[int, int], pairs: list[tuple[str, str]]
                  ) -> dict[tuple[str, str], dict[int, Curve]]:
    """{(key, split): {config index: {epoch: (mean, sample std)}}} over the runs of each configuration
    (``config_of_run``: run id → config index), only for ``pairs`` (curve_points without the run counts)."""
    return {pair: {c: {e: (mean, std) for e, (mean, std, _) in pts.items()} for c, pts in by.items()}
            for pair, by in curve_points(session, config_of_run, pairs).items()}


def curve_points(session: Session, config_of_run: dict[int, int], pairs: list[tuple[str, str]]
                 ) -> dict[tuple[str, str], dict[int, dict[int, tuple[float, float, int]]]]:
    """{(key, split): {config index: {epoch: (mean, sample std, runs)}}} over the runs of each configuration
    (``config_of_run``: run id → config index), only for ``pairs``; ``runs``: how many runs have a row there (fewer
    past a cancelled, failed or still running run's last epoch). Like ``finite_mean``/``sample_std`` (ddof 1, as
    /results): over the finite values, mean NaN without any, std NaN with fewer than 2; a point whose values are
    all NULL is kept (NaN), so the line shows its gap. Aggregated in SQL (two passes: the group mean, then the
    squared deviations from it), one row per (config, epoch, key, split)."""
    if not config_of_run or not pairs:
        return {}
    run_config = values(column("run_id", Integer), column("config", Integer), name="run_config").data(
        sorted(config_of_run.items())).cte("run_config")
    finite = Metric.value.between(-sys.float_info.max, sys.float_info.max)  # NULL, NaN (PostgreSQL), ±inf: out
    value = case((finite, Metric.value))  # NULL unless finite: AVG, COUNT and SUM skip it
    group = (run_config.c.config, Metric.epoch, Metric.key, Metric.split)
    points = (select(*group, value.label("value"), func.avg(value).over(partition_by=group).label("mean"))
              .join_from(Metric, run_config, Metric.run_id == run_config.c.run_id)
              .where(Metric.run_id.in_(list(config_of_run)), _pairs_condition(pairs))  # the index, in the plan
              .subquery("points"))
    deviation = points.c.value - points.c.mean
    by_group = (points.c.config, points.c.epoch, points.c.key, points.c.split)
    q = select(*by_group, func.min(points.c.mean), func.count(points.c.value),
               func.sum(deviation * deviation), func.count()).group_by(*by_group)
    curves: dict = defaultdict(lambda: defaultdict(dict))
    for config, epoch, key, split, mean, n, squares, runs in session.execute(q):
        std = math.sqrt(squares / (n - 1)) if n > 1 else math.nan
        curves[(key, split)][config][epoch] = (math.nan if mean is None else float(mean), std, runs)
    return curves


def run_drops(curve: dict[int, tuple[float, float, int]]) -> list[tuple[int, int, int]]:
    """(epoch, runs before, runs from there) wherever fewer runs are behind the curve than at its previous point."""
    epochs = sorted(curve)
    return [(e, curve[p][2], curve[e][2]) for p, e in zip(epochs, epochs[1:]) if curve[e][2] < curve[p][2]]


DROP_MARKER = {"marker": "v", "markersize": 9, "markerfacecolor": "none", "markeredgewidth": 1.5, "ls": "none"}
DROP_NOTE = ("▽ fewer runs from here on: the curve averages the runs left",
             "   (past a cancelled, failed or unfinished run's last {unit}):")
DROP_CONFIGS = 4  # configurations the footer details before "…"


def drop_footer(drops: dict[str, set[tuple[int, int, int]]], unit: str) -> list[str]:
    """The footer's lines: what ▽ means, then one per configuration with its counts ('2 → 1 run at epoch 16')."""
    if not drops:
        return []
    details = [f"{config}: " + ", ".join(f"{a} → {b} run{'s' if b != 1 else ''} at {unit} {e}"
                                         for e, a, b in sorted(points)) for config, points in drops.items()]
    more = [f"… {len(details) - DROP_CONFIGS} more configurations"] if len(details) > DROP_CONFIGS else []
    return [DROP_NOTE[0], DROP_NOTE[1].format(unit=unit), *details[:DROP_CONFIGS], *more]


def dynamics_png(session: Session, sweep_id: int, keys: list[str] | None = None, split: str | None = None) -> bytes:
    """One subplot per metric (acc: train and test): mean ± sample std (ddof 1, as /results) over seeds vs epoch
    (iteration for UFM runs), one line per configuration; no band where fewer than 2 seeds have a finite value;
    ▽ (and the footer's counts) where fewer runs are behind a curve than before (a run stopped there)."""
    keys = list(keys or DEFAULT_KEYS)
    runs = sweep_runs(session, sweep_id)
    unit = metric_step(r.kind for r in runs)
    ordered = sorted(runs, key=lambda r: tuple(value_sort_key(v) for _, v in sorted((r.grid or {}).items())))
    configs = list(dict.fromkeys(_config_label(r.grid or {}) for r in ordered))
    index = {c: i for i, c in enumerate(configs)}
    drawn = panels(keys, split)
    series = curve_points(session, {r.id: index[_config_label(r.grid or {})] for r in runs}, drawn)
    if not any(series.get(p) for p in drawn):
        return _message_png(f"sweep {sweep_id}: no stored values yet for {', '.join(keys)}")
    cols = min(3, len(drawn))
    rows = math.ceil(len(drawn) / cols)
    fig, axes = new_figure(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    cmap = matplotlib.colormaps["tab10" if len(configs) <= 10 else "tab20"]
    drops: dict[str, set[tuple[int, int, int]]] = defaultdict(set)
    for ax, (key, sp) in zip(axes.flat, drawn):
        panel = series.get((key, sp), {})
        for i, config in enumerate(configs):
            if i not in panel:
                continue
            curve = panel[i]
            epochs = sorted(curve)
            mean = np.array([curve[e][0] for e in epochs])
            std = np.array([curve[e][1] for e in epochs])  # NaN: fill_between leaves a gap
            color = cmap(i % cmap.N)
            ax.plot(epochs, mean, lw=2, alpha=0.8, color=color, label=config, **POINT_MARKERS)
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
            for e, before, after in run_drops(curve):
                ax.plot([e], [curve[e][0]], color=color, **DROP_MARKER)
                drops[config].add((e, before, after))
        ax.set_title(f"{TITLES.get(key, key)} [{sp}]")
        ax.set_xlabel(unit)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(drawn):]:
        ax.axis("off")
    footer = drop_footer({c: drops[c] for c in configs if c in drops}, unit)  # in legend order
    handles, labels = axes.flat[0].get_legend_handles_labels()
    layout_figure(fig, SPREAD_NOTE, handles, labels, footer)  # legend and footer below the axes, inside the image
    return _png(fig)
