"""List-valued spec fields (schedule.milestones, eval.splits) as axes: results, heatmaps and the dashboard group them."""
from __future__ import annotations

import matplotlib.axes
import pytest
from sqlalchemy import insert, select

from nc_core.db.models import Metric, Run
from nc_core.db.session import session_scope

BODY = {"name": "milestones", "base": {"epochs": 4, "data": {"name": "digits"}, "schedule": {"name": "multistep"}},
        "grid": {"schedule.milestones": [[1], [2], [1, 2]]}, "seeds": [0, 1]}


@pytest.fixture
def list_sweep(app_client, db_url):  # noqa: ANN001, ANN201
    """A sweep over a list-valued axis, each run with test acc at epoch 4 = 10 × its number of milestones + seed."""
    resp = app_client.post("/sweeps", json=BODY)
    assert resp.status_code == 201, resp.text
    sid = resp.json()["sweep_id"]
    with session_scope(db_url) as s:
        runs = s.execute(select(Run.id, Run.grid, Run.seed).where(Run.sweep_id == sid)).all()
        s.execute(insert(Metric), [dict(run_id=rid, epoch=4, split="test", key="acc",
                                        value=10.0 * len(grid["schedule.milestones"]) + seed)
                                   for rid, grid, seed in runs])
    return sid


def test_results_group_by_a_list_valued_axis(app_client, list_sweep):
    resp = app_client.get(f"/sweeps/{list_sweep}/results", params={"keys": "acc"})
    assert resp.status_code == 200, resp.text
    groups = resp.json()["groups"]
    assert [g["values"]["schedule.milestones"] for g in groups] == [[1.0], [1.0, 2.0], [2.0]]  # the spec values themselves
    assert [(g["runs"], g["metrics"]["acc"]["mean"]) for g in groups] == [(2, 10.5), (2, 20.5), (2, 10.5)]
    # a list field that is no axis: one group holding every run
    resp = app_client.get(f"/sweeps/{list_sweep}/results", params={"group_by": "eval.splits", "keys": "acc"})
    assert resp.status_code == 200, resp.text
    (group,) = resp.json()["groups"]
    assert group["values"] == {"eval.splits": ["train", "test"]} and group["runs"] == 6


def test_heatmap_over_a_list_valued_axis_labels_its_values(app_client, list_sweep, monkeypatch):
    labels: list[list[str]] = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks", lambda ax, ticks, names=None, **k: labels.append(names))
    resp = app_client.get(f"/sweeps/{list_sweep}/plots/heatmap.png",
                          params={"x": "schedule.milestones", "y": "seed"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png", resp.text
    assert labels == [["[1]", "[1, 2]", "[2]"]]
    resp = app_client.get(f"/sweeps/{list_sweep}/plots/heatmap.png", params={"x": "eval.splits", "y": "seed"})
    assert resp.status_code == 422 and resp.json()["detail"][0]["field"] == "x", resp.text  # one value, no axis


def test_the_dashboard_shows_a_sweep_over_a_list_valued_axis(app_client, list_sweep):
    assert app_client.get(f"/ui/sweeps/{list_sweep}").status_code == 200
    resp = app_client.get(f"/ui/sweeps/{list_sweep}/state.json", params={"key": "acc", "split": "test"})
    assert resp.status_code == 200, resp.text
    state = resp.json()
    assert state["rows"] == ["[1]", "[1, 2]", "[2]"] and [len(line) for line in state["matrix"]] == [1, 1, 1]
    assert [line[0]["value"] for line in state["matrix"]] == [10.5, 20.5, 10.5]
    assert {r["grid"]["schedule.milestones"] for r in state["runs"]} == {"[1]", "[2]", "[1, 2]"}
