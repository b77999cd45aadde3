"""Dashboard view models: sweep list with progress, completion matrix, run table, worker bars."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from nc_core.db import sweeps_repo, workers_repo
from nc_core.db.models import Metric, Run, Sweep, Worker, WorkerSample
from nc_core.db.states import FINISHED, RUN_UNITS
from service.dashboard.common import error_line, ordered_counts, overall_state, short_error, value_label
from service.dashboard.sweep_state import RUNS_SHOWN, RUNS_SHOWN_MAX, sweep_state

__all__ = ["RUNS_SHOWN", "RUNS_SHOWN_MAX", "error_line", "short_error", "sweep_state", "value_label"]

def sweeps_overview(session: Session, limit: int = 200) -> list[dict[str, Any]]:
    """Newest sweeps first, each with the runs its grid defines, their status counts and the API's 0..1
    progress (work done, see nc_core.db.progress.run_fraction), and its validate jobs apart (as GET
    /sweeps/{id}: sweeps_repo.sweep_stats)."""
    sweeps = list(session.scalars(select(Sweep).order_by(Sweep.id.desc()).limit(limit)))
    stats = sweeps_repo.sweep_stats(session, [s.id for s in sweeps]) if sweeps else {}
    out = []
    for s in sweeps:
        counts = ordered_counts(stats[s.id]["counts"])
        overall = overall_state(counts)
        active = overall["state"] in ("running", "queued")  # only these have an ETA (GET /sweeps/{id}'s eta_s)
        out.append({"id": s.id, "name": s.name, "owner": s.owner, "created_at": s.created_at.isoformat(),
                    "axes": s.axes or [], "runs": stats[s.id]["runs"], "counts": counts,
                    "validate_jobs": ordered_counts(stats[s.id]["validate_jobs"]), "progress": stats[s.id]["progress"],
                    "overall": overall, "eta_s": sweeps_repo.sweep_eta(session, s.id) if active else None})
    return out


def metric_keys(session: Session, sweep_id: int) -> list[dict[str, str]]:
    """(key, split) pairs stored for the runs the sweep's grid defines: the options of the matrix's metric
    dropdown (sweeps_repo.stored_pairs: probed through the index, no scan of the sweep's metric rows)."""
    return [{"key": k, "split": s} for k, s in sweeps_repo.stored_pairs(session, sweep_id)]


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
    """What the run page shows and refreshes: status, attempt, worker, progress/ETA, error, whether it stored
    any metric (its plots), telemetry (``host_wide``: from a CPU worker, whose figures are the whole host's)."""
    has_metrics = session.scalar(select(Metric.id).where(Metric.run_id == run.id).limit(1)) is not None
    return {"has_metrics": has_metrics, "id": run.id, "sweep_id": run.sweep_id, "kind": run.kind, "parent_run_id": run.parent_run_id,
            "status": run.status, "finished": run.status in FINISHED, "attempt": run.attempt,
            "max_attempts": run.max_attempts, "worker": run.worker_name, "error": run.error or "",
            "unit": list(RUN_UNITS.get(run.kind, RUN_UNITS["train"])), **workers_repo.run_progress(run),
            "telemetry": {**workers_repo.run_telemetry(session, run.id), "host_wide": host_wide(session, run.id)}}


def host_wide(session: Session, run_id: int) -> bool:
    """Whether a run's telemetry came from a CPU worker: its utilisation and memory are the host's (psutil), not
    the run's own."""
    devices = session.scalars(select(Worker.device).join(WorkerSample, WorkerSample.worker_name == Worker.name)
                              .where(WorkerSample.run_id == run_id).distinct())
    return any(d == "cpu" for d in devices)
