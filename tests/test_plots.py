"""Plot endpoints return valid PNGs whose pixels depend on the stored metrics (plus seeding helpers)."""
from __future__ import annotations

import io
import itertools
from datetime import timedelta

import matplotlib.axes
import matplotlib.image as mpimg
import numpy as np
import pytest

from nc_core.db.models import Metric, Run, Sweep, utcnow
from nc_core.db.session import session_scope
from nc_core.spec import RunSpec
from nc_core.sweep import spec_hash

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEYS = ("nc1", "nc2_w", "nc3", "wh_b", "acc", "loss", "cos_margin_mean", "cos_margin_min", "cos_margin_median")


def seed_sweep(url: str, *, scale: float = 1.0, losses=("ce", "mse"), widths=(32, 64), seeds=(0, 1), epochs: int = 4,
               statuses: dict[int, str] | None = None, name: str = "demo") -> tuple[int, list[int]]:
    """Insert a sweep over loss.name × model.width × seeds with synthetic metric curves; returns (sweep id, run ids).

    Values depend on `scale` so that two calls with different scales give different plots.
    `statuses` maps a run's index (insertion order) to its status (default: succeeded).
    """
    statuses = statuses or {}
    with session_scope(url) as s:
        sweep = Sweep(name=name, spec={"name": name, "grid": {"loss.name": list(losses), "model.width": list(widths)},
                                       "seeds": list(seeds)}, axes=["loss.name", "model.width"])
        s.add(sweep)
        s.flush()
        run_ids = []
        now = utcnow()
        for idx, (loss, width, seed) in enumerate(itertools.product(losses, widths, seeds)):
            spec = RunSpec.model_validate({"seed": seed, "epochs": epochs, "loss": {"name": loss},
                                           "model": {"width": width}})
            status = statuses.get(idx, "succeeded")
            run = Run(sweep_id=sweep.id, kind="train", spec=spec.model_dump(mode="json"), spec_hash=spec_hash(spec),
                      grid={"loss.name": loss, "model.width": width}, seed=seed, status=status,
                      epoch={"succeeded": epochs, "queued": 0}.get(status, 1), epochs_total=epochs, steps_total=10,
                      step=0 if status == "queued" else 5, samples_per_s=None if status == "queued" else 1000.0 + idx,
                      started_at=None if status == "queued" else now - timedelta(seconds=60 + idx),
                      finished_at=now if status in ("succeeded", "failed", "cancelled") else None,
                      error="RuntimeError: diverged at epoch 1" if status == "failed" else None)
            s.add(run)
            s.flush()
            run_ids.append(run.id)
            if status == "queued":
                continue
            k = 1 + losses.index(loss) + 0.5 * widths.index(width) + 0.1 * seed
            for epoch, split, key in itertools.product(range(1, epochs + 1), ("train", "test"), KEYS):
                base = {"acc": 50 + 10 * epoch / k, "loss": 1 / epoch}.get(key, k / epoch)
                value = None if (key == "nc1" and epoch == 1 and idx == 0) else scale * base  # one NULL (NaN) value
                s.add(Metric(run_id=run.id, epoch=epoch, split=split, key=key, value=value))
    return sweep.id, run_ids


def decode(png: bytes) -> np.ndarray:
    assert png[:8] == PNG_SIGNATURE, png[:40]
    return mpimg.imread(io.BytesIO(png), format="png")


@pytest.fixture
def sqlite_app_client(tmp_path, sqlite_template):  # noqa: ANN001, ANN201
    """A TestClient on a fresh SQLite database (plots do not depend on the database engine)."""
    import shutil

    from starlette.testclient import TestClient

    from nc_core.settings import Settings
    from service.app import create_app

    path = tmp_path / "ncsweep.db"
    shutil.copy(sqlite_template, path)
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{path}", broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings, enqueuer=lambda jobs: None, broker_check=lambda: None)) as client:
        client.db_url = settings.database_url
        yield client


def _get_png(client, url: str) -> np.ndarray:  # noqa: ANN001
    r = client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return decode(r.content)


PLOT_URLS = [
    "/sweeps/{sid}/plots/dynamics.png",
    "/sweeps/{sid}/plots/dynamics.png?keys=nc1,acc&split=test",
    "/sweeps/{sid}/plots/heatmap.png?x=model.width&y=loss.name&key=acc&split=test",
    "/sweeps/{sid}/plots/heatmap.png?x=model.width&y=seed&key=acc&split=test&mode=diff_vs&ref=loss.name:ce",
    "/sweeps/{sid}/plots/heatmap.png?x=model.width&y=loss.name&key=acc&mode=variance",
    "/runs/{rid}/plots/margins.png",
    "/runs/{rid}/plots/curves.png",
]


@pytest.mark.parametrize("template", PLOT_URLS)
def test_plot_is_png_and_depends_on_data(sqlite_app_client, template: str) -> None:
    sid1, runs1 = seed_sweep(sqlite_app_client.db_url, scale=1.0)
    sid2, runs2 = seed_sweep(sqlite_app_client.db_url, scale=3.0, name="other")
    img1 = _get_png(sqlite_app_client, template.format(sid=sid1, rid=runs1[1]))
    img2 = _get_png(sqlite_app_client, template.format(sid=sid2, rid=runs2[1]))
    assert img1.ndim == 3 and img1.shape[0] > 100 and img1.shape[1] > 100
    assert img1.shape != img2.shape or not np.array_equal(img1, img2), "different data must give different pixels"


def test_heatmap_values_are_final_epoch_means(sqlite_app_client) -> None:
    from nc_core.db.session import session_scope
    from service.plots import heatmap_grids

    sid, _ = seed_sweep(sqlite_app_client.db_url, epochs=3)
    with session_scope(sqlite_app_client.db_url) as s:
        xs, ys, panels = heatmap_grids(s, sid, "model.width", "seed", "acc", "test", "diff_vs", "loss.name:ce")
        assert xs == [32, 64] and ys == [0, 1] and len(panels) == 1
        # acc = 50 + 30/k at the final epoch 3, k = 1 + loss_idx + 0.5 width_idx + 0.1 seed
        acc = lambda li, wi, sd: 50 + 30 / (1 + li + 0.5 * wi + 0.1 * sd)  # noqa: E731
        m = panels[0][1]
        for sd, wi in itertools.product((0, 1), (0, 1)):
            assert m[sd, wi] == pytest.approx(abs(acc(0, wi, sd) - acc(1, wi, sd)))
        with pytest.raises(ValueError, match="ref"):
            heatmap_grids(s, sid, "model.width", "loss.name", "acc", "test", "diff_vs", "loss.name:ce")
        _, _, var = heatmap_grids(s, sid, "model.width", "loss.name", "acc", "test", "variance")
        assert var[0][1][0, 0] == pytest.approx(np.var([50 + 30 / (1 + 0.1 * sd) for sd in (0, 1)], ddof=1))


def test_spread_over_seeds_is_the_sample_std_of_results(sqlite_app_client, monkeypatch) -> None:  # noqa: ANN001
    # /results' std is ddof 1 over the finite values, null below 2: the variance heatmap is its square and the
    # dynamics band its ± (no band, not 0, where fewer than 2 seeds have a finite value)
    from service.plots import heatmap_grids

    client = sqlite_app_client
    sid, runs = seed_sweep(client.db_url, losses=("ce",), seeds=(0, 1, 2), epochs=2,
                           statuses={4: "queued", 5: "queued"})
    with session_scope(client.db_url) as s:  # width 32: seed 2's final test acc is NaN (NULL); width 64: one run
        s.query(Metric).filter_by(run_id=runs[2], epoch=2, split="test", key="acc").update({"value": None})
    groups = client.get(f"/sweeps/{sid}/results", params={"keys": "acc", "split": "test"}).json()["groups"]
    std32, std64 = (g["metrics"]["acc"]["std"] for g in groups)
    assert std32 > 0 and std64 is None
    with session_scope(client.db_url) as s:
        _, _, [(title, var)] = heatmap_grids(s, sid, "model.width", "loss.name", "acc", "test", "variance")
    assert "ddof 1" in title and var[0, 0] == pytest.approx(std32 ** 2) and np.isnan(var[0, 1])
    _get_png(client, f"/sweeps/{sid}/plots/heatmap.png?x=model.width&y=loss.name&key=acc&mode=variance")
    bands: list[tuple] = []
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", lambda ax, x, lo, hi, **k: bands.append((x, lo, hi)))
    _get_png(client, f"/sweeps/{sid}/plots/dynamics.png?keys=acc&split=test")
    (epochs32, lo32, hi32), (epochs64, lo64, hi64) = bands  # configurations in axis order: width 32, 64
    assert list(epochs32) == [1, 2] and (hi32[1] - lo32[1]) / 2 == pytest.approx(std32)
    first = [50 + 10 / (1 + 0.1 * sd) for sd in (0, 1, 2)]  # acc at epoch 1 of the three width-32 seeds
    assert (hi32[0] - lo32[0]) / 2 == pytest.approx(np.std(first, ddof=1))
    assert np.isnan(lo64).all() and np.isnan(hi64).all()  # one seed: no band


def test_plot_errors_are_readable(sqlite_app_client) -> None:
    sid, _ = seed_sweep(sqlite_app_client.db_url)
    r = sqlite_app_client.get(f"/sweeps/{sid}/plots/heatmap.png?x=model.width&y=loss.name&mode=diff_vs&ref=nocolon")
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "ref"
    r = sqlite_app_client.get(f"/sweeps/{sid}/plots/heatmap.png?x=model.width&y=no.such&key=acc")
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "y"
    r = sqlite_app_client.get(f"/sweeps/{sid}/plots/heatmap.png?x=optim.lr&y=seed")  # a field no axis varies
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "x", r.text
    assert "has one value (0.05) in every run" in r.text and "loss.name, model.width, seed" in r.text
    for url, field in ((f"/sweeps/{sid}/plots/heatmap.png?x=model.width&y=loss.name&key=accuracy", "key"),
                       (f"/sweeps/{sid}/plots/heatmap.png?x=model.width&y=loss.name&split=val", "split"),
                       (f"/sweeps/{sid}/plots/dynamics.png?keys=nc1,nc9", "keys"),
                       (f"/sweeps/{sid}/plots/dynamics.png?split=val", "split")):
        r = sqlite_app_client.get(url)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == field, (url, r.text)
    assert sqlite_app_client.get("/sweeps/9999/plots/dynamics.png").status_code == 404
    assert sqlite_app_client.get("/runs/9999/plots/margins.png").status_code == 404


def test_legend_labels_use_the_short_axis_names() -> None:
    from service.plots import _config_label

    assert _config_label({"model.width": 32, "loss.name": "ce"}) == "loss=ce, width=32"
    assert _config_label({}) == "base"


def test_empty_sweep_gives_a_message_png(sqlite_app_client) -> None:
    sid, runs = seed_sweep(sqlite_app_client.db_url, statuses={i: "queued" for i in range(8)})
    decode(sqlite_app_client.get(f"/sweeps/{sid}/plots/dynamics.png").content)
    decode(sqlite_app_client.get(f"/runs/{runs[0]}/plots/margins.png").content)


def test_service_plots_never_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, service.plots, service.routers.plots, service.cli, service.dashboard; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def _add_distribution(url: str, run_id: int, values_by_epoch: dict[int, list[float]], split: str = "train") -> None:
    from nc_core.db.models import MetricDistribution

    with session_scope(url) as s:
        for epoch, values in values_by_epoch.items():
            s.add(MetricDistribution(run_id=run_id, epoch=epoch, split=split, key="cos_margin", values=values,
                                     n=len(values)))


def test_margins_plot_draws_the_stored_distribution_and_the_endpoint_serves_it(sqlite_app_client) -> None:
    url = sqlite_app_client.db_url
    _, (rid1, rid2, rid3) = seed_sweep(url, losses=("ce",), widths=(32,), seeds=(0, 1, 2), name="dist")
    curve = np.sort(np.linspace(-0.3, 1.1, 1001) ** 3).tolist()
    _add_distribution(url, rid1, {1: [0.0, 0.5], 4: curve})
    _add_distribution(url, rid1, {4: curve[::2]}, split="test")
    _add_distribution(url, rid2, {4: (np.array(curve) * 0.5).tolist()})
    stats_only = _get_png(sqlite_app_client, f"/runs/{rid3}/plots/margins.png")  # no distribution: statistics
    img1 = _get_png(sqlite_app_client, f"/runs/{rid1}/plots/margins.png")
    img2 = _get_png(sqlite_app_client, f"/runs/{rid2}/plots/margins.png")
    assert img1.shape != img2.shape or not np.array_equal(img1, img2), "another distribution must give other pixels"
    assert img1.shape != stats_only.shape or not np.array_equal(img1, stats_only)

    r = sqlite_app_client.get(f"/runs/{rid1}/distributions")
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [(d["split"], d["epoch"], d["key"], d["n"]) for d in items] == [("test", 4, "cos_margin", 501),
                                                                           ("train", 4, "cos_margin", 1001)]
    assert items[1]["values"] == curve
    one = sqlite_app_client.get(f"/runs/{rid1}/distributions", params={"split": "train", "epoch": 1}).json()["items"]
    assert one == [{"epoch": 1, "split": "train", "key": "cos_margin", "n": 2, "values": [0.0, 0.5]}]
    assert sqlite_app_client.get(f"/runs/{rid3}/distributions").json()["items"] == []
    assert sqlite_app_client.get("/runs/9999/distributions").status_code == 404


def test_margins_ideal_line_uses_the_number_of_classes() -> None:
    from service.plots_margins import num_classes

    def spec(tree: dict) -> Run:
        return Run(spec=RunSpec.model_validate(tree).model_dump(mode="json"))

    assert num_classes(spec({"data": {"name": "cifar100"}})) == 100
    assert num_classes(spec({"data": {"name": "gaussian", "gaussian_classes": 7}})) == 7
    assert num_classes(spec({"kind": "ufm", "ufm": {"class_counts": [5, 5, 5]}})) == 3
    assert num_classes(Run(spec={})) is None and num_classes(Run(spec={"data": {"name": "nope"}})) is None


def seed_ufm_sweep(db_url: str) -> tuple[int, list[int]]:
    """A finished sweep of two UFM runs (ufm.lambda_w 1e-3, 1e-2) with nc1 = lambda_w on train at iteration 100."""
    with session_scope(db_url) as s:
        sweep = Sweep(name="ufm", spec={"name": "ufm", "grid": {"ufm.lambda_w": [1e-3, 1e-2]}}, axes=["ufm.lambda_w"])
        s.add(sweep)
        s.flush()
        run_ids = []
        for lw in (1e-3, 1e-2):
            spec = RunSpec.model_validate({"kind": "ufm", "ufm": {"class_counts": [5, 5], "lambda_w": lw,
                                                                  "iterations": 100, "eval_every": 50}})
            run = Run(sweep_id=sweep.id, kind="ufm", spec=spec.model_dump(mode="json"), spec_hash=spec_hash(spec),
                      grid={"ufm.lambda_w": lw}, seed=0, status="succeeded", epoch=100, epochs_total=100)
            s.add(run)
            s.flush()
            s.add(Metric(run_id=run.id, epoch=100, split="train", key="nc1", value=lw))
            run_ids.append(run.id)
        return sweep.id, run_ids


def test_a_ufm_sweep_defaults_to_its_train_split(sqlite_app_client) -> None:
    # a UFM run has only its free features ("train"): results and heatmaps default to them, not to an empty "test"
    client = sqlite_app_client
    sid, _ = seed_ufm_sweep(client.db_url)
    body = client.get(f"/sweeps/{sid}/results", params={"keys": "nc1"}).json()
    assert body["split"] == "train" and [g["metrics"]["nc1"]["mean"] for g in body["groups"]] == [1e-3, 1e-2]
    assert client.get(f"/sweeps/{sid}/results", params={"keys": "nc1", "split": "test"}).json()["split"] == "test"
    url = f"/sweeps/{sid}/plots/heatmap.png?x=ufm.lambda_w&y=seed&key=nc1"
    assert np.array_equal(_get_png(client, url), _get_png(client, url + "&split=train"))
    assert not np.array_equal(_get_png(client, url), _get_png(client, url + "&split=test"))


def test_a_ufm_sweep_counts_iterations_in_results_and_plots(sqlite_app_client, monkeypatch) -> None:  # noqa: ANN001
    client = sqlite_app_client
    sid, runs = seed_ufm_sweep(client.db_url)
    body = client.get(f"/sweeps/{sid}/results", params={"keys": "nc1"}).json()
    assert body["unit"] == "iteration"
    r = client.get(f"/sweeps/{sid}/results", params={"keys": "nc1", "epoch": 101})
    assert r.status_code == 422 and "past the last iteration" in r.text and "an iteration in 1..100" in r.text
    train_sid, train_runs = seed_sweep(client.db_url)
    assert client.get(f"/sweeps/{train_sid}/results").json()["unit"] == "epoch"
    with session_scope(client.db_url) as s:  # margin statistics: the margins figure without a distribution
        s.add(Metric(run_id=runs[0], epoch=100, split="train", key="cos_margin_mean", value=0.5))
    labels: list[str] = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel", lambda ax, text, *a, **k: labels.append(text))
    for url in (f"/sweeps/{sid}/plots/dynamics.png?keys=nc1", f"/runs/{runs[0]}/plots/curves.png?keys=nc1",
                f"/runs/{runs[0]}/plots/margins.png"):
        _get_png(client, url)
        assert labels and set(labels) == {"iteration"}, (url, labels)
        labels.clear()
    _get_png(client, f"/sweeps/{train_sid}/plots/dynamics.png")
    assert set(labels) == {"epoch"}
    page = client.get(f"/ui/sweeps/{sid}").text  # the dashboard's sweep page: its runs table and heatmap keys
    assert "<th>iteration</th>" in page and "final iteration" in page and "final epoch" not in page
    assert "<th>epoch</th>" in client.get(f"/ui/sweeps/{train_sid}").text


def test_a_ufm_runs_page_counts_iterations(sqlite_app_client) -> None:
    client = sqlite_app_client
    with session_scope(client.db_url) as s:
        sweep = Sweep(name="ufm", spec={"name": "ufm"}, axes=[])
        s.add(sweep)
        s.flush()
        spec = RunSpec.model_validate({"kind": "ufm", "ufm": {"class_counts": [5, 5]}})
        run = Run(sweep_id=sweep.id, kind="ufm", spec=spec.model_dump(mode="json"), spec_hash=spec_hash(spec),
                  grid={}, seed=0, status="running", epoch=300, epochs_total=30000, steps_total=1, step=1,
                  samples_per_s=632.0)
        s.add(run)
        s.flush()
        rid = run.id
    page = client.get(f"/ui/runs/{rid}")
    assert page.status_code == 200, page.text
    assert "iteration 300/30000" in page.text and "632 it/s" in page.text and "samples/s" not in page.text


def add_validate_job(url: str, parent_id: int) -> int:
    """A succeeded validate job of run `parent_id` that stores a copy of its metrics (as re-evaluation does)."""
    with session_scope(url) as s:
        parent = s.get(Run, parent_id)
        job = Run(sweep_id=parent.sweep_id, kind="validate", parent_run_id=parent.id, spec=parent.spec,
                  spec_hash=parent.spec_hash, grid=parent.grid, seed=parent.seed, status="succeeded",
                  epoch=parent.epochs_total, epochs_total=parent.epochs_total)
        s.add(job)
        s.flush()
        for m in s.query(Metric).filter_by(run_id=parent_id).all():
            s.add(Metric(run_id=job.id, epoch=m.epoch, split=m.split, key=m.key, value=m.value))
        return job.id


def test_the_dashboard_counts_only_the_sweeps_own_runs(sqlite_app_client) -> None:
    # a validate job repeats a run's metrics: as in GET /sweeps/{id}, it is no run of the grid and no seed of a cell
    client = sqlite_app_client
    sid, runs = seed_sweep(client.db_url, widths=(32, 64, 128), seeds=(0, 1, 2))  # 18 runs
    job = add_validate_job(client.db_url, runs[0])
    api = client.get(f"/sweeps/{sid}").json()
    [row] = [s for s in client.get("/ui/sweeps.json").json() if s["id"] == sid]
    assert (row["runs"], row["counts"], row["progress"]) == (18, {"succeeded": 18}, api["progress"])
    state = client.get(f"/ui/sweeps/{sid}/state.json").json()
    assert state["counts"] == {"succeeded": 18} and len(state["runs"]) == 18
    assert job not in [r["id"] for r in state["runs"]]
    cell = state["matrix"][0][0]  # ce, width 32: seeds 0..2
    assert (cell["n"], cell["done"], cell["runs"]) == (3, 3, runs[:3])
    assert row.get("validate_jobs") == state.get("validate_jobs") == {"succeeded": 1}  # shown apart
    by_acc = client.get(f"/ui/sweeps/{sid}/state.json", params={"key": "acc", "split": "test"}).json()
    [group] = [g for g in client.get(f"/sweeps/{sid}/results", params={"keys": "acc"}).json()["groups"]
               if g["values"] == {"loss.name": "ce", "model.width": 32}]
    assert by_acc["matrix"][0][0]["value"] == pytest.approx(group["metrics"]["acc"]["mean"])
    index = client.get("/ui").text
    assert "<td>18</td>" in index and "succeeded 18" in index and "validate jobs 1" in index


def test_metric_curves_mark_their_points_so_one_point_shows(sqlite_app_client, monkeypatch) -> None:  # noqa: ANN001
    # a 1-epoch run has a single eval point per curve: a line without markers draws nothing
    client = sqlite_app_client
    sid, runs = seed_sweep(client.db_url, epochs=1)
    lines: list = []
    plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda ax, *a, **k: lines.extend(plot(ax, *a, **k)) or lines)
    for url in (f"/sweeps/{sid}/plots/dynamics.png", f"/runs/{runs[0]}/plots/curves.png",
                f"/runs/{runs[0]}/plots/margins.png"):
        _get_png(client, url)
        assert lines, url
        assert all(len(line.get_xdata()) == 1 for line in lines), url
        assert all(line.get_marker() not in (None, "", "None", " ") for line in lines), url
        assert all(0 < line.get_markersize() <= 4 for line in lines), url  # small: multi-point curves stay lines
        lines.clear()


def test_an_empty_run_figure_says_yet_only_while_the_run_may_store_values(sqlite_app_client) -> None:  # noqa: ANN001
    from PIL import Image

    client, db = sqlite_app_client, sqlite_app_client.db_url
    _, runs = seed_sweep(db, statuses={0: "queued"})  # the queued run has no metric yet

    def note(path: str) -> str:
        response = client.get(path)
        assert response.status_code == 200, response.text
        return Image.open(io.BytesIO(response.content)).info.get("ncsweep-note", "")

    assert note(f"/runs/{runs[0]}/plots/curves.png") == f"run {runs[0]}: no metrics stored yet"
    assert note(f"/runs/{runs[0]}/plots/margins.png") == f"run {runs[0]}: no cosine-margin metrics stored yet"
    with session_scope(db) as s:
        s.get(Run, runs[0]).status = "cancelled"  # it will never store any
    assert note(f"/runs/{runs[0]}/plots/curves.png") == f"run {runs[0]}: no metrics stored"
    assert note(f"/runs/{runs[0]}/plots/margins.png") == f"run {runs[0]}: no cosine-margin metrics stored"
    assert note(f"/runs/{runs[1]}/plots/curves.png") == ""  # a drawn figure carries no note
