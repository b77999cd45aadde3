"""POST /sweeps and friends on SQLite and PostgreSQL: submit, de-dup, caps, extend, bad input, auth."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from nc_core.db.models import Run, Sweep
from nc_core.db.session import session_scope

GRID = {"loss.name": ["ce", "mse"], "model.width": [2, 4]}


def sweep_body(**overrides):  # noqa: ANN003, ANN201
    body = {"name": "t", "base": {"epochs": 3, "data": {"name": "gaussian"}}, "grid": GRID, "seeds": [0, 1]}
    body.update(overrides)
    return body


def fields(resp) -> list[str]:  # noqa: ANN001
    return [item["field"] for item in resp.json()["detail"]]


def test_submit_inserts_sweep_and_runs_then_enqueues(app_client, db_url):
    resp = app_client.post("/sweeps", json=sweep_body())
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert out["runs"] == 8 and out["duplicates"] == 0 and out["enqueued"] is True
    with session_scope(db_url) as s:
        runs = s.scalars(select(Run).where(Run.sweep_id == out["sweep_id"]).order_by(Run.id)).all()
        sweep = s.get(Sweep, out["sweep_id"])
        assert sweep.axes == ["loss.name", "model.width"] and sweep.owner == "tests-write"
        assert {r.status for r in runs} == {"queued"} and {r.max_attempts for r in runs} == {3}
        assert {(r.grid["loss.name"], r.grid["model.width"], r.seed) for r in runs} == {
            (loss, w, seed) for loss in ("ce", "mse") for w in (2, 4) for seed in (0, 1)}
        assert all(r.spec["loss"]["name"] == r.grid["loss.name"] and r.spec["seed"] == r.seed for r in runs)
        ids = [r.id for r in runs]
    assert app_client.app.state.enqueuer.tasks == [("ncsweep.train", i) for i in ids]


def test_duplicates_dropped_by_spec_hash(app_client):
    # width 128 is the default: grid value 128 and base value 128 give identical specs
    resp = app_client.post("/sweeps", json=sweep_body(grid={"model.width": [128, 128.0, 64]}, seeds=[0]))
    assert resp.status_code == 201 and resp.json()["runs"] == 2 and resp.json()["duplicates"] == 1


def test_ufm_kind_sends_ufm_task(app_client):
    base = {"kind": "ufm", "ufm": {"class_counts": [5, 5, 5], "dim": 8, "iterations": 10, "eval_every": 5}}
    resp = app_client.post("/sweeps", json=sweep_body(base=base, grid={"ufm.lambda_h": [1e-3, 1e-2]}))
    assert resp.status_code == 201, resp.text
    assert {t for t, _ in app_client.app.state.enqueuer.tasks} == {"ncsweep.ufm"}


def test_cap_from_spec_and_settings(app_client, settings, row_counts):
    before = row_counts()
    resp = app_client.post("/sweeps", json=sweep_body(max_runs=5))
    assert resp.status_code == 422 and fields(resp) == ["max_runs"]
    assert "8 runs" in resp.json()["detail"][0]["msg"] and "cap of 5" in resp.json()["detail"][0]["msg"]
    settings.max_runs_per_sweep = 4
    resp = app_client.post("/sweeps", json=sweep_body(max_runs=100))
    assert resp.status_code == 422 and "max_runs_per_sweep=4" in resp.json()["detail"][0]["msg"]
    assert row_counts() == before and app_client.app.state.enqueuer.calls == []


def test_a_queued_ufm_run_counts_its_iterations(app_client, db_url):
    body = sweep_body(base={"kind": "ufm", "ufm": {"class_counts": [5, 5], "iterations": 700}},
                      grid={"ufm.lambda_w": [1e-3, 1e-2]}, seeds=[0])
    sid = app_client.post("/sweeps", json=body).json()["sweep_id"]
    runs = app_client.get("/runs", params={"sweep_id": sid}).json()["items"]
    assert [r["epochs_total"] for r in runs] == [700, 700]  # shown as 0/700 while queued, not 0/0


@pytest.mark.parametrize("body, field, words", [
    (sweep_body(grid={"loss.nam": ["ce"]}), "grid.loss.nam", ["unknown field", "loss.name"]),
    (sweep_body(grid={"loss.name": ["ce", "bogus"]}), "grid.loss.name[1]", ["'mse'", "bogus"]),
    (sweep_body(base={"data": {"name": "imagenet"}}), "base.data.name", ["'cifar10'", "'gaussian'"]),
    (sweep_body(base={"model": {"name": "resnet9"}, "data": {"name": "cifar10"}}), "base.model.name", ["'resnet18'"]),
    (sweep_body(base={"loss": {"name": "hinge"}}, grid={"model.width": [2]}), "base.loss.name", ["'ce'", "'focal'"]),
    (sweep_body(seeds=[]), "seeds", ["at least one seed"]),
    (sweep_body(name=""), "name", ["at least 1 character"]),
    (sweep_body(extra=1), "extra", ["unknown field", "expected one of name, base, grid, zip, seeds, max_runs"]),
    (sweep_body(gird={"loss.name": ["ce"]}), "gird", ["did you mean 'grid'?", "expected one of name, base"]),
    (sweep_body(base={"data": {"name": "gaussian", "root": "/etc"}}), "base.data.root", ["settings.data_roots"]),
    (sweep_body(grid={"data.root": ["/tmp/../etc"]}), "grid.data.root[0]", ["allowed data root"]),
    (sweep_body(base={"data": {"name": "mnist", "root": "~nosuchuser-ncsweep/data"}}), "base.data.root",
     ["cannot expand '~nosuchuser-ncsweep/data'", "expected an existing user's ~"]),
    (sweep_body(zip={"data.root": ["/etc", "~nosuchuser-ncsweep/x"]}), "zip.data.root[1]", ["cannot expand"]),
    (sweep_body(grid={"loss.name": ["ce", "focal"], "loss.gamma": [1.0, 2.0]}), "grid.loss.gamma",
     ["has no effect with loss.name='ce'", "would be one run"]),
    # a UFM run ignores the training fields: sweeping one would repeat the same run under different labels
    (sweep_body(base={"kind": "ufm", "ufm": {"class_counts": [5, 5]}}, grid={"optim.lr": [0.01, 0.1]}),
     "grid.optim.lr[0]", ["no effect with kind='ufm'", "ufm.lr"]),
    (sweep_body(base={"kind": "ufm", "ufm": {"class_counts": [5, 5]}, "loss": {"name": "mse"}}, grid={}),
     "base.loss.name", ["no effect with kind='ufm'", "got 'mse'", "always MSE"]),
])
def test_bad_input_is_422_naming_the_field_and_writes_nothing(app_client, row_counts, body, field, words):
    before = row_counts()
    resp = app_client.post("/sweeps", json=body)
    assert resp.status_code == 422, resp.text
    assert field in fields(resp), resp.json()
    msg = " ".join(item["msg"] for item in resp.json()["detail"])
    assert all(w in msg for w in words), msg
    assert "Traceback" not in resp.text
    assert row_counts() == before and app_client.app.state.enqueuer.calls == []


def test_data_root_inside_allowed_root_is_accepted(app_client, settings):
    root = str(settings.data_roots[0] / "cifar")
    resp = app_client.post("/sweeps", json=sweep_body(base={"data": {"name": "gaussian", "root": root}}))
    assert resp.status_code == 201, resp.text


def test_a_dataset_missing_on_the_api_host_is_refused_at_submit(app_client, settings, row_counts):
    # the workers would fail every run with "files not found": say so once, before anything is queued
    have, empty = settings.data_roots[0] / "have", settings.data_roots[0] / "empty"
    raw = have / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / f"{name}.gz").write_bytes(b"")  # present (gzipped) is enough: nothing is read at submit
    empty.mkdir()
    before = row_counts()
    body = sweep_body(base={"data": {"name": "mnist", "root": str(have)}}, grid={"data.name": ["mnist", "cifar10"]})
    resp = app_client.post("/sweeps", json=body)
    assert resp.status_code == 422 and fields(resp) == ["grid.data.name[1]"], resp.text
    msg = resp.json()["detail"][0]["msg"]
    assert f"dataset 'cifar10': files not found under data root {have}" in msg and "cifar-10-batches-py" in msg
    assert "data.download=true" in msg and "NCSWEEP_CHECK_DATA_FILES=false" in msg
    body = sweep_body(base={"data": {"name": "mnist"}}, grid={"data.root": [str(have), str(empty)]})
    resp = app_client.post("/sweeps", json=body)
    assert resp.status_code == 422 and fields(resp) == ["grid.data.root[1]"], resp.text
    assert f"{empty / 'MNIST' / 'raw' / 'train-images-idx3-ubyte'}" in resp.text
    assert row_counts() == before and app_client.app.state.enqueuer.calls == []
    ok = [sweep_body(base={"data": {"name": "mnist", "root": str(have)}}),  # the files are there
          sweep_body(base={"data": {"name": "cifar10", "root": str(empty), "download": True}})]  # fetched by the worker
    for body in ok:
        assert app_client.post("/sweeps", json=body).status_code == 201
    settings.check_data_files = False  # a deployment whose workers see other files than the API
    resp = app_client.post("/sweeps", json=sweep_body(base={"data": {"name": "svhn", "root": str(empty)}}))
    assert resp.status_code == 201, resp.text


def test_malformed_json_and_wrong_types(app_client, row_counts):
    before = row_counts()
    resp = app_client.post("/sweeps", content=b'{"name": "x", ', headers={"content-type": "application/json"})
    assert resp.status_code == 422 and fields(resp) == ["body"]
    resp = app_client.post("/sweeps", json=sweep_body(grid={"model.width": 3}))
    assert resp.status_code == 422 and "grid.model.width" in fields(resp)
    assert row_counts() == before


def test_body_too_large_is_413(app_client, settings, row_counts):
    before = row_counts()
    big = json.dumps(sweep_body(name="x" * 100, base={"data": {"name": "gaussian"}}, seeds=list(range(200_000))))
    assert len(big) > settings.max_body_bytes
    resp = app_client.post("/sweeps", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "limit" in resp.json()["detail"]

    def chunks():  # streamed without Content-Length
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536].encode()
    resp = app_client.post("/sweeps", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert row_counts() == before


def test_auth_missing_invalid_and_read_only(anon_client, read_token, row_counts):
    before = row_counts()
    assert anon_client.post("/sweeps", json=sweep_body()).status_code == 401
    bad = anon_client.post("/sweeps", json=sweep_body(), headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    assert anon_client.post("/sweeps", json=sweep_body(), headers={"Authorization": "Basic x"}).status_code == 401
    ro = anon_client.post("/sweeps", json=sweep_body(), headers={"Authorization": f"Bearer {read_token}"})
    assert ro.status_code == 403 and "read" in ro.json()["detail"]
    assert row_counts() == before
    assert anon_client.get("/sweeps").status_code == 200  # reads are open


def test_revoked_token_is_rejected(anon_client, db_url, write_token):
    from service.auth import revoke_token

    assert revoke_token(db_url, write_token)
    resp = anon_client.post("/sweeps", json=sweep_body(), headers={"Authorization": f"Bearer {write_token}"})
    assert resp.status_code == 401


def test_failed_enqueue_keeps_runs_queued(app_client, db_url):
    app_client.app.state.enqueuer.fail = True
    resp = app_client.post("/sweeps", json=sweep_body())
    assert resp.status_code == 201 and resp.json()["enqueued"] is False
    with session_scope(db_url) as s:
        assert s.scalars(select(Run.status)).all() == ["queued"] * 8


def test_list_and_detail_report_counts_and_progress(app_client, db_url):
    sid = app_client.post("/sweeps", json=sweep_body()).json()["sweep_id"]
    with session_scope(db_url) as s:
        runs = s.scalars(select(Run).where(Run.sweep_id == sid).order_by(Run.id)).all()
        runs[0].status, runs[1].status = "succeeded", "failed"
        runs[2].status, runs[2].epoch, runs[2].epochs_total = "running", 1, 4
    listing = app_client.get("/sweeps").json()
    assert listing["total"] == 1 and listing["items"][0]["counts"] == {"queued": 5, "succeeded": 1, "failed": 1, "running": 1}
    detail = app_client.get(f"/sweeps/{sid}").json()
    assert detail["progress"] == pytest.approx((1 + 0.25) / 8)  # the failed run completed no epoch
    assert detail["axes"] == ["loss.name", "model.width"] and detail["spec"]["grid"] == GRID
    assert app_client.get("/sweeps/999").status_code == 404


def test_extend_adds_only_new_runs(app_client, db_url):
    sid = app_client.post("/sweeps", json=sweep_body()).json()["sweep_id"]
    with session_scope(db_url) as s:
        s.execute(Run.__table__.update().where(Run.sweep_id == sid).values(status="succeeded"))
    calls = len(app_client.app.state.enqueuer.calls)
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"model.width": [4, 8]}, "seeds": [2]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["added"] == 2 * 3 * 3 - 8 and resp.json()["existing"] == 8
    with session_scope(db_url) as s:
        statuses = s.scalars(select(Run.status).where(Run.sweep_id == sid)).all()
        assert statuses.count("succeeded") == 8 and statuses.count("queued") == 10
        assert s.get(Sweep, sid).spec["grid"]["model.width"] == [2, 4, 8]
    assert len(app_client.app.state.enqueuer.calls[calls]) == 10
    # a new axis keeps the existing runs (base value first) and adds the new values
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"optim.lr": [0.1]}})
    assert resp.json()["added"] == 18 and resp.json()["existing"] == 18
    again = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"optim.lr": [0.1]}})
    assert again.json()["added"] == 0


def test_extend_with_a_new_axis_starts_from_the_runs_own_value(app_client, row_counts):
    body = {"name": "conv", "base": {"epochs": 1, "model": {"name": "resnet18"}}, "grid": {"loss.name": ["ce"]}}
    sid = app_client.post("/sweeps", json=body).json()["sweep_id"]
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"model.width": [0.5]}})
    assert resp.status_code == 200 and resp.json()["added"] == 1, resp.text  # width 1 (resnet's) kept, 0.5 added
    assert app_client.get(f"/sweeps/{sid}").json()["spec"]["grid"]["model.width"] == [1.0, 0.5]
    mixed = {"name": "mixed", "base": {"epochs": 1}, "grid": {"model.name": ["mlp", "resnet18"]}}
    sid = app_client.post("/sweeps", json=mixed).json()["sweep_id"]
    before = row_counts()
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"model.width": [2]}})
    assert resp.status_code == 422 and fields(resp) == ["grid.model.width"] and "differ" in resp.text
    assert row_counts() == before


def test_extend_rejects_unknown_field_and_cap(app_client, row_counts):
    sid = app_client.post("/sweeps", json=sweep_body(max_runs=10)).json()["sweep_id"]
    before = row_counts()
    bad = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"model.widht": [8]}})
    assert bad.status_code == 422 and "grid.model.widht" in fields(bad)
    over = app_client.post(f"/sweeps/{sid}/extend", json={"seeds": [2, 3]})
    assert over.status_code == 422 and fields(over) == ["max_runs"]
    assert app_client.post("/sweeps/999/extend", json={"seeds": [5]}).status_code == 404
    assert row_counts() == before


def test_stored_spec_hash_matches_nc_core_and_events_are_written(app_client, db_url):
    from nc_core.db.models import Event
    from nc_core.spec import RunSpec
    from nc_core.sweep import spec_hash

    body = sweep_body(seeds=list(range(20)))  # 80 runs: the bulk (COPY / executemany) insert path
    sid = app_client.post("/sweeps", json=body).json()["sweep_id"]
    with session_scope(db_url) as s:
        runs = s.scalars(select(Run).where(Run.sweep_id == sid)).all()
        assert len(runs) == 80 and all(r.spec_hash == spec_hash(RunSpec.model_validate(r.spec)) for r in runs)
        assert all(r.created_at is not None and r.cancel_requested is False for r in runs)
        events = s.scalars(select(Event).where(Event.sweep_id == sid)).all()
        assert [(e.kind, e.payload["sweep"], e.payload["runs"]) for e in events] == [("status", "created", 80)]
    ids = sorted(r.id for r in runs)
    assert sorted(app_client.app.state.enqueuer.run_ids) == ids


def test_every_bad_grid_value_is_listed_with_its_field(app_client, row_counts):
    before = row_counts()
    two_in_one_axis = sweep_body(grid={"optim.lr": [0.1, -1, 0.2, -2], "model.width": [2, 4]})
    resp = app_client.post("/sweeps", json=two_in_one_axis)
    assert resp.status_code == 422, resp.text
    assert fields(resp) == ["grid.optim.lr[1]", "grid.optim.lr[3]"], resp.json()
    first, second = resp.json()["detail"]
    assert first["loc"] == ["body", "grid", "optim", "lr", 1] and "greater than 0" in first["msg"]
    assert "(run with optim.lr=-1, model.width=2)" in first["msg"] and "optim.lr=-2" in second["msg"]
    one_in_each_axis = sweep_body(grid={"loss.name": ["ce", "bogus"], "model.width": [0, 2]})
    resp = app_client.post("/sweeps", json=one_in_each_axis)
    assert fields(resp) == ["grid.loss.name[1]", "grid.model.width[0]"], resp.json()
    assert "loss.name='bogus'" in resp.json()["detail"][0]["msg"] and "'mse'" in resp.json()["detail"][0]["msg"]
    with_zip_and_base = sweep_body(base={"epochs": 0, "data": {"name": "gaussian"}}, grid={"model.width": [2, -4]},
                                   zip={"optim.lr": [0.1, -0.1], "optim.momentum": [0.9, 0.8]})
    resp = app_client.post("/sweeps", json=with_zip_and_base)
    assert fields(resp) == ["base.epochs", "grid.model.width[1]", "zip.optim.lr[1]"], resp.json()
    assert row_counts() == before and app_client.app.state.enqueuer.calls == []


def test_a_data_root_the_filesystem_cannot_look_up_is_a_422(app_client, settings, row_counts):
    before = row_counts()
    root = str(settings.data_roots[0] / ("a" * 300))
    resp = app_client.post("/sweeps", json=sweep_body(base={"data": {"name": "mnist", "root": root}}))
    assert resp.status_code == 422 and fields(resp) == ["base.data.root"], resp.text
    assert "cannot be looked up (File name too long)" in resp.json()["detail"][0]["msg"] and row_counts() == before


def test_every_bad_data_root_is_listed(app_client, settings):
    inside = str(settings.data_roots[0] / "ok")
    resp = app_client.post("/sweeps", json=sweep_body(grid={"data.root": ["/etc", inside, "/tmp/../etc/x"]}))
    assert resp.status_code == 422 and fields(resp) == ["grid.data.root[0]", "grid.data.root[2]"], resp.json()
    assert all("allowed data root" in item["msg"] for item in resp.json()["detail"])
    resp = app_client.post("/sweeps", json=sweep_body(grid={"data.root": ["/data\x00", "/etc"], "model.width": [0]}))
    assert fields(resp) == ["grid.data.root[0]", "grid.data.root[1]", "grid.model.width[0]"], resp.json()
    assert "NUL" in resp.json()["detail"][0]["msg"] and "allowed data root" in resp.json()["detail"][1]["msg"]


def test_extend_errors_point_into_the_request_not_the_merged_grid(app_client, row_counts):
    sid = app_client.post("/sweeps", json=sweep_body(grid={"optim.lr": [0.1, 0.2, 0.3, 0.4]})).json()["sweep_id"]
    before = row_counts()
    for added, index in (["x"], 0), ([0.5, "x"], 1), ([0.1, "x"], 1):  # 0.1 is already an axis value
        resp = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"optim.lr": added}})
        assert resp.status_code == 422 and fields(resp) == [f"grid.optim.lr[{index}]"], resp.text
        assert resp.json()["detail"][0]["loc"] == ["body", "grid", "optim", "lr", index] and "got 'x'" in resp.text
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"model.width": [8, -1]}})  # a new axis
    assert fields(resp) == ["grid.model.width[1]"], resp.text
    assert row_counts() == before


def test_extend_names_a_seed_axis_and_unknown_fields_as_submit_does(app_client, row_counts):
    sid = app_client.post("/sweeps", json=sweep_body()).json()["sweep_id"]
    before = row_counts()
    submitted = app_client.post("/sweeps", json=sweep_body(grid={"seed": [3]})).json()["detail"]
    extended = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"seed": [3]}}).json()["detail"]
    assert [(d["field"], d["msg"]) for d in extended] == [(d["field"], d["msg"]) for d in submitted] \
        == [("grid.seed", "use the 'seeds' list for seeds")]
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"model.widht": [8], "optim.lr": []}})
    assert resp.status_code == 422 and fields(resp) == ["grid.model.widht", "grid.optim.lr"], resp.text
    unknown, empty = resp.json()["detail"]
    assert unknown["loc"] == ["body", "grid", "model", "widht"] and "did you mean 'model.width'?" in unknown["msg"]
    assert empty["msg"] == "expected a non-empty list of values"
    assert row_counts() == before


def test_list_positions_are_written_as_brackets_and_the_value_is_echoed(app_client, row_counts):
    before = row_counts()
    resp = app_client.post("/sweeps", json=sweep_body(seeds=[0, 2**40]))
    assert resp.status_code == 422 and fields(resp) == ["seeds[1]"], resp.text
    assert resp.json()["detail"][0]["msg"] == "Input should be less than or equal to 2147483647, got 1099511627776"
    resp = app_client.post("/sweeps", json=sweep_body(base={"data": {"name": "gaussian"}, "eval": {"splits": ["x"]}}))
    assert fields(resp) == ["base.eval.splits[0]"] and resp.json()["detail"][0]["loc"] == ["body", "base", "eval", "splits", 0]
    resp = app_client.post("/sweeps", json=sweep_body(grid={"seed": [1]}, seeds=[1, 1]))  # a model-level error
    assert fields(resp) == ["grid.seed", "seeds"] and resp.json()["detail"][1]["msg"] == "duplicate seeds", resp.text
    assert row_counts() == before


def test_shape_mistakes_and_bad_values_come_in_one_answer(app_client, row_counts):
    before = row_counts()
    body = sweep_body(grid={"model.widht": [8], "optim.lr": [0.1, -1.0]}, zip={"model.width": [2]}, seeds=[0, 0])
    resp = app_client.post("/sweeps", json=body)
    assert resp.status_code == 422 and fields(resp) == ["grid.model.widht", "seeds", "grid.optim.lr[1]"], resp.text
    assert "greater than 0, got -1.0" in resp.json()["detail"][2]["msg"]
    assert row_counts() == before
    sid = app_client.post("/sweeps", json=sweep_body()).json()["sweep_id"]
    before = row_counts()
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"grid": {"seed": [3], "optim.lr": [0.1, -1.0]}})
    assert resp.status_code == 422 and fields(resp) == ["grid.seed", "grid.optim.lr[1]"], resp.text
    assert row_counts() == before and app_client.get(f"/sweeps/{sid}").json()["spec"]["grid"] == GRID


def test_a_sweep_stored_with_a_base_seed_can_still_be_extended(app_client, db_url):
    sid = app_client.post("/sweeps", json=sweep_body()).json()["sweep_id"]
    with session_scope(db_url) as s:  # as sweeps were stored before base.seed was refused
        sweep = s.get(Sweep, sid)
        sweep.spec = {**sweep.spec, "base": {**sweep.spec["base"], "seed": 7}}
    resp = app_client.post(f"/sweeps/{sid}/extend", json={"seeds": [2]})
    assert resp.status_code == 200 and resp.json()["added"] == 4 and resp.json()["existing"] == 8, resp.text
    assert "seed" not in app_client.get(f"/sweeps/{sid}").json()["spec"]["base"]
