"""The sweep page's state.json: completion matrix, bounded runs table, NaN reasons, value counts, ETA.

The completion matrix covers every run; the sweeps' ETA is nc_core's, from rows already read.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from nc_core.db import sweeps_repo, workers_repo
from nc_core.db.models import Metric, Run, Sweep
from nc_core.db.states import FINISHED, unfinished_runs
from nc_core.db.sweeps_repo import ETA_COLUMNS, ETA_STATUSES, PRIMARY_KINDS
from nc_core.spec_fields import distinct_values, value_key, value_sort_key
from nc_core.sweep import get_path
from service.dashboard.common import (CHIP_ORDER, ROW_ORDER, STATUS_ORDER, error_line, ordered_counts, overall_state,
                                      short_error, value_label)
from service.plots import final_points, finite_mean

RUNS_SHOWN = 200  # the runs table's default page: running, failed, queued, then the rest
RUNS_SHOWN_MAX = 1000
UNFINISHED_SHOWN = 10  # per cell: where its unfinished runs' values are from (the tooltip)
NOTES_SHOWN = 3  # per cell: why some of its runs' values are NaN
VALIDATE_SHOWN = 100  # the sweep page's list of validate jobs: the newest
# what the matrix, the runs table, the validate jobs' list and the ETA need of a run: never its JSON spec (a
# 4,000-run sweep: megabytes)
COLUMNS = (Run.id, Run.kind, Run.parent_run_id, Run.grid, Run.seed, Run.worker_name, Run.error, Run.epoch, Run.step,
           Run.steps_total, Run.samples_per_s, *ETA_COLUMNS)


def light_runs(session: Session, sweep_id: int) -> list[Any]:
    """Every run of the sweep, by id, only COLUMNS: those its grid defines (PRIMARY_KINDS, as
    service.plots.sweep_runs) and its validate jobs."""
    return list(session.execute(select(*COLUMNS).where(Run.sweep_id == sweep_id).order_by(Run.id)))


def eta_of(rows: Sequence[Any]) -> float | None:
    """GET /sweeps/{id}'s eta_s (sweeps_repo.eta_from_rows) over rows already read (every kind of run of one
    sweep, with ETA_COLUMNS by name): no further read."""
    return sweeps_repo.eta_from_rows(rows)


def sweeps_eta(session: Session, sweep_ids: Sequence[int]) -> dict[int, float | None]:
    """sweeps_repo.sweep_eta of each sweep, from one query for all of them (the index page's active sweeps)."""
    if not sweep_ids:
        return {}
    rows: dict[int, list[Any]] = defaultdict(list)
    for r in session.execute(select(Run.sweep_id, *ETA_COLUMNS).where(Run.sweep_id.in_(list(sweep_ids)),
                                                                      Run.status.in_(ETA_STATUSES))):
        rows[r.sweep_id].append(r)
    return {sid: eta_of(rows.get(sid, [])) for sid in sweep_ids}


def metric_keys(session: Session, sweep_id: int) -> list[dict[str, str]]:
    """(key, split) pairs stored for the runs the sweep's grid defines: the options of the matrix's metric
    dropdown (sweeps_repo.stored_pairs: probed through the index, no scan of the sweep's metric rows)."""
    return [{"key": k, "split": s} for k, s in sweeps_repo.stored_pairs(session, sweep_id)]


def heatmap_metric(keys: list[dict[str, str]], split: str) -> dict[str, str]:
    """The heatmap's metric while the matrix is coloured by status: acc on the sweep's default split, else its
    first stored key there (a UFM sweep stores no acc)."""
    on_split = [k["key"] for k in keys if k["split"] == split]
    return {"key": "acc" if "acc" in on_split or not on_split else on_split[0], "split": split}


def validate_runs(jobs: Sequence[Any], limit: int = VALIDATE_SHOWN) -> list[dict[str, Any]]:
    """The sweep's validate jobs (of its light_runs; newest first, at most `limit`): id, status and the run each
    re-evaluates."""
    newest = sorted(jobs, key=lambda j: j.id, reverse=True)[:limit]
    return [{"id": j.id, "status": j.status, "parent_run_id": j.parent_run_id} for j in newest]


def axis_reader(session: Session, runs: list[Any], paths: list[str]):  # noqa: ANN201 - (run, path) -> value
    """An axis value of a run as service.plots._axis_value reads it (grid, seed, else its spec), loading the spec
    only of runs whose grid lacks one of `paths`."""
    need = [r.id for r in runs if any(p != "seed" and p not in (r.grid or {}) for p in paths)]
    specs = dict(session.execute(select(Run.id, Run.spec).where(Run.id.in_(need)))) if need else {}

    def read(run: Any, path: str) -> Any:
        if path in (run.grid or {}):
            return run.grid[path]
        return run.seed if path == "seed" else get_path(specs.get(run.id) or {}, path)
    return read


def nan_notes(session: Session, points: dict[int, tuple[float, int]], key: str, split: str) -> dict[int, str]:
    """run id → why its final value of `key` is NaN (the metric suite's note), for the runs whose value is NaN."""
    at_epoch: dict[Any, list[int]] = defaultdict(list)  # the epoch a NaN is from → those runs
    for rid, (value, epoch) in points.items():
        if not math.isfinite(value):
            at_epoch[epoch].append(rid)
    if not at_epoch:
        return {}
    nan_points = or_(*(and_(Metric.epoch == epoch, Metric.run_id.in_(rids)) for epoch, rids in at_epoch.items()))
    rows = session.execute(select(Metric.run_id, Metric.note).where(
        nan_points, Metric.split == split, Metric.key == key, Metric.note.is_not(None)))
    return dict(rows.all())


def _aggregate(statuses: list[str]) -> str:
    """One colour per cell: failed > running > queued (partial if some succeeded) > cancelled > succeeded."""
    for status in STATUS_ORDER:
        if status in statuses:
            return "partial" if status == "queued" and "succeeded" in statuses else status
    return "empty"


def _finite_or_none(value: float | None) -> float | None:
    """The value when finite, else None (JSON has no NaN: ``nan`` says when it is one)."""
    return value if value is not None and math.isfinite(value) else None


def shown_runs(runs: list[Any], status: str | None, limit: int) -> tuple[list[Any], int]:
    """The runs table's rows, by id: those of `status` (all without), at most `limit` of them picked running,
    failed, queued, then the rest (as `ncsweep watch`); and how many match."""
    order = {s: i for i, s in enumerate(ROW_ORDER)}
    matching = [r for r in runs if status is None or r.status == status]
    picked = sorted(matching, key=lambda r: (order.get(r.status, len(order)), r.id))[:limit]
    return sorted(picked, key=lambda r: r.id), len(matching)


def sweep_state(session: Session, sweep_id: int, key: str | None = None, split: str | None = None, *,
                status: str | None = None, limit: int = RUNS_SHOWN) -> dict[str, Any]:
    """The completion matrix over the first two axes of every run the sweep's grid defines (others + seeds folded;
    a cell's value is the mean over its runs' finite final values, as /results; ``measured`` of its ``n`` runs have
    a value, ``nan`` of them a NaN, ``notes`` why; ``unfinished_runs`` those behind it that have not succeeded, their
    value from their last measured epoch) and at most `limit` rows of its runs table (``runs_matching`` match
    `status`, ``runs_total`` in all): running, failed, queued, then the rest. Validate jobs are counted apart
    (``validate_jobs``); `split` defaults to the sweep's (sweeps_repo.default_split: train for a UFM sweep)."""
    sweep = session.get(Sweep, sweep_id)
    default_split = sweeps_repo.default_split(session, sweep_id)
    split = split or default_split
    every = light_runs(session, sweep_id)  # one read: the grid's runs, the validate jobs and the ETA's rows
    runs = [r for r in every if r.kind in PRIMARY_KINDS]
    axes = list(sweep.axes or []) if sweep else []
    row_axis, col_axis = (axes + [None, None])[:2]
    read = axis_reader(session, runs, [a for a in (row_axis, col_axis) if a])
    points = final_points(session, runs, key, split) if key else {}  # run id → (value, the epoch it is from)
    notes = nan_notes(session, points, key, split) if key else {}
    values = {rid: value for rid, (value, _) in points.items()}
    status_of = {r.id: r.status for r in runs}
    keys = metric_keys(session, sweep_id)

    def axis_values(path: str | None) -> list:
        return sorted(distinct_values(read(r, path) for r in runs), key=value_sort_key) if path else [None]

    rows, cols = axis_values(row_axis), axis_values(col_axis)
    row_at = {value_key(v): i for i, v in enumerate(rows)}
    col_at = {value_key(v): j for j, v in enumerate(cols)}
    cells: dict[tuple[int, int], list[Any]] = defaultdict(list)
    for r in runs:
        i = row_at.get(value_key(read(r, row_axis)), 0) if row_axis else 0
        j = col_at.get(value_key(read(r, col_axis)), 0) if col_axis else 0
        cells[(i, j)].append(r)
    matrix = [[_cell(cells.get((i, j), []), values, points, notes, status_of) for j in range(len(cols))]
              for i in range(len(rows))]
    shown, matching = shown_runs(runs, status, limit)
    stats = sweeps_repo.sweep_stats(session, [sweep_id])[sweep_id]  # the API's progress (work done) and counts
    counts = ordered_counts(stats["counts"])
    finished = bool(runs) and all(r.status in FINISHED for r in runs)
    return {"sweep_id": sweep_id, "name": sweep.name if sweep else "", "axes": axes, "row_axis": row_axis,
            "col_axis": col_axis, "rows": [value_label(v) for v in rows], "cols": [value_label(v) for v in cols],
            "matrix": matrix, "runs": [_run_row(r, values, points, notes) for r in shown],
            "runs_total": len(runs), "runs_matching": matching, "status_filter": status, "chip_order": CHIP_ORDER,
            "counts": counts, "progress": stats["progress"], "overall": overall_state(counts),
            "eta_s": None if finished else eta_of(every),
            "validate_jobs": ordered_counts(stats["validate_jobs"]),
            "validate_runs": validate_runs([r for r in every if r.kind == "validate"]),
            "keys": keys, "finished": finished, "key": key, "split": split, "default_split": default_split,
            "heatmap": heatmap_metric(keys, default_split)}


def _cell(members: list[Any], values: dict, points: dict, notes: dict, status_of: dict) -> dict[str, Any]:
    measured = [r.id for r in members if r.id in values]
    finite = [rid for rid in measured if math.isfinite(values[rid])]
    unfinished = unfinished_runs(measured, status_of)
    by_id = {r.id: r for r in members}
    return {"status": _aggregate([r.status for r in members]), "n": len(members),
            "done": sum(r.status == "succeeded" for r in members), "runs": [r.id for r in members],
            "value": _finite_or_none(finite_mean(values[rid] for rid in finite)), "measured": len(finite),
            "nan": len(measured) - len(finite),
            "notes": list(dict.fromkeys(notes[rid] for rid in measured if rid in notes))[:NOTES_SHOWN],
            "unfinished_runs": unfinished,
            "unfinished_from": [[rid, points[rid][1], by_id[rid].epochs_total, by_id[rid].status]
                                for rid in unfinished[:UNFINISHED_SHOWN]]}


def _run_row(r: Any, values: dict, points: dict, notes: dict) -> dict[str, Any]:
    last_line = error_line(r.error)
    value = values.get(r.id)
    return {"id": r.id, "status": r.status, "grid": {k: value_label(v) for k, v in (r.grid or {}).items()},
            "seed": r.seed, "worker": r.worker_name, "error": short_error(last_line), "error_full": last_line,
            "value": _finite_or_none(value), "nan": value is not None and not math.isfinite(value),
            "note": notes.get(r.id), **workers_repo.run_progress(r),
            "value_epoch": points[r.id][1] if r.id in points else None}
