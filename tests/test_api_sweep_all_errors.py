"""POST /sweeps: a body whose own fields are invalid (a seed out of range, max_runs 'x', name 5) gets one 422 that
also lists the bad values (and shape mistakes) of its sound grid/zip/base, each item naming its field."""
from __future__ import annotations

import pytest

BASE = {"epochs": 3, "data": {"name": "gaussian"}}


def sweep_body(**overrides):  # noqa: ANN003, ANN201
    body = {"name": "t", "base": BASE, "grid": {"loss.name": ["ce", "mse"]}, "seeds": [0, 1]}
    body.update(overrides)
    return body


def post(app_client, body):  # noqa: ANN001, ANN201
    resp = app_client.post("/sweeps", json=body)
    assert resp.status_code == 422, resp.text
    items = resp.json()["detail"]
    assert all(item["loc"][0] == "body" and item["type"] and item["field"] for item in items), items
    assert "Traceback" not in resp.text
    return items


def test_a_bad_seed_comes_with_the_bad_grid_and_base_values(app_client, row_counts):
    before = row_counts()
    body = sweep_body(seeds=[-2**40], grid={"loss.name": ["bogus"]},
                      base={**BASE, "optim": {"lr": -1}})
    items = post(app_client, body)
    assert [i["field"] for i in items] == ["seeds[0]", "base.optim.lr", "grid.loss.name[0]"], items
    seed, lr, loss = items
    assert seed["loc"] == ["body", "seeds", 0] and "greater than or equal to -2147483648" in seed["msg"]
    assert lr["loc"] == ["body", "base", "optim", "lr"] and "greater than 0, got -1" in lr["msg"]
    assert loss["loc"] == ["body", "grid", "loss", "name", 0] and "got 'bogus'" in loss["msg"]
    assert row_counts() == before and app_client.app.state.enqueuer.calls == []


def test_a_bad_max_runs_comes_with_a_bad_grid_value(app_client, row_counts):
    before = row_counts()
    items = post(app_client, sweep_body(max_runs="x", grid={"loss.name": ["ce", "bogus"], "model.width": [2]}))
    assert [i["field"] for i in items] == ["max_runs", "grid.loss.name[1]"], items
    assert items[0]["loc"] == ["body", "max_runs"] and "got 'x'" in items[0]["msg"]
    assert items[1]["loc"] == ["body", "grid", "loss", "name", 1] and items[1]["type"] == "value_error"
    assert row_counts() == before


def test_every_kind_of_problem_in_one_answer_in_a_stable_order(app_client):
    body = sweep_body(name=5, gird={}, seeds=[0, 0], zip={"optim.lr": [0.1, -0.1], "optim.momentum": [0.9, 0.8]},
                      grid={"model.widht": [8], "model.width": [2, -4]}, base={**BASE, "epochs": 0})
    first = post(app_client, body)
    assert [i["field"] for i in first] == ["gird", "name", "grid.model.widht", "seeds", "base.epochs",
                                          "grid.model.width[1]", "zip.optim.lr[1]"], first
    assert post(app_client, body) == first  # no duplicates, the same order every time
    assert first[3]["msg"] == "duplicate seeds" and "did you mean 'model.width'?" in first[2]["msg"]


def test_a_bad_base_leaves_the_axis_values_unchecked_but_names_the_shape_mistakes(app_client):
    items = post(app_client, sweep_body(base="x", grid={"loss.name": ["bogus"], "model.widht": [8]}))
    assert [i["field"] for i in items] == ["base", "grid.model.widht"], items


@pytest.mark.parametrize("overrides, field", [
    ({"seeds": [2**40]}, "seeds[0]"),
    ({"max_runs": "x"}, "max_runs"),
    ({"max_runs": 0}, "max_runs"),
    ({"name": 5}, "name"),
])
def test_only_a_top_level_error_is_still_the_one_item(app_client, row_counts, overrides, field):
    before = row_counts()
    items = post(app_client, sweep_body(**overrides))
    assert [i["field"] for i in items] == [field], items
    assert row_counts() == before


@pytest.mark.parametrize("base, grid, field", [
    ({"head": {"name": "fixed_etf"}}, {"model.feature_dim": [5, 16]}, "grid.model.feature_dim[0]"),
    ({"model": {"feature_dim": 5}}, {"head.name": ["learned", "fixed_etf"]}, "grid.head.name[1]"),
    ({"head": {"name": "fixed_etf"}, "model": {"name": "mlp"}}, {"model.width": [64, 5]}, "grid.model.width[1]"),
])
def test_a_rule_between_fields_broken_in_one_grid_cell_names_that_axis_value(app_client, row_counts, base, grid,
                                                                             field):
    # a fixed ETF head needs d >= K-1: valid in the base alone, broken in one cell of the grid
    before = row_counts()
    items = post(app_client, sweep_body(base={**BASE, "data": {"name": "digits"}, **base}, grid=grid))
    assert [i["field"] for i in items] == [field], items
    assert "K-1 = 9" in items[0]["msg"] and "got d = 5" in items[0]["msg"], items
    assert row_counts() == before and app_client.app.state.enqueuer.calls == []
