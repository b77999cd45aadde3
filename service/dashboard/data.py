"""Dashboard view models: sweep list with progress, run page (status, progress, telemetry).

The sweep page's state.json is sweep_state's.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import yaml

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from nc_core.db import sweeps_repo, workers_repo
from nc_core.db.models import Metric, Run, Sweep, Worker, WorkerSample, as_utc, utcnow
from nc_core.db.states import FINISHED, RUN_UNITS
from service.dashboard.common import ordered_counts, overall_state
from service.dashboard.sweep_state import sweeps_eta
from service.run_text import environments_text


def sweeps_overview(session: Session, limit: int = 200) -> list[dict[str, Any]]:
    """Newest sweeps first, each with the runs its grid defines, their status counts and the API's 0..1
    progress (work done, see nc_core.db.progress.run_fraction), and its validate jobs apart (as GET
    /sweeps/{id}: sweeps_repo.sweep_stats); the active ones (running or queued) with GET /sweeps/{id}'s eta_s,
    read for all of them at once."""
    sweeps = list(session.scalars(select(Sweep).order_by(Sweep.id.desc()).limit(limit)))
    stats = sweeps_repo.sweep_stats(session, [s.id for s in sweeps]) if sweeps else {}
    counts = {s.id: ordered_counts(stats[s.id]["counts"]) for s in sweeps}
    overall = {sid: overall_state(c) for sid, c in counts.items()}
    active = [sid for sid, o in overall.items() if o["state"] in ("running", "queued")]  # only these have an ETA
    etas = sweeps_eta(session, active)
    return [{"id": s.id, "name": s.name, "owner": s.owner, "created_at": s.created_at.isoformat(),
             "axes": s.axes or [], "runs": stats[s.id]["runs"], "counts": counts[s.id],
             "validate_jobs": ordered_counts(stats[s.id]["validate_jobs"]), "progress": stats[s.id]["progress"],
             "overall": overall[s.id], "eta_s": etas.get(s.id)} for s in sweeps]


def run_view(session: Session, run: Run) -> dict[str, Any]:
    """What the run page shows and refreshes: status, attempt, worker, progress/ETA, error, what its attempts ran
    with, whether it stored any metric (its plots), telemetry (``host_wide``: from a CPU worker, whose figures are the whole host's)."""
    has_metrics = session.scalar(select(Metric.id).where(Metric.run_id == run.id).limit(1)) is not None
    telemetry = workers_repo.run_telemetry(session, run.id)
    return {"has_metrics": has_metrics, "id": run.id, "sweep_id": run.sweep_id, "kind": run.kind, "parent_run_id": run.parent_run_id,
            "status": run.status, "finished": run.status in FINISHED, "attempt": run.attempt,
            "max_attempts": run.max_attempts, "worker": run.worker_name, "error": run.error or "",
            "unit": list(RUN_UNITS.get(run.kind, RUN_UNITS["train"])), **workers_repo.run_progress(run),
            "telemetry": {**telemetry, "host_wide": bool(telemetry["samples"]) and host_wide(session, run.id)},
            "times": run_times(run), "ran_with": environments_text(run.environments or [])}


def run_times(run: Run, now: datetime | None = None) -> dict[str, Any]:
    """When a run was submitted, its current attempt started and it finished (ISO, UTC; None where it has not),
    and ``elapsed_s``: the current attempt's seconds, to its finish or (running) to now."""
    created, started, finished = (as_utc(t) for t in (run.created_at, run.started_at, run.finished_at))
    end = finished if finished is not None else (now or utcnow()) if run.status == "running" else None
    elapsed = None if started is None or end is None else round(max(0.0, (end - started).total_seconds()), 1)
    return {"created_at": _iso(created), "started_at": _iso(started), "finished_at": _iso(finished),
            "elapsed_s": elapsed}


def _iso(t: datetime | None) -> str | None:
    """A UTC time as the page shows it (seconds, no zone suffix), or None."""
    return None if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def host_wide(session: Session, run_id: int) -> bool:
    """Whether a run's telemetry came from a CPU worker (one of its samples is a CPU worker's): its utilisation
    and memory are the host's (psutil), not the run's own."""
    cpu_sample = exists().where(WorkerSample.run_id == run_id, WorkerSample.worker_name == Worker.name,
                                Worker.device == "cpu")
    return bool(session.scalar(select(cpu_sample)))


def spec_yaml(run: Run) -> str:
    """The run's whole spec as YAML, in its fields' order: what ``ncsweep run`` would take to repeat it alone."""
    return yaml.safe_dump(run.spec, sort_keys=False, default_flow_style=None, width=100)
