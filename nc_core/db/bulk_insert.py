"""Bulk insert of a sweep's queued runs: COPY on PostgreSQL, one executemany on SQLite, RETURNING otherwise."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Iterable, Sequence

from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from nc_core.db.models import Run
from nc_core.db.states import QUEUED
from nc_core.sweep import ExpandedRun

Job = tuple[str, int]  # (kind, run_id): what the enqueuer sends


def now() -> datetime:
    return datetime.now(timezone.utc)


def run_rows(sweep_id: int, expanded: Iterable[ExpandedRun], *, max_attempts: int) -> list[dict]:
    """Insert parameter rows for expanded runs (status queued)."""
    t = now()
    rows = []
    for run in expanded:
        spec = run.spec
        rows.append({"sweep_id": sweep_id, "kind": spec.kind, "parent_run_id": None, "spec": run.tree,
                     "spec_hash": run.spec_hash, SPEC_JSON: run.canonical,
                     "grid": run.grid, "seed": spec.seed, "options": {}, "status": QUEUED, "cancel_requested": False,
                     "attempt": 0, "max_attempts": max_attempts, "epoch": 0, "step": 0, "steps_total": 0,
                     "epochs_total": spec.epochs if spec.kind == "train" else spec.ufm.iterations,
                     "created_at": t, "updated_at": t})
    return rows


_COLS = ("sweep_id", "kind", "parent_run_id", "spec", "spec_hash", "grid", "seed", "options", "status",
         "cancel_requested", "attempt", "max_attempts", "epoch", "step", "steps_total", "epochs_total",
         "created_at", "updated_at")
_JSON_COLS = [(i, c) for i, c in enumerate(_COLS) if c in ("spec", "grid", "options")]
SPEC_JSON = "_spec_json"  # row key: the spec's canonical JSON text, stored as is by the bulk paths
BULK_MIN = 64  # below this, a plain INSERT ... RETURNING is as fast


def insert_runs(session: Session, rows: Sequence[dict]) -> list[Job]:
    """Bulk insert → [(kind, id)] in row order. PostgreSQL: ids from the sequence + COPY; SQLite: one
    executemany under the write lock, ids from last_insert_rowid(); small batches: INSERT ... RETURNING."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    if len(rows) < BULK_MIN or dialect not in ("postgresql", "sqlite"):
        plain = [{k: v for k, v in row.items() if k != SPEC_JSON} for row in rows]
        result = session.execute(insert(Run).returning(Run.kind, Run.id, sort_by_parameter_order=True), plain)
        return [(kind, run_id) for kind, run_id in result]
    ids = _copy_pg(session, rows) if dialect == "postgresql" else _executemany_sqlite(session, rows)
    return [(row["kind"], run_id) for row, run_id in zip(rows, ids)]


def _copy_pg(session: Session, rows: Sequence[dict]) -> list[int]:
    conn = session.connection()
    ids = list(conn.execute(text("SELECT nextval(pg_get_serial_sequence('run', 'id')) FROM generate_series(1, :n) "
                                 "ORDER BY 1"), {"n": len(rows)}).scalars())
    with conn.connection.driver_connection.cursor() as cur:
        with cur.copy(f"COPY run (id, {', '.join(_COLS)}) FROM STDIN") as copy:
            for run_id, row in zip(ids, rows):
                copy.write_row((run_id, *_json_ready(row)))
    return ids


def _json_ready(row: dict) -> list:
    """Column values in _COLS order with JSON columns as text (the spec's canonical JSON reused)."""
    values = [row[c] for c in _COLS]
    for i, c in _JSON_COLS:
        values[i] = row.get(SPEC_JSON) if c == "spec" and SPEC_JSON in row else json.dumps(row[c])
    return values


def _executemany_sqlite(session: Session, rows: Sequence[dict]) -> list[int]:
    conn = session.connection()
    procs = [(i, Run.__table__.c[c].type.bind_processor(conn.dialect)) for i, c in enumerate(_COLS)
             if c not in dict(_JSON_COLS).values()]
    params = []
    for row in rows:
        values = _json_ready(row)
        for i, proc in procs:
            if proc is not None:
                values[i] = proc(values[i])
        params.append(tuple(values))
    conn.exec_driver_sql(f"INSERT INTO run ({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))})", params)
    last = conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one()
    return list(range(last - len(rows) + 1, last + 1))  # new rowids are max+1, in order, under the write lock
