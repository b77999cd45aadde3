"""Dashboard view models: sweep list with progress, completion matrix, run table, worker bars."""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from nc_core.db import sweeps_repo, workers_repo
from nc_core.db.models import Metric, Run, Sweep
from nc_core.db.sweeps_repo import PRIMARY_KINDS
from service.plots import _axis_value, _sort_key, final_values, finite_mean, sweep_runs

STATUS_ORDER = ("failed", "running", "queued", "cancelled", "succeeded")


def sweeps_overview(session: Session, limit: int = 200) -> list[dict[str, Any]]:
    """Newest sweeps first, each with the runs its grid defines, their status counts and the API's 0..1
    progress (work done, see nc_core.db.progress.run_fraction), and its validate jobs apart (as GET
    /sweeps/{id}: sweeps_repo.sweep_stats)."""
    sweeps = list(session.scalars(select(Sweep).order_by(Sweep.id.desc()).limit(limit)))
    stats = sweeps_repo.sweep_stats(session, [s.id for s in sweeps]) if sweeps else {}
    return [{"id": s.id, "name": s.name, "owner": s.owner, "created_at": s.created_at.isoformat(),
             "axes": s.axes or [], "runs": stats[s.id]["runs"], "counts": stats[s.id]["counts"],
             "validate_jobs": stats[s.id]["validate_jobs"], "progress": stats[s.id]["progress"]}
            for s in sweeps]


def metric_keys(session: Session, sweep_id: int) -> list[dict[str, str]]:
    """(key, split) pairs stored for the runs the sweep's grid defines: the options of the matrix's metric
    dropdown."""
    rows = session.execute(select(Metric.key, Metric.split).join(Run, Run.id == Metric.run_id)
                           .where(Run.sweep_id == sweep_id, Run.kind.in_(PRIMARY_KINDS)).distinct()
                           .order_by(Metric.key, Metric.split))
    return [{"key": k, "split": s} for k, s in rows]


def _aggregate(statuses: list[str]) -> str:
    """One colour per cell: failed > running > queued (partial if some succeeded) > cancelled > succeeded."""
    for status in STATUS_ORDER:
        if status in statuses:
            return "partial" if status == "queued" and "succeeded" in statuses else status
    return "empty"


def _finite_or_none(value: float | None) -> float | None:
    """The value when finite, else None (JSON has no NaN: the page shows –)."""
    return value if value is not None and math.isfinite(value) else None


def sweep_state(session: Session, sweep_id: int, key: str | None = None, split: str = "test") -> dict[str, Any]:
    """The runs the sweep's grid defines (with progress) and the completion matrix over the first two axes
    (others + seeds folded; a cell's value is the mean over its runs' finite final values, as /results);
    validate jobs are counted apart (``validate_jobs``, per status) and stay out of the counts and the cells."""
    sweep = session.get(Sweep, sweep_id)
    runs = sweep_runs(session, sweep_id)
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
                         "value": _finite_or_none(values.get(r.id)), **workers_repo.run_progress(r)})
    matrix = []
    for i, _ in enumerate(rows):
        line = []
        for j, _ in enumerate(cols):
            members = cells.get((i, j), [])
            mean = finite_mean(values[r.id] for r in members if r.id in values)
            line.append({"status": _aggregate([r.status for r in members]), "n": len(members),
                         "done": sum(r.status == "succeeded" for r in members), "runs": [r.id for r in members],
                         "value": _finite_or_none(mean)})
        matrix.append(line)
    total = len(runs)
    finished = sum(r.status in ("succeeded", "failed", "cancelled") for r in runs)
    stats = sweeps_repo.sweep_stats(session, [sweep_id])[sweep_id]  # the API's progress (work done) and counts
    return {"sweep_id": sweep_id, "name": sweep.name if sweep else "", "axes": axes, "row_axis": row_axis,
            "col_axis": col_axis, "rows": [str(v) for v in rows], "cols": [str(v) for v in cols], "matrix": matrix,
            "runs": run_rows, "counts": dict(Counter(r.status for r in runs)), "progress": stats["progress"],
            "validate_jobs": stats["validate_jobs"],
            "finished": total > 0 and finished == total, "key": key, "split": split}
