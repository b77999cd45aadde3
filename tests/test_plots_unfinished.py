"""Plots say where a value mixes an unfinished run's last measured epoch in (as /results' unfinished_runs): the
heatmap's * cells and footnote, the dynamics' ▽ where a curve averages fewer runs; the heatmap's empty cells show."""
from __future__ import annotations

import matplotlib.axes
import matplotlib.colors
import matplotlib.figure
import pytest

from nc_core.db.models import Metric, Run
from nc_core.db.session import session_scope
from test_plots import _get_png, seed_sweep, sqlite_app_client  # noqa: F401 - the fixture

NOTE = "* includes unfinished runs (last measured epoch)"


def seed_cancelled(url: str) -> tuple[int, list[int]]:
    """seed_sweep's 8 runs (loss × width × 2 seeds, 4 epochs); run 0 (ce, width 32, seed 0) cancelled after
    epoch 2: its metrics stop there."""
    sid, runs = seed_sweep(url, statuses={0: "cancelled"})
    with session_scope(url) as s:
        s.query(Metric).filter(Metric.run_id == runs[0], Metric.epoch > 2).delete()
        s.get(Run, runs[0]).epoch = 2
    return sid, runs


@pytest.fixture
def drawn(monkeypatch) -> list[tuple[str, str, object]]:  # noqa: ANN001
    """Every text drawn from here on: ("ax" | "fig", text, colour) — what a reader of the PNG sees."""
    seen: list[tuple[str, str, object]] = []
    ax_text, fig_text = matplotlib.axes.Axes.text, matplotlib.figure.Figure.text

    def on_axes(ax, x, y, s, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(("ax", str(s), kwargs.get("color")))
        return ax_text(ax, x, y, s, *args, **kwargs)

    def on_figure(fig, x, y, s, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(("fig", str(s), kwargs.get("color")))
        return fig_text(fig, x, y, s, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", on_axes)
    monkeypatch.setattr(matplotlib.figure.Figure, "text", on_figure)
    return seen


def test_heatmap_marks_cells_with_unfinished_runs_as_results_does(sqlite_app_client, drawn) -> None:  # noqa: ANN001
    client = sqlite_app_client
    sid, runs = seed_cancelled(client.db_url)
    groups = client.get(f"/sweeps/{sid}/results", params={"keys": "acc", "split": "test"}).json()["groups"]
    unfinished = {(g["values"]["loss.name"], g["values"]["model.width"]): g["unfinished_runs"] for g in groups}
    assert unfinished[("ce", 32)] == [runs[0]] and sum(map(len, unfinished.values())) == 1
    _get_png(client, f"/sweeps/{sid}/plots/heatmap.png?x=model.width&y=loss.name&key=acc&split=test")
    cells = [s for where, s, _ in drawn if where == "ax"]
    assert len(cells) == 4 and [c.endswith("*") for c in cells] == [True, False, False, False], cells  # ce, 32 first
    mean = groups[0]["metrics"]["acc"]["mean"]  # run 0 at epoch 2 and run 1 at epoch 4, as /results
    assert cells[0] == f"{mean:.3g}*"
    notes = [s for where, s, _ in drawn if where == "fig"]
    assert len(notes) == 1 and notes[0].startswith(NOTE) and f"run {runs[0]}" in notes[0]


def test_heatmap_cells_share_results_definition_in_every_mode(sqlite_app_client) -> None:  # noqa: ANN001
    from service.plots import heatmap_cells

    sid, runs = seed_cancelled(sqlite_app_client.db_url)
    with session_scope(sqlite_app_client.db_url) as s:
        value = heatmap_cells(s, sid, "model.width", "loss.name", "acc", "test", "value")
        assert value.unfinished == [{(0, 0): [runs[0]]}]
        variance = heatmap_cells(s, sid, "model.width", "loss.name", "acc", "test", "variance")
        assert variance.unfinished == value.unfinished
        diff = heatmap_cells(s, sid, "model.width", "seed", "acc", "test", "diff_vs", "loss.name:ce")
        assert diff.unfinished == [{(0, 0): [runs[0]]}]  # |ce − mse| at seed 0, width 32: run 0 in its ce side
        s.get(Run, runs[0]).status = "succeeded"
        s.flush()
        assert heatmap_cells(s, sid, "model.width", "loss.name", "acc", "test", "value").unfinished == [{}]


def test_a_finished_sweeps_heatmap_has_no_marks(sqlite_app_client, drawn) -> None:  # noqa: ANN001
    sid, _ = seed_sweep(sqlite_app_client.db_url)
    _get_png(sqlite_app_client, f"/sweeps/{sid}/plots/heatmap.png?x=model.width&y=loss.name&key=acc")
    assert not any("*" in s for _, s, _ in drawn)


def test_empty_heatmap_cells_are_written_in_a_dark_colour(sqlite_app_client, drawn) -> None:  # noqa: ANN001
    # one run per cell: every sample variance is undefined (–) and its cell masked (white)
    sid, _ = seed_sweep(sqlite_app_client.db_url, widths=(32,))
    _get_png(sqlite_app_client, f"/sweeps/{sid}/plots/heatmap.png?x=seed&y=loss.name&key=nc1&mode=variance")
    cells = [(s, colour) for where, s, colour in drawn if where == "ax"]
    assert len(cells) == 4 and all(s == "–" for s, _ in cells), cells
    for _, colour in cells:
        r, g, b = matplotlib.colors.to_rgb(colour)
        assert 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5, colour  # readable on white


def test_dynamics_mark_where_a_curve_averages_fewer_runs(sqlite_app_client, drawn, monkeypatch) -> None:  # noqa: ANN001
    client = sqlite_app_client
    sid, runs = seed_cancelled(client.db_url)
    markers: list[tuple[list, object]] = []
    plot = matplotlib.axes.Axes.plot

    def record(ax, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if kwargs.get("marker") not in (None, "o"):  # the curves' own points are small circles
            markers.append((list(args[0]), kwargs.get("color")))
        return plot(ax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    _get_png(client, f"/sweeps/{sid}/plots/dynamics.png?keys=acc,nc1&split=test")
    assert [x for x, _ in markers] == [[3], [3]]  # loss=ce, width=32 on both panels: 2 → 1 runs from epoch 3
    footer = "\n".join(s for where, s, _ in drawn if where == "fig")
    assert "fewer runs" in footer and "cancelled" in footer
    assert "loss=ce, width=32: 2 → 1 run at epoch 3" in footer and "width=64" not in footer
    drawn.clear()
    markers.clear()
    with session_scope(client.db_url) as s:  # a finished sweep: nothing to mark
        s.query(Metric).filter(Metric.run_id == runs[1], Metric.epoch > 2).delete()
        s.query(Run).filter(Run.id.in_(runs[:2])).delete()
    _get_png(client, f"/sweeps/{sid}/plots/dynamics.png?keys=acc&split=test")
    assert markers == [] and not any("fewer runs" in s for _, s, _ in drawn)


def test_curve_points_count_the_runs_behind_each_point(sqlite_app_client) -> None:  # noqa: ANN001
    from service.plots_dynamics import config_curves, curve_points

    sid, runs = seed_cancelled(sqlite_app_client.db_url)
    config_of_run = {r: i // 2 for i, r in enumerate(runs)}
    with session_scope(sqlite_app_client.db_url) as s:
        points = curve_points(s, config_of_run, [("acc", "test")])[("acc", "test")]
        curves = config_curves(s, config_of_run, [("acc", "test")])[("acc", "test")]
    assert [points[0][e][2] for e in (1, 2, 3, 4)] == [2, 2, 1, 1]
    assert all(points[c][e][2] == 2 for c in (1, 2, 3) for e in (1, 2, 3, 4))
    assert curves[0][3] == points[0][3][:2] and len(curves[0][3]) == 2  # config_curves: (mean, std) as before


def test_configurations_whose_runs_all_failed_are_named_not_dropped(sqlite_app_client, drawn) -> None:  # noqa: ANN001
    """Before: no line, no legend entry and an empty heatmap cell without a word on why."""
    client = sqlite_app_client
    sid, runs = seed_sweep(client.db_url, statuses={6: "failed", 7: "failed"})  # mse, width 64: both seeds
    with session_scope(client.db_url) as s:  # failed before their first evaluation
        s.query(Metric).filter(Metric.run_id.in_(runs[6:8])).delete()
    _get_png(client, f"/sweeps/{sid}/plots/dynamics.png?keys=acc&split=test")
    footer = "\n".join(s for where, s, _ in drawn if where == "fig")
    assert "no line, nothing measured: loss=mse, width=64 (2 failed)" in footer, footer
    drawn.clear()
    _get_png(client, f"/sweeps/{sid}/plots/heatmap.png?x=model.width&y=loss.name&key=acc")
    note = "\n".join(s for where, s, _ in drawn if where == "fig")
    assert "runs with no acc [test] value: 2 failed" in note, note


def test_dynamics_draw_the_keys_asked_for_on_a_log_axis(sqlite_app_client, drawn, monkeypatch) -> None:  # noqa: ANN001
    import matplotlib.axes

    client = sqlite_app_client
    sid, _ = seed_sweep(client.db_url)
    scales: list[str] = []
    set_yscale = matplotlib.axes.Axes.set_yscale

    def record(ax, value, **kwargs):  # noqa: ANN001, ANN003, ANN202
        scales.append(value)
        return set_yscale(ax, value, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_yscale", record)
    _get_png(client, f"/sweeps/{sid}/plots/dynamics.png?keys=nc1,acc&split=test&log=nc1")
    assert scales == ["log"]  # nc1 only
    bad = client.get(f"/sweeps/{sid}/plots/dynamics.png", params={"log": "nc9"})
    assert bad.status_code == 422 and "log" in bad.text, bad.text


def test_log_axis_ticks_are_plain_text_in_figures_that_parse_no_math(sqlite_app_client) -> None:  # noqa: ANN001
    """text.parse_math is off for every figure: the default log ticks printed '$\\mathdefault{10^{-1}}$'."""
    from service.plots import new_figure
    from service.plots_dynamics import log_axis

    fig, axes = new_figure(1, 1, figsize=(4, 3), squeeze=False)
    ax = axes[0, 0]
    ax.plot([1, 2, 3], [1.0, 0.1, 0.01])
    assert log_axis(ax, "nc1", {0: {1: (1.0, 0.0, 1), 2: (0.1, 0.0, 1), 3: (0.01, 0.0, 1)}}, ["nc1"]) == " (log)"
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert labels and not any("$" in t or "mathdefault" in t for t in labels), labels


def test_an_axis_a_filter_holds_at_one_value_is_not_called_pooled() -> None:
    from service.plots_dynamics import figure_note

    note = figure_note(["loss.name"], False, 4, ["loss.name", "model.width", "seed"], [("model.width", "64")], True)
    assert "(seeds pooled); only model.width=64" in note, note  # was "(model.width, seeds pooled)"
    two = figure_note(["loss.name"], False, 4, ["loss.name", "model.width", "seed"],
                      [("model.width", "64"), ("model.width", "32")], True)
    assert "(model.width, seeds pooled)" in two, two  # two widths kept: still pooled
