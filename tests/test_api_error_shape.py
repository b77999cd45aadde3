"""Every 422 item has one shape: loc starting with where the value came from (body, query, path), a type, the
message, and the field in dotted form; a model-level problem names its own field."""
from __future__ import annotations

import httpx
import pytest

SOURCES = ("body", "query", "path")


def body(**overrides):  # noqa: ANN003, ANN201
    out = {"name": "e", "base": {"epochs": 2, "data": {"name": "gaussian"}}, "grid": {"loss.name": ["ce"]}}
    return {**out, **overrides}


@pytest.fixture
def sweep_id(app_client) -> int:  # noqa: ANN001
    return app_client.post("/sweeps", json=body(grid={"loss.name": ["ce", "mse"]})).json()["sweep_id"]


def items(resp) -> list[dict]:  # noqa: ANN001
    assert resp.status_code == 422, resp.text
    for item in resp.json()["detail"]:
        assert set(item) == {"loc", "msg", "type", "field"}, item
        assert item["loc"][0] in SOURCES and isinstance(item["type"], str) and item["type"], item
        assert not item["msg"].startswith("Value error"), item
    return resp.json()["detail"]


def test_every_422_item_says_where_its_value_came_from_and_its_type(app_client, sweep_id):
    sid = sweep_id
    cases = [  # (request, [(loc, field)] expected)
        (app_client.post("/sweeps", json=body(max_runs=0)), [(["body", "max_runs"], "max_runs")]),
        (app_client.post("/sweeps", json=body(seeds=[0, 1], max_runs=1)), [(["body", "max_runs"], "max_runs")]),
        (app_client.post("/sweeps", json=body(grid={"loss.name": ["ce", "bogus"]})),
         [(["body", "grid", "loss", "name", 1], "grid.loss.name[1]")]),
        (app_client.post("/sweeps", json=body(seeds=[1, 1])), [(["body", "seeds"], "seeds")]),
        (app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"optim.lr": [-1]}}),
         [(["body", "grid", "optim", "lr", 0], "grid.optim.lr[0]")]),
        (app_client.get("/runs", params={"loss.name": "bogus"}), [(["query", "loss", "name"], "loss.name")]),
        (app_client.get(f"/sweeps/{sid}/results", params={"epoch": 0}), [(["query", "epoch"], "epoch")]),
        (app_client.get(f"/sweeps/{sid}/results", params={"group_by": "nope"}), [(["query", "group_by"], "group_by")]),
        (app_client.get(f"/sweeps/{sid}/plots/heatmap.png", params={"x": "foo", "y": "seed"}), [(["query", "x"], "x")]),
        (app_client.get(f"/sweeps/{sid}/plots/heatmap.png", params={"x": "loss.name", "y": "seed", "key": "nope"}),
         [(["query", "key"], "key")]),
        (app_client.get("/runs/abc"), [(["path", "run_id"], "run_id")]),
        (app_client.get("/runs", params={"limit": 0}), [(["query", "limit"], "limit")]),
    ]
    for resp, expected in cases:
        assert [(i["loc"], i["field"]) for i in items(resp)] == expected, resp.text
    spec_item = items(cases[2][0])[0]
    assert spec_item["type"] == "value_error" and "'bogus'" in spec_item["msg"]


def test_a_sweep_without_runs_is_named_by_its_path_parameter(app_client, db_url):
    from nc_core.db.models import Sweep
    from nc_core.db.session import session_scope

    with session_scope(db_url) as s:
        empty = Sweep(name="empty", spec={"name": "empty"}, axes=[])
        s.add(empty)
        s.flush()
        sid = empty.id
    (item,) = items(app_client.get(f"/sweeps/{sid}/plots/heatmap.png", params={"x": "loss.name", "y": "seed"}))
    assert item["loc"] == ["path", "sweep_id"] and "has no runs" in item["msg"]


@pytest.mark.parametrize("key, field, loc", [
    ("loss.name ", "grid.loss.name ", ["body", "grid", "loss", "name "]),
    ("loss..name", "grid.loss..name", ["body", "grid", "loss", "", "name"]),
    ("", "grid.", ["body", "grid", ""]),
])
def test_an_unknown_axis_is_named_whatever_its_spelling(app_client, row_counts, key, field, loc):
    before = row_counts()
    (item,) = items(app_client.post("/sweeps", json=body(grid={key: ["ce"]})))
    assert (item["field"], item["loc"]) == (field, loc)
    assert item["msg"].startswith("unknown field; ") and item["type"] == "value_error"
    assert row_counts() == before


def test_shape_problems_and_bad_values_each_name_their_field(app_client):
    resp = app_client.post("/sweeps", json=body(grid={"loss.nam": ["ce"], "optim.lr": [-1.0]}, seeds=[2, 2]))
    assert [(i["field"], i["loc"]) for i in items(resp)] == [
        ("grid.loss.nam", ["body", "grid", "loss", "nam"]), ("seeds", ["body", "seeds"]),
        ("grid.optim.lr[0]", ["body", "grid", "optim", "lr", 0])]


def test_a_section_error_names_the_axis_or_base_field_that_made_it(app_client):
    (item,) = items(app_client.post("/sweeps", json=body(grid={"ufm.dim": [3]})))  # a train sweep
    assert item["field"] == "grid.ufm.dim[0]" and "only allowed with kind='ufm'" in item["msg"]
    (item,) = items(app_client.post("/sweeps", json=body(base={"kind": "ufm"}, grid={})))
    assert item["field"] == "base.ufm" and item["loc"] == ["body", "base", "ufm"] and "needs a 'ufm' section" in item["msg"]
    ok = app_client.post("/sweeps", json=body(base={"kind": "ufm"}, grid={"ufm.dim": [3]}))
    assert ok.status_code == 201, ok.text  # the axis gives the ufm section


def test_the_cli_client_reads_the_field_of_an_item_or_its_loc():
    from service.client import _error_from

    def error(detail: list[dict]):  # noqa: ANN202
        return _error_from(httpx.Response(422, json={"detail": detail}))

    item = {"loc": ["query", "loss", "name"], "msg": "expected one of 'ce'", "type": "value_error"}
    assert error([{**item, "field": "loss.name"}]).errors == [("loss.name", "expected one of 'ce'")]
    assert error([item]).errors == [("loss.name", "expected one of 'ce'")]  # an API without "field"
    assert error([{**item, "loc": ["body", "grid", "optim", "lr", 1]}]).errors == [("grid.optim.lr[1]", item["msg"])]
