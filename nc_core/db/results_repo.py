"""A running job's fenced writes of its results: metric rows, distributions and checkpoint rows (upserts)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from nc_core.db.models import Checkpoint, Metric, MetricDistribution
from nc_core.db.runs_repo import fenced_update, finite_or_none, add_event, utcnow


def _upsert(session: Session, table: Any, rows: list[dict], keys: list[str], update_cols: list[str]) -> None:
    """INSERT … ON CONFLICT (keys) DO UPDATE, for PostgreSQL and SQLite."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        raise RuntimeError(f"upsert: expected a postgresql or sqlite database, got {name!r}")
    stmt = dialect_insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update_cols})
    session.execute(stmt, rows)


def upsert_metrics(session: Session, run_id: int, owner: str, epoch: int, split: str,
                   metrics: dict[str, Any], version: int) -> bool:
    """Write one metric row per key (NaN/inf → NULL, with the reason a MetricDict gives for it as the row's
    note); retries overwrite. False = not the lease holder."""
    now = utcnow()
    fence = fenced_update(session, run_id, owner, now)
    if fence is None:
        return False
    reasons = getattr(metrics, "reasons", None) or {}
    rows = [{"run_id": run_id, "epoch": int(epoch), "split": split, "key": str(k), "value": finite_or_none(v),
             "note": str(reasons[k])[:300] if k in reasons and finite_or_none(v) is None else None,
             "metric_version": int(version), "created_at": now}
            for k, v in metrics.items() if not str(k).startswith("_") and isinstance(v, (int, float))]
    if rows:
        _upsert(session, Metric.__table__, rows, ["run_id", "split", "key", "epoch"],
                ["value", "note", "metric_version", "created_at"])
        add_event(session, "metric", run_id, fence.sweep_id, epoch=int(epoch), split=split, n=len(rows))
    return True


def upsert_distribution(session: Session, run_id: int, owner: str, epoch: int, split: str, key: str,
                        values: list[float]) -> bool:
    """Write the sorted distribution of (run, epoch, split, key) (NaN/inf → null); retries overwrite.
    False = not the lease holder."""
    now = utcnow()
    if fenced_update(session, run_id, owner, now) is None:
        return False
    vals = [finite_or_none(v) for v in values]
    _upsert(session, MetricDistribution.__table__, [{"run_id": run_id, "epoch": int(epoch), "split": split,
                                                     "key": str(key), "values": vals, "n": len(vals),
                                                     "created_at": now}],
            ["run_id", "epoch", "split", "key"], ["values", "n", "created_at"])
    return True


def record_checkpoint(session: Session, run_id: int, owner: str, epoch: int, uri: str, nbytes: int,
                      sha256: str) -> bool:
    """Upsert the checkpoint row of (run, epoch). False = not the lease holder."""
    now = utcnow()
    if fenced_update(session, run_id, owner, now) is None:
        return False
    _upsert(session, Checkpoint.__table__, [{"run_id": run_id, "epoch": int(epoch), "uri": uri,
                                             "bytes": int(nbytes), "sha256": sha256, "created_at": now}],
            ["run_id", "epoch"], ["uri", "bytes", "sha256", "created_at"])
    return True


def forget_missing_checkpoints(session: Session, run_id: int, owner: str, exists: Any) -> list[int]:
    """Delete checkpoint rows whose file is gone (pruned by keep_last); `exists(uri) -> bool`."""
    if fenced_update(session, run_id, owner, utcnow()) is None:
        return []
    rows = session.execute(select(Checkpoint.id, Checkpoint.epoch, Checkpoint.uri).where(Checkpoint.run_id == run_id)).all()
    gone = [r for r in rows if not exists(r.uri)]
    if gone:
        session.execute(delete(Checkpoint).where(Checkpoint.id.in_([r.id for r in gone])))
    return [r.epoch for r in gone]
