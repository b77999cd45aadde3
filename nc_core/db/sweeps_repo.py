"""Sweep and run creation, row locks for the API's status changes (those are in actions_repo) and run queries."""
from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import (ColumnElement, Integer, Select, String, and_, case, func, insert, literal, or_, select, true,
                        union_all, update)
from sqlalchemy.orm import Session

from nc_core.db import states
from nc_core.db.bulk_insert import Job, insert_runs, now, run_rows
from nc_core.db.models import Event, Metric, Run, Sweep
from nc_core.db.states import QUEUED, RUNNING, SUCCEEDED
from nc_core.metric_keys import METRIC_KEYS, STORED_KEYS, TRAINING_KEYS
from nc_core.spec import SPLITS
from nc_core.sweep import ExpandedRun, SweepSpec

PRIMARY_KINDS = ("train", "ufm")  # runs that a sweep's grid defines (validate runs hang off them)


class StateConflict(RuntimeError):
    """A state-dependent refusal that is not a single status transition (HTTP 409)."""


def add_event(session: Session, sweep_id: int | None, run_id: int | None, **payload: Any) -> None:
    """One 'status' row in the change feed (SSE); bulk changes write one event per sweep, run_id None."""
    session.execute(insert(Event).values(kind="status", sweep_id=sweep_id, run_id=run_id, payload=payload, at=now()))


def create_sweep(session: Session, spec: SweepSpec, expanded: list[ExpandedRun], *,
                 owner: str = "", max_attempts: int = 3) -> tuple[int, list[Job]]:
    """Insert the sweep and its runs (caller commits, then enqueues the returned jobs)."""
    sweep = Sweep(name=spec.name, spec=spec.model_dump(mode="json"), axes=spec.axes, owner=owner, created_at=now())
    session.add(sweep)
    session.flush()
    return sweep.id, add_runs(session, sweep.id, expanded, max_attempts=max_attempts, created=True)


def add_runs(session: Session, sweep_id: int, expanded: list[ExpandedRun], *,
             max_attempts: int, created: bool = False) -> list[Job]:
    """Insert queued runs for a sweep (new or extended) and note them in the change feed."""
    jobs = insert_runs(session, run_rows(sweep_id, expanded, max_attempts=max_attempts))
    add_event(session, sweep_id, None, status=QUEUED, runs=len(jobs), sweep="created" if created else "extended")
    return jobs


def existing_hashes(session: Session, sweep_id: int) -> set[str]:
    q = select(Run.spec_hash).where(Run.sweep_id == sweep_id, Run.parent_run_id.is_(None))
    return set(session.scalars(q))


def lock_row(session: Session, model: type[Sweep] | type[Run], row_id: int) -> None:
    """Hold the row's lock until the transaction ends, so that concurrent status changes of it (and of the
    runs under it) act one after the other, each reading what the one before committed. PostgreSQL: SELECT …
    FOR NO KEY UPDATE (not FOR UPDATE, which would also stop inserts whose foreign key names the row: a run's
    validate job, a sweep's new runs). SQLite ignores FOR UPDATE, so a no-op UPDATE of the row takes its
    database write lock instead (as early, with the same effect: later reads see every committed change)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(model).where(model.id == row_id).values(id=model.id)
                        .execution_options(synchronize_session=False))
    else:
        session.execute(select(model.id).where(model.id == row_id).with_for_update(key_share=True))


def get_sweep(session: Session, sweep_id: int, *, lock: bool = False) -> Sweep | None:
    """The sweep; with lock=True its row is locked first (lock_row): cancel, retry and extend take it."""
    if lock:
        lock_row(session, Sweep, sweep_id)
    return session.scalar(select(Sweep).where(Sweep.id == sweep_id).execution_options(populate_existing=lock))


def get_run(session: Session, run_id: int, *, lock: bool = False) -> Run | None:
    """The run; with lock=True its row is locked first (lock_row) and the object read afresh."""
    if lock:
        lock_row(session, Run, run_id)
    return session.get(Run, run_id, populate_existing=lock)


def _fraction_sql(dialect: str):  # noqa: ANN202 - a SQL float expression
    """progress.run_fraction in SQL: 1 for succeeded; else completed epochs (+ the current epoch's share while
    running) over epochs_total, at most 1."""
    least = func.least if dialect == "postgresql" else func.min
    within = case((and_(Run.status == RUNNING, Run.steps_total > 0), least(Run.step * 1.0 / Run.steps_total, 1.0)),
                  else_=0.0)
    return case((Run.status == SUCCEEDED, 1.0),
                (Run.epochs_total > 0, least((Run.epoch + within) * 1.0 / Run.epochs_total, 1.0)), else_=0.0)


def sweep_stats(session: Session, sweep_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Per sweep: runs, counts per status, cancel_requested (queued or running runs whose cancel was requested),
    progress (work done: the mean progress.run_fraction, so cancelled and failed runs count only the epochs they
    completed) of the runs its grid defines, and ``validate_jobs`` (per status) of the validate jobs hanging off
    them."""
    frac = _fraction_sql(session.get_bind().dialect.name)
    primary = Run.kind.in_(PRIMARY_KINDS)
    q = (select(Run.sweep_id, Run.status, primary, func.count(), func.sum(frac),
                func.sum(Run.cancel_requested.cast(Integer)))  # counted below for unfinished statuses only
         .where(Run.sweep_id.in_(sweep_ids)).group_by(Run.sweep_id, Run.status, primary))
    out = {sid: {"runs": 0, "counts": {}, "progress": 0.0, "cancel_requested": 0, "validate_jobs": {}}
           for sid in sweep_ids}
    done: dict[int, float] = {sid: 0.0 for sid in sweep_ids}
    for sid, status, is_primary, n, fsum, creq in session.execute(q):
        st = out[sid]
        if not is_primary:
            st["validate_jobs"][status] = n
            continue
        st["runs"] += n
        st["counts"][status] = n
        if status in (QUEUED, RUNNING):  # a cancelled queued run keeps its flag: it is no request still pending
            st["cancel_requested"] += int(creq or 0)
        done[sid] += float(fsum or 0.0)
    for sid, st in out.items():
        st["progress"] = round(done[sid] / st["runs"], 6) if st["runs"] else 0.0
    return out


def sweep_kinds(session: Session, sweep_id: int) -> set[str]:
    """The kinds of the runs the sweep's grid defines ({'train'}, {'ufm'} or both)."""
    return set(session.scalars(select(Run.kind).where(Run.sweep_id == sweep_id, Run.kind.in_(PRIMARY_KINDS))
                               .distinct()))


def default_split(session: Session, sweep_id: int) -> str:
    """The split a sweep's results and plots show by default: 'test', or 'train' for a sweep of UFM runs
    only (a UFM has its free features and nothing else)."""
    return states.default_split(sweep_kinds(session, sweep_id))


#: The columns and statuses of a sweep's runs that its ETA reads (eta_from_rows).
ETA_COLUMNS = (Run.status, Run.started_at, Run.finished_at, Run.eta_s, Run.epochs_total, Run.start_epoch)
ETA_STATUSES = (QUEUED, RUNNING, SUCCEEDED)


def sweep_eta(session: Session, sweep_id: int) -> float | None:
    """:func:`eta_from_rows` of the sweep's runs."""
    return eta_from_rows(session.execute(select(*ETA_COLUMNS).where(Run.sweep_id == sweep_id,
                                                                   Run.status.in_(ETA_STATUSES))).all())


def eta_from_rows(rows: Sequence[Any]) -> float | None:
    """Rough ETA in seconds: (queued runs × mean whole-run duration + running remainder) / running. A succeeded
    run's last attempt (started_at → finished_at) trained epochs start_epoch+1..epochs_total: scaled to all.
    ``rows``: the sweep's runs with ETA_COLUMNS by name (others and other statuses are ignored)."""
    rows = [r for r in rows if r.status in ETA_STATUSES]
    durations = [(r.finished_at - r.started_at).total_seconds() * r.epochs_total / (r.epochs_total - (r.start_epoch or 0))
                 for r in rows if r.status == SUCCEEDED and r.started_at and r.finished_at and r.epochs_total
                 and r.epochs_total > (r.start_epoch or 0)]
    running = [r.eta_s for r in rows if r.status == RUNNING]
    queued = sum(1 for r in rows if r.status == QUEUED)
    if not queued and not running:
        return 0.0 if rows else None
    if queued and not durations:
        return None
    mean = sum(durations) / len(durations) if durations else 0.0
    remaining = queued * mean + sum(eta if eta is not None else mean for eta in running)
    return round(remaining / max(1, len(running)), 1)


def list_sweeps(session: Session, limit: int, offset: int) -> tuple[int, list[Sweep]]:
    total = session.scalar(select(func.count()).select_from(Sweep)) or 0
    rows = session.scalars(select(Sweep).order_by(Sweep.id.desc()).limit(limit).offset(offset))
    return total, list(rows)


# ---- queries: runs by spec field, metric series, per-run values at an epoch -------------------

def spec_condition(path: str, kind: str, value: Any):  # noqa: ANN201 - a SQL boolean expression
    """`run.spec[path] == value` for a scalar leaf; kind is 'str' | 'num' | 'bool' (see spec_filters)."""
    elem = Run.spec[tuple(path.split("."))]
    if value is None:
        return elem.as_string().is_(None)
    if kind == "bool":
        return elem.as_boolean() == bool(value)
    if kind == "num":
        return elem.as_float() == float(value)
    return elem.as_string() == str(value)


def query_runs(session: Session, *, sweep_id: int | None = None, status: str | None = None, kind: str | None = None,
               filters: Sequence[tuple[str, str, Any]] = (), limit: int = 100, offset: int = 0) -> tuple[int, list[Run]]:
    """Runs matching the filters (path, kind, value), ordered by id; returns (total, page). Different paths
    must all match; several values of one path match any of them (`loss.name` mse or ce)."""
    by_path: dict[str, list] = {}
    for p, k, v in filters:
        by_path.setdefault(p, []).append(spec_condition(p, k, v))
    conds = [c[0] if len(c) == 1 else or_(*c) for c in by_path.values()]
    if sweep_id is not None:
        conds.append(Run.sweep_id == sweep_id)
    if status is not None:
        conds.append(Run.status == status)
    if kind is not None:
        conds.append(Run.kind == kind)
    total = session.scalar(select(func.count()).select_from(Run).where(*conds)) or 0
    page = session.scalars(select(Run).where(*conds).order_by(Run.id).limit(limit).offset(offset))
    return total, list(page)


def metric_series_query(runs: ColumnElement[bool], split: str | None, keys: Sequence[str] | None, *,
                        with_run_id: bool = False) -> Select:
    """SELECT the ([run_id,] split, key, epoch, value, note, metric_version) metric rows of the runs that `runs`
    (a condition on Metric.run_id) picks, only `split`'s and `keys`' if given, ordered by ([run_id,] split, key,
    epoch): the (run_id, split, key, epoch) index's order, so the index serves it (metric_series and
    metrics_repo.sweep_metric_series)."""
    lead = (Metric.run_id,) if with_run_id else ()
    q = select(*lead, Metric.split, Metric.key, Metric.epoch, Metric.value, Metric.note,
               Metric.metric_version).where(runs)
    if split is not None:
        q = q.where(Metric.split == split)
    if keys:
        q = q.where(Metric.key.in_(list(keys)))
    return q.order_by(*lead, Metric.split, Metric.key, Metric.epoch)


def metric_series(session: Session, run_id: int, split: str | None, keys: Sequence[str] | None) -> list[tuple]:
    """(split, key, epoch, value, note, metric_version) rows of one run (only `keys` if given), ordered;
    served by the (run_id, split, key, epoch) index."""
    return list(session.execute(metric_series_query(Metric.run_id == run_id, split, keys)))


def string_table(name: str, columns: Sequence[str], rows: Sequence[tuple[str, ...]]):  # noqa: ANN202 - a FROM clause
    """Distinct rows of strings as a table ``name(columns…)``: a UNION ALL of literals, which PostgreSQL and
    SQLite both take (``rows`` must not be empty)."""
    return union_all(*(select(*(literal(v, String(64)).label(c) for c, v in zip(columns, row)))
                       for row in dict.fromkeys(rows))).subquery(name)


def storable_pairs(kinds: set[str]) -> list[tuple[str, str]]:
    """The (key, split) pairs runs of these kinds can store (nc_core.metric_keys): a train run METRIC_KEYS on
    each split and TRAINING_KEYS on train, a UFM run METRIC_KEYS on train (its free features only)."""
    pairs = {(k, s) for k in METRIC_KEYS for s in (SPLITS if "train" in kinds else ("train",) if kinds else ())}
    return sorted(pairs | ({(k, "train") for k in TRAINING_KEYS} if "train" in kinds else set()))


def stored_pairs(session: Session, sweep_id: int, split: str | None = None) -> list[tuple[str, str]]:
    """(key, split) pairs (only `split`'s if given) stored for the runs the sweep's grid defines, sorted: what
    its results (latest_values with keys=None) and the dashboard's metric dropdown offer. Each pair its kinds
    can store (storable_pairs) is probed through the (run_id, split, key, epoch) index, run by run until one
    has it (LIMIT 1), so no scan of the sweep's metric rows."""
    pairs = [p for p in storable_pairs(sweep_kinds(session, sweep_id)) if split is None or p[1] == split]
    if not pairs:
        return []
    table = string_table("pair", ["key", "split"], pairs)
    stored_by_a_run = (select(Metric.run_id).join(Run, Run.id == Metric.run_id)
                       .where(Run.sweep_id == sweep_id, Run.kind.in_(PRIMARY_KINDS), Metric.split == table.c.split,
                              Metric.key == table.c.key).limit(1).scalar_subquery())
    return [(k, s) for k, s in session.execute(select(table.c.key, table.c.split)
                                               .where(stored_by_a_run.is_not(None))
                                               .order_by(table.c.key, table.c.split))]


def latest_values(session: Session, split: str, keys: Sequence[str] | None, *, sweep_id: int | None = None,
                  run_ids: Sequence[int] = (), epoch: int | None = None) -> list[tuple[int, str, float | None, int]]:
    """(run_id, key, value, epoch) of each run (the sweep's primary runs, or `run_ids`) and key (None: each key
    the sweep stores in `split`, stored_pairs; with run_ids every key) at the last epoch that run measured that
    key in `split`, or at `epoch`; none where it has no such row. Per key, not per run: a run evaluates its NC
    metrics and acc at its eval epochs only but stores its training keys (TRAINING_KEYS) every epoch, so its last
    epoch overall may have no NC value. Each (run, key) costs two descents of the (run_id, split, key, epoch)
    index (ORDER BY epoch DESC LIMIT 1: the epoch, index-only, and the value), never a scan of the runs' series;
    a run with no row in `split` (a queued run) costs one descent, not one per key."""
    if not keys and sweep_id is not None:
        keys = [key for key, _ in stored_pairs(session, sweep_id, split)]
        if not keys:
            return []
    cond = and_(Run.sweep_id == sweep_id, Run.kind.in_(PRIMARY_KINDS)) if sweep_id is not None \
        else Run.id.in_(list(run_ids))
    measured = select(Metric.run_id).where(Metric.run_id == Run.id, Metric.split == split).exists()
    runs = select(Run.id.label("rid")).where(cond, measured).subquery("r")
    k = string_table("k", ["key"], [(key,) for key in keys or STORED_KEYS])
    point = select(Metric.epoch).where(Metric.run_id == runs.c.rid, Metric.split == split, Metric.key == k.c.key)
    if epoch is not None:
        point = point.where(Metric.epoch == epoch)
    last = point.order_by(Metric.epoch.desc()).limit(1)
    q = select(runs.c.rid, k.c.key, last.with_only_columns(Metric.value).scalar_subquery(),
               last.scalar_subquery()).select_from(runs.join(k, true()))
    return [(rid, key, value, e) for rid, key, value, e in session.execute(q) if e is not None]


def sweep_values(session: Session, sweep_id: int, split: str, keys: Sequence[str] | None,
                 epoch: int | None) -> tuple[list[tuple[int, dict, str]], list[tuple[int, str, float | None, int]]]:
    """The sweep's primary runs (id, spec, status) and their (run_id, key, value, epoch) rows at `epoch`
    (None: the last epoch each run measured each key in `split`, see latest_values)."""
    runs = list(session.execute(select(Run.id, Run.spec, Run.status).where(
        Run.sweep_id == sweep_id, Run.kind.in_(PRIMARY_KINDS)).order_by(Run.id)))
    return ([(rid, spec, status) for rid, spec, status in runs],
            latest_values(session, split, keys, sweep_id=sweep_id, epoch=epoch))
