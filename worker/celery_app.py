"""Celery application for ncsweep workers: JSON-only, late acks, one fresh child per job."""
from __future__ import annotations

import contextlib
import logging
import os
import time

from celery import Celery, signals

from nc_core.settings import ConfigError, Settings, get_settings

# Any torch.cuda.is_available() in a prefork parent must not create a CUDA context.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

CONTROL_QUEUE = "ncsweep.control"  # reconciler ticks; never behind hour-long training jobs
TRAIN_QUEUE = "celery"  # Celery's default queue: every producer that names no queue lands here


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from settings (no I/O: connections open on first use)."""
    app = Celery("ncsweep", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,
        broker_transport_options={"visibility_timeout": int(settings.visibility_timeout)},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        # A broker blip must not end a job: the database lease decides who runs a run, and the message Redis
        # redelivers after the blip finds it claimed (a no-op). Cancelling would kill every running job and
        # spend one of its attempts per Redis restart (architecture.md's True assumes no such fence).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        task_default_queue=TRAIN_QUEUE,
        task_routes={"ncsweep.reconcile": {"queue": CONTROL_QUEUE}},
        beat_schedule={"ncsweep-reconcile": {"task": "ncsweep.reconcile",
                                             "schedule": max(5.0, float(settings.heartbeat_seconds) * 2),
                                             "options": {"queue": CONTROL_QUEUE, "expires": 60}}},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def send_runs(app: Celery, runs: list[tuple[int, str]]) -> None:
    """Send one message per (run_id, kind) over a single producer connection (ids only)."""
    from nc_core.db.runs_repo import TASK_NAMES

    with app.producer_or_acquire() as producer:
        for run_id, kind in runs:
            app.send_task(TASK_NAMES[kind], args=[int(run_id)], producer=producer)


_PARENT_BEAT: list = []


def _control() -> bool:
    """NCSWEEP_CONTROL=1: the reconciler's worker (no training, no telemetry row, no torch)."""
    return os.environ.get("NCSWEEP_CONTROL", "") == "1"


@signals.worker_init.connect  # the first worker_init receiver: a worker that exits here leaves nothing behind
def _check_database(**_kw) -> None:
    """A worker whose database cannot be used at start exits 1 with one line naming NCSWEEP_DATABASE_URL (password
    masked) and the error, rather than taking jobs it can only fail; a database still starting gets
    NCSWEEP_DB_WAIT_SECONDS. A database lost later is the jobs' business (they re-queue their runs)."""
    settings = get_settings()
    url = settings.resolved_database_url()
    deadline = time.monotonic() + float(settings.db_wait_seconds)
    while True:
        problem, retry = database_problem(url)
        if problem is None:
            return
        if not retry or time.monotonic() >= deadline:
            break
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    waited = f" (after waiting {settings.db_wait_seconds:g} s: NCSWEEP_DB_WAIT_SECONDS)" if retry else ""
    logging.getLogger(__name__).error("worker not started: %s%s", problem, waited)
    raise SystemExit(1)  # not an Exception: Celery's signal dispatch passes it on, and `celery worker` exits 1


def database_problem(url: str) -> tuple[str | None, bool]:
    """(one line on why the database at ``url`` cannot serve a worker, whether waiting may help), or (None, False)
    when it answers and holds a migrated schema. A missing SQLite file is not created."""
    from sqlalchemy import create_engine, pool
    from sqlalchemy.exc import DBAPIError

    from nc_core.db.migrate import schema_problem
    from nc_core.settings import config_error, mask_url

    where = f"NCSWEEP_DATABASE_URL: expected a migrated ncsweep database (`alembic upgrade head`), got {mask_url(url)}"
    path = url.removeprefix("sqlite:///").split("?")[0] if url.startswith("sqlite:///") else ""
    if path not in ("", ":memory:") and not os.path.exists(path):
        return f"{where} (no such file)", True
    try:
        timeout = {"connect_timeout": 5} if url.startswith(("postgresql:", "postgresql+psycopg")) else {}
        engine = create_engine(url, poolclass=pool.NullPool, connect_args=timeout)
        try:
            with engine.connect() as conn:
                problem, retry = schema_problem(conn)
                if problem is not None:
                    return f"{where} ({problem})", retry
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - said in the one line
        why = config_error(exc, url) or f"NCSWEEP_DATABASE_URL={mask_url(url)}: {type(exc).__name__}: {exc}"
        return why, isinstance(exc, DBAPIError)
    return None, False


@signals.worker_ready.connect
def _start_idle_heartbeat(sender=None, **_kw) -> None:  # noqa: ANN001
    """The prefork parent beats 'idle' while no job runs (the job's child beats 'busy' itself)."""
    if _control():
        return
    try:
        from celery.worker import state
        from worker.runner import gpu_index, worker_name
        from worker.telemetry import Heartbeater

        class IdleHeartbeater(Heartbeater):
            def beat(self, status=None):  # noqa: ANN001, ANN202
                if status is None and state.active_requests:
                    return
                super().beat(status)

        name = getattr(sender, "hostname", None) or worker_name()
        beat = IdleHeartbeater(get_settings(), name, gpu_index())
        beat.start()
        _PARENT_BEAT.append(beat)
    except Exception as exc:  # noqa: BLE001 - telemetry must never stop a worker
        logging.getLogger(__name__).warning("idle heartbeat disabled: %s", exc)


@signals.worker_shutdown.connect
def _stop_idle_heartbeat(**_kw) -> None:
    for beat in _PARENT_BEAT:
        beat.stop(mark_stopped=True)
    for path in _OWN_STOP_FILE:
        with contextlib.suppress(OSError):
            os.remove(path)


_OWN_STOP_FILE: list[str] = []


@signals.worker_init.connect
def _name_the_stop_file(**_kw) -> None:
    """Without a supervisor (celery started directly, e.g. by docker compose) the worker names its own
    NCSWEEP_STOP_FILE before forking its job children, which read it (worker.reporter.DBReporter)."""
    if not os.environ.get("NCSWEEP_STOP_FILE"):
        from worker.launch import new_stop_file_path

        path = new_stop_file_path()
        os.environ["NCSWEEP_STOP_FILE"] = path
        _OWN_STOP_FILE.append(path)


@signals.worker_shutting_down.connect
def _tell_the_job_to_stop(**_kw) -> None:
    """A warm shutdown (SIGTERM): the running job stops after its last completed epoch, checkpoints it and
    goes back to the queue with its attempt given back, instead of being killed when the grace period ends.
    The flag is this worker process's own (its supervisor gives each spawned process a fresh one)."""
    path = os.environ.get("NCSWEEP_STOP_FILE")
    if path:
        from worker.launch import raise_stop_flag

        with contextlib.suppress(OSError):
            raise_stop_flag(path)


@signals.worker_ready.connect
def _stop_with_the_launcher(**_kw) -> None:
    """A worker whose launcher died without stopping it stops too (worker.orphan_watch)."""
    from worker.orphan_watch import watch_parent

    watch_parent()


@signals.worker_init.connect
def _preload(**_kw) -> None:
    """Import (never initialise) torch and the trainer in the parent so each fresh child starts fast."""
    if os.environ.get("NCSWEEP_PRELOAD", "1") == "1" and not _control():
        try:
            import nc_core.train  # noqa: F401
            import worker.runner  # noqa: F401
            from nc_core.db.session import make_engine

            with make_engine(get_settings().resolved_database_url()).connect():  # dialect probe, once
                pass
        except Exception as exc:  # noqa: BLE001 - the child will report the real import error
            logging.getLogger(__name__).warning("preload of nc_core.train failed: %s", exc)


@signals.worker_process_init.connect
def _fresh_child(**_kw) -> None:
    """A forked child must not reuse (nor close) the parent's pooled connections; it keeps the engines
    (their dialect is initialised already: the first claim costs one connect, not a dialect probe)."""
    from nc_core.db import session

    for engine in list(session._ENGINES.values()):
        engine.dispose(close=False)


try:
    app = make_celery(get_settings())
except ConfigError as exc:  # a bad NCSWEEP_ setting: one line naming it, not a traceback from the import
    raise SystemExit(f"error: {exc}") from None
