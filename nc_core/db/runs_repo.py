"""Run lifecycle in SQL: lease claims, fenced heartbeats and finish, requeues, expiry, events (a job's results: results_repo)."""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import String, and_, case, cast, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from nc_core.db import states
from nc_core.db.models import Event, Run, utcnow  # utcnow: also runs_repo.utcnow to its callers

TASK_NAMES = {"train": "ncsweep.train", "validate": "ncsweep.validate", "ufm": "ncsweep.ufm"}


def add_event(session: Session, kind: str, run_id: int | None, sweep_id: int | None, **payload: Any) -> None:
    """Append one row to the change feed (read by SSE consumers)."""
    session.execute(insert(Event).values(kind=kind, run_id=run_id, sweep_id=sweep_id, payload=payload, at=utcnow()))


def fenced_update(session: Session, run_id: int, owner: str, now: datetime, **values: Any) -> tuple | None:
    """UPDATE the run iff `owner` holds its lease (row lock on PostgreSQL, write lock on SQLite).

    Returns the row's (sweep_id, cancel_requested, status, attempt, error) after it, or None when the lease is lost.
    """
    stmt = (update(Run).where(Run.id == run_id, Run.status == states.RUNNING, Run.lease_owner == owner)
            .values(updated_at=now, **values)
            .returning(Run.sweep_id, Run.cancel_requested, Run.status, Run.attempt, Run.error)
            .execution_options(synchronize_session=False))
    return session.execute(stmt).first()


#: Attempts whose environment a run keeps (the newest are kept).
MAX_ENVIRONMENTS = 20


def environment_number(environments: list[dict[str, Any]], index: int) -> int:
    """The ``n`` of ``environments[index]``: its place among all the run's attempts, oldest 1 (the attempt
    number does not say it: a retry starts it again at 1, and a job giving its run back returns its attempt).
    Entries stored before ``n`` was recorded have none: they come first in the list (entries are appended),
    so their place in it stands in."""
    n = environments[index].get("n")
    return n if isinstance(n, int) else index + 1


def record_environment(session: Session, run_id: int, owner: str, entry: dict[str, Any]) -> bool:
    """Append what this attempt runs with (``entry``: device, torch, threads, …, see
    nc_core.training.environment) to the run's ``environments``, tagged with the attempt, its lease owner
    (``worker``) and ``n``, one more than any before it (environment_number); fenced by the lease (False:
    lost). Idempotent, as write_retrying needs (a commit whose reply was lost is written again): this lease's
    entry is replaced, keeping its n, not added twice. Only the lease holder writes the column; on PostgreSQL
    the row is also locked (FOR NO KEY UPDATE) for the read-modify-write."""
    row = session.execute(select(Run.environments, Run.attempt)
                          .where(Run.id == run_id, Run.status == states.RUNNING, Run.lease_owner == owner)
                          .with_for_update(key_share=True)).first()
    if row is None:
        return False
    stored = row.environments or []
    numbers = [environment_number(stored, i) for i in range(len(stored))]
    mine = [n for e, n in zip(stored, numbers) if e.get("worker") == owner]
    n = mine[-1] if mine else max(numbers, default=0) + 1
    kept = [{**e, "n": k} for e, k in zip(stored, numbers) if e.get("worker") != owner][-(MAX_ENVIRONMENTS - 1):]
    return fenced_update(session, run_id, owner, utcnow(), environments=[
        *kept, {"attempt": row.attempt, "n": n, "worker": owner, **entry}]) is not None


def unstarted() -> dict[str, Any]:
    """The per-attempt fields of a run waiting for its next attempt (a retry, an expired lease): no start or
    finish time, rate, ETA or partial epoch. Its completed epochs stay: the next attempt resumes after them."""
    return dict(started_at=None, finished_at=None, eta_s=None, samples_per_s=None, step=0)


def claim(session: Session, run_id: int, owner: str, lease_s: float, *, now: datetime | None = None) -> Run | None:
    """Take the run's lease (queued, or running with an expired lease) → running, attempt + 1.

    started_at is the start of this attempt; rate and ETA of an earlier attempt are cleared, and start_epoch
    (the resume point) is taken to be the completed epochs until the reporter says where it resumed.
    Returns None when it is not claimable (another holder, finished, cancel requested): a duplicate
    delivery is then a no-op. Commits.
    """
    now = now or utcnow()
    stmt = (update(Run).where(Run.id == run_id, _claimable(now))
            .values(status=states.RUNNING, attempt=Run.attempt + 1, lease_owner=owner, worker_name=owner,
                    lease_expires_at=now + timedelta(seconds=lease_s), error=None, updated_at=now,
                    **{**unstarted(), "started_at": now}, start_epoch=Run.epoch)
            .returning(Run.sweep_id, Run.attempt).execution_options(synchronize_session=False))
    row = session.execute(stmt).first()
    if row is None:
        session.rollback()
        return None
    add_event(session, "status", run_id, row.sweep_id, status=states.RUNNING, attempt=row.attempt, worker=owner)
    session.commit()
    return session.execute(select(Run).where(Run.id == run_id).execution_options(populate_existing=True)).scalar_one()


def _claimable(now: datetime) -> Any:
    """The condition under which :func:`claim` takes a run: queued, or running on an expired lease with
    attempts left; never with a cancel requested."""
    return and_(or_(Run.status == states.QUEUED,
                    and_(Run.status == states.RUNNING, Run.lease_expires_at < now, Run.attempt < Run.max_attempts)),
                Run.cancel_requested.is_(False))


def claimable(session: Session, run_id: int, *, now: datetime | None = None) -> bool | None:
    """Whether :func:`claim` would take the run now; None: no such run (one primary-key read; the claim itself
    stays the authority: this only lets a worker drop a message no claim could use before paying for a job
    process)."""
    row = session.execute(select(_claimable(now or utcnow()).label("ok")).where(Run.id == run_id)).first()
    return None if row is None else bool(row.ok)


def drop_unclaimable(session: Session, run_id: int) -> str:
    """What a worker does with a message whose run no claim could take: a queued run whose cancel was requested
    becomes cancelled (:func:`cancel_queued`); returns why the message is dropped ('cancelled', or 'taken or
    finished')."""
    return "cancelled" if cancel_queued(session, run_id) else "taken or finished"


def _cancel_queued_where(session: Session, *where: Any, **why: Any) -> list[int]:
    """Queued runs matching `where` whose cancel was requested → cancelled, one status event each; their ids."""
    now = utcnow()
    rows = session.execute(update(Run).where(Run.status == states.QUEUED, Run.cancel_requested.is_(True), *where)
                           .values(status=states.CANCELLED, finished_at=now, updated_at=now)
                           .returning(Run.id, Run.sweep_id).execution_options(synchronize_session=False)).all()
    for row in rows:
        add_event(session, "status", row.id, row.sweep_id, status=states.CANCELLED, **why)
    return sorted(row.id for row in rows)


def cancel_queued(session: Session, run_id: int) -> bool:
    """A queued run whose cancel was requested becomes cancelled (when a worker meets its message)."""
    return bool(_cancel_queued_where(session, Run.id == run_id))


def cancel_stale_requested(session: Session, older_than: datetime) -> list[int]:
    """The reconciler's backstop: queued runs with cancel_requested untouched since `older_than` → cancelled
    (their ids). stale_queued does not re-send them, so no worker would ever end them (cancel_queued)."""
    return _cancel_queued_where(session, Run.updated_at < older_than, reason="cancel requested while queued")


def cancel_requested(session: Session, run_id: int) -> bool:
    """Whether a user asked to cancel the run (a primary-key read: jobs poll it between heartbeats)."""
    return bool(session.scalar(select(Run.cancel_requested).where(Run.id == run_id)))


def heartbeat(session: Session, run_id: int, owner: str, lease_s: float, *, epoch: int | None = None,
              step: int | None = None, epochs_total: int | None = None, steps_total: int | None = None,
              samples_per_s: float | None = None, eta_s: float | None = None, start_epoch: int | None = None,
              now: datetime | None = None) -> bool:
    """Extend the lease and record progress (start_epoch: where this attempt resumed). False = lease lost or
    cancel requested: stop the job."""
    now = now or utcnow()
    progress = {k: v for k, v in dict(epoch=epoch, step=step, epochs_total=epochs_total, steps_total=steps_total,
                                      samples_per_s=finite_or_none(samples_per_s), eta_s=finite_or_none(eta_s),
                                      start_epoch=start_epoch).items() if v is not None}
    row = fenced_update(session, run_id, owner, now, lease_expires_at=now + timedelta(seconds=lease_s), **progress)
    if row is None:
        return False
    if progress:
        add_event(session, "progress", run_id, row.sweep_id, **progress)
    return not row.cancel_requested


def finite_or_none(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def finish(session: Session, run_id: int, owner: str, status: str, error: str | None = None) -> bool:
    """running → succeeded | failed | cancelled, only by the lease holder. False = lease lost."""
    states.check_transition(run_id, states.RUNNING, status)
    now = utcnow()
    row = fenced_update(session, run_id, owner, now, status=status, error=error, finished_at=now, lease_expires_at=None)
    if row is None:
        return False
    add_event(session, "status", run_id, row.sweep_id, status=status, error=error)
    return True


def _requeue_or_end(requeue: Any, now: datetime, **values: Any) -> dict[str, Any]:
    """SET values for a running run that goes back to the queue where the SQL condition `requeue` holds (the
    per-attempt fields cleared: unstarted()) and ends otherwise (finished_at now, its attempt's fields kept):
    decided by the UPDATE itself on the row it locks, never from an earlier read of it."""
    out = {k: case((requeue, v), else_=getattr(Run, k)) for k, v in unstarted().items()}
    out["finished_at"] = case((requeue, None), else_=now)
    return {**out, "lease_owner": None, "lease_expires_at": None, **values}


def release(session: Session, run_id: int, owner: str) -> bool:
    """running → queued by the lease holder whose worker is stopping cleanly (the job stopped after its last
    completed epoch, checkpointed): the attempt is given back, and the run is marked as not sent so the
    reconciler re-sends it at its next pass. Unless a cancel was requested by then (after the job's last poll):
    → cancelled, as a cancel of a queued run does — a queued run with cancel_requested has no message and no
    worker would ever end it. The UPDATE reads the flag itself. False = lease lost."""
    now = utcnow()
    requeue = Run.cancel_requested.is_(False)
    row = fenced_update(session, run_id, owner, now, **_requeue_or_end(
        requeue, now, status=case((requeue, states.QUEUED), else_=states.CANCELLED),
        attempt=case((requeue, Run.attempt - 1), else_=Run.attempt)))
    if row is None:
        return False
    if row.cancel_requested:
        add_event(session, "status", run_id, row.sweep_id, status=states.CANCELLED, reason="worker stopped")
        return True
    touch(session, [run_id], now=now - timedelta(days=1))
    add_event(session, "status", run_id, row.sweep_id, status=states.QUEUED, reason="worker stopped")
    return True


def requeue_after_outage(session: Session, run_id: int, owner: str, reason: str, max_attempts: int) -> str | None:
    """running → queued by the lease holder whose job stopped on a transient database error (an outage):
    unlike :func:`release` the attempt stays spent, so outages are bounded as lost workers are
    (:func:`_requeue_unless_spent`: failed with ``reason`` on attempt ``max_attempts``, cancelled if requested).
    A re-queued run is marked as not sent, as release does, so the reconciler re-sends it at its next pass
    should its worker fail to. One status event carries the reason. Returns the new status; None = lease lost."""
    now, why = utcnow(), f"database unavailable: {reason}"[:500]
    ended = literal(f"{why} (attempt ") + cast(Run.attempt, String) + literal(f" of {max_attempts}; no attempts left)")
    row = fenced_update(session, run_id, owner, now, **_requeue_unless_spent(Run.attempt < max_attempts, now, ended))
    if row is None:
        return None
    if row.status == states.QUEUED:
        touch(session, [run_id], now=now - timedelta(days=1))
    add_event(session, "status", run_id, row.sweep_id, status=row.status, attempt=row.attempt, reason=why,
              **({"error": row.error} if row.status == states.FAILED else {}))
    return row.status


def _requeue_unless_spent(left: Any, now: datetime, ended: Any) -> dict[str, Any]:
    """SET values for a running run whose attempt ended without finishing (a lost lease, a database outage),
    decided on the row the UPDATE locks: cancelled when a cancel was requested, back to the queue while ``left``
    (attempts left) holds, else failed with the error ``ended``."""
    cancel = Run.cancel_requested.is_(True)
    status = case((cancel, states.CANCELLED), (left, states.QUEUED), else_=states.FAILED)
    return _requeue_or_end(and_(~cancel, left), now, status=status, error=case((or_(cancel, left), None), else_=ended))


def expired_runs(session: Session, now: datetime | None = None) -> list[Run]:
    """Running runs whose lease has expired (their worker died or lost the database)."""
    now = now or utcnow()
    return list(session.scalars(select(Run).where(Run.status == states.RUNNING, Run.lease_expires_at < now)
                                .order_by(Run.id)))


def requeue_expired(session: Session, now: datetime | None = None,
                    max_attempts: int | None = None) -> tuple[list[int], list[int]]:
    """Expired leases → queued again (attempts left), else failed (or cancelled if requested): (re-queued ids,
    ended ids — failed and cancelled alike). The UPDATE chooses the status from the row it locks: a cancel
    requested after expired_runs read the run ends it cancelled, not queued with no message."""
    now = now or utcnow()
    requeued, failed = [], []
    for run in expired_runs(session, now):
        limit = max_attempts if max_attempts is not None else run.max_attempts
        lost = (f"worker lost: the lease of {run.lease_owner or 'a worker'} expired on attempt {run.attempt} of "
                f"{limit}; no attempts left")
        values = {**_requeue_unless_spent(Run.attempt < limit, now, lost), "updated_at": now}
        row = session.execute(update(Run).where(Run.id == run.id, Run.status == states.RUNNING, Run.lease_expires_at < now,
                                                Run.attempt == run.attempt).values(**values)
                              .returning(Run.status, Run.error).execution_options(synchronize_session=False)).first()
        if row is not None:
            add_event(session, "status", run.id, run.sweep_id, status=row.status, error=row.error,
                      reason="lease expired")
            (requeued if row.status == states.QUEUED else failed).append(run.id)
    return requeued, failed


def stale_queued(session: Session, older_than: datetime, limit: int = 10_000) -> list[tuple[int, str]]:
    """(id, kind) of queued runs untouched since `older_than`: their message may be lost."""
    rows = session.execute(select(Run.id, Run.kind).where(Run.status == states.QUEUED, Run.updated_at < older_than,
                                                          Run.cancel_requested.is_(False))
                           .order_by(Run.id).limit(limit))
    return [(r.id, r.kind) for r in rows]


def count_queued(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Run).where(Run.status == states.QUEUED)) or 0


def touch(session: Session, run_ids: Iterable[int], now: datetime | None = None) -> None:
    """Mark queued runs as just (re-)sent, so the reconciler waits a grace period again."""
    ids = list(run_ids)
    if ids:
        session.execute(update(Run).where(Run.id.in_(ids), Run.status == states.QUEUED)
                        .values(updated_at=now or utcnow()).execution_options(synchronize_session=False))


def kinds(session: Session, run_ids: Iterable[int]) -> dict[int, str]:
    """{run id: kind} (train / validate / ufm) for sending their task messages."""
    ids = list(run_ids)
    if not ids:
        return {}
    return {r.id: r.kind for r in session.execute(select(Run.id, Run.kind).where(Run.id.in_(ids)))}
