"""Grid values are stored as their fields validate them (runs' grid, the sweep's spec); extend still matches the runs
of sweeps stored with the values as given."""
from __future__ import annotations

from sqlalchemy import select

from nc_core.db.models import Run, Sweep
from nc_core.db.session import session_scope
from nc_core.spec import RunSpec
from nc_core.sweep import get_path, spec_hash


def runs_of(db_url: str, sid: int) -> list[Run]:
    with session_scope(db_url) as s:
        runs = s.scalars(select(Run).where(Run.sweep_id == sid).order_by(Run.id)).all()
        s.expunge_all()
        return runs


def stored_grid(db_url: str, sid: int) -> dict:
    with session_scope(db_url) as s:
        return s.get(Sweep, sid).spec["grid"]


def test_coerced_grid_values_are_stored_as_validated(app_client, db_url):
    body = {"name": "c", "base": {"epochs": 1, "data": {"name": "gaussian"}},
            "grid": {"epochs": [1, "2"], "model.width": [8, "16"]}, "zip": {"optim.lr": ["0.1"]}}
    resp = app_client.post("/sweeps", json=body)
    assert resp.status_code == 201 and resp.json()["runs"] == 4, resp.text
    sid = resp.json()["sweep_id"]
    for run in runs_of(db_url, sid):
        for path, value in run.grid.items():  # the value the run trains with, of the field's type
            assert value == get_path(run.spec, path) and type(value) is type(get_path(run.spec, path)), run.grid
    assert {r.grid["epochs"] for r in runs_of(db_url, sid)} == {1, 2}
    grid = stored_grid(db_url, sid)
    assert grid == {"epochs": [1, 2], "model.width": [8.0, 16.0]}
    assert [type(v) for v in grid["epochs"]] == [int, int] and [type(v) for v in grid["model.width"]] == [float, float]
    with session_scope(db_url) as s:
        assert s.get(Sweep, sid).spec["zip"] == {"optim.lr": [0.1]}
    listed = app_client.get("/runs", params={"sweep_id": sid, "epochs": 2}).json()["items"]
    assert [r["grid"]["epochs"] for r in listed] == [2, 2]


def test_a_value_given_twice_in_two_spellings_is_stored_once(app_client, db_url):
    body = {"name": "d", "base": {"epochs": 1, "data": {"name": "gaussian"}}, "grid": {"epochs": [2, "2", 3]}}
    resp = app_client.post("/sweeps", json=body)
    assert resp.json()["runs"] == 2 and resp.json()["duplicates"] == 1, resp.text
    assert stored_grid(db_url, resp.json()["sweep_id"]) == {"epochs": [2, 3]}


def test_extend_stores_a_new_axis_in_one_type(app_client, db_url):
    body = {"name": "e", "base": {"epochs": 1, "data": {"name": "gaussian"}, "model": {"width": 8}},
            "grid": {"loss.name": ["ce"]}}
    sid = app_client.post("/sweeps", json=body).json()["sweep_id"]
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"model.width": [16, "32"]}})
    assert resp.status_code == 200 and resp.json()["added"] == 2 and resp.json()["existing"] == 1, resp.text
    widths = stored_grid(db_url, sid)["model.width"]
    assert widths == [8.0, 16.0, 32.0] and {type(w) for w in widths} == {float}
    added = [r.grid for r in runs_of(db_url, sid)][1:]  # the existing run keeps its grid
    assert added == [{"loss.name": "ce", "model.width": 16.0}, {"loss.name": "ce", "model.width": 32.0}]
    assert {type(g["model.width"]) for g in added} == {float}


def test_extend_matches_the_runs_of_a_sweep_stored_with_raw_values(app_client, db_url):
    body = {"name": "old", "base": {"epochs": 1, "data": {"name": "gaussian"}}, "grid": {"epochs": [1, 2]}}
    sid = app_client.post("/sweeps", json=body).json()["sweep_id"]
    with session_scope(db_url) as s:  # as the API stored it before: the values as given
        sweep = s.get(Sweep, sid)
        sweep.spec = {**sweep.spec, "grid": {"epochs": [1, "2"]}}
        for run in s.scalars(select(Run).where(Run.sweep_id == sid)):
            run.grid = {"epochs": "2"} if run.grid["epochs"] == 2 else run.grid
    before = {r.id: r.spec_hash for r in runs_of(db_url, sid)}
    assert all(h == spec_hash(RunSpec.model_validate(r.spec)) for r in runs_of(db_url, sid) for h in [r.spec_hash])
    again = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"epochs": [2]}})
    assert again.status_code == 200 and again.json()["added"] == 0 and again.json()["existing"] == 2, again.text
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"seeds": [1]})
    assert resp.status_code == 200 and resp.json()["added"] == 2 and resp.json()["existing"] == 2, resp.text
    after = runs_of(db_url, sid)
    assert {r.id: r.spec_hash for r in after if r.id in before} == before  # the stored runs are untouched
    assert len({r.spec_hash for r in after}) == 4 and stored_grid(db_url, sid) == {"epochs": [1, 2]}


def test_the_cli_writes_stored_values_as_given():
    from service.cli_views import _grid

    run = {"grid": {"loss.name": "ce", "model.width": 64.0, "schedule.milestones": [1.0, 2.5]}, "seed": 1}
    assert _grid(run) == "loss=ce width=64 milestones=[1, 2.5] seed=1"  # 64.0 as it was submitted: 64
