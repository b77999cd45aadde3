"""NC dynamics figure of a sweep: mean ± sample std over seeds per configuration (or group), aggregated in SQL."""
from __future__ import annotations

import math
import re
import sys
from collections import defaultdict
from typing import Any, Iterable

import matplotlib
from matplotlib import ticker
import numpy as np
from sqlalchemy import Integer, and_, case, column, func, or_, select, values
from sqlalchemy.orm import Session

from nc_core.db.models import Metric, Run, Sweep
from nc_core.db.states import CANCELLED, QUEUED, metric_step
from nc_core.spec_fields import value_key, value_sort_key, value_text
from service.plots import (DEFAULT_KEYS, POINT_MARKERS, SPREAD_NOTE, TITLES, PlotError, _as_label, _axis_value,
                           _config_label, _message_png, _png, epoch_axis, new_figure, status_counts,
                           sweep_runs)
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


def log_axis(ax: Any, key: str, panel: dict[int, dict[int, tuple]], log_keys: list[str]) -> str:
    """Put the panel of ``key`` on a log y axis when asked (``log_keys`` names it, or is ["all"]) and its means are
    all > 0 (its ± band is masked where it reaches ≤ 0); returns what its title adds."""
    if key not in log_keys and log_keys != ["all"]:
        return ""
    means = [point[0] for curve in panel.values() for point in curve.values() if point[0] == point[0]]
    if not means or min(means) <= 0:
        return " (linear: values ≤ 0)"
    ax.set_yscale("log", nonpositive="mask")
    ax.yaxis.set_major_formatter(ticker.LogFormatter())  # plain '1e-3': the figures parse no math (text.parse_math)
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    return " (log)"


def lineless_footer(runs: list[Run], values: Any, drawn: set[str]) -> list[str]:
    """A footer line naming the configurations of ``runs`` that draw no line (nothing measured: every run failed
    before its first evaluation, was cancelled or is queued), with their runs' statuses; [] when all draw one."""
    by: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if (label := _config_label(values(r))) not in drawn:
            by[label].append(r)
    items = [f"{config} ({status_counts(members)})" for config, members in by.items()]
    if not items:
        return []
    more = f"; … {len(items) - DROP_CONFIGS} more" if len(items) > DROP_CONFIGS else ""
    return ["no line, nothing measured: " + "; ".join(items[:DROP_CONFIGS]) + more]


MAX_LINES = 20  # lines (legend entries) a dynamics figure draws legibly: more configurations are grouped
BAND_LINES = 10  # with more lines than this the ± bands are left out (they overlap into one smear)
COLOURS = matplotlib.colormaps["tab10"]
LINE_STYLES, LINE_MARKERS = ("-", "--", ":", "-."), ("o", "s", "^", "D")


def line_style(n: int) -> dict:
    """The n-th drawn line's colour, line style and marker: tab10's colours, then again dashed with squares, …"""
    cycle = n // COLOURS.N
    return {"color": COLOURS(n % COLOURS.N), "ls": LINE_STYLES[cycle % 4], "marker": LINE_MARKERS[cycle % 4]}


def parse_filters(raw: str | None) -> list[tuple[str, str]]:
    """'model.width=64,loss.name=ce' → [(axis, value as axes label it)]; a comma inside a value ([1, 2]) stays."""
    if raw is None:
        return []
    parts = [p.strip() for p in re.split(r",(?=\s*[\w.]+\s*=)", raw) if p.strip()]
    if not parts or any("=" not in p for p in parts):
        raise PlotError("filter", f"expected AXIS=VALUE, comma-separated, such as model.width=64,loss.name=ce; "
                                  f"got {raw!r}")
    return [(path.strip(), _as_label(value.strip())) for path, value in (p.split("=", 1) for p in parts)]


def filter_runs(runs: list[Run], axes: list[str], filters: list[tuple[str, str]], sweep_id: int) -> list[Run]:
    """The runs with one of the filtered values on every filtered axis (a repeated axis: any of its values)."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for path, value in filters:
        if path not in axes:
            raise PlotError("filter", f"{path!r} is not an axis of sweep {sweep_id}: expected one of {', '.join(axes)}")
        wanted[path].add(value)
    kept = [r for r in runs if all(value_text(_axis_value(r, p)) in vs for p, vs in wanted.items())]
    if runs and not kept:
        said = " and ".join(f"{p}={'|'.join(sorted(vs))}" for p, vs in wanted.items())
        raise PlotError("filter", f"no run of sweep {sweep_id} has {said}")
    return kept


def measured(runs: list[Run]) -> list[Run]:
    """The runs that may have stored a metric (started, or epochs completed before a retry): a configuration of
    queued runs only draws no line, and is no reason to group the others."""
    return [r for r in runs if r.epoch > 0 or r.status not in (QUEUED, CANCELLED)]


def _count(runs: list[Run], paths: list[str]) -> int:
    return len({tuple(value_key(_axis_value(r, p)) for p in paths) for r in runs})


def line_axes(runs: list[Run], axes: list[str], group_by: list[str] | None, sweep_id: int,
              configs: int) -> list[str] | None:
    """The axes a line stands for: ``group_by``'s; without it None (a line per configuration) while ``configs``
    (the runs' configurations) are at most MAX_LINES, else the first axis with 2 to MAX_LINES values."""
    if group_by is None:
        if configs <= MAX_LINES:
            return None
        counts = {a: _count(runs, [a]) for a in axes if a != "seed"}
        fits = [a for a, n in counts.items() if n <= MAX_LINES]
        group_by = [next((a for a in fits if counts[a] > 1), fits[0])] if fits else None
        if group_by is None:
            raise PlotError("group_by", f"{configs} configurations are more than the {MAX_LINES} lines a figure draws "
                                        f"legibly, and every axis has more values: expected group_by=AXIS with "
                                        f"filter=AXIS=VALUE to keep fewer")
    for path in group_by:
        if path not in axes:
            raise PlotError("group_by", f"{path!r} is not an axis of sweep {sweep_id}: expected some of "
                                        f"{', '.join(axes)}")
    lines = _count(runs, group_by)
    if lines > MAX_LINES:
        raise PlotError("group_by", f"{lines} lines ({', '.join(group_by)}) are more than the {MAX_LINES} a figure "
                                    f"draws legibly: group by fewer axes, or keep fewer values with filter=AXIS=VALUE")
    return group_by


def figure_note(paths: list[str] | None, auto: bool, configs: int, axes: list[str],
                filters: list[tuple[str, str]], bands: bool) -> str:
    """The title: what a line averages over, which runs were kept, whether the ± bands are drawn."""
    note = SPREAD_NOTE
    if paths is not None:
        held = {p for p, _ in filters if sum(q == p for q, _ in filters) == 1}  # a filter keeps one value: none pooled
        pooled = [a for a in axes if a not in paths and a != "seed" and a not in held] + ["seeds"]
        note = f"mean ± sample std (ddof 1) over the runs of each {', '.join(paths)} value ({', '.join(pooled)} pooled)"
        if auto:
            note += f"; {configs} configurations are more than {MAX_LINES} lines: group_by= and filter= choose"
    if filters:
        note += "; only " + ", ".join(f"{p}={v}" for p, v in filters)
    return note if bands else f"{note}; no ± bands above {BAND_LINES} lines"


def dynamics_png(session: Session, sweep_id: int, keys: list[str] | None = None, split: str | None = None,
                 group_by: list[str] | None = None, filters: list[tuple[str, str]] | None = None,
                 log_keys: list[str] | None = None) -> bytes:
    """One subplot per metric (acc: train and test): mean ± sample std (ddof 1, as /results) over seeds vs epoch
    (iteration for UFM runs), one line per configuration; no band where fewer than 2 seeds have a finite value;
    ▽ (and the footer's counts) where fewer runs are behind a curve than before (a run stopped there). Only the
    runs ``filters`` keep; past MAX_LINES configurations, or with ``group_by``, a line per value of its axes
    (pooling the runs of the others); past BAND_LINES lines, no bands. ``log_keys`` (or ["all"]): panels on a
    log y axis, unless a value is ≤ 0 (the panel stays linear and its title says so)."""
    keys, filters = list(keys or DEFAULT_KEYS), list(filters or [])
    sweep = session.get(Sweep, sweep_id)
    axes = [*((sweep.axes or []) if sweep is not None else []), "seed"]
    every = filter_runs(sweep_runs(session, sweep_id), axes, filters, sweep_id)
    unit = metric_step(r.kind for r in every)
    runs = measured(every)  # lines and colours: configurations with values, not all of them
    n_configs = len({_config_label(r.grid or {}) for r in runs})
    paths = line_axes(runs, axes, group_by, sweep_id, n_configs)
    values = (lambda r: r.grid or {}) if paths is None else (lambda r: {p: _axis_value(r, p) for p in paths})
    ordered = sorted(runs, key=lambda r: tuple(value_sort_key(v) for _, v in sorted(values(r).items())))
    configs = list(dict.fromkeys(_config_label(values(r)) for r in ordered))
    index = {c: i for i, c in enumerate(configs)}
    drawn = panels(keys, split)
    series = curve_points(session, {r.id: index[_config_label(values(r))] for r in runs}, drawn)
    if not any(series.get(p) for p in drawn):
        if any(r.status in ("queued", "running") for r in every):
            return _message_png(f"sweep {sweep_id}: no stored values yet for {', '.join(keys)}")
        return _message_png(f"sweep {sweep_id}: none of its {len(every)} finished runs stored a value of "
                            f"{', '.join(keys)}" + (f" ({split})" if split else ""))
    lines = [i for i in range(len(configs)) if any(i in series.get(p, {}) for p in drawn)]  # colours: these only
    style, bands = {i: line_style(n) for n, i in enumerate(lines)}, len(lines) <= BAND_LINES
    cols = min(3, len(drawn))
    rows = math.ceil(len(drawn) / cols)
    fig, axes_grid = new_figure(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    drops: dict[str, set[tuple[int, int, int]]] = defaultdict(set)
    for ax, (key, sp) in zip(axes_grid.flat, drawn):
        panel = series.get((key, sp), {})
        for i in (i for i in lines if i in panel):
            curve = panel[i]
            epochs = sorted(curve)
            mean = np.array([curve[e][0] for e in epochs])
            ax.plot(epochs, mean, lw=2, alpha=0.8, label=configs[i], **{**POINT_MARKERS, **style[i]})
            if bands:
                std = np.array([curve[e][1] for e in epochs])  # NaN: fill_between leaves a gap
                ax.fill_between(epochs, mean - std, mean + std, color=style[i]["color"], alpha=0.2)
            for e, before, after in run_drops(curve):
                ax.plot([e], [curve[e][0]], color=style[i]["color"], **DROP_MARKER)
                drops[configs[i]].add((e, before, after))
        ax.set_title(f"{TITLES.get(key, key)} [{sp}]" + log_axis(ax, key, panel, log_keys or []))
        epoch_axis(ax, [e for curve in panel.values() for e in curve], unit)
        ax.grid(alpha=0.3)
    for ax in list(axes_grid.flat)[len(drawn):]:
        ax.axis("off")
    footer = drop_footer({c: drops[c] for c in configs if c in drops}, unit)  # in legend order
    footer += lineless_footer(every, values, {configs[i] for i in lines})
    handles: dict[str, Any] = {}  # every panel's lines: a configuration may have values on one panel only
    for ax in axes_grid.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = [configs[i] for i in lines if configs[i] in handles]
    note = figure_note(paths, group_by is None and paths is not None, n_configs, axes, filters, bands)
    layout_figure(fig, note, [handles[c] for c in labels], labels, footer)  # legend, footer inside the image
    return _png(fig)
