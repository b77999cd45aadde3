"""Metric rows of many runs at once: a sweep's runs after a cursor, within a row budget (GET /sweeps/{id}/metrics)."""
from __future__ import annotations

from typing import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from nc_core.db.models import Metric, Run
from nc_core.db.sweeps_repo import metric_series_query


def sweep_metric_series(session: Session, sweep_id: int, after_run: int, runs: int, max_rows: int,
                        split: str | None, keys: Sequence[str] | None) -> tuple[list[int], list[tuple], bool]:
    """The sweep's first `runs` runs with id > `after_run` (by id, every kind, as GET /runs?sweep_id= lists
    them), cut before the run that would take the rows past `max_rows` but never before the first (a run larger
    than that comes whole, alone, as GET /runs/{id}/metrics gives it). Returns (those runs' ids, their (run_id,
    split, key, epoch, value, note, metric_version) rows ordered by run_id, then as metric_series orders them,
    whether more runs follow). One IN-list query on the (run_id, split, key, epoch) index, LIMIT max_rows + 1."""
    ids = list(session.scalars(select(Run.id).where(Run.sweep_id == sweep_id, Run.id > after_run)
                               .order_by(Run.id).limit(runs + 1)))
    more, ids = len(ids) > runs, ids[:runs]
    if not ids:
        return [], [], False
    rows = list(session.execute(metric_series_query(Metric.run_id.in_(ids), split, keys, with_run_id=True)
                                .limit(max_rows + 1)))
    if len(rows) <= max_rows:
        return ids, rows, more
    cut = rows[-1][0]  # the run the budget ran out in (its rows may be partial): it and the runs after it wait
    if cut == ids[0]:
        whole = metric_series_query(Metric.run_id == cut, split, keys, with_run_id=True)
        return [cut], list(session.execute(whole)), True
    return [i for i in ids if i < cut], [r for r in rows if r[0] < cut], True
