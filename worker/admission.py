"""Job messages whose run no worker could claim are dropped in the worker's main process, before a child is forked."""
from __future__ import annotations

import logging
import time
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


#: After a failed read, messages go straight to the job process for this long: a database that is down (or a
#: connect that hangs) must not stall the main process's consumer loop message after message.
BACKOFF_S = 30.0
_last_failure = [float("-inf")]


def drop_reason(run_id: int) -> str | None:
    """Why no claim could take the run now (runs_repo.drop_unclaimable: 'cancelled' — a queued run whose cancel
    was requested, now cancelled, as the job process would — or 'taken or finished'), or None: claimable,
    missing, or the database could not say (the job process then decides, as before).

    Each job runs in a fresh prefork child (worker_max_tasks_per_child=1) and Celery takes ~4-5 s to replace
    one: a message whose run is finished, cancelled or owned by a live lease (what a cancelled or retried sweep
    leaves in the queue, a duplicate delivery) cost that much for a no-op — a cancelled 4,000-run sweep kept a
    1-run sweep behind it waiting ~5 h. The claim in the child stays the authority."""
    from nc_core.db import runs_repo
    from nc_core.db.session import session_scope
    from nc_core.settings import get_settings

    if time.monotonic() - _last_failure[0] < BACKOFF_S:
        return None
    try:
        with session_scope(get_settings().resolved_database_url()) as session:
            if runs_repo.claimable(session, run_id) in (None, True):
                return None
            return runs_repo.drop_unclaimable(session, run_id)
    except Exception as exc:  # noqa: BLE001 - an unreadable database must not lose the message
        _last_failure[0] = time.monotonic()
        log.warning("run %s: could not read its row before forking (%s); job processes decide for %.0f s",
                    run_id, exc, BACKOFF_S)
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
