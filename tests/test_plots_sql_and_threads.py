"""Dynamics are aggregated in SQL (one row per config, epoch and panel) and plots draw without pyplot, in parallel."""
from __future__ import annotations

import math
import subprocess
import sys
import threading
from collections import defaultdict

import matplotlib.axes
import numpy as np
import pytest
from sqlalchemy import event

from nc_core.db.models import Metric
from nc_core.db.session import make_engine, session_scope
from test_plots import _get_png, seed_sweep, sqlite_app_client  # noqa: F401 - the fixture


def _seed_with_gaps(url: str) -> tuple[int, list[int]]:
    """seed_sweep's 8 runs (4 configs × 2 seeds, 4 epochs), with test acc NULL at epoch 2 in both seeds of the first
    config (a point without any finite value) and in one seed at epoch 3 (a mean without a band)."""
    sid, runs = seed_sweep(url)
    with session_scope(url) as s:
        for run_id, epoch in ((runs[0], 2), (runs[1], 2), (runs[0], 3)):
            s.query(Metric).filter_by(run_id=run_id, epoch=epoch, split="test", key="acc").update({"value": None})
    return sid, runs


def test_config_curves_match_the_python_mean_and_sample_std(db_url: str) -> None:
    from service.plots import finite_mean, metric_rows, sample_std
    from service.plots_dynamics import config_curves

    _, runs = _seed_with_gaps(db_url)
    config_of_run = {r: i // 2 for i, r in enumerate(runs)}  # seeds 0 and 1 of each (loss, width)
    pairs = [("nc1", "train"), ("acc", "train"), ("acc", "test")]
    with session_scope(db_url) as s:
        curves = config_curves(s, config_of_run, pairs)
        values: dict = defaultdict(list)
        for run_id, epoch, split, key, value in metric_rows(s, runs, ["nc1", "acc"]):
            if (key, split) in pairs:
                values[(key, split), config_of_run[run_id], epoch].append(value)
    assert set(curves) == set(pairs)  # only the pairs asked for: no nc1 on test
    assert {(p, c, e) for p, by in curves.items() for c, pts in by.items() for e in pts} == set(values)
    for (pair, config, epoch), vs in values.items():
        mean, std = curves[pair][config][epoch]
        for got, want in ((mean, finite_mean(vs)), (std, sample_std(vs))):
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12), (pair, epoch)
    assert all(math.isnan(x) for x in curves[("acc", "test")][0][2])  # kept as a gap, not dropped
    assert not math.isnan(curves[("acc", "test")][0][3][0]) and math.isnan(curves[("acc", "test")][0][3][1])
    assert math.isnan(curves[("nc1", "train")][0][1][1]) and not math.isnan(curves[("nc1", "train")][0][1][0])


def test_dynamics_fetches_one_row_per_config_epoch_and_panel(sqlite_app_client) -> None:  # noqa: F811
    # the whole-sweep fetch brought every run's rows of both splits (8 runs × 4 epochs × 5 keys × 2 splits = 320
    # here, 3M rows at audit scale); drawn: 4 configs × 4 epochs × 6 panels (NC on train, acc on both)
    client = sqlite_app_client
    sid, _ = _seed_with_gaps(client.db_url)
    engine = make_engine(client.db_url)
    metric_selects: list[tuple[str, tuple]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ANN202
        if statement.lstrip().upper().startswith(("SELECT", "WITH")) and "metric" in statement:
            metric_selects.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        _get_png(client, f"/sweeps/{sid}/plots/dynamics.png")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert metric_selects
    with engine.connect() as conn:
        fetched = sum(len(conn.exec_driver_sql(sql, params).all()) for sql, params in metric_selects)
    assert fetched <= 4 * 4 * 6, fetched


def test_plot_modules_never_touch_pyplot() -> None:
    code = ("import sys, service.plots, service.plots_dynamics, service.plots_margins, service.routers.plots; "
            "print('matplotlib.pyplot' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"  # pyplot's figure registry is process-wide state


def test_plot_requests_draw_at_the_same_time(sqlite_app_client, monkeypatch) -> None:  # noqa: ANN001, F811
    # each request waits inside its drawing until the other one is drawing too: a process-wide plot lock would
    # keep the second out and break the barrier
    client = sqlite_app_client
    sid, runs = seed_sweep(client.db_url)
    both_drawing = threading.Barrier(2, timeout=10)
    waited = threading.local()
    plot = matplotlib.axes.Axes.plot

    def meet_then_plot(ax, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if not getattr(waited, "done", False):
            waited.done = True
            both_drawing.wait()
        return plot(ax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", meet_then_plot)
    images: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []

    def fetch(url: str) -> None:
        try:
            images[url] = _get_png(client, url)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    urls = [f"/sweeps/{sid}/plots/dynamics.png", f"/runs/{runs[1]}/plots/curves.png"]
    threads = [threading.Thread(target=fetch, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and set(images) == set(urls), errors
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    assert np.array_equal(images[urls[0]], _get_png(client, urls[0]))  # the same picture as drawn alone
