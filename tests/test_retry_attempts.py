"""A retry starts a fresh series of attempts: attempt counts, start time and ETA of the current attempt."""
from __future__ import annotations

from datetime import timedelta

import pytest
from rich.console import Console
from sqlalchemy import select, update

from nc_core.db import runs_repo, states, sweeps_repo, workers_repo
from nc_core.db.models import Run, as_utc
from nc_core.db.session import session_scope
from service.cli_views import run_detail, run_eta
from worker.reporter import DBReporter

BODY = {"name": "a", "base": {"epochs": 4, "data": {"name": "gaussian"}}, "grid": {"loss.name": ["ce", "mse"]},
        "seeds": [0, 1]}


@pytest.fixture
def runs(app_client) -> tuple[int, list[int]]:  # noqa: ANN001
    sid = app_client.post("/sweeps", json=BODY).json()["sweep_id"]
    items = app_client.get("/runs", params={"sweep_id": sid}).json()["items"]
    return sid, [r["id"] for r in items]


def _row(db_url: str, run_id: int) -> Run:
    with session_scope(db_url) as s:
        return s.get(Run, run_id)


def _shown(run: dict) -> str:
    console = Console(width=160, record=True)
    console.print(run_detail(run, []))
    return " ".join(console.export_text().split())


def test_a_retry_gives_a_fresh_allowance_of_attempts(app_client, settings, db_url, runs):
    sid, ids = runs
    rid, limit = ids[0], settings.max_attempts
    past = runs_repo.utcnow() - timedelta(hours=1)
    for n in range(1, limit + 1):  # every attempt lost its worker; the last one failed the run
        with session_scope(db_url) as s:
            assert runs_repo.claim(s, rid, f"w{n}", 1, now=past).attempt == n
        with session_scope(db_url) as s:
            runs_repo.requeue_expired(s, runs_repo.utcnow(), limit)
    assert _row(db_url, rid).status == states.FAILED
    assert "attempt 3 of 3" in _shown(app_client.get(f"/runs/{rid}").json())
    assert app_client.post(f"/runs/{rid}/retry").status_code == 200
    queued = app_client.get(f"/runs/{rid}").json()
    assert (queued["attempt"], queued["max_attempts"]) == (0, limit)
    with session_scope(db_url) as s:
        assert runs_repo.claim(s, rid, "w9", 1, now=past).attempt == 1
    assert "attempt 1 of 3" in _shown(app_client.get(f"/runs/{rid}").json())
    # the reconciler (limit: settings.max_attempts) and the claim agree: attempts are left, so re-queue
    with session_scope(db_url) as s:
        assert runs_repo.requeue_expired(s, runs_repo.utcnow(), limit) == ([rid], [])
    # a sweep retry resets its runs the same way
    app_client.post(f"/runs/{ids[1]}/cancel")
    with session_scope(db_url) as s:
        s.execute(update(Run).where(Run.id == ids[2]).values(status="failed", attempt=3, max_attempts=3))
    assert app_client.post(f"/sweeps/{sid}/retry").json()["retried"] == 2
    for r in (app_client.get(f"/runs/{i}").json() for i in ids[1:3]):
        assert (r["status"], r["attempt"], r["max_attempts"]) == ("queued", 0, limit), r


def test_a_retried_run_times_its_current_attempt(app_client, db_url, runs):
    _, ids = runs
    rid = ids[0]
    first = runs_repo.utcnow() - timedelta(hours=2)
    with session_scope(db_url) as s:
        runs_repo.claim(s, rid, "w1", 3600, now=first)
        runs_repo.heartbeat(s, rid, "w1", 3600, epoch=2, step=5, epochs_total=4, steps_total=10,
                            samples_per_s=100.0, eta_s=30.0)
        runs_repo.finish(s, rid, "w1", states.FAILED, "RuntimeError: boom")
    assert app_client.get(f"/runs/{rid}").json()["finished_at"] is not None
    assert app_client.post(f"/runs/{rid}/retry").status_code == 200
    queued = app_client.get(f"/runs/{rid}").json()
    reset = ("started_at", "finished_at", "eta_s", "samples_per_s", "lease_owner", "lease_expires_at", "worker_name",
             "error")
    assert {k: queued[k] for k in reset} == dict.fromkeys(reset) and queued["step"] == 0
    assert queued["epoch"] == 2  # the epochs it completed stay (it resumes from its checkpoint)
    second = runs_repo.utcnow() - timedelta(seconds=60)
    with session_scope(db_url) as s:
        runs_repo.claim(s, rid, "w2", 3600, now=second)
    assert as_utc(_row(db_url, rid).started_at) == second
    # resumed after epoch 2, epoch 3 done a minute later, no rate reported yet: one epoch left ≈ 60 s
    with session_scope(db_url) as s:
        runs_repo.heartbeat(s, rid, "w2", 3600, epoch=3, step=0, start_epoch=2)
    assert workers_repo.run_progress(_row(db_url, rid))["eta_s"] == pytest.approx(60, abs=5)
    assert run_eta(app_client.get(f"/runs/{rid}").json()) == pytest.approx(60, abs=5)


def test_the_reporter_says_where_the_attempt_resumed(app_client, settings, db_url, runs):
    _, ids = runs
    with session_scope(db_url) as s:
        runs_repo.claim(s, ids[0], "w1", 3600)
    reporter = DBReporter(settings, ids[0], "w1", batch_size=8)  # not started: beats by hand
    reporter.on_resume(2)
    reporter.on_start(4, 10)
    assert reporter.beat() is True
    row = _row(db_url, ids[0])
    assert (row.epoch, row.start_epoch, row.epochs_total) == (2, 2, 4)


def test_sweep_eta_scales_a_resumed_attempt_to_a_whole_run(app_client, db_url, runs):
    sid, ids = runs
    now = runs_repo.utcnow()
    with session_scope(db_url) as s:  # the last attempt did epochs 3-4 of 4 in 100 s: a whole run is 200 s
        s.execute(update(Run).where(Run.id == ids[0]).values(
            status="succeeded", epoch=4, start_epoch=2, started_at=now - timedelta(seconds=100), finished_at=now))
        s.execute(update(Run).where(Run.id.in_(ids[1:3])).values(status="succeeded", epoch=4))
        assert s.scalar(select(Run.status).where(Run.id == ids[3])) == "queued"
        assert sweeps_repo.sweep_eta(s, sid) == pytest.approx(200.0)
