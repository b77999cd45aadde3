"""Status changes the API makes on runs: cancel, retry, validate jobs.

Each reads a run's state under a row lock (sweeps_repo.lock_row) and acts on it in the same transaction, so
concurrent requests on one run or sweep act in some serial order: the loser of a race sees the winner's result and
gets the 409 a serial order gives.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased

from nc_core.db.bulk_insert import Job, insert_runs, now
from nc_core.db.models import Checkpoint, Run
from nc_core.db.runs_repo import unstarted
from nc_core.db.states import CANCELLED, FAILED, QUEUED, RUNNING, IllegalTransition, status_phrase
from nc_core.db.sweeps_repo import StateConflict, add_event, lock_row

RETRYABLE = (FAILED, CANCELLED)
READING = (QUEUED, RUNNING)  # a validate job in these statuses reads (or will read) its parent's checkpoints


def cancel_run(session: Session, run_id: int) -> str:
    """queued → cancelled now; running → cancel_requested (the worker stops at the next step).
    Returns 'cancelled' or 'cancel_requested'; IllegalTransition for finished runs. The run's row is locked
    first: a worker's claim or finish (a fenced UPDATE of the row) waits until this transaction ends."""
    lock_row(session, Run, run_id)
    status, sweep_id = session.execute(select(Run.status, Run.sweep_id).where(Run.id == run_id)).one()
    if status == QUEUED:
        values = dict(status=CANCELLED, cancel_requested=True, finished_at=now(), updated_at=now())
        outcome = "cancelled"
    elif status == RUNNING:
        values, outcome = dict(cancel_requested=True, updated_at=now()), "cancel_requested"
    else:
        why = "is already cancelled" if status == CANCELLED else \
            f"{status_phrase(status)}; only queued or running runs can be cancelled"
        raise IllegalTransition(run_id, status, CANCELLED, f"run {run_id} {why}")
    if not session.execute(update(Run).where(Run.id == run_id, Run.status == status).values(**values)).rowcount:
        raise StateConflict(f"run {run_id}: expected it {status} under its row lock, but it changed; try again")
    add_event(session, sweep_id, run_id, **({"status": CANCELLED} if outcome == "cancelled"
                                           else {"status": RUNNING, "cancel_requested": True}))
    return outcome


def queued_run_ids(session: Session, *where: Any) -> list[int]:
    """Ids of the queued runs matching ``where`` (no lock: what a cancel may find messages of in the broker)."""
    return list(session.scalars(select(Run.id).where(Run.status == QUEUED, *where).order_by(Run.id)))


def cancel_sweep(session: Session, sweep_id: int) -> tuple[dict[str, int], list[int]]:
    """Cancel every queued run, flag every running run; finished runs are untouched: (counts, ids of the runs
    cancelled). The caller holds the sweep's lock (sweeps_repo.get_sweep(lock=True)), so a concurrent sweep
    retry acts wholly before or after."""
    t = now()
    ids = list(session.scalars(update(Run).where(Run.sweep_id == sweep_id, Run.status == QUEUED)
                               .values(status=CANCELLED, cancel_requested=True, finished_at=t, updated_at=t)
                               .returning(Run.id)))
    cancelled = len(ids)
    flagged = session.execute(update(Run).where(Run.sweep_id == sweep_id, Run.status == RUNNING,
                                                Run.cancel_requested.is_(False))
                              .values(cancel_requested=True, updated_at=t)).rowcount
    add_event(session, sweep_id, None, status=CANCELLED, runs=cancelled, cancel_requested=flagged)
    return {"cancelled": cancelled, "cancel_requested": flagged}, sorted(ids)


def _requeue_values(max_attempts: int) -> dict[str, Any]:
    """A retry starts a fresh series of attempts: attempt 0 of max_attempts (the next claim is "attempt 1 of
    max_attempts", as for a new run, and the reconciler's limit settings.max_attempts agrees), with the
    per-attempt fields of the ended attempt cleared (runs_repo.unstarted); the completed epochs stay."""
    return dict(status=QUEUED, cancel_requested=False, error=None, lease_owner=None, lease_expires_at=None,
                worker_name=None, updated_at=now(), attempt=0, max_attempts=max_attempts, **unstarted())


def _readers(*where: Any):  # noqa: ANN202 - a SELECT of (parent_run_id, validate job id)
    """(parent run, lowest id of its queued or running validate jobs) for the parents matching `where`
    (conditions on the validate jobs): training again would rewrite and prune the checkpoints they read."""
    return (select(Run.parent_run_id, func.min(Run.id))
            .where(Run.kind == "validate", Run.status.in_(READING), Run.parent_run_id.is_not(None), *where)
            .group_by(Run.parent_run_id))


def retry_run(session: Session, run_id: int, *, max_attempts: int) -> Job:
    """failed/cancelled → queued with a fresh allowance: attempt 0 of max_attempts (see _requeue_values).
    StateConflict while a validate job reads its checkpoints; the run's row lock makes that check and the
    re-queue one step against a concurrent POST /runs/{id}/validate (which takes the same lock)."""
    lock_row(session, Run, run_id)
    status = session.scalar(select(Run.status).where(Run.id == run_id))
    if status not in RETRYABLE:
        raise IllegalTransition(run_id, status, QUEUED,
                                f"run {run_id} {status_phrase(status)}; only failed or cancelled runs can be retried")
    reader = session.execute(_readers(Run.parent_run_id == run_id)).first()
    if reader is not None:
        raise StateConflict(f"run {run_id} has a validate job reading its checkpoints (run {reader[1]}); retry it "
                            f"once that job has ended, or cancel run {reader[1]} first")
    row = session.execute(update(Run).where(Run.id == run_id, Run.status.in_(RETRYABLE))
                          .values(**_requeue_values(max_attempts))
                          .returning(Run.kind, Run.id, Run.sweep_id, Run.attempt)).first()
    if row is None:
        raise StateConflict(f"run {run_id}: expected it {status} under its row lock, but it changed; try again")
    add_event(session, row[2], run_id, status=QUEUED, retry=True, attempt=row[3])
    return row[0], row[1]


def retry_sweep(session: Session, sweep_id: int, *, max_attempts: int) -> tuple[list[Job], dict[int, int]]:
    """Re-queue every failed/cancelled run of the sweep like retry_run, except those a queued or running
    validate job reads (as retry_run refuses them): (jobs re-queued, {run skipped: its validate job}).
    StateConflict when nothing can be retried. The caller holds the sweep's lock (against a concurrent sweep
    cancel); the runs' rows are locked too, as a run retry and a validate request lock them."""
    retryable = (Run.sweep_id == sweep_id, Run.status.in_(RETRYABLE))
    session.execute(select(Run.id).where(*retryable).order_by(Run.id).with_for_update(key_share=True)).all()
    skipped = {run_id: reader for run_id, reader in session.execute(_readers(
        Run.sweep_id == sweep_id, Run.parent_run_id.in_(select(Run.id).where(*retryable))))}
    job = aliased(Run)
    busy = select(job.parent_run_id).where(job.sweep_id == sweep_id, job.kind == "validate",
                                           job.status.in_(READING), job.parent_run_id.is_not(None))
    rows = session.execute(update(Run).where(*retryable, Run.id.not_in(busy))
                           .values(**_requeue_values(max_attempts)).returning(Run.kind, Run.id)
                           .execution_options(synchronize_session=False)).all()
    if not rows and skipped:
        pairs = ", ".join(f"run {r} (read by run {v})" for r, v in sorted(skipped.items())[:10])
        raise StateConflict(f"sweep {sweep_id}: expected failed or cancelled runs free to retry, got only "
                            f"{len(skipped)} whose checkpoints a validate job reads: {pairs}"
                            f"{' …' if len(skipped) > 10 else ''}; retry them once those jobs have ended, or "
                            "cancel the jobs first")
    if not rows:
        raise StateConflict(f"sweep {sweep_id} has no failed or cancelled runs to retry")
    add_event(session, sweep_id, None, status=QUEUED, retry=True, runs=len(rows),
              **({"skipped_validating": len(skipped)} if skipped else {}))
    return sorted(((kind, run_id) for kind, run_id in rows), key=lambda j: j[1]), skipped


def checkpoint_epochs(session: Session, run_id: int) -> list[int]:
    return list(session.scalars(select(Checkpoint.epoch).where(Checkpoint.run_id == run_id).order_by(Checkpoint.epoch)))


def create_validate_run(session: Session, parent: Run, options: dict[str, Any], *, epochs_total: int,
                        max_attempts: int) -> Job:
    """A 'validate' run recomputing metrics from the parent's checkpoints (caller checked them, under the
    parent's row lock: sweeps_repo.get_run(lock=True)). The lock is taken here too, so that of identical
    concurrent requests one inserts the job and the others wait for it and get this StateConflict (409), not a
    unique violation of uq_run_sweep_kind_hash."""
    lock_row(session, Run, parent.id)
    key = json.dumps({"parent": parent.spec_hash, "options": options}, sort_keys=True)
    h = hashlib.sha256(key.encode()).hexdigest()
    clash = session.execute(select(Run.id, Run.status).where(
        Run.sweep_id == parent.sweep_id, Run.kind == "validate", Run.parent_run_id == parent.id,
        Run.spec_hash == h)).first()
    if clash is not None:
        cid, status = clash
        then = {QUEUED: "is queued to validate", RUNNING: "is validating"}.get(status)
        if then:
            raise StateConflict(f"run {cid} {then} run {parent.id} with these options")
        if status in RETRYABLE:
            raise StateConflict(f"run {cid}, a validate job of run {parent.id} with these options, {status}; "
                                f"retry run {cid} instead")
        raise StateConflict(f"run {cid} has validated run {parent.id} with these options already (the checkpoints "
                            f"of a finished run do not change): its metrics are at /runs/{cid}/metrics")
    t = now()
    values = {"sweep_id": parent.sweep_id, "kind": "validate", "parent_run_id": parent.id, "spec": parent.spec,
              "spec_hash": h, "grid": parent.grid, "seed": parent.seed, "options": options, "status": QUEUED,
              "max_attempts": max_attempts, "epochs_total": epochs_total, "created_at": t,
              "updated_at": t}
    job = insert_runs(session, [values])[0]
    add_event(session, parent.sweep_id, job[1], status=QUEUED, kind="validate", parent_run_id=parent.id)
    return job
