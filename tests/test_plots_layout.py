"""The dynamics figure's title, legend and footer lie inside the image, whatever its number of panels and
however long its configuration labels (a one-panel figure used to cut them off at its left and right edges)."""
from __future__ import annotations

import itertools

import pytest

from nc_core.db.models import Metric, Run, Sweep
from nc_core.db.session import session_scope
from nc_core.spec import RunSpec
from nc_core.sweep import spec_hash
from test_plots import _get_png, seed_sweep, sqlite_app_client  # noqa: F401 - the fixture

AXES4 = {"loss.name": ["ce", "mse"], "model.width": [512, 1024], "optim.lr": [0.05, 0.001],
         "optim.weight_decay": [0.0005, 0.00001]}


def seed_four_axes(url: str) -> int:
    """A sweep over 4 axes (16 configurations with long legend labels), 2 epochs; the first configuration's only
    run is cancelled after epoch 1 and a second seed of it finished (so the ▽ footer is drawn)."""
    with session_scope(url) as s:
        sweep = Sweep(name="four", spec={"name": "four", "grid": AXES4}, axes=list(AXES4))
        s.add(sweep)
        s.flush()
        for idx, combo in enumerate(itertools.product(*AXES4.values())):
            grid = dict(zip(AXES4, combo))
            for seed in ((0, 1) if idx == 0 else (0,)):
                spec = RunSpec.model_validate({"seed": seed, "epochs": 2, "loss": {"name": grid["loss.name"]},
                                               "model": {"width": grid["model.width"]},
                                               "optim": {"lr": grid["optim.lr"],
                                                         "weight_decay": grid["optim.weight_decay"]}})
                stop = 1 if (idx, seed) == (0, 0) else 2
                run = Run(sweep_id=sweep.id, kind="train", spec=spec.model_dump(mode="json"),
                          spec_hash=spec_hash(spec), grid=grid, seed=seed, epoch=stop, epochs_total=2,
                          status="cancelled" if stop == 1 else "succeeded")
                s.add(run)
                s.flush()
                for epoch, split, key in itertools.product(range(1, stop + 1), ("train", "test"),
                                                           ("nc1", "nc2_w", "nc3", "wh_b", "acc")):
                    s.add(Metric(run_id=run.id, epoch=epoch, split=split, key=key, value=(1 + idx) / epoch))
        return sweep.id


@pytest.fixture
def figures(monkeypatch) -> list:  # noqa: ANN001
    """The dynamics figures drawn from here on (as they are saved to PNG)."""
    import service.plots_dynamics as dynamics

    drawn: list = []
    png = dynamics._png
    monkeypatch.setattr(dynamics, "_png", lambda fig: drawn.append(fig) or png(fig))
    return drawn


def assert_text_inside(fig, dpi: float) -> None:  # noqa: ANN001
    """The suptitle, the figure legend and every figure-level text (footer) lie inside the figure's bbox, drawn at
    ``dpi`` (Agg's text widths do not scale exactly with it)."""
    fig.set_dpi(dpi)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    assert fig._suptitle is not None and fig.legends, "the figure has a title and a legend"
    below = [*fig.legends, *(t for t in fig.texts if t is not fig._suptitle)]  # the legend and the footer lines
    artists = [("suptitle", fig._suptitle), *(("legend" if a in fig.legends else "text", a) for a in below)]
    for name, artist in artists:
        extent = artist.get_window_extent(renderer)
        assert (extent.x0 >= box.x0 and extent.x1 <= box.x1 and extent.y0 >= box.y0 and extent.y1 <= box.y1), \
            (name, str(artist.get_text() if hasattr(artist, "get_text") else ""), extent, box)
    for ax in fig.axes:  # nothing below the axes overlaps them
        if ax.get_visible() and ax.axison:
            low = ax.get_tightbbox(renderer).y0
            assert all(a.get_window_extent(renderer).y1 <= low + 1 for a in below), ax


@pytest.mark.parametrize("query", ["?keys=acc&split=test", "?keys=acc,nc1&split=test", "", "?keys=nc1"])
def test_dynamics_text_stays_inside_the_image(sqlite_app_client, figures, query: str) -> None:  # noqa: ANN001
    sid, _ = seed_sweep(sqlite_app_client.db_url, statuses={0: "cancelled"})  # short labels
    long_sid = seed_four_axes(sqlite_app_client.db_url)  # 4 axes in each label, a footer
    for s in (sid, long_sid):
        _get_png(sqlite_app_client, f"/sweeps/{s}/plots/dynamics.png{query}")
    assert len(figures) == 2
    for fig, dpi in itertools.product(figures, (80, 100, 150)):  # 80: service.plots._png's
        assert_text_inside(fig, dpi)
    long_fig = figures[1]
    footer = "\n".join(t.get_text() for t in long_fig.texts)
    assert "fewer runs" in footer and "lr=0.05" in footer  # the footer names the configuration (wrapped or not)
    assert len(long_fig.legends[0].get_texts()) == 16
