"""Job messages whose run no worker could claim are dropped in the worker's main process, before a child is forked.

Each job runs in a fresh prefork child (``worker_max_tasks_per_child=1``), and Celery takes ~4-5 s to
replace a child. A message whose run is already finished, cancelled or owned by a live lease (the messages a
cancelled or retried sweep leaves in the queue, a duplicate delivery) would cost that much for a no-op; a
cancelled 4,000-run sweep kept a 1-run sweep behind it waiting ~5 h. The main process reads the run's row
first (one primary-key read) and acknowledges such a message at once. The claim in the child stays the
authority: a run that becomes unclaimable after this read is still dropped there.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from celery import Task
from celery.worker.strategy import default as default_strategy

log = logging.getLogger(__name__)


def run_id_of(message: Any) -> int | None:
    """The run id a job message carries (its only argument), or None when it carries something else."""
    try:
        args = message.decode()[0]
    except Exception:  # noqa: BLE001 - not ours to judge: the normal path reports bad messages
        return None
    if isinstance(args, (list, tuple)) and len(args) == 1 and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0]
    return None


def drop_reason(run_id: int) -> str | None:
    """Why no claim could take the run now ('cancelled': a queued run whose cancel was requested, now
    cancelled, as the child would; 'taken or finished'), or None: claimable, missing, or the database
    could not say (the child then decides, as before)."""
    from nc_core.db import runs_repo
    from nc_core.db.models import Run
    from nc_core.db.session import session_scope
    from nc_core.settings import get_settings

    try:
        with session_scope(get_settings().resolved_database_url()) as session:
            if session.get(Run, run_id) is None or runs_repo.is_claimable(session, run_id):
                return None
            return "cancelled" if runs_repo.cancel_queued(session, run_id) else "taken or finished"
    except Exception as exc:  # noqa: BLE001 - an unreadable database must not lose the message
        log.warning("run %s: could not read its row before forking (%s); the job process decides", run_id, exc)
        return None


def admitting_strategy(task: Task, app: Any, consumer: Any, **kwargs: Any) -> Callable:
    """Celery's default strategy for a job task, preceded by :func:`drop_reason` for each message."""
    handle = default_strategy(task, app, consumer, **kwargs)
    connection_errors = consumer.connection_errors

    def task_message_handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        run_id = run_id_of(message)
        reason = drop_reason(run_id) if run_id is not None else None
        if reason is None:
            return handle(message, body, ack, reject, callbacks, **kw)
        log.info("run %s: not claimable (%s); message dropped before forking a job process", run_id, reason)
        ack(log, connection_errors)
        return None

    return task_message_handler


class JobTask(Task):
    """Base of the train / validate / UFM tasks: messages pass :func:`admitting_strategy` first."""

    Strategy = "worker.admission:admitting_strategy"
