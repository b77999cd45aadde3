"""Plots of large sweeps stay legible and bounded: grouped dynamics, distinct colours, capped heatmaps, a cache."""
from __future__ import annotations

import io
import itertools
import threading

import matplotlib.axes
import matplotlib.colors
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import insert, select

from nc_core.db.events_repo import append_event
from nc_core.db.models import Metric, Run, Sweep
from nc_core.db.session import session_scope
from test_cli import live, ncsweep  # noqa: F401 - the fixture
from test_plots import PNG_SIGNATURE, _get_png, seed_sweep, sqlite_app_client  # noqa: F401 - the fixture

DYN = "/sweeps/{sid}/plots/dynamics.png"
HEAT = "/sweeps/{sid}/plots/heatmap.png"


def seed_grid(url: str, grid: dict[str, list], seeds=(0,), epochs: int = 2, keys=("acc", "nc1"),  # noqa: ANN001
              measured=lambda idx: True, value=lambda idx, epoch, key: 50.0 + idx % 7 + epoch) -> int:  # noqa: ANN001
    """A sweep over ``grid`` × ``seeds`` (runs in itertools.product order); a run ``measured`` keeps is succeeded
    with ``keys`` on train and test every epoch, the others are queued without metrics. Returns the sweep id."""
    with session_scope(url) as s:
        sweep = Sweep(name="big", spec={"name": "big", "grid": grid, "seeds": list(seeds)}, axes=list(grid))
        s.add(sweep)
        s.flush()
        rows = []
        for idx, (*combo, seed) in enumerate(itertools.product(*grid.values(), seeds)):
            point, on = dict(zip(grid, combo)), measured(idx)
            run = Run(sweep_id=sweep.id, kind="train", spec={"seed": seed}, spec_hash=f"h{idx}", grid=point,
                      seed=seed, status="succeeded" if on else "queued", epoch=epochs if on else 0,
                      epochs_total=epochs)
            s.add(run)
            s.flush()
            keys_of = keys(idx) if callable(keys) else keys
            rows += [dict(run_id=run.id, epoch=e, split=sp, key=k, value=value(idx, e, k)) for e, sp, k in
                     itertools.product(range(1, epochs + 1), ("train", "test"), keys_of) if on]
        if rows:
            s.execute(insert(Metric), rows)
        return sweep.id


@pytest.fixture
def figures(monkeypatch) -> list:  # noqa: ANN001
    """Every figure saved to PNG from here on (dynamics, heatmaps, run curves)."""
    import service.plots as plots
    import service.plots_dynamics as dynamics

    drawn: list = []
    for module in (plots, dynamics):
        monkeypatch.setattr(module, "_png", lambda fig, png=module._png: drawn.append(fig) or png(fig))
    return drawn


def curves_of(ax) -> list:  # noqa: ANN001
    """The configuration lines of a panel (not the ▽ markers, which have no label)."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_drawn_lines_get_distinct_colours_and_every_panel_feeds_the_legend(sqlite_app_client, figures) -> None:
    # 150 configurations, 2 measured at sorted positions 0 and 20 (tab20 % 20: the same blue); the second has no
    # acc, so the first panel alone would leave it out of the legend
    sid = seed_grid(sqlite_app_client.db_url, {"loss.name": ["ce", "mse", "focal"], "model.width": list(range(1, 51))},
                    measured=lambda idx: idx in (0, 20), keys=lambda idx: ("acc", "nc1") if idx == 0 else ("nc1",))
    _get_png(sqlite_app_client, DYN.format(sid=sid) + "?keys=acc,nc1&split=test")
    fig = figures[-1]
    acc, nc1 = fig.axes[:2]
    assert [line.get_label() for line in curves_of(acc)] == ["loss=ce, width=1"]
    lines = curves_of(nc1)
    assert [line.get_label() for line in lines] == ["loss=ce, width=1", "loss=ce, width=21"]
    assert matplotlib.colors.to_hex(lines[0].get_color()) != matplotlib.colors.to_hex(lines[1].get_color())
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["loss=ce, width=1", "loss=ce, width=21"]


GRID36 = {"loss.name": ["ce", "mse", "focal"], "model.width": [8 * i for i in range(1, 13)]}  # 36 configurations


def test_many_configurations_draw_a_line_per_group_and_drop_the_bands(sqlite_app_client, figures,  # noqa: ANN001
                                                                       monkeypatch) -> None:
    client = sqlite_app_client
    sid = seed_grid(client.db_url, GRID36, seeds=(0, 1), value=lambda idx, epoch, key: float(idx + epoch))
    bands: list = []
    fill = matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", lambda ax, *a, **k: bands.append(a) or fill(ax, *a, **k))
    url = DYN.format(sid=sid) + "?keys=acc&split=test"
    _get_png(client, url)  # default: 36 configurations → a line per loss (the first axis)
    lines = curves_of(figures[-1].axes[0])
    assert [line.get_label() for line in lines] == ["loss=ce", "loss=focal", "loss=mse"]
    ce = [idx + 2 for idx in range(24)]  # ce: the first 12 widths × 2 seeds, value idx + epoch at epoch 2
    assert lines[0].get_ydata()[-1] == pytest.approx(np.mean(ce))
    assert len(bands) == 3 and "loss.name" in figures[-1]._suptitle.get_text()
    bands.clear()
    _get_png(client, url + "&group_by=model.width")  # 12 lines: no bands, each line its own look
    lines = curves_of(figures[-1].axes[0])
    assert len(lines) == 12 and not bands
    looks = {(matplotlib.colors.to_hex(line.get_color()), line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(looks) == 12
    _get_png(client, url + "&filter=loss.name=ce")  # 12 configurations: a line each again
    assert len(curves_of(figures[-1].axes[0])) == 12
    _get_png(client, url + "&filter=model.width=8,model.width=16")  # an axis twice: either value; 6 lines, bands
    assert len(curves_of(figures[-1].axes[0])) == 6 and len(bands) == 6
    for query, field, said in (("&group_by=model.width,loss.name", "group_by", "36 lines"),
                               ("&group_by=optim.lr", "group_by", "not an axis"),
                               ("&filter=optim.lr=0.1", "filter", "not an axis"),
                               ("&filter=model.width=7", "filter", "no run"),
                               ("&filter=width", "filter", "AXIS=VALUE")):
        r = client.get(url + query)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == field and said in r.text, (query, r.text)


def test_a_sweep_plot_is_cached_until_the_sweep_changes(sqlite_app_client, monkeypatch) -> None:  # noqa: ANN001
    import service.plots as plots
    import service.plots_dynamics as dynamics

    client = sqlite_app_client
    sid, runs = seed_sweep(client.db_url)
    calls = {"dynamics": 0, "heatmap": 0}

    def counting(name, fn):  # noqa: ANN001, ANN202
        return lambda *a, **k: calls.__setitem__(name, calls[name] + 1) or fn(*a, **k)

    monkeypatch.setattr(dynamics, "curve_points", counting("dynamics", dynamics.curve_points))
    monkeypatch.setattr(plots, "final_values", counting("heatmap", plots.final_values))
    url = DYN.format(sid=sid)
    first, again = client.get(url + "?t=1").content, client.get(url + "?t=2").content  # the dashboard's t=
    assert first == again and first[:8] == PNG_SIGNATURE and calls["dynamics"] == 1
    client.get(url + "?keys=acc")
    assert calls["dynamics"] == 2  # other parameters: another figure
    with session_scope(client.db_url) as s:  # a new metric point, as a worker writes it: with its event
        s.add(Metric(run_id=runs[0], epoch=5, split="train", key="nc1", value=9.0))
        append_event(s, "metric", sid, runs[0], {"epoch": 5, "split": "train", "n": 1})
    changed = client.get(url).content
    assert calls["dynamics"] == 3 and changed != first
    with session_scope(client.db_url) as s:  # a status change alone
        s.get(Run, runs[1]).status = "failed"
    client.get(url)
    assert calls["dynamics"] == 4
    heat = HEAT.format(sid=sid) + "?x=model.width&y=loss.name"
    assert client.get(heat).content == client.get(heat).content and calls["heatmap"] == 1


def test_the_plot_cache_is_bounded_and_renders_a_key_once() -> None:
    from service.routers.plots import PlotCache

    cache, calls = PlotCache(size=2), []
    for key in ("a", "b", "a", "c", "a", "b"):  # b is the least recently used when c comes: b drawn again
        cache.get((key,), lambda key=key: calls.append(key) or key.encode())
    assert calls == ["a", "b", "c", "b"]
    started, release, got = threading.Event(), threading.Event(), []

    def slow() -> bytes:
        calls.append("slow")
        started.set()
        release.wait(10)
        return b"png"

    threads = [threading.Thread(target=lambda: got.append(cache.get(("slow",), slow))) for _ in range(4)]
    threads[0].start()
    started.wait(10)
    for t in threads[1:]:
        t.start()
    release.set()
    for t in threads:
        t.join(10)
    assert got == [b"png"] * 4 and calls.count("slow") == 1


def _seed_seeds(url: str, n: int) -> int:
    return seed_grid(url, {"loss.name": ["ce", "mse"], "model.width": [32, 64]}, seeds=tuple(range(n)), epochs=1,
                     keys=("acc",))


def test_a_heatmap_axis_with_too_many_values_is_refused_naming_it(sqlite_app_client) -> None:
    client = sqlite_app_client
    sid = _seed_seeds(client.db_url, 250)
    for query, field in (("?x=seed&y=loss.name", "x"), ("?x=loss.name&y=seed", "y")):
        r = client.get(HEAT.format(sid=sid) + query)
        assert r.status_code == 422, r.text
        (item,) = r.json()["detail"]
        assert item["field"] == field and "'seed' has 250 values" in item["msg"] and "model.width" in item["msg"]


def test_a_wide_heatmap_stays_within_a_viewable_size_without_cell_text(sqlite_app_client, monkeypatch) -> None:
    client = sqlite_app_client
    sid = _seed_seeds(client.db_url, 150)
    texts: list[str] = []
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda ax, x, y, s, *a, **k: texts.append(s))
    for query in ("?x=seed&y=loss.name", "?x=loss.name&y=seed", "?x=seed&y=model.width&mode=diff_vs&ref=loss.name:ce"):
        r = client.get(HEAT.format(sid=sid) + query)
        assert r.status_code == 200, r.text
        width, height = Image.open(io.BytesIO(r.content)).size
        assert width <= 4000 and height <= 4000, (query, width, height)  # was 1.1 in (88 px) a column
    assert texts == []  # 150 columns or rows: the colours and the colour bar say the values
    narrow = _seed_seeds(client.db_url, 3)
    _get_png(client, HEAT.format(sid=narrow) + "?x=seed&y=loss.name")
    assert len(texts) == 6  # few cells: each still says its value


def test_a_heatmap_puts_the_first_value_at_the_top_as_the_dashboard(sqlite_app_client, figures) -> None:
    sid, _ = seed_sweep(sqlite_app_client.db_url)
    _get_png(sqlite_app_client, HEAT.format(sid=sid) + "?x=model.width&y=loss.name")
    ax = figures[-1].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ce", "mse"]
    top_row, next_row = (ax.transData.transform((0, i))[1] for i in (0, 1))
    assert top_row > next_row  # display y grows upwards: row 0 (ce) above row 1


def test_one_epoch_is_shown_on_its_own_tick(sqlite_app_client, figures) -> None:
    sid, runs = seed_sweep(sqlite_app_client.db_url, epochs=1)
    _get_png(sqlite_app_client, DYN.format(sid=sid))
    _get_png(sqlite_app_client, f"/runs/{runs[0]}/plots/curves.png")
    axes = [ax for fig in figures for ax in fig.axes if ax.axison]
    assert len(axes) >= 7
    for ax in axes:
        assert list(ax.get_xticks()) == [1] and tuple(ax.get_xlim()) == (0, 2), (ax.get_title(), ax.get_xlim())


def test_a_single_value_keeps_the_colour_scale_in_range(sqlite_app_client, figures) -> None:
    sid = seed_grid(sqlite_app_client.db_url, {"loss.name": ["ce"], "model.width": [32]},
                    value=lambda idx, epoch, key: 100.0 if key == "acc" else 0.5)
    for key, want in (("acc", (0, 100)), ("nc1", (0, 0.5))):
        _get_png(sqlite_app_client, HEAT.format(sid=sid) + f"?x=model.width&y=loss.name&key={key}")
        image_ax, bar_ax = figures[-1].axes[:2]
        assert image_ax.images[0].norm.vmin == want[0] and image_ax.images[0].norm.vmax == want[1], key
        assert min(bar_ax.get_ylim()) >= want[0] and max(bar_ax.get_ylim()) <= want[1], (key, bar_ax.get_ylim())


def test_the_dynamics_parameters_are_documented_and_bounded(sqlite_app_client) -> None:
    doc = sqlite_app_client.get("/openapi.json").json()
    params = {p["name"]: p for p in doc["paths"]["/sweeps/{sweep_id}/plots/dynamics.png"]["get"]["parameters"]}
    for name in ("group_by", "filter"):
        schema = params[name]["schema"]["anyOf"][0]
        assert params[name]["description"] and schema["maxLength"] == 2000 and schema["minLength"] == 1, params[name]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_plot_cli_groups_and_filters(live: str, db_url: str, capsys, tmp_path) -> None:  # noqa: ANN001, F811
    sid = seed_grid(db_url, GRID36)
    out = tmp_path / "dyn.png"
    rc, _, err = ncsweep(capsys, "plot", sid, "--group-by", "model.width", "--filter", "loss.name=ce", "--filter",
                         "loss.name=mse", "--out", out)
    assert rc == 0 and out.read_bytes()[:8] == PNG_SIGNATURE, err
    rc, _, err = ncsweep(capsys, "plot", sid, "--group-by", "optim.lr", "--out", tmp_path / "x.png")
    assert rc == 1 and "group_by" in err and "not an axis" in " ".join(err.split()), err
    rc, _, err = ncsweep(capsys, "plot", sid, "--kind", "heatmap", "--x", "seed", "--y", "loss.name",
                         "--group-by", "loss.name", "--out", tmp_path / "h.png")
    assert rc == 2 and "apply to --kind dynamics" in " ".join(err.split()), err


def test_a_request_waiting_on_the_plot_cache_holds_no_database_connection(sqlite_app_client,  # noqa: ANN001
                                                                          monkeypatch) -> None:
    # a request waiting for another's render of the same figure kept its pooled connection (its existence and
    # version checks' session stayed open): a few dozen dashboard tabs on one running sweep exhausted the pool
    import service.plots as plots
    from nc_core.db.session import make_engine
    from service.routers.plots import PlotCache

    client = sqlite_app_client
    sid, _ = seed_sweep(client.db_url)
    pool = make_engine(client.db_url).pool
    started, release, waiting = threading.Event(), threading.Event(), threading.Event()
    draw, renders, got = plots.dynamics_png, [], []

    def held(session, *args):  # noqa: ANN001, ANN202 - the first render, held with its connection checked out
        session.execute(select(1))
        renders.append(args)
        started.set()
        release.wait(10)
        return draw(session, *args)

    get = PlotCache.get

    def entering(cache, key, render, *args):  # noqa: ANN001, ANN202 - the second request, at the cache
        if started.is_set():
            waiting.set()
        return get(cache, key, render, *args)

    monkeypatch.setattr(plots, "dynamics_png", held)
    monkeypatch.setattr(PlotCache, "get", entering)
    url = DYN.format(sid=sid)
    first, second = (threading.Thread(target=lambda t=t: got.append(client.get(f"{url}?t={t}"))) for t in (1, 2))
    first.start()
    try:
        assert started.wait(10)
        rendering = pool.checkedout()
        second.start()
        assert waiting.wait(10)
        assert rendering >= 1 and pool.checkedout() == rendering  # the waiting request holds none
    finally:
        release.set()
        for thread in (first, second):
            if thread.ident is not None:  # started
                thread.join(10)
    assert [r.status_code for r in got] == [200, 200] and got[0].content == got[1].content and len(renders) == 1
    assert pool.checkedout() == 0


def test_a_running_sweep_plot_is_drawn_again_after_a_few_seconds(sqlite_app_client, monkeypatch) -> None:  # noqa: ANN001
    # the version's newest event id is no commit order on PostgreSQL: metrics committed late under a lower id do
    # not change it, and the figure drawn without them stayed cached until the next event
    import service.plots_dynamics as dynamics
    from service.routers.plots import UNFINISHED_SECONDS, PlotCache

    client = sqlite_app_client
    now = [0.0]
    client.app.state.plot_cache = PlotCache(clock=lambda: now[0])
    running, runs = seed_sweep(client.db_url, statuses={7: "running"})
    finished, _ = seed_sweep(client.db_url, name="done")
    calls: list = []
    monkeypatch.setattr(dynamics, "curve_points", lambda *a, curve_points=dynamics.curve_points:
                        calls.append(a) or curve_points(*a))
    url = DYN.format(sid=running)
    first = client.get(url).content
    with session_scope(client.db_url) as s:  # committed late: the version is the same
        s.add(Metric(run_id=runs[0], epoch=5, split="train", key="nc1", value=9.0))
    now[0] = UNFINISHED_SECONDS / 2
    assert client.get(url).content == first and len(calls) == 1  # within its lifetime: the cached figure
    now[0] = UNFINISHED_SECONDS + 1
    assert client.get(url).content != first and len(calls) == 2  # drawn again, with the late metric
    client.get(url)
    assert len(calls) == 2  # and cached again
    done = DYN.format(sid=finished)
    assert client.get(done).content == client.get(done).content and len(calls) == 3
    now[0] = 1e6
    client.get(done)
    assert len(calls) == 3  # a finished sweep's figure stays until its version changes
