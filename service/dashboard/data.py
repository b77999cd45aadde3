"""Dashboard view models: sweep list with progress, completion matrix, run table, worker bars."""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nc_core.db import sweeps_repo, workers_repo
from nc_core.db.models import Metric, Run, Sweep
from service.plots import _axis_value, _sort_key, final_values

STATUS_ORDER = ("failed", "running", "queued", "cancelled", "succeeded")


def sweeps_overview(session: Session, limit: int = 200) -> list[dict[str, Any]]:
    """Newest sweeps first, each with status counts and the API's 0..1 progress (work done, see
    nc_core.db.progress.run_fraction)."""
    sweeps = list(session.scalars(select(Sweep).order_by(Sweep.id.desc()).limit(limit)))
    ids = [s.id for s in sweeps]
    counts: dict[int, Counter] = defaultdict(Counter)
    if ids:
        for sid, status, n in session.execute(select(Run.sweep_id, Run.status, func.count(Run.id))
                                              .where(Run.sweep_id.in_(ids)).group_by(Run.sweep_id, Run.status)):
            counts[sid][status] = n
    stats = sweeps_repo.sweep_stats(session, ids) if ids else {}
    out = []
    for s in sweeps:
        out.append({"id": s.id, "name": s.name, "owner": s.owner, "created_at": s.created_at.isoformat(),
                    "axes": s.axes or [], "runs": sum(counts[s.id].values()), "counts": dict(counts[s.id]),
                    "progress": stats[s.id]["progress"]})
    return out


def metric_keys(session: Session, sweep_id: int) -> list[dict[str, str]]:
    """(key, split) pairs stored for the sweep: the options of the matrix's metric dropdown."""
    rows = session.execute(select(Metric.key, Metric.split).join(Run, Run.id == Metric.run_id)
                           .where(Run.sweep_id == sweep_id).distinct().order_by(Metric.key, Metric.split))
    return [{"key": k, "split": s} for k, s in rows]


def _aggregate(statuses: list[str]) -> str:
    """One colour per cell: failed > running > queued (partial if some succeeded) > cancelled > succeeded."""
    for status in STATUS_ORDER:
        if status in statuses:
            return "partial" if status == "queued" and "succeeded" in statuses else status
    return "empty"


def sweep_state(session: Session, sweep_id: int, key: str | None = None, split: str = "test") -> dict[str, Any]:
    """Runs (with progress) and the completion matrix over the first two axes (others + seeds folded)."""
    sweep = session.get(Sweep, sweep_id)
    runs = list(session.scalars(select(Run).where(Run.sweep_id == sweep_id).order_by(Run.id)))
    axes = list(sweep.axes or []) if sweep else []
    row_axis = axes[0] if axes else None
    col_axis = axes[1] if len(axes) > 1 else None
    values = final_values(session, runs, key, split) if key else {}

    def axis_values(path: str | None) -> list:
        return sorted({_axis_value(r, path) for r in runs}, key=_sort_key) if path else [None]

    rows, cols = axis_values(row_axis), axis_values(col_axis)
    cells: dict[tuple[int, int], list[Run]] = defaultdict(list)
    run_rows = []
    for r in runs:
        i = rows.index(_axis_value(r, row_axis)) if row_axis else 0
        j = cols.index(_axis_value(r, col_axis)) if col_axis else 0
        cells[(i, j)].append(r)
        run_rows.append({"id": r.id, "status": r.status, "grid": r.grid or {}, "seed": r.seed, "worker": r.worker_name,
                         "error": (r.error or "").strip().splitlines()[-1][:120] if r.error else "",
                         "value": values.get(r.id), **workers_repo.run_progress(r)})
    matrix = []
    for i, _ in enumerate(rows):
        line = []
        for j, _ in enumerate(cols):
            members = cells.get((i, j), [])
            vals = [values[r.id] for r in members if values.get(r.id) is not None and values[r.id] == values[r.id]]
            line.append({"status": _aggregate([r.status for r in members]), "n": len(members),
                         "done": sum(r.status == "succeeded" for r in members), "runs": [r.id for r in members],
                         "value": sum(vals) / len(vals) if vals else None})
        matrix.append(line)
    total = len(runs)
    finished = sum(r.status in ("succeeded", "failed", "cancelled") for r in runs)
    progress = sweeps_repo.sweep_stats(session, [sweep_id])[sweep_id]["progress"]  # the API's: work done
    return {"sweep_id": sweep_id, "name": sweep.name if sweep else "", "axes": axes, "row_axis": row_axis,
            "col_axis": col_axis, "rows": [str(v) for v in rows], "cols": [str(v) for v in cols], "matrix": matrix,
            "runs": run_rows, "counts": dict(Counter(r.status for r in runs)), "progress": progress,
            "finished": total > 0 and finished == total, "key": key, "split": split}
