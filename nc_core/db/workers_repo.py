"""Worker heartbeats, bounded telemetry history, liveness (lost/idle/busy) and run progress/ETA."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from nc_core.db.models import Run, Worker, WorkerSample, as_utc, utcnow
from nc_core.db.progress import attempt_eta, run_fraction

MAX_SAMPLES_PER_RUN = 500
_SAMPLE_FIELDS = ("gpu_index", "gpu_name", "util_percent", "memory_used", "memory_total", "temperature_c")


def heartbeat(session: Session, name: str, host: str, pid: int | None, device: str, sample: dict[str, Any],
              current_run_id: int | None, status: str, *, max_samples: int = MAX_SAMPLES_PER_RUN) -> Worker:
    """Upsert the worker's latest state; append a telemetry sample for its run (keep the newest N)."""
    now = utcnow()
    worker = session.get(Worker, name)
    changed = worker is None or worker.status != status or worker.current_run_id != current_run_id
    if worker is None:
        worker = Worker(name=name, started_at=now)
        session.add(worker)
    worker.host, worker.pid, worker.device = host, pid, device
    for field in _SAMPLE_FIELDS:
        setattr(worker, field, sample.get(field))
    worker.current_run_id, worker.status, worker.last_seen = current_run_id, status, now
    sweep_id = None
    if current_run_id is not None:
        run = session.get(Run, current_run_id)
        sweep_id = run.sweep_id if run is not None else None
        sps = sample.get("samples_per_s", run.samples_per_s if run is not None else None)
        session.add(WorkerSample(worker_name=name, run_id=current_run_id, at=now, util_percent=sample.get("util_percent"),
                                 memory_used=sample.get("memory_used"), samples_per_s=sps))
        session.flush()
        _trim_samples(session, current_run_id, max_samples)
    if changed:
        from nc_core.db.events_repo import append_event

        append_event(session, "worker", sweep_id, current_run_id,
                     {"worker": name, "status": status, "device": device, "host": host})
    session.flush()
    return worker


def _trim_samples(session: Session, run_id: int, keep: int) -> None:
    cutoff = session.scalar(select(WorkerSample.id).where(WorkerSample.run_id == run_id)
                            .order_by(WorkerSample.id.desc()).offset(keep).limit(1))
    if cutoff is not None:
        session.execute(delete(WorkerSample).where(WorkerSample.run_id == run_id, WorkerSample.id <= cutoff))


def worker_state(worker: Worker, lost_after_s: float, now: datetime | None = None) -> str:
    """'stopped' (clean exit), 'lost' (beats stopped), else 'busy' with a run or 'idle'."""
    now = now or utcnow()
    if worker.status == "stopped":
        return "stopped"
    age = (now - as_utc(worker.last_seen)).total_seconds()
    if age > lost_after_s:
        return "lost"
    return "busy" if worker.current_run_id is not None else "idle"


def run_progress(run: Run, now: datetime | None = None) -> dict[str, Any]:
    """Progress fraction (progress.run_fraction: work done) and ETA of a run: the reporter's ETA, else
    extrapolated from the progress its current attempt made since it started (progress.attempt_eta)."""
    now = now or utcnow()
    frac = run_fraction(run.status, run.epoch, run.epochs_total, run.step, run.steps_total)
    eta = run.eta_s if run.status == "running" else None
    started = as_utc(run.started_at)
    if eta is None and run.status == "running" and started is not None:
        eta = attempt_eta((now - started).total_seconds(), frac, run.epochs_total, run.start_epoch)
    return {"progress": round(frac, 4), "epoch": run.epoch, "epochs_total": run.epochs_total, "step": run.step,
            "steps_total": run.steps_total, "samples_per_s": run.samples_per_s,
            "eta_s": None if eta is None else round(eta, 1)}


#: A stopped or lost worker not heard from for this long is left out of the lists (every restart of a container
#: names a new worker: its old rows would pile up); ``include_gone`` lists them too.
GONE_AFTER_S = 24 * 3600


def list_workers(session: Session, lost_after_s: float, now: datetime | None = None, *,
                 include_gone: bool = False) -> list[dict[str, Any]]:
    """The workers with status lost/idle/busy/stopped and their current run's epoch/step/ETA; a stopped or lost
    one last seen over GONE_AFTER_S ago only with ``include_gone``."""
    now = now or utcnow()
    out = []
    for w in session.scalars(select(Worker).order_by(Worker.name)):
        state = worker_state(w, lost_after_s, now)
        if not include_gone and state in ("stopped", "lost") and (now - as_utc(w.last_seen)).total_seconds() > GONE_AFTER_S:
            continue
        run = session.get(Run, w.current_run_id) if w.current_run_id is not None and state == "busy" else None
        out.append({
            "name": w.name, "host": w.host, "pid": w.pid, "device": w.device, "gpu_index": w.gpu_index,
            "gpu_name": w.gpu_name, "util_percent": w.util_percent, "memory_used": w.memory_used,
            "memory_total": w.memory_total, "temperature_c": w.temperature_c, "status": state,
            "current_run_id": w.current_run_id, "started_at": as_utc(w.started_at).isoformat(),
            "last_seen": as_utc(w.last_seen).isoformat(),
            "age_s": round((now - as_utc(w.last_seen)).total_seconds(), 1),
            "run": None if run is None else {"id": run.id, "sweep_id": run.sweep_id, "status": run.status,
                                             **run_progress(run, now)},
        })
    return out


def run_telemetry(session: Session, run_id: int) -> dict[str, Any]:
    """Peak memory, mean/peak utilisation and samples/s over a run's stored samples."""
    row = session.execute(select(
        func.count(WorkerSample.id), func.max(WorkerSample.memory_used), func.avg(WorkerSample.util_percent),
        func.max(WorkerSample.util_percent), func.avg(WorkerSample.samples_per_s), func.max(WorkerSample.samples_per_s),
    ).where(WorkerSample.run_id == run_id)).one()
    n, peak_mem, mean_util, peak_util, mean_sps, peak_sps = row
    return {"run_id": run_id, "samples": int(n or 0), "peak_memory": peak_mem,
            "mean_util_percent": mean_util, "peak_util_percent": peak_util,
            "mean_samples_per_s": mean_sps, "peak_samples_per_s": peak_sps}
