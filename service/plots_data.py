"""Stored metric rows read for the plots: a sweep's runs, a run's series, final values, and their seed statistics."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from nc_core.db.models import Metric, Run
from nc_core.db.states import metric_step
from nc_core.db.sweeps_repo import PRIMARY_KINDS, latest_values


def sweep_runs(session: Session, sweep_id: int) -> list[Run]:
    """The runs the sweep's grid defines (as /results takes them: a validate job repeats its parent's
    epochs and would count as one more seed)."""
    return list(session.scalars(select(Run).where(Run.sweep_id == sweep_id, Run.kind.in_(PRIMARY_KINDS))
                                .order_by(Run.id)))


def metric_rows(session: Session, run_ids: Iterable[int], keys: Iterable[str]) -> list[tuple]:
    """(run_id, epoch, split, key, value) rows; NULL values (NaN) are kept as nan."""
    run_ids, keys = list(run_ids), list(keys)
    if not run_ids or not keys:
        return []
    q = select(Metric.run_id, Metric.epoch, Metric.split, Metric.key, Metric.value).where(
        Metric.run_id.in_(run_ids), Metric.key.in_(keys))
    return [(r, e, s, k, math.nan if v is None else float(v)) for r, e, s, k, v in session.execute(q)]


def run_series(session: Session, run_id: int, keys: Iterable[str]) -> dict[tuple[str, str], dict[int, float]]:
    """One run's metric points as {(split, key): {epoch: value}}."""
    by: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for _, epoch, sp, key, value in metric_rows(session, [run_id], keys):
        by[(sp, key)][epoch] = value
    return by


def run_step(session: Session, run_id: int) -> str:
    """What a run's metric epochs count, as axes name it ('iteration' for a UFM run; states.metric_step)."""
    return metric_step(session.scalars(select(Run.kind).where(Run.id == run_id)))


def finite_mean(values: Iterable[float]) -> float:
    """Mean of the finite values, NaN without any (as /sweeps/{id}/results' ``mean`` is null)."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return float(xs.mean()) if xs.size else math.nan


def sample_std(values: Iterable[float]) -> float:
    """Sample std (ddof 1) of the finite values, NaN with fewer than 2 (as /sweeps/{id}/results' ``std`` is null)."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return float(xs.std(ddof=1)) if xs.size > 1 else math.nan


def final_points(session: Session, runs: list[Run], key: str, split: str) -> dict[int, tuple[float, int]]:
    """run id → (value, epoch) of `key` on `split` at the last epoch the run measured it (one index descent a run);
    a NULL value is a NaN."""
    rows = latest_values(session, split, [key], run_ids=[r.id for r in runs])
    return {rid: (math.nan if value is None else float(value), epoch) for rid, _, value, epoch in rows}


def final_values(session: Session, runs: list[Run], key: str, split: str) -> dict[int, float]:
    """run id → the value of `key` on `split` at the last epoch the run measured it (final_points' values)."""
    return {rid: value for rid, (value, _) in final_points(session, runs, key, split).items()}
