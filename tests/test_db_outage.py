"""A database outage during a job gives its run back to the queue (an attempt spent), never a timing-dependent failure."""
from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import (DBAPIError, DisconnectionError, IntegrityError, InterfaceError, OperationalError,
                            ProgrammingError)

from nc_core.db import runs_repo, states
from nc_core.db.models import Event, Run
from nc_core.db.session import session_scope
from tests.helpers_stack import ApiServer, CeleryWorker, RedisServer, make_settings, sqlite_db, wait_for
from tests.test_runs_repo import _new_run as new_run, _run as _row, url  # noqa: F401 - url: a fixture

TINY = {"epochs": 10, "batch_size": 64, "device": "cpu",
        "data": {"name": "gaussian", "train_size": 256, "test_size": 64, "gaussian_classes": 4, "gaussian_dim": 8},
        "model": {"name": "mlp", "width": 16, "depth": 2}}
LOCKED = "OperationalError: (sqlite3.OperationalError) database is locked"


def locked() -> OperationalError:
    return OperationalError("UPDATE run SET ...", {}, sqlite3.OperationalError("database is locked"))


def _new_run(url: str, **values) -> int:
    return new_run(url, spec=TINY, **values)


def _status_events(url: str, run_id: int) -> list[dict]:
    with session_scope(url) as s:
        return list(s.scalars(select(Event.payload).where(Event.run_id == run_id, Event.kind == "status")
                              .order_by(Event.id)))


# -- which errors are an outage --------------------------------------------------------------------------------
def test_transient_database_errors_are_told_apart_also_when_wrapped():
    from worker.reporter import transient_db_error

    refused = OperationalError("SELECT 1", {}, Exception("connection failed: Connection refused"))
    for exc in (locked(), refused, InterfaceError("SELECT 1", {}, Exception("connection already closed")),
                DisconnectionError("pool pre-ping failed"),
                DBAPIError("SELECT 1", {}, Exception("server closed the connection"), connection_invalidated=True)):
        assert transient_db_error(exc) is exc, exc
    cause = locked()
    try:  # a reporter write failing inside fit(), re-raised by the trainer
        try:
            raise cause
        except OperationalError as inner:
            raise RuntimeError("on_metrics failed") from inner
    except RuntimeError as wrapped:
        assert transient_db_error(wrapped) is cause
    try:  # raised while handling the outage
        try:
            raise cause
        except OperationalError:
            raise ValueError("cleanup failed")  # noqa: B904
    except ValueError as during:
        assert transient_db_error(during) is cause
    try:
        try:
            raise cause
        except OperationalError:
            raise ValueError("unrelated") from None
    except ValueError as unrelated:
        assert transient_db_error(unrelated) is None
    for exc in (ValueError("bad lr"), IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")),
                ProgrammingError("SELECT", {}, Exception('relation "run" does not exist')),
                OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: run"))):
        assert transient_db_error(exc) is None, exc


# -- write_retrying: one blocked attempt does not use up the window --------------------------------------------
class FakeTime:
    """worker.reporter's clock: a failing attempt blocks ``block_s`` (SQLite's busy timeout) in no real time."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_write_blocked_past_the_retry_window_is_retried_once_more(monkeypatch):
    import contextlib

    import worker.reporter as reporter

    clock = FakeTime()
    monkeypatch.setattr(reporter, "time", clock)
    monkeypatch.setattr(reporter, "session_scope", lambda url: contextlib.nullcontext(object()))
    calls = {"n": 0, "fail": 1}

    def blocked(session):  # noqa: ANN001, ANN202 - waits out the busy timeout, then "database is locked"
        calls["n"] += 1
        if calls["n"] <= calls["fail"]:
            clock.now += 30.0
            raise locked()
        return "written"

    # lease 30 s: a window of 15 s, which the first 30 s wait used up; it is retried once and gets through
    assert reporter.write_retrying("sqlite://", blocked, 15.0, "run 1: metrics") == "written"
    assert calls["n"] == 2
    calls.update(n=0, fail=99)  # still locked: one retry past the window, then the error (bounded)
    with pytest.raises(OperationalError, match="database is locked"):
        reporter.write_retrying("sqlite://", blocked, 15.0, "run 1: metrics")
    assert calls["n"] == 2
    calls.update(n=0, fail=99)
    with pytest.raises(OperationalError):  # no patience: no retry
        reporter.write_retrying("sqlite://", blocked, 0.0, "run 1: metrics")
    assert calls["n"] == 1


# -- runs_repo.requeue_after_outage (on SQLite and PostgreSQL: test_runs_repo's url fixture) --------------------


def test_requeue_after_outage_keeps_the_attempt_is_fenced_and_bounded(url):
    rid = _new_run(url)
    with session_scope(url) as s:
        runs_repo.claim(s, rid, "w1", 30)
        runs_repo.heartbeat(s, rid, "w1", 30, epoch=5, step=3, samples_per_s=10.0, eta_s=9.0)
    with session_scope(url) as s:
        assert runs_repo.requeue_after_outage(s, rid, "w2", LOCKED, 3) is None  # not the lease holder
    assert _row(url, rid).status == states.RUNNING
    with session_scope(url) as s:
        assert runs_repo.requeue_after_outage(s, rid, "w1", LOCKED, 3) == states.QUEUED
    run = _row(url, rid)
    assert (run.status, run.attempt, run.lease_owner, run.error, run.epoch, run.step) == ("queued", 1, None, None, 5, 0)
    assert run.started_at is None and run.eta_s is None
    assert _status_events(url, rid)[-1] == {"status": "queued", "attempt": 1, "reason": f"database unavailable: {LOCKED}"}
    with session_scope(url) as s:  # marked as not sent: the reconciler's next pass re-sends it
        assert rid in dict(runs_repo.stale_queued(s, runs_repo.utcnow() - timedelta(seconds=60)))
        assert runs_repo.requeue_after_outage(s, rid, "w1", LOCKED, 3) is None  # fenced: the lease is gone
    with session_scope(url) as s:
        assert runs_repo.claim(s, rid, "w2", 30).attempt == 2  # the attempt was spent
    with session_scope(url) as s:
        s.execute(update(Run).where(Run.id == rid).values(attempt=3))
    with session_scope(url) as s:  # the last attempt: failed, with the outage as its reason
        assert runs_repo.requeue_after_outage(s, rid, "w2", LOCKED, 3) == states.FAILED
    run = _row(url, rid)
    assert run.status == states.FAILED and run.finished_at is not None
    assert run.error == f"database unavailable: {LOCKED} (attempt 3 of 3; no attempts left)"
    cancelled = _new_run(url)
    with session_scope(url) as s:
        runs_repo.claim(s, cancelled, "w3", 30)
        s.execute(update(Run).where(Run.id == cancelled).values(cancel_requested=True))
    with session_scope(url) as s:  # a cancel requested meanwhile: cancelled, not queued without a message
        assert runs_repo.requeue_after_outage(s, cancelled, "w3", LOCKED, 3) == states.CANCELLED
    assert _row(url, cancelled).status == states.CANCELLED


# -- the runner -------------------------------------------------------------------------------------------------
@pytest.fixture
def job(tmp_path, monkeypatch):
    """An in-process worker: a queued run, settings without a broker; sends recorded, beats never written."""
    import worker.celery_app
    from worker.reporter import DBReporter

    url = sqlite_db(tmp_path)
    settings = make_settings(tmp_path, url, "redis://127.0.0.1:1/0", lease_seconds=4.0, heartbeat_seconds=0.2)
    sent: list = []
    monkeypatch.setattr(worker.celery_app, "send_runs", lambda app, runs: sent.extend(runs))
    monkeypatch.setattr(DBReporter, "beat", lambda self: True)  # the database is away for every heartbeat
    return {"url": url, "settings": settings, "sent": sent, "rid": _new_run(url)}


def _raising(exc: BaseException):  # noqa: ANN202
    def dispatch(settings, run, kind, spec, reporter):  # noqa: ANN001, ANN202
        reporter.on_start(10, 5)
        reporter.on_progress(7, 5, 5, 100.0)  # epoch 7 done; no beat could write it
        try:
            raise exc
        except Exception as inner:
            raise RuntimeError("the trainer's write failed") from inner
    return dispatch


def test_a_database_error_inside_the_job_gives_the_run_back_and_resends_it(job, monkeypatch):
    import worker.runner as runner

    monkeypatch.setattr(runner, "_dispatch", _raising(locked()))
    assert runner.execute(job["rid"], "train", job["settings"], hostname="w") == states.QUEUED
    run = _row(job["url"], job["rid"])
    assert (run.status, run.attempt, run.error, run.lease_owner) == ("queued", 1, None, None)
    assert run.epoch == 7, "the progress no beat could write is flushed with the final write"
    assert _status_events(job["url"], job["rid"])[-1]["reason"] == f"database unavailable: {LOCKED}"
    assert job["sent"] == [(job["rid"], "train")]  # re-sent at once, not after the reconciler's grace period


def test_a_database_error_on_the_last_attempt_fails_the_run_with_the_outage_as_reason(job, monkeypatch):
    import worker.runner as runner

    monkeypatch.setattr(runner, "_dispatch", _raising(locked()))
    last = job["settings"].model_copy(update={"max_attempts": 1})
    assert runner.execute(job["rid"], "train", last, hostname="w") == states.FAILED
    run = _row(job["url"], job["rid"])
    assert (run.status, run.attempt, run.epoch) == ("failed", 1, 7)
    assert run.error == f"database unavailable: {LOCKED} (attempt 1 of 1; no attempts left)"
    assert job["sent"] == []


def test_other_errors_still_fail_the_run_with_their_reason(job, monkeypatch):
    import worker.runner as runner

    monkeypatch.setattr(runner, "_dispatch", _raising(ValueError("bad lr\nTraceback ...")))
    assert runner.execute(job["rid"], "train", job["settings"], hostname="w") == states.FAILED
    run = _row(job["url"], job["rid"])
    assert (run.status, run.error, run.epoch) == ("failed", "RuntimeError: the trainer's write failed", 7)
    assert job["sent"] == []


def test_a_database_still_down_leaves_the_lease_to_expire(job, monkeypatch):
    import worker.runner as runner

    monkeypatch.setattr(runner, "_dispatch", _raising(locked()))

    def down(url, write, patience_s, what):  # noqa: ANN001, ANN202 - the final write cannot get through either
        raise OperationalError("UPDATE run SET ...", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(runner, "write_retrying", down)
    assert runner.execute(job["rid"], "train", job["settings"], hostname="w") == runner.UNRECORDED
    assert _row(job["url"], job["rid"]).status == states.RUNNING and job["sent"] == []
    with session_scope(job["url"]) as s:  # once the lease expires the reconciler re-queues the run, as before
        later = runs_repo.utcnow() + timedelta(seconds=10)
        assert runs_repo.requeue_expired(s, later, job["settings"].max_attempts) == ([job["rid"]], [])


# -- end to end: a held SQLite write lock -----------------------------------------------------------------------
def _spec(epochs: int) -> dict:
    return {"epochs": epochs, "batch_size": 64, "device": "cpu", "optim": {"lr": 0.05},
            "data": {"name": "gaussian", "train_size": 1000, "test_size": 200, "gaussian_classes": 4,
                     "gaussian_dim": 16},
            "model": {"name": "mlp", "width": 64, "depth": 2}, "eval": {"every": 1},
            "checkpoint": {"every": 1, "keep_last": 2}}


@pytest.mark.integration
def test_a_write_lock_held_past_the_retry_window_requeues_the_run_which_then_succeeds(tmp_path):
    # BEGIN IMMEDIATE from another connection: every write of the worker waits SQLite's 30 s busy timeout, then
    # fails "database is locked"; the job gives up after one retry past its window (lease 10 s: 5 s) and the run
    # goes back to the queue; the worker re-sends it itself (no reconciler runs here) once the lock is gone
    redis = RedisServer(tmp_path / "redis").start()
    settings = make_settings(tmp_path, sqlite_db(tmp_path), redis.url(), lease_seconds=10.0, heartbeat_seconds=0.5)
    url = settings.resolved_database_url()
    api = ApiServer(settings).start()
    worker = CeleryWorker(settings, "outage").start()
    holder = sqlite3.connect(str(Path(tmp_path) / "ncsweep.db"), timeout=60, isolation_level=None)
    try:
        r = httpx.post(f"{api.url}/sweeps", json={"name": "outage", "base": _spec(30)}, timeout=30)
        assert r.status_code == 201, r.text
        (rid,) = [x["id"] for x in httpx.get(f"{api.url}/runs", params={"sweep_id": r.json()["sweep_id"]}).json()["items"]]
        wait_for(lambda: _row(url, rid).epoch >= 3, 120, 0.1, "epoch 3")
        holder.execute("BEGIN IMMEDIATE")
        try:  # until the job gives up (two busy timeouts), at most 100 s
            wait_for(lambda: "giving the run back" in worker.tail(400), 100, 0.5, "the job to give its run back")
        except AssertionError as exc:  # was swallowed: the test went on as if the job had given the run back
            raise AssertionError(f"{exc}\n{worker.tail(80)}") from None
        finally:
            holder.execute("ROLLBACK")
        done = wait_for(lambda: (row := _row(url, rid)).status in states.FINISHED and row, 180, 0.2, "the end")
        assert (done.status, done.attempt) == ("succeeded", 2), (done.status, done.attempt, done.error,
                                                                 worker.tail(80))
        assert done.start_epoch >= 2  # resumed from its newest recorded checkpoint, not from scratch
        given_back = [e for e in _status_events(url, rid) if e.get("status") == "queued" and "reason" in e]
        assert [(e["attempt"], e["reason"]) for e in given_back] == [(1, f"database unavailable: {LOCKED}")]
        assert f"run {rid}: re-sent to the broker" in worker.tail(100_000)
    finally:
        holder.close()
        worker.stop()
        api.stop()
        redis.stop()
