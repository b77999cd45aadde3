"""Dashboard view models: sweep list with progress, completion matrix, run table, worker bars."""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from nc_core.db import sweeps_repo, workers_repo
from nc_core.db.models import Metric, Run, Sweep
from nc_core.db.states import FINISHED, RUN_UNITS, unfinished_runs
from nc_core.db.sweeps_repo import PRIMARY_KINDS
from nc_core.metric_keys import METRIC_KEYS, TRAINING_KEYS
from nc_core.spec import SPLITS
from nc_core.spec_fields import distinct_values, value_sort_key, value_text
from service.plots import _axis_value, final_points, finite_mean, sweep_runs

STATUS_ORDER = ("failed", "running", "queued", "cancelled", "succeeded")
ERROR_CHARS = 120  # the runs table's error column; the full last line goes in its title


def value_label(value: Any) -> str:
    """An axis value as the runs table writes it (JSON style: true/false, [1, 2]), empty for a missing axis."""
    return "" if value is None else value_text(value)


def error_line(error: str | None) -> str:
    """The last line of a run's error (its exception), whole."""
    lines = (error or "").strip().splitlines()
    return lines[-1] if lines else ""


def short_error(line: str, limit: int = ERROR_CHARS) -> str:
    """`line` cut to `limit` characters at a word boundary where one is near, with an ellipsis."""
    if len(line) <= limit:
        return line
    cut = line[:limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit * 2 // 3 else cut).rstrip() + "…"


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


def storable_pairs(kinds: set[str]) -> list[tuple[str, str]]:
    """The (key, split) pairs runs of these kinds can store (nc_core.metric_keys): a train run METRIC_KEYS on
    each split and TRAINING_KEYS on train, a UFM run METRIC_KEYS on train (its free features only)."""
    pairs = {(k, s) for k in METRIC_KEYS for s in (SPLITS if "train" in kinds else ("train",) if kinds else ())}
    return sorted(pairs | ({(k, "train") for k in TRAINING_KEYS} if "train" in kinds else set()))


def metric_keys(session: Session, sweep_id: int) -> list[dict[str, str]]:
    """(key, split) pairs stored for the runs the sweep's grid defines: the options of the matrix's metric
    dropdown. Each pair its kinds can store (storable_pairs) is probed through the (run_id, split, key, epoch)
    index, run by run until one has it (LIMIT 1), so a page load never scans the sweep's metric rows."""
    pairs = storable_pairs(sweeps_repo.sweep_kinds(session, sweep_id))
    if not pairs:
        return []
    table = sweeps_repo.string_table("pair", ["key", "split"], pairs)
    stored_by_a_run = (select(Metric.run_id).join(Run, Run.id == Metric.run_id)
                       .where(Run.sweep_id == sweep_id, Run.kind.in_(PRIMARY_KINDS), Metric.split == table.c.split,
                              Metric.key == table.c.key).limit(1).scalar_subquery())
    rows = session.execute(select(table.c.key, table.c.split).where(stored_by_a_run.is_not(None))
                           .order_by(table.c.key, table.c.split))
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


def sweep_state(session: Session, sweep_id: int, key: str | None = None, split: str | None = None) -> dict[str, Any]:
    """The runs the sweep's grid defines (with progress) and the completion matrix over the first two axes
    (others + seeds folded; a cell's value is the mean over its runs' finite final values, as /results, and its
    ``unfinished_runs`` the runs behind it that have not succeeded, their value from their last measured epoch:
    each run's ``value_epoch``, its ``epoch`` being its progress);
    validate jobs are counted apart (``validate_jobs``, per status) and stay out of the counts and the cells;
    `split` defaults to the sweep's (sweeps_repo.default_split: train for a UFM sweep)."""
    sweep = session.get(Sweep, sweep_id)
    default_split = sweeps_repo.default_split(session, sweep_id)
    split = split or default_split
    runs = sweep_runs(session, sweep_id)
    axes = list(sweep.axes or []) if sweep else []
    row_axis = axes[0] if axes else None
    col_axis = axes[1] if len(axes) > 1 else None
    points = final_points(session, runs, key, split) if key else {}  # run id → (value, the epoch it is from)
    values = {rid: value for rid, (value, _) in points.items()}
    status = {r.id: r.status for r in runs}
    keys = metric_keys(session, sweep_id)

    def axis_values(path: str | None) -> list:
        return sorted(distinct_values(_axis_value(r, path) for r in runs), key=value_sort_key) if path else [None]

    rows, cols = axis_values(row_axis), axis_values(col_axis)
    cells: dict[tuple[int, int], list[Run]] = defaultdict(list)
    run_rows = []
    for r in runs:
        i = rows.index(_axis_value(r, row_axis)) if row_axis else 0
        j = cols.index(_axis_value(r, col_axis)) if col_axis else 0
        cells[(i, j)].append(r)
        last_line = error_line(r.error)
        run_rows.append({"id": r.id, "status": r.status, "grid": {k: value_label(v) for k, v in (r.grid or {}).items()},
                         "seed": r.seed, "worker": r.worker_name, "error": short_error(last_line),
                         "error_full": last_line,
                         "value": _finite_or_none(values.get(r.id)), **workers_repo.run_progress(r),
                         "value_epoch": points[r.id][1] if r.id in points else None})
    matrix = []
    for i, _ in enumerate(rows):
        line = []
        for j, _ in enumerate(cols):
            members = cells.get((i, j), [])
            mean = finite_mean(values[r.id] for r in members if r.id in values)
            line.append({"status": _aggregate([r.status for r in members]), "n": len(members),
                         "done": sum(r.status == "succeeded" for r in members), "runs": [r.id for r in members],
                         "value": _finite_or_none(mean),
                         "unfinished_runs": unfinished_runs([r.id for r in members if r.id in values], status)})
        matrix.append(line)
    total = len(runs)
    finished = sum(r.status in FINISHED for r in runs)
    stats = sweeps_repo.sweep_stats(session, [sweep_id])[sweep_id]  # the API's progress (work done) and counts
    return {"sweep_id": sweep_id, "name": sweep.name if sweep else "", "axes": axes, "row_axis": row_axis,
            "col_axis": col_axis, "rows": [value_label(v) for v in rows], "cols": [value_label(v) for v in cols],
            "matrix": matrix,
            "runs": run_rows, "counts": dict(Counter(r.status for r in runs)), "progress": stats["progress"],
            "validate_jobs": stats["validate_jobs"], "validate_runs": validate_runs(session, sweep_id),
            "keys": keys,
            "finished": total > 0 and finished == total, "key": key, "split": split, "default_split": default_split,
            "heatmap": heatmap_metric(keys, default_split)}


def heatmap_metric(keys: list[dict[str, str]], split: str) -> dict[str, str]:
    """The heatmap's metric while the matrix is coloured by status: acc on the sweep's default split, else its
    first stored key there (a UFM sweep stores no acc)."""
    on_split = [k["key"] for k in keys if k["split"] == split]
    return {"key": "acc" if "acc" in on_split or not on_split else on_split[0], "split": split}


def validate_runs(session: Session, sweep_id: int, limit: int = 100) -> list[dict[str, Any]]:
    """The sweep's validate jobs (newest first): id, status and the run each re-evaluates."""
    jobs = session.scalars(select(Run).where(Run.sweep_id == sweep_id, Run.kind == "validate")
                           .order_by(Run.id.desc()).limit(limit))
    return [{"id": j.id, "status": j.status, "parent_run_id": j.parent_run_id} for j in jobs]


def run_view(session: Session, run: Run) -> dict[str, Any]:
    """What the run page shows and refreshes: status, attempt, worker, progress/ETA, error, telemetry."""
    return {"id": run.id, "sweep_id": run.sweep_id, "kind": run.kind, "parent_run_id": run.parent_run_id,
            "status": run.status, "finished": run.status in FINISHED, "attempt": run.attempt,
            "max_attempts": run.max_attempts, "worker": run.worker_name, "error": run.error or "",
            "unit": list(RUN_UNITS.get(run.kind, RUN_UNITS["train"])), **workers_repo.run_progress(run),
            "telemetry": workers_repo.run_telemetry(session, run.id)}
