"""Requests the API used to accept silently: an empty epoch list, duplicate extend seeds, a flood of filter values,
repeated single-valued parameters, blank keys, a heatmap over one axis twice, a ref without diff_vs, a bogus
dashboard metric."""
from __future__ import annotations

import pytest
from sqlalchemy import update

from nc_core.db.models import Checkpoint, Run
from nc_core.db.session import session_scope


@pytest.fixture
def sweep(app_client):  # noqa: ANN001, ANN201
    body = {"name": "q", "base": {"epochs": 2, "data": {"name": "gaussian"}},
            "grid": {"loss.name": ["ce", "mse"], "model.width": [2, 4]}, "seeds": [0, 1]}
    sid = app_client.post("/sweeps", json=body).json()["sweep_id"]
    return sid, [r["id"] for r in app_client.get("/runs", params={"sweep_id": sid}).json()["items"]]


def detail(resp) -> list[tuple[str, str]]:  # noqa: ANN001
    return [(d["field"], d["msg"]) for d in resp.json()["detail"]]


def test_validate_refuses_an_empty_epoch_list(app_client, sweep, db_url, row_counts):
    _, ids = sweep
    with session_scope(db_url) as s:
        s.execute(update(Run).where(Run.id == ids[0]).values(status="succeeded"))
        s.add_all(Checkpoint(run_id=ids[0], epoch=e, uri=f"/ckpt/{e}.pt", bytes=1) for e in (1, 2))
    before = row_counts()
    resp = app_client.post(f"/runs/{ids[0]}/validate", json={"epochs": []})
    assert resp.status_code == 422, resp.text
    (item,) = resp.json()["detail"]
    assert item["field"] == "epochs" and "expected at least one epoch, or null for all" in item["msg"]
    assert row_counts() == before and app_client.app.state.enqueuer.tasks[-1][0] == "ncsweep.train"
    resp = app_client.post(f"/runs/{ids[0]}/validate", json={"epochs": None})  # null: every stored checkpoint
    assert resp.status_code == 201 and resp.json()["options"]["epochs"] is None, resp.text


def test_extend_refuses_duplicate_seeds_as_submit_does(app_client, sweep, row_counts):
    sid, _ = sweep
    before = row_counts()
    submitted = app_client.post("/sweeps", json={"name": "d", "base": {"data": {"name": "gaussian"}}, "seeds": [1, 1]})
    for seeds in ([1, 1], [5, 5]):  # seed 1 is the sweep's already: a repeat all the same
        extended = app_client.post(f"/sweeps/{sid}/extend", json={"seeds": seeds})
        assert submitted.status_code == extended.status_code == 422, extended.text
        assert detail(extended) == detail(submitted) == [("seeds", "duplicate seeds")]
    assert row_counts() == before


def test_an_extend_that_adds_nothing_enqueues_nothing(app_client, sweep):
    sid, _ = sweep
    calls = len(app_client.app.state.enqueuer.calls)
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"seeds": [1], "grid": {"model.width": [4]}})  # all there
    assert resp.status_code == 200 and resp.json() == {"sweep_id": sid, "added": 0, "existing": 8, "enqueued": False}
    assert len(app_client.app.state.enqueuer.calls) == calls
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"seeds": [2]})
    assert resp.json()["added"] == 4 and resp.json()["enqueued"] is True


def test_a_filter_takes_at_most_100_values(app_client, sweep):
    sid, ids = sweep
    many = [("sweep_id", sid)] + [("model.width", w) for w in range(1, 101)]
    assert app_client.get("/runs", params=many).json()["total"] == 8  # 100 values: widths 2 and 4 among them
    resp = app_client.get("/runs", params=[*many, ("model.width", 101), ("loss.name", "ce")])
    assert resp.status_code == 422, resp.text
    assert detail(resp) == [("model.width", "expected at most 100 values of one filter, got 101")]
    assert resp.json()["detail"][0]["loc"][-2:] == ["model", "width"]


@pytest.mark.parametrize("path, params, field", [
    ("/sweeps/{sid}/results", [("group_by", "loss.name"), ("group_by", "model.width")], "group_by"),
    ("/sweeps/{sid}/results", [("keys", "acc"), ("keys", "nc1")], "keys"),
    ("/sweeps/{sid}/results", [("epoch", "1"), ("epoch", "last")], "epoch"),
    ("/runs/{run}/metrics", [("keys", "acc"), ("keys", "nc1")], "keys"),
    ("/runs/{run}/metrics", [("split", "train"), ("split", "test")], "split"),
    ("/runs", [("sweep_id", "{sid}"), ("sweep_id", "999")], "sweep_id"),
    ("/sweeps/{sid}/plots/heatmap.png", [("x", "loss.name"), ("y", "seed"), ("y", "model.width")], "y"),
    ("/ui/sweeps/{sid}/state.json", [("key", "acc"), ("key", "nc1")], "key"),
])
def test_a_single_valued_parameter_given_twice_is_422(app_client, sweep, path, params, field):
    sid, ids = sweep
    url = path.format(sid=sid, run=ids[0])
    resp = app_client.get(url, params=[(k, v.format(sid=sid)) for k, v in params])
    assert resp.status_code == 422, resp.text
    (item,) = resp.json()["detail"]
    assert item["field"] == field and "expected one value" in item["msg"] and "got 2" in item["msg"], item


def test_blank_keys_are_422_like_a_blank_key(app_client, sweep):
    sid, ids = sweep
    for url in (f"/runs/{ids[0]}/metrics", f"/sweeps/{sid}/results", f"/sweeps/{sid}/plots/dynamics.png"):
        for blank in ("", " , "):
            resp = app_client.get(url, params={"keys": blank})
            assert resp.status_code == 422, (url, resp.text)
            assert detail(resp)[0][0] == "keys" and "expected one or more comma-separated metric keys" in resp.text
    assert app_client.get(f"/runs/{ids[0]}/metrics", params={"key": ""}).status_code == 422
    assert app_client.get(f"/runs/{ids[0]}/metrics").status_code == 200  # no keys: every key


def test_heatmap_refuses_one_axis_twice_and_a_ref_outside_diff_vs(app_client, sweep):
    sid, _ = sweep
    url = f"/sweeps/{sid}/plots/heatmap.png"
    resp = app_client.get(url, params={"x": "loss.name", "y": "loss.name"})
    assert resp.status_code == 422 and detail(resp)[0][0] == "y" and "other than x" in resp.text, resp.text
    for mode in ("value", "variance"):
        resp = app_client.get(url, params={"x": "model.width", "y": "seed", "mode": mode, "ref": "loss.name:ce"})
        assert resp.status_code == 422, resp.text
        assert detail(resp)[0][0] == "ref" and "only applies to mode=diff_vs" in resp.text
    ok = app_client.get(url, params={"x": "model.width", "y": "seed", "mode": "diff_vs", "ref": "loss.name:ce"})
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png", ok.text


def test_dashboard_state_refuses_an_unknown_metric_or_split(app_client, sweep):
    sid, _ = sweep
    resp = app_client.get(f"/ui/sweeps/{sid}/state.json", params={"key": "bogus", "split": "bogus"})
    assert resp.status_code == 422, resp.text
    (key, key_msg), (split, split_msg) = detail(resp)
    assert (key, split) == ("key", "split")
    assert "'bogus'" in key_msg and "nc1" in key_msg and "running_acc" in key_msg  # the valid keys
    assert split_msg == "expected one of 'train', 'test', got 'bogus'"
    ok = app_client.get(f"/ui/sweeps/{sid}/state.json", params={"key": "acc", "split": "train"})
    assert ok.status_code == 200 and ok.json()["key"] == "acc" and ok.json()["split"] == "train"
