"""A Celery worker started by a launcher (``ncsweep up``, ``ncsweep worker``) stops when that launcher dies.

It dies without stopping the worker on a SIGKILL or a closed terminal: the worker's own process group never gets
the launcher's signals.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

PARENT_VARIABLE = "NCSWEEP_PARENT_PID"  # set by worker.launch.Supervisor for the processes it spawns


def watch_parent(poll_s: float = 1.0) -> threading.Thread | None:
    """When NCSWEEP_PARENT_PID names this process's parent: a daemon thread that sends this process SIGTERM
    (Celery's warm shutdown: a running job checkpoints and returns its run to the queue) once the parent is
    gone (the process is re-parented) — at once when it died while this worker started. None without the
    variable."""
    value = os.environ.get(PARENT_VARIABLE, "")
    if not value.isdigit():
        return None
    parent = int(value)

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(poll_s)
        logging.getLogger(__name__).warning("the launcher (pid %s) is gone; stopping this worker", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="orphan-watch", daemon=True)
    thread.start()
    return thread
