"""Reclaiming disk, the database side: delete a sweep with every row under it, prune its runs' checkpoint rows.

Pruning takes the finished runs'. Each runs under the sweep's lock and its runs' row locks (as cancel and retry take
them), so a concurrent retry, validate request or claim acts wholly before or after it; the caller commits, then
removes the files (service.cleanup), so a failed commit loses nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from nc_core.db.actions_repo import READING, _readers
from nc_core.db.models import Checkpoint, Event, Metric, MetricDistribution, Run, Sweep, Worker, WorkerSample
from nc_core.db.states import FINISHED
from nc_core.db.sweeps_repo import PRIMARY_KINDS, StateConflict, add_event

CHUNK = 5000  # ids per IN (...) list: below SQLite's limit of bound parameters


def _chunks(ids: Sequence[int]) -> list[Sequence[int]]:
    return [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)]


def _lock_runs(session: Session, *where: Any, key_share: bool) -> list[Any]:
    """Lock the sweep's runs matching ``where`` in id order (PostgreSQL; on SQLite the sweep's lock_row already
    holds the database's write lock) and return their (id, sweep_id, created_at, kind, status) rows."""
    q = select(Run.id, Run.sweep_id, Run.created_at, Run.kind, Run.status).where(*where).order_by(Run.id)
    if session.get_bind().dialect.name != "sqlite":
        q = q.with_for_update(key_share=key_share)
    return list(session.execute(q))


def delete_sweep(session: Session, sweep_id: int) -> tuple[dict[str, int], list[Any]]:
    """Delete the sweep, its runs (train, ufm, validate jobs) and every row naming them: metric, distribution,
    checkpoint, event and worker_sample rows (a worker row's current_run_id of one is cleared). The caller holds
    the sweep's lock (sweeps_repo.get_sweep(lock=True)). StateConflict, nothing deleted, while a run is queued or
    running. Returns ({what: rows deleted}, the runs' (id, sweep_id, created_at, …) rows, for their folders, the
    ids of the runs that had checkpoint rows: an unmarked folder is theirs, as worker.workdirs decides).
    A 'status' event without a sweep (payload sweep_deleted) is left, so the change feed's ids never go back."""
    _lock_runs(session, Run.sweep_id == sweep_id, key_share=False)
    # read again: a validate job committed while this waited for its parent's lock is not among the rows the
    # locking SELECT returned (PostgreSQL's snapshot of it); with every run locked, no other job can come now
    runs = list(session.execute(select(Run.id, Run.sweep_id, Run.created_at, Run.kind, Run.status)
                                .where(Run.sweep_id == sweep_id).order_by(Run.id)))
    busy = [r for r in runs if r.status in READING]
    if busy:
        named = ", ".join(f"run {r.id} ({r.status}{', validate job' if r.kind == 'validate' else ''})"
                          for r in busy[:10])
        raise StateConflict(f"sweep {sweep_id}: expected no queued or running runs, got {len(busy)}: {named}"
                            f"{' …' if len(busy) > 10 else ''}; cancel them first (`ncsweep cancel {sweep_id}`, "
                            f"POST /sweeps/{sweep_id}/cancel) and delete once they have stopped")
    ids = select(Run.id).where(Run.sweep_id == sweep_id).scalar_subquery()
    recorded = set(session.scalars(select(Checkpoint.run_id).distinct().where(Checkpoint.run_id.in_(ids))))
    counts = {"event_rows": _delete(session, delete(Event).where(or_(Event.sweep_id == sweep_id,
                                                                     Event.run_id.in_(ids)))),
              "telemetry_rows": _delete(session, delete(WorkerSample).where(WorkerSample.run_id.in_(ids)))}
    session.execute(update(Worker).where(Worker.current_run_id.in_(ids)).values(current_run_id=None))
    for key, model in (("metric_rows", Metric), ("distribution_rows", MetricDistribution),
                       ("checkpoint_rows", Checkpoint)):
        counts[key] = _delete(session, delete(model).where(model.run_id.in_(ids)))
    # validate jobs first: their parent_run_id has no ON DELETE action
    counts["runs"] = _delete(session, delete(Run).where(Run.sweep_id == sweep_id, Run.parent_run_id.is_not(None)))
    counts["runs"] += _delete(session, delete(Run).where(Run.sweep_id == sweep_id))
    session.execute(delete(Sweep).where(Sweep.id == sweep_id))
    add_event(session, None, None, status="deleted", sweep_deleted=sweep_id, runs=counts["runs"])
    return counts, runs, recorded


def _delete(session: Session, statement: Any) -> int:
    return session.execute(statement.execution_options(synchronize_session=False)).rowcount or 0


@dataclass
class PrunePlan:
    """What prune_checkpoints did: the finished runs looked at (their rows as _lock_runs gives them), the
    checkpoint epochs each keeps, the rows deleted and the runs that lost some, the runs skipped."""

    runs: list[Any] = field(default_factory=list)
    kept: dict[int, set[int]] = field(default_factory=dict)
    doomed: dict[int, set[int]] = field(default_factory=dict)  # run → the epochs whose rows were deleted
    rows: int = 0
    pruned: set[int] = field(default_factory=set)
    skipped: dict[int, int] = field(default_factory=dict)  # run → its queued or running validate job
    unfinished: int = 0


def prune_checkpoints(session: Session, sweep_id: int, keep_last: int) -> PrunePlan:
    """Delete all but the newest ``keep_last`` checkpoint rows of each finished train/ufm run of the sweep
    (metrics stay), except runs a queued or running validate job reads (skipped, as a retry skips them). The
    caller holds the sweep's lock; the runs' rows are locked here, as a validate request locks its parent."""
    primary = (Run.sweep_id == sweep_id, Run.kind.in_(PRIMARY_KINDS))
    finished = _lock_runs(session, *primary, Run.status.in_(FINISHED), key_share=True)
    plan = PrunePlan(unfinished=session.scalar(select(func.count()).where(*primary, Run.status.not_in(FINISHED))))
    ids = {r.id for r in finished}
    plan.skipped = {parent: job for parent, job in session.execute(_readers(Run.sweep_id == sweep_id))
                    if parent in ids}
    plan.runs = [r for r in finished if r.id not in plan.skipped]
    plan.kept = {r.id: set() for r in plan.runs}
    doomed: list[int] = []
    for chunk in _chunks(sorted(plan.kept)):
        rows = session.execute(select(Checkpoint.id, Checkpoint.run_id, Checkpoint.epoch)
                               .where(Checkpoint.run_id.in_(chunk))
                               .order_by(Checkpoint.run_id, Checkpoint.epoch.desc()))
        for row in rows:
            if len(plan.kept[row.run_id]) < keep_last:
                plan.kept[row.run_id].add(row.epoch)
            else:
                doomed.append(row.id)
                plan.pruned.add(row.run_id)
                plan.doomed.setdefault(row.run_id, set()).add(row.epoch)
    for chunk in _chunks(doomed):
        plan.rows += _delete(session, delete(Checkpoint).where(Checkpoint.id.in_(chunk)))
    return plan
