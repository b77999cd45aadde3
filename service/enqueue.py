"""Send job ids to Celery after commit (bulk, one producer); injectable for tests and the launcher."""
from __future__ import annotations

import logging
import threading
from typing import Protocol, Sequence

log = logging.getLogger(__name__)

TASK_BY_KIND = {"train": "ncsweep.train", "ufm": "ncsweep.ufm", "validate": "ncsweep.validate"}

Job = tuple[str, int]  # (run kind, run id)


class Enqueuer(Protocol):
    """Anything callable with [(kind, run_id), ...]; raising means 'not sent' (runs stay queued)."""

    def __call__(self, jobs: Sequence[Job]) -> None: ...


def task_name(kind: str) -> str:
    return TASK_BY_KIND[kind]


class CeleryEnqueuer:
    """Publishes `send_task(name, [run_id])` over one pooled producer; the Celery app is built lazily."""

    def __init__(self, broker_url: str, *, visibility_timeout: int = 7 * 24 * 3600, timeout: float = 5.0):
        self.broker_url = broker_url
        self.visibility_timeout = visibility_timeout
        self.timeout = timeout
        self._app = None
        self._lock = threading.Lock()

    @property
    def app(self):  # noqa: ANN201 - celery.Celery, imported lazily
        with self._lock:
            if self._app is None:
                self._app = _celery_app(self.broker_url, self.visibility_timeout, self.timeout)
            return self._app

    def __call__(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        app = self.app
        with app.producer_or_acquire() as producer, producer.batch(max_size=1000):  # pipelined LPUSHes
            for kind, run_id in jobs:
                app.send_task(task_name(kind), [run_id], producer=producer)


def _celery_app(broker_url: str, visibility_timeout: int, timeout: float):  # noqa: ANN202
    from celery import Celery

    app = Celery("ncsweep-api", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_backend=None, task_ignore_result=True,
        broker_transport_options={"visibility_timeout": visibility_timeout, "socket_connect_timeout": timeout,
                                  "socket_timeout": timeout},
        broker_connection_timeout=timeout, broker_pool_limit=4,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
    )
    return app


class RecordingEnqueuer:
    """Test double: records every job; `fail=True` simulates a dead broker."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.calls: list[list[Job]] = []

    def __call__(self, jobs: Sequence[Job]) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable (RecordingEnqueuer.fail)")
        self.calls.append(list(jobs))

    @property
    def run_ids(self) -> list[int]:
        return [run_id for call in self.calls for _, run_id in call]

    @property
    def tasks(self) -> list[tuple[str, int]]:
        return [(task_name(kind), run_id) for call in self.calls for kind, run_id in call]


def safe_enqueue(enqueuer: Enqueuer, jobs: Sequence[Job]) -> bool:
    """Enqueue after commit; on failure log and return False: the runs stay queued in the database
    and the reconciler re-sends queued, unclaimed runs after its grace period."""
    try:
        enqueuer(jobs)
        return True
    except Exception:  # noqa: BLE001 - any broker error; the database stays the truth
        log.exception("enqueue of %d jobs failed; runs stay queued for the reconciler", len(jobs))
        return False


def broker_ping(broker_url: str, timeout: float = 2.0) -> None:
    """Raise if the broker cannot be reached within `timeout` seconds."""
    from kombu import Connection

    with Connection(broker_url, connect_timeout=timeout,
                    transport_options={"socket_connect_timeout": timeout, "socket_timeout": timeout}) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        if conn.transport_cls in ("redis", "rediss") or broker_url.startswith("redis"):
            conn.default_channel.client.ping()
