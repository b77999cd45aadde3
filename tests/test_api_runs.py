"""Run endpoints on SQLite and PostgreSQL: spec-field filters, cancel/retry state machine, validate jobs."""
from __future__ import annotations

import pytest
from sqlalchemy import select, update

from nc_core.db.models import Checkpoint, Run
from nc_core.db.session import session_scope


@pytest.fixture
def sweep(app_client) -> tuple[int, list[int]]:  # noqa: ANN001
    body = {"name": "r", "base": {"epochs": 3, "data": {"name": "gaussian"}},
            "grid": {"loss.name": ["ce", "mse"], "model.width": [2, 4], "optim.nesterov": [False, True]},
            "seeds": [0, 1]}
    sid = app_client.post("/sweeps", json=body).json()["sweep_id"]
    runs = app_client.get("/runs", params={"sweep_id": sid, "limit": 1000}).json()["items"]
    return sid, [r["id"] for r in runs]


def set_status(db_url: str, run_id: int, status: str, **values) -> None:  # noqa: ANN003
    with session_scope(db_url) as s:
        s.execute(update(Run).where(Run.id == run_id).values(status=status, **values))


def run(db_url: str, run_id: int) -> Run:
    with session_scope(db_url) as s:
        return s.get(Run, run_id)


def test_filters_by_spec_fields_status_and_pagination(app_client, sweep, db_url):
    sid, ids = sweep
    assert len(ids) == 16
    get = lambda **p: app_client.get("/runs", params={"sweep_id": sid, **p}).json()  # noqa: E731
    assert get(**{"loss.name": "mse"})["total"] == 8
    assert get(**{"loss.name": "mse", "model.width": 2})["total"] == 4
    assert get(**{"model.width": "4.0", "optim.nesterov": "true"})["total"] == 4
    assert get(**{"seed": 1, "loss.name": '"ce"'})["total"] == 4
    assert get(**{"model.feature_dim": "null"})["total"] == 16
    assert get(**{"data.name": "mnist"})["total"] == 0
    assert get(**{"optim.lr": 0.05, "data.gaussian_dim": 32})["total"] == 16
    set_status(db_url, ids[0], "failed")
    assert [r["id"] for r in get(status="failed")["items"]] == [ids[0]]
    page = get(limit=5, offset=5)
    assert page["total"] == 16 and [r["id"] for r in page["items"]] == ids[5:10]
    assert app_client.get("/runs", params={"sweep_id": sid + 1}).json()["total"] == 0


@pytest.mark.parametrize("params, field", [
    ({"model.widht": 2}, "model.widht"),
    ({"model.width": "wide"}, "model.width"),
    ({"optim.nesterov": "maybe"}, "optim.nesterov"),
    ({"eval.splits": "train"}, "eval.splits"),
    ({"status": "sleeping"}, "status"),
    ({"limit": 0}, "limit"),
])
def test_bad_filters_are_422_naming_the_field(app_client, params, field):
    resp = app_client.get("/runs", params=params)
    assert resp.status_code == 422, resp.text
    assert field in [d["field"] for d in resp.json()["detail"]]


def test_repeated_filter_matches_any_of_its_values(app_client, sweep):
    sid, ids = sweep
    get = lambda *p: app_client.get("/runs", params=[("sweep_id", sid), *p, ("limit", 1000)]).json()  # noqa: E731
    both = get(("loss.name", "mse"), ("loss.name", "ce"))
    assert both["total"] == 16 and [r["id"] for r in both["items"]] == ids
    assert get(("loss.name", "mse"), ("loss.name", "mse"))["total"] == 8
    assert get(("model.width", 2), ("model.width", 4), ("loss.name", "ce"))["total"] == 8  # (2 or 4) and ce
    assert get(("model.width", 2), ("model.width", 8), ("optim.nesterov", "true"))["total"] == 4


@pytest.mark.parametrize("field, value", [("loss.name", "MSE"), ("loss.name", "=mse"), ("model.name", "MLP"),
                                          ("optim.name", "SGD"), ("data.name", "imagenet"), ("loss.name", "null"),
                                          ("schedule.name", "1")])
def test_enum_filter_values_are_checked(app_client, sweep, field, value):
    from nc_core.spec_fields import spec_field_choices

    resp = app_client.get("/runs", params={field: value})
    assert resp.status_code == 422, resp.text
    [detail] = resp.json()["detail"]
    allowed = ", ".join(repr(v) for v in spec_field_choices()[field])
    assert detail["field"] == field and detail["msg"] == f"expected one of {allowed}; got {value!r}"


def test_enum_choices_cover_the_literal_spec_fields():
    from nc_core.spec import LOSSES, MODELS
    from nc_core.spec_fields import spec_field_choices

    choices = spec_field_choices()
    assert choices["loss.name"] == LOSSES and choices["model.name"] == MODELS
    assert {"data.name", "optim.name", "head.name", "data.augment", "precision"} <= set(choices)
    assert "eval.splits" not in choices and "model.width" not in choices


def test_get_run_and_404(app_client, sweep):
    _, ids = sweep
    detail = app_client.get(f"/runs/{ids[0]}").json()
    assert detail["spec"]["data"]["name"] == "gaussian" and detail["status"] == "queued" and detail["options"] == {}
    for path in ("/runs/99999", "/runs/99999/metrics"):
        assert app_client.get(path).status_code == 404
    for path in ("/runs/99999/cancel", "/runs/99999/retry"):
        assert app_client.post(path).status_code == 404


def test_a_running_run_says_how_long_its_worker_has_been_silent(app_client, sweep, db_url):
    from datetime import datetime, timedelta, timezone

    _, ids = sweep
    assert app_client.get(f"/runs/{ids[0]}").json()["silent_s"] is None  # queued: nothing to report
    set_status(db_url, ids[0], "running", updated_at=datetime.now(timezone.utc) - timedelta(seconds=100))
    silent = app_client.get(f"/runs/{ids[0]}").json()["silent_s"]
    listed = next(r for r in app_client.get("/runs", params={"status": "running"}).json()["items"] if r["id"] == ids[0])
    assert 99 <= silent < 130 and 99 <= listed["silent_s"] < 130


def test_cancel_queued_running_and_finished(app_client, sweep, db_url):
    _, ids = sweep
    resp = app_client.post(f"/runs/{ids[0]}/cancel")
    assert resp.status_code == 200 and resp.json()["cancelled"] == 1
    assert run(db_url, ids[0]).status == "cancelled"
    set_status(db_url, ids[1], "running", lease_owner="w1")
    resp = app_client.post(f"/runs/{ids[1]}/cancel")
    assert resp.json()["cancel_requested"] == 1
    r1 = run(db_url, ids[1])
    assert r1.status == "running" and r1.cancel_requested is True
    set_status(db_url, ids[2], "succeeded")
    for rid, says in ((ids[0], "is already cancelled"),
                      (ids[2], "has already succeeded; only queued or running runs can be cancelled")):
        resp = app_client.post(f"/runs/{rid}/cancel")
        assert resp.status_code == 409 and resp.json() == {"detail": f"run {rid} {says}", "run_id": rid,
                                                           "status": run(db_url, rid).status}


def test_retry_state_machine_and_attempts(app_client, sweep, db_url):
    _, ids = sweep
    enq = app_client.app.state.enqueuer
    set_status(db_url, ids[0], "failed", attempt=3, max_attempts=3, error="boom", lease_owner="w1")
    resp = app_client.post(f"/runs/{ids[0]}/retry")
    assert resp.status_code == 200 and resp.json()["retried"] == 1 and resp.json()["enqueued"] is True
    r0 = run(db_url, ids[0])
    assert (r0.status, r0.attempt, r0.max_attempts, r0.error, r0.lease_owner) == ("queued", 0, 3, None, None)
    assert enq.calls[-1] == [("train", ids[0])]
    set_status(db_url, ids[1], "running")
    set_status(db_url, ids[2], "succeeded")
    for rid, word, status in ((ids[0], "is queued", "queued"), (ids[1], "is running", "running"),
                              (ids[2], "has already succeeded", "succeeded")):
        resp = app_client.post(f"/runs/{rid}/retry")
        assert resp.status_code == 409 and resp.json() == {
            "detail": f"run {rid} {word}; only failed or cancelled runs can be retried", "run_id": rid,
            "status": status}
    app_client.post(f"/runs/{ids[3]}/cancel")
    assert app_client.post(f"/runs/{ids[3]}/retry").status_code == 200


def test_sweep_cancel_and_retry(app_client, sweep, db_url):
    sid, ids = sweep
    set_status(db_url, ids[0], "running")
    set_status(db_url, ids[1], "succeeded")
    resp = app_client.post(f"/sweeps/{sid}/cancel").json()
    assert resp["cancelled"] == 14 and resp["cancel_requested"] == 1
    with session_scope(db_url) as s:
        statuses = dict(s.execute(select(Run.id, Run.status).where(Run.sweep_id == sid)).all())
    assert statuses[ids[0]] == "running" and statuses[ids[1]] == "succeeded"
    set_status(db_url, ids[0], "failed")
    calls = len(app_client.app.state.enqueuer.calls)
    resp = app_client.post(f"/sweeps/{sid}/retry").json()
    assert resp["retried"] == 15 and run(db_url, ids[1]).status == "succeeded"
    assert sorted(r for _, r in app_client.app.state.enqueuer.calls[calls]) == sorted(set(ids) - {ids[1]})
    assert app_client.post(f"/sweeps/{sid}/retry").status_code == 409  # nothing failed or cancelled
    assert app_client.post("/sweeps/999/cancel").status_code == 404


def add_checkpoints(db_url: str, run_id: int, epochs: list[int]) -> None:
    with session_scope(db_url) as s:
        s.add_all(Checkpoint(run_id=run_id, epoch=e, uri=f"/ckpt/{run_id}/{e}.pt", bytes=1) for e in epochs)


def test_validate_creates_a_validate_run(app_client, sweep, db_url):
    sid, ids = sweep
    assert app_client.post(f"/runs/{ids[0]}/validate", json={}).status_code == 409  # queued
    set_status(db_url, ids[0], "succeeded")
    resp = app_client.post(f"/runs/{ids[0]}/validate", json={})
    assert resp.status_code == 409 and "no stored checkpoints" in resp.json()["detail"]
    add_checkpoints(db_url, ids[0], [1, 2, 3])
    bad = app_client.post(f"/runs/{ids[0]}/validate", json={"epochs": [2, 7]})
    assert bad.status_code == 409 and "[7]" in bad.json()["detail"]
    assert app_client.post(f"/runs/{ids[0]}/validate", json={"splits": ["val"]}).status_code == 422
    resp = app_client.post(f"/runs/{ids[0]}/validate", json={"epochs": [3, 1], "splits": ["test"]})
    assert resp.status_code == 201, resp.text
    vid = resp.json()["run_id"]
    v = run(db_url, vid)
    assert (v.kind, v.parent_run_id, v.sweep_id, v.status) == ("validate", ids[0], sid, "queued")
    assert v.options == {"epochs": [1, 3], "splits": ["test"]} and v.spec == run(db_url, ids[0]).spec
    assert app_client.app.state.enqueuer.tasks[-1] == ("ncsweep.validate", vid)
    again = app_client.post(f"/runs/{ids[0]}/validate", json={"epochs": [1, 3], "splits": ["test"]})
    assert again.status_code == 409 and str(vid) in again.json()["detail"]
    assert app_client.post(f"/runs/{ids[0]}/validate", json={}).status_code == 201  # other options
    assert app_client.post(f"/runs/{vid}/validate", json={}).status_code == 409  # not a train run
    listing = app_client.get("/runs", params={"sweep_id": sid, "kind": "validate"}).json()
    assert listing["total"] == 2


def test_validate_again_says_what_to_do_and_retry_waits_for_a_validate_job(app_client, sweep, db_url):
    sid, ids = sweep
    set_status(db_url, ids[0], "cancelled")
    add_checkpoints(db_url, ids[0], [1, 2])
    first = app_client.post(f"/runs/{ids[0]}/validate", json={"splits": ["test", "train"]}).json()["run_id"]
    same = app_client.post(f"/runs/{ids[0]}/validate", json={"splits": ["train", "test"]})  # same options, any order
    assert same.status_code == 409 and f"run {first} is queued to validate run {ids[0]}" in same.json()["detail"]
    # the parent cannot train again while a job reads its checkpoints
    busy = app_client.post(f"/runs/{ids[0]}/retry")
    assert busy.status_code == 409 and f"validate job reading its checkpoints (run {first})" in busy.json()["detail"]
    set_status(db_url, first, "succeeded")
    done = app_client.post(f"/runs/{ids[0]}/validate", json={})
    assert done.status_code == 409 and f"/runs/{first}/metrics" in done.json()["detail"]
    set_status(db_url, first, "failed")
    failed = app_client.post(f"/runs/{ids[0]}/validate", json={})
    assert failed.status_code == 409 and f"retry run {first} instead" in failed.json()["detail"]
    assert app_client.post(f"/runs/{ids[0]}/retry").status_code == 200


def test_validate_jobs_are_not_sweep_runs(app_client, sweep, db_url):
    # a validate job is work on a finished run, not one more run of the grid: the sweep's run count and
    # progress leave it out (and so do the plots, where it would count as one more seed)
    from service.plots import sweep_runs

    sid, ids = sweep
    for rid in ids:
        set_status(db_url, rid, "succeeded")
    add_checkpoints(db_url, ids[0], [3])
    vid = app_client.post(f"/runs/{ids[0]}/validate", json={}).json()["run_id"]
    detail = app_client.get(f"/sweeps/{sid}").json()
    assert detail["runs"] == len(ids) and detail["counts"] == {"succeeded": len(ids)}
    assert detail["progress"] == 1.0 and detail["validate_jobs"] == {"queued": 1}
    listed = next(item for item in app_client.get("/sweeps").json()["items"] if item["id"] == sid)
    assert listed["runs"] == len(ids) and listed["validate_jobs"] == {"queued": 1}
    with session_scope(db_url) as s:
        assert [r.id for r in sweep_runs(s, sid)] == sorted(ids) and vid not in ids


def test_mutations_need_write_token(anon_client, app_client, sweep, read_token, row_counts):
    sid, ids = sweep
    before = row_counts()
    ro = {"Authorization": f"Bearer {read_token}"}
    for path in (f"/runs/{ids[0]}/cancel", f"/runs/{ids[0]}/retry", f"/sweeps/{sid}/cancel", f"/sweeps/{sid}/retry"):
        assert anon_client.post(path).status_code == 401
        assert anon_client.post(path, headers=ro).status_code == 403
    assert anon_client.post(f"/sweeps/{sid}/extend", json={"seeds": [9]}).status_code == 401
    assert anon_client.post(f"/runs/{ids[0]}/validate", json={}, headers=ro).status_code == 403
    assert row_counts() == before


def test_timestamps_carry_their_time_zone_on_every_backend(app_client, sweep):  # noqa: ANN001
    """SQLite keeps no zone: its times came back naive and the API wrote them without one (PostgreSQL's with Z)."""
    from datetime import datetime, timedelta

    sid, runs = sweep
    for stamp in (app_client.get(f"/runs/{runs[0]}").json()["created_at"],
                  app_client.get(f"/sweeps/{sid}").json()["created_at"]):
        assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0), stamp


def test_postgresql_times_read_back_in_utc_whatever_the_session_zone(pg_url):  # noqa: ANN001
    """psycopg hands timestamptz back in the session's TimeZone (review: +05:30 came through as such)."""
    from datetime import timedelta

    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from nc_core.db.models import Sweep

    engine = create_engine(pg_url, connect_args={"options": "-c timezone=Asia/Kolkata"})
    try:
        with Session(engine) as s:
            sweep = Sweep(name="tz", spec={}, axes=[])
            s.add(sweep)
            s.commit()
            s.expire_all()
            stamp = s.get(Sweep, sweep.id).created_at
            s.delete(s.get(Sweep, sweep.id))
            s.commit()
    finally:
        engine.dispose()
    assert stamp.utcoffset() == timedelta(0), stamp


def test_as_utc_reads_naive_times_as_utc_and_converts_aware_ones():
    """The one normaliser the column type, the repositories, the dashboard and /metrics share."""
    from datetime import datetime, timedelta, timezone

    from nc_core.db.models import as_utc

    naive = datetime(2026, 1, 2, 3, 4, 5, 6)
    assert as_utc(naive) == naive.replace(tzinfo=timezone.utc) and as_utc(naive).utcoffset() == timedelta(0)
    kolkata = datetime(2026, 1, 2, 8, 34, 5, 6, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert as_utc(kolkata).isoformat() == "2026-01-02T03:04:05.000006+00:00"
    assert as_utc(None) is None


def test_a_queued_run_says_how_many_queued_runs_are_ahead_of_it(app_client, sweep, db_url):  # noqa: ANN001
    _, runs = sweep  # 16 queued runs, submitted together: ahead in id order
    assert [app_client.get(f"/runs/{r}").json()["queued_ahead"] for r in runs[:3]] == [0, 1, 2]
    with session_scope(db_url) as s:  # the first run starts: it is no longer in the queue
        s.execute(update(Run).where(Run.id == runs[0]).values(status="running"))
    assert app_client.get(f"/runs/{runs[2]}").json()["queued_ahead"] == 1
    assert app_client.get(f"/runs/{runs[0]}").json()["queued_ahead"] is None
