"""Execute one job: claim the run's lease → train/validate/UFM with a DB reporter → fenced finish (or give back)."""
from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from nc_core.db import runs_repo, states
from nc_core.db.models import Run
from nc_core.db.session import session_scope
from nc_core.settings import Settings, get_settings
from nc_core.spec import RunSpec
from worker.reporter import DBReporter, transient_db_error, write_retrying
from worker.workdirs import claim_workdir, run_folder

log = logging.getLogger(__name__)

#: Not a run status: the job stopped because its worker is stopping; the run goes back to the queue with its
#: attempt given back (runs_repo.release) and resumes from its last completed epoch.
INTERRUPTED = "interrupted"
#: Not a run status: the job stopped on a transient database error (an outage); the run goes back to the queue
#: with its attempt spent (runs_repo.requeue_after_outage) and resumes from its newest recorded checkpoint.
DB_UNAVAILABLE = "database unavailable"
#: execute()'s answer when not even the final write got through: the lease expires and the reconciler
#: re-queues the run (or fails it on its last attempt).
UNRECORDED = "unrecorded"


def worker_name() -> str:
    """The Celery node name of this worker (set by launch), else host-pid."""
    return os.environ.get("NCSWEEP_WORKER_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def gpu_index() -> int | None:
    value = os.environ.get("NCSWEEP_GPU_INDEX", "")
    return int(value) if value.strip().isdigit() else None


def run_workdir(settings: Settings, run_id: int) -> Path:
    return run_folder(settings.resolved_artifacts_dir(), run_id)


def readable_error(exc: BaseException) -> str:
    """'TypeName: first line of the message' (the traceback stays in the worker log)."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text[:1000]


def execute(run_id: int, kind: str, settings: Settings | None = None, *, hostname: str | None = None) -> str:
    """Run one job to the end; returns the final status (or 'skipped' for a duplicate delivery)."""
    settings = settings or get_settings()
    url = settings.resolved_database_url()
    name = hostname or worker_name()
    owner = f"{name}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    with session_scope(url) as session:
        run = runs_repo.claim(session, run_id, owner, float(settings.lease_seconds))
        if run is None:
            why = runs_repo.drop_unclaimable(session, run_id)
    if run is None:
        log.info("run %s: not claimable (%s); message dropped", run_id, why)
        return "cancelled" if why == "cancelled" else "skipped"
    log.info("run %s (%s): claimed by %s, attempt %s", run_id, kind, owner, run.attempt)
    heart = _heartbeater(settings, name, run_id)
    try:
        status, error, progress = _run_job(settings, run, kind, owner, heart)
    finally:
        if heart is not None:
            heart.set_run(None)
            heart.stop(mark_stopped=False)
    lease_s = float(settings.lease_seconds)

    def record(session: Any) -> Any:
        if progress:  # what no beat could write while the database was away: the run shows its last epoch
            runs_repo.heartbeat(session, run_id, owner, lease_s, **progress)
        if status == INTERRUPTED:
            return runs_repo.release(session, run_id, owner)
        if status == DB_UNAVAILABLE:
            return runs_repo.requeue_after_outage(session, run_id, owner, error or "", settings.max_attempts)
        return runs_repo.finish(session, run_id, owner, status, error)

    what = "its return to the queue" if status == DB_UNAVAILABLE else f"final status {status}"
    try:
        written = write_retrying(url, record, lease_s / 2, f"run {run_id}: {what}")
    except Exception as exc:
        if transient_db_error(exc) is None:
            raise
        log.warning("run %s: database still unavailable (%s); %s not written: the lease expires within %g s and "
                    "the reconciler re-queues the run (or fails it on its last attempt)",
                    run_id, readable_error(exc), what, lease_s)
        return UNRECORDED
    if not written:
        log.warning("run %s: lease lost before finishing; result %s discarded (another attempt owns it)", run_id, status)
        return "lost"
    if status == DB_UNAVAILABLE:
        return _given_back(settings, run_id, kind, written, error)
    log.info("run %s: %s%s", run_id, status, f" ({error})" if error else "")
    return status


def _given_back(settings: Settings, run_id: int, kind: str, status: str, reason: str | None) -> str:
    """After runs_repo.requeue_after_outage wrote ``status``: a re-queued run's message is sent again at once
    (the reconciler's next pass re-sends it should this fail: the run is marked as not sent)."""
    if status != states.QUEUED:
        log.warning("run %s: %s after a database outage (%s)", run_id, status, reason)
        return status
    log.info("run %s: back in the queue after a database outage (%s); its attempt is spent and the next one "
             "resumes from its newest checkpoint", run_id, reason)
    try:
        from worker.celery_app import send_runs
        from worker.reconciler import celery_app_for

        send_runs(celery_app_for(settings), [(run_id, kind)])
        log.info("run %s: re-sent to the broker", run_id)
    except Exception as exc:  # noqa: BLE001 - the broker is down too: the reconciler re-sends it
        log.warning("run %s: could not re-send it (%s); the reconciler re-sends it at its next pass", run_id, exc)
    return status


def _run_job(settings: Settings, run: Run, kind: str, owner: str,
             heart: Any) -> tuple[str, str | None, dict[str, Any]]:
    """Returns (final status, error, progress the reporter could not write yet) — never raises."""
    reporter: DBReporter | None = None
    outcome: tuple[str, str | None] | None = None
    try:
        spec = RunSpec.model_validate(run.spec)
        reporter = DBReporter(settings, run.id, owner, batch_size=samples_per_step(kind, spec),
                              heartbeater=heart).start()
        from nc_core.training.environment import environment

        reporter.record_environment(environment(spec))
        summary = _dispatch(settings, run, kind, spec, reporter)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a readable reason on the run
        outcome = _failure(run.id, exc, reporter)
    finally:
        if reporter is not None:
            reporter.close()
    if outcome is None:
        outcome = final_status(summary, cancelled=reporter.cancelled, lease_lost=reporter.lease_lost,
                               interrupted=reporter.interrupted)
    return (*outcome, reporter.take_progress() if reporter is not None else {})


def _failure(run_id: int, exc: BaseException, reporter: DBReporter | None) -> tuple[str, str | None]:
    """(status, error) of a job that raised ``exc``: a cancel or stop while waiting for the workdir; a
    transient database error (DB_UNAVAILABLE: the run goes back to the queue, not failed for good by an
    outage's timing); else failed with a readable reason."""
    if reporter is not None and reporter.should_stop() and _workdir_busy(exc):  # a cancel or stop while waiting
        log.info("run %s: stopped while waiting for its workdir", run_id)
        return final_status(None, cancelled=reporter.cancelled, lease_lost=reporter.lease_lost,
                            interrupted=reporter.interrupted)
    outage = transient_db_error(exc)
    if outage is not None:
        log.warning("run %s: database unavailable (%s); stopping the job and giving the run back to the queue "
                    "(its metrics so far are written)", run_id, readable_error(outage), exc_info=True)
        return DB_UNAVAILABLE, readable_error(outage)
    log.exception("run %s failed", run_id)
    return states.FAILED, failure_reason(exc)


def _workdir_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is checkpoint.WorkdirBusy (the workdir stayed held by another process)."""
    checkpoint = sys.modules.get("nc_core.training.checkpoint")  # not imported here: it imports torch
    return checkpoint is not None and isinstance(exc, checkpoint.WorkdirBusy)


def failure_reason(exc: BaseException) -> str:
    """The run's error for ``exc``: :func:`readable_error`, except for a workdir still held after the wait for
    the previous attempt (checkpoint.WorkdirBusy with ``waited_s`` > 0), which says who held it and why that
    process, not the run, is at fault."""
    if not _workdir_busy(exc) or not exc.waited_s:
        return readable_error(exc)
    text = (f"WorkdirBusy: workdir {exc.workdir} was held by another process ({exc.holder}) for the whole "
            f"{exc.waited_s:g} s wait after this run's lease moved "
            "to this worker; a previous attempt stops within a heartbeat of losing its lease, so that process "
            "looks stuck: end it, then retry the run")
    return text[:1000]


def samples_per_step(kind: str, spec: RunSpec) -> int:
    """What the job's reported rate counts per step, for its ETA: a training step's batch of samples; 1 for
    a UFM run (its rate is full-batch iterations per second) and a validate job (checkpoints per second)."""
    return 1 if kind == "validate" or spec.kind == "ufm" else spec.batch_size


def final_status(summary: Any, *, cancelled: bool, lease_lost: bool,
                 interrupted: bool = False) -> tuple[str, str | None]:
    """(status, error) of a job that returned ``summary``: cancelled when it stopped on a cancel (or a
    cancel came and the summary does not show the work done); INTERRUPTED (back to the queue, its attempt
    given back) when it stopped because its worker is stopping; succeeded when it did all its work — a
    train/UFM run all its epochs, a validate job all its checkpoints — even if a cancel or a stop came
    after the last step."""
    if lease_lost:
        return states.FAILED, "lease lost"  # finish() is fenced: this is never written
    complete = isinstance(summary, dict) and not summary.get("stopped") and (
        "epochs_done" in summary or "metrics" in summary)
    if complete:
        return states.SUCCEEDED, None
    if interrupted and not cancelled:
        return INTERRUPTED, None
    if (isinstance(summary, dict) and summary.get("stopped")) or cancelled:
        return states.CANCELLED, None
    return states.SUCCEEDED, None


def _dispatch(settings: Settings, run: Run, kind: str, spec: RunSpec, reporter: DBReporter) -> Any:
    import nc_core.train as train

    if kind == "validate":
        parent = run.parent_run_id if run.parent_run_id is not None else run.id
        options = run.options or {}
        return train.validate_checkpoints(spec, run_workdir(settings, parent), epochs=options.get("epochs"),
                                          splits=list(options.get("splits") or ["train", "test"]), reporter=reporter)
    from nc_core.training.report import workdir_wait_s

    workdir = claim_workdir(Path(settings.resolved_artifacts_dir()), run,
                            lambda: _has_checkpoint_rows(settings.resolved_database_url(), run.id),
                            workdir_wait_s(reporter), reporter.should_stop)
    return train.run_spec(spec, reporter, workdir=workdir)


def _has_checkpoint_rows(url: str, run_id: int) -> bool:
    from sqlalchemy import select

    from nc_core.db.models import Checkpoint

    with session_scope(url) as session:
        return session.scalar(select(Checkpoint.id).where(Checkpoint.run_id == run_id).limit(1)) is not None


def _heartbeater(settings: Settings, name: str, run_id: int) -> Any:
    """The worker-row heartbeat (telemetry) for the job's duration; None when telemetry is absent."""
    try:
        from worker.telemetry import Heartbeater

        heart = Heartbeater(settings, name, gpu_index())
        heart.set_run(run_id)
        heart.start()
        return heart
    except Exception as exc:  # noqa: BLE001 - telemetry must never stop a job
        log.warning("telemetry unavailable: %s", exc)
        return None
