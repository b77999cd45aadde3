"""Races between API requests (and workers) on SQLite and PostgreSQL, as fixed interleavings: one request
runs in a thread and holds its transaction open at its commit (Held) while the other runs; a request that
takes the row lock first makes the other wait for it and meet its result, as some serial order would."""
from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any, Callable

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from nc_core.db import actions_repo, runs_repo
from nc_core.db.models import Checkpoint, Event, Run
from nc_core.db.session import session_factory, session_scope
from nc_core.db.states import IllegalTransition
from nc_core.db.sweeps_repo import StateConflict
from service.routers import runs as runs_api, sweeps as sweeps_api
from service.schemas import ValidateRequest

WAIT_S = 30.0


class Held(threading.Thread):
    """`call(session)` in a thread, on a session of its own. With hold=True its commit waits: `reached` is set
    when the call tries to commit (its writes done, its locks held) and it commits once `release()` is called."""

    def __init__(self, url: str, call: Callable[[Any], Any], *, hold: bool = False):
        super().__init__(daemon=True)
        self.session, self.call = session_factory(url)(), call
        self.reached, self._go = threading.Event(), threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        if hold:
            commit = self.session.commit

            def held_commit() -> None:
                self.reached.set()
                self._go.wait(WAIT_S)
                commit()
            self.session.commit = held_commit  # type: ignore[method-assign]

    def run(self) -> None:
        try:
            self.result = self.call(self.session)
        except BaseException as exc:  # noqa: BLE001 - the test asserts on it
            self.error = exc
        finally:
            self.session.close()
            self.reached.set()  # a call that failed before committing must not leave the test waiting

    def release(self) -> None:
        self._go.set()

    def outcome(self) -> Any:
        self.join(WAIT_S)
        assert not self.is_alive(), "the request is still blocked"
        if self.error is not None:
            raise self.error
        return self.result


def race(url: str, first: Callable[[Any], Any], second: Callable[[Any], Any]) -> tuple[Held, Held]:
    """`first` writes and holds its transaction open at its commit; `second` runs meanwhile (it must wait for
    first's row lock, if it takes one, for up to a second), then first commits. Both threads are joined."""
    a = Held(url, first, hold=True)
    a.start()
    try:
        assert a.reached.wait(WAIT_S)
        assert a.error is None, f"the first request failed before committing: {a.error!r}"
        b = Held(url, second)
        b.start()
        b.join(1.0)  # with the lock, b waits here until a commits; without it, b may be done already
    finally:
        a.release()
    a.join(WAIT_S)
    b.join(WAIT_S)
    return a, b


def statuses(url: str, sweep_id: int) -> dict[int, str]:
    with session_scope(url) as s:
        return dict(s.execute(select(Run.id, Run.status).where(Run.sweep_id == sweep_id, Run.kind == "train")).all())


def finished_with_checkpoints(url: str, run_id: int, status: str) -> None:
    with session_scope(url) as s:
        s.execute(update(Run).where(Run.id == run_id).values(status=status))
        s.add_all([Checkpoint(run_id=run_id, epoch=e, uri=f"/ckpt/{e}", bytes=1, sha256="x") for e in (1, 2)])


@pytest.fixture
def sweep(app_client) -> tuple[int, list[int]]:  # noqa: ANN001
    body = {"name": "races", "base": {"epochs": 2, "data": {"name": "gaussian"}},
            "grid": {"model.width": [2, 4, 8, 16, 32, 64]}, "seeds": [0]}
    sid = app_client.post("/sweeps", json=body).json()["sweep_id"]
    return sid, [r["id"] for r in app_client.get("/runs", params={"sweep_id": sid}).json()["items"]]


def validate(run_id: int, settings: Any, enqueuer: Any) -> Callable[[Any], Any]:
    return lambda s: runs_api.validate_run(run_id, ValidateRequest(), s, settings, enqueuer, None)


def retry_run(run_id: int, settings: Any, enqueuer: Any) -> Callable[[Any], Any]:
    return lambda s: runs_api.retry_run(run_id, s, settings, enqueuer, None)


def retry_sweep(sweep_id: int, settings: Any, enqueuer: Any) -> Callable[[Any], Any]:
    return lambda s: sweeps_api.retry_sweep(sweep_id, s, settings, enqueuer, None)


# ---- 1. identical validate requests: one job, the others 409 -------------------------------------------

def test_identical_concurrent_validates_make_one_job_and_409s(sweep, db_url, settings, enqueuer):
    _, ids = sweep
    finished_with_checkpoints(db_url, ids[0], "succeeded")
    a, b = race(db_url, validate(ids[0], settings, enqueuer), validate(ids[0], settings, enqueuer))
    job = a.outcome()["run_id"]
    with pytest.raises(StateConflict, match=f"run {job} is queued to validate run {ids[0]} with these options"):
        b.outcome()  # before the lock: IntegrityError (UniqueViolation on uq_run_sweep_kind_hash), a 500


def _duplicate_primary_run(session, parent, options, **_):  # noqa: ANN001, ANN202
    """Inserts a second run with the parent's spec_hash: the unique violation a lost race would raise."""
    session.add(Run(sweep_id=parent.sweep_id, kind="train", spec=parent.spec, spec_hash=parent.spec_hash))
    session.flush()


def _null_spec_hash(session, parent, options, **_):  # noqa: ANN001, ANN202
    """A NOT NULL violation: a bug, not a race."""
    session.add(Run(sweep_id=parent.sweep_id, kind="validate", spec=parent.spec, spec_hash=None))
    session.flush()


@pytest.mark.parametrize("write, code", [(_duplicate_primary_run, 409), (_null_spec_hash, 500)])
def test_a_unique_violation_that_escapes_is_a_logged_409_other_integrity_errors_stay_500(
        app_client, sweep, db_url, monkeypatch, caplog, write, code):
    _, ids = sweep
    finished_with_checkpoints(db_url, ids[0], "succeeded")
    monkeypatch.setattr(actions_repo, "create_validate_run", write)
    with caplog.at_level(logging.ERROR, logger="service.errors"):
        resp = app_client.post(f"/runs/{ids[0]}/validate", json={})
    assert resp.status_code == code, resp.text
    logged = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], IntegrityError)]
    assert len(logged) == 1, "the integrity error must be logged with its traceback"
    if code == 409:
        detail = resp.json()["detail"]
        assert "another request wrote the same one first" in detail and "nothing was changed" in detail
        assert "uq_run_primary_hash" in detail or "UNIQUE constraint failed" in detail
    assert statuses(db_url, sweep[0]) == {i: "queued" for i in ids[1:]} | {ids[0]: "succeeded"}  # rolled back


# ---- 2. a cancel that lands while a worker gives its run back, or while its lease expires ---------------

def _claimed(url: str, run_id: int, owner: str, **claim: Any) -> None:
    with session_scope(url) as s:
        assert runs_repo.claim(s, run_id, owner, 60, **claim) is not None


def _cancel(url: str, run_id: int) -> str:
    with session_scope(url) as s:
        return actions_repo.cancel_run(s, run_id)


def _status_events(url: str, run_id: int) -> list[str]:
    with session_scope(url) as s:
        return [e.payload.get("status") for e in s.scalars(select(Event).where(Event.run_id == run_id)
                                                           .order_by(Event.id))]


def test_release_after_a_cancel_request_ends_the_run_cancelled(sweep, db_url):
    _, ids = sweep
    cancelled, released = ids[0], ids[1]
    for rid in (cancelled, released):
        _claimed(db_url, rid, f"w{rid}")
    assert _cancel(db_url, cancelled) == "cancel_requested"  # after the job's last cancel poll
    with session_scope(db_url) as s:
        assert runs_repo.release(s, cancelled, f"w{cancelled}") and runs_repo.release(s, released, f"w{released}")
    with session_scope(db_url) as s:
        run, plain = s.get(Run, cancelled), s.get(Run, released)
        # before: queued with cancel_requested, no message, skipped by stale_queued: stuck for ever
        assert (run.status, run.cancel_requested, run.lease_owner, run.attempt) == ("cancelled", True, None, 1)
        assert run.finished_at is not None and run.started_at is not None
        assert (plain.status, plain.attempt, plain.finished_at, plain.started_at) == ("queued", 0, None, None)
        hour_ago = runs_repo.utcnow() - timedelta(hours=1)
        assert runs_repo.stale_queued(s, hour_ago) == [(released, "train")]  # re-sent at the next pass
    assert _status_events(db_url, cancelled)[-2:] == ["running", "cancelled"]


def test_a_cancel_after_requeue_expired_read_the_run_ends_it_cancelled(sweep, db_url, monkeypatch):
    _, ids = sweep
    rid = ids[0]
    _claimed(db_url, rid, "w", now=runs_repo.utcnow() - timedelta(seconds=120))  # its lease has expired
    read = runs_repo.expired_runs

    def read_then_cancel(session, now=None):  # noqa: ANN001, ANN202 - the audit's interleaving
        runs = read(session, now)
        assert _cancel(db_url, rid) == "cancel_requested"  # a user cancels after the reconciler's read
        return runs

    monkeypatch.setattr(runs_repo, "expired_runs", read_then_cancel)
    with session_scope(db_url) as s:
        assert runs_repo.requeue_expired(s, runs_repo.utcnow(), 3) == ([], [rid])
    with session_scope(db_url) as s:
        run = s.get(Run, rid)
        assert (run.status, run.cancel_requested, run.error, run.lease_owner) == ("cancelled", True, None, None)
        assert run.finished_at is not None
    assert _status_events(db_url, rid)[-1] == "cancelled"


def test_requeue_expired_still_requeues_and_fails_by_attempts(sweep, db_url):
    _, ids = sweep
    for rid in ids[:2]:
        _claimed(db_url, rid, "w", now=runs_repo.utcnow() - timedelta(seconds=120))
    with session_scope(db_url) as s:
        s.execute(update(Run).where(Run.id == ids[1]).values(attempt=3))
    with session_scope(db_url) as s:
        assert runs_repo.requeue_expired(s, runs_repo.utcnow(), 3) == ([ids[0]], [ids[1]])
    with session_scope(db_url) as s:
        again, lost = s.get(Run, ids[0]), s.get(Run, ids[1])
        assert (again.status, again.error, again.started_at, again.finished_at) == ("queued", None, None, None)
        assert lost.status == "failed" and lost.finished_at is not None
        assert lost.error == "worker lost: the lease of w expired on attempt 3 of 3; no attempts left"


def test_reconciler_cancels_queued_runs_whose_cancel_no_worker_will_meet(sweep, db_url, settings):
    from worker.reconciler import reconcile_once

    _, ids = sweep
    stuck, fresh = ids[0], ids[1]
    with session_scope(db_url) as s:  # what release/requeue_expired left before: queued, cancel requested
        s.execute(update(Run).where(Run.id.in_([stuck, fresh])).values(cancel_requested=True))
        runs_repo.touch(s, [stuck], now=runs_repo.utcnow() - timedelta(minutes=10))
        runs_repo.touch(s, [i for i in ids if i != stuck])  # the rest just sent: nothing to re-send
    summary = reconcile_once(settings, resend_after_s=60, app=object())
    assert summary["cancelled"] == [stuck] and summary["resent"] == []
    assert statuses(db_url, sweep[0])[stuck] == "cancelled"
    assert statuses(db_url, sweep[0])[fresh] == "queued"  # within the grace period a worker may still meet it
    assert _status_events(db_url, stuck)[-1] == "cancelled"


# ---- 3. sweep retry and sweep cancel at once ----------------------------------------------------------

@pytest.mark.parametrize("first", ["retry", "cancel"])
def test_sweep_retry_and_cancel_act_in_a_serial_order(app_client, sweep, db_url, settings, enqueuer, first):
    sid, ids = sweep
    for rid in ids[::2]:
        assert app_client.post(f"/runs/{rid}/cancel").status_code == 200
    retry = retry_sweep(sid, settings, enqueuer)
    cancel = lambda s: sweeps_api.cancel_sweep(sid, s, enqueuer, None)  # noqa: E731
    a, b = race(db_url, *((retry, cancel) if first == "retry" else (cancel, retry)))
    a.outcome(), b.outcome()
    # before the sweep lock: half cancelled, half queued (the cancel's UPDATE did not see the retry's rows)
    assert set(statuses(db_url, sid).values()) == {"cancelled" if first == "retry" else "queued"}


# ---- 4. retry while a validate job reads the checkpoints ----------------------------------------------

@pytest.mark.parametrize("retry_kind", ["run", "sweep"])
@pytest.mark.parametrize("first", ["validate", "retry"])
def test_retry_and_validate_of_one_run_never_both_queue(sweep, db_url, settings, enqueuer, retry_kind, first):
    sid, ids = sweep
    finished_with_checkpoints(db_url, ids[0], "cancelled")
    retry = retry_run(ids[0], settings, enqueuer) if retry_kind == "run" else retry_sweep(sid, settings, enqueuer)
    check = validate(ids[0], settings, enqueuer)
    a, b = race(db_url, *((check, retry) if first == "validate" else (retry, check)))
    a.outcome()
    with pytest.raises((StateConflict, IllegalTransition)) as lost:
        b.outcome()
    why = "validate a finished run" if first == "retry" else \
        "validate job reading its checkpoints" if retry_kind == "run" else "whose checkpoints a validate job reads"
    assert why in str(lost.value)
    with session_scope(db_url) as s:
        parent = s.get(Run, ids[0]).status
        jobs = list(s.scalars(select(Run.status).where(Run.parent_run_id == ids[0])))
    assert (parent, jobs) == (("cancelled", ["queued"]) if first == "validate" else ("queued", []))


def test_sweep_retry_skips_runs_a_validate_job_reads(app_client, sweep, db_url):
    sid, ids = sweep
    finished_with_checkpoints(db_url, ids[0], "cancelled")
    job = app_client.post(f"/runs/{ids[0]}/validate", json={}).json()["run_id"]
    refused = app_client.post(f"/sweeps/{sid}/retry")
    assert refused.status_code == 409, refused.text
    assert f"run {ids[0]} (read by run {job})" in refused.json()["detail"]
    with session_scope(db_url) as s:
        s.execute(update(Run).where(Run.id == ids[1]).values(status="failed"))
    resp = app_client.post(f"/sweeps/{sid}/retry")
    assert resp.status_code == 200 and resp.json()["retried"] == 1, resp.text
    assert resp.json()["skipped"] == {str(ids[0]): job}  # the answer says which run was left, and why
    assert statuses(db_url, sid)[ids[0]] == "cancelled" and statuses(db_url, sid)[ids[1]] == "queued"
    with session_scope(db_url) as s:
        last = s.scalars(select(Event).where(Event.sweep_id == sid).order_by(Event.id.desc())).first()
    assert last.payload == {"status": "queued", "retry": True, "runs": 1, "skipped_validating": 1}
