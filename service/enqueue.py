"""Send job ids to Celery after commit (bulk, one producer); injectable for tests and the launcher."""
from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from typing import Protocol, Sequence

from service.withdraw import Waiting, find_waiting, remove_waiting

log = logging.getLogger(__name__)

TASK_BY_KIND = {"train": "ncsweep.train", "ufm": "ncsweep.ufm", "validate": "ncsweep.validate"}

Job = tuple[str, int]  # (run kind, run id)


class Enqueuer(Protocol):
    """Anything callable with [(kind, run_id), ...]; raising means 'not sent' (runs stay queued). One that can
    also take a cancelled run's messages back has find_waiting and withdraw (CeleryEnqueuer; service.withdraw)."""

    def __call__(self, jobs: Sequence[Job]) -> None: ...


def task_name(kind: str) -> str:
    return TASK_BY_KIND[kind]


class CeleryEnqueuer:
    """Publishes `send_task(name, [run_id])` messages. Redis brokers get a fast bulk path: one message
    per task name is built by Celery itself (on an in-memory transport), then cloned with fresh ids and
    LPUSHed in pipelines; other brokers use send_task over one pooled producer in a publish batch. On Redis a
    cancel takes its runs' waiting messages out again (find_waiting before it, withdraw after its commit)."""

    def __init__(self, broker_url: str, *, visibility_timeout: int = 7 * 24 * 3600, timeout: float = 5.0,
                 fast: bool = True):
        self.broker_url = broker_url
        self.visibility_timeout = visibility_timeout
        self.timeout = timeout
        self.fast = fast and broker_url.startswith(("redis://", "rediss://"))
        self._app = None
        self._redis = None
        self._templates: dict[str, dict] = {}
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
        if self.fast:
            return self._send_fast(jobs)
        app = self.app
        with app.producer_or_acquire() as producer, producer.batch(max_size=1000):  # pipelined LPUSHes
            for kind, run_id in jobs:
                app.send_task(task_name(kind), [run_id], producer=producer)

    def find_waiting(self, run_ids: Sequence[int]) -> Waiting:
        """The runs' job messages waiting in the Redis queue lists (service.withdraw.find_waiting); {} for
        other brokers. Read before a cancel, removed after its commit by :meth:`withdraw`."""
        if not self.broker_url.startswith(("redis://", "rediss://")):
            return {}
        return find_waiting(self._client(), run_ids)

    def withdraw(self, waiting: Waiting, run_ids: Sequence[int]) -> int:
        """Remove the messages in ``waiting`` of the cancelled ``run_ids`` (service.withdraw.remove_waiting)."""
        return remove_waiting(self._client(), waiting, run_ids) if waiting else 0

    def _client(self):  # noqa: ANN202 - redis.Redis, imported lazily
        with self._lock:
            if self._redis is None:
                from nc_core.broker_client import redis_client

                self._redis = redis_client(self.broker_url, socket_timeout=self.timeout,
                                           socket_connect_timeout=self.timeout)
            return self._redis

    def _send_fast(self, jobs: Sequence[Job]) -> None:
        client = self._client()
        with self._lock:
            for name in {task_name(kind) for kind, _ in jobs} - set(self._templates):
                self._templates[name] = message_template(name)
        with client.pipeline(transaction=False) as pipe:
            for i, (kind, run_id) in enumerate(jobs, 1):
                template = self._templates[task_name(kind)]
                pipe.lpush(template["queue"], clone_message(template, run_id))
                if i % 2000 == 0:
                    pipe.execute()
            pipe.execute()


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


# ---- fast path: Celery-built message template, cloned per run id -------------------------------

def message_template(name: str, probe_id: int = 0) -> dict:
    """Let Celery build one `name` message on kombu's in-memory transport and keep its envelope.
    Raises RuntimeError if the envelope does not look like Celery protocol 2 as expected."""
    app = _celery_app("memory://", 3600, 1.0)
    with app.producer_or_acquire() as producer:
        app.send_task(name, [probe_id], producer=producer)
        queue = app.conf.task_default_queue
        envelope = producer.channel._get(queue)  # the exact dict a virtual transport (redis) LPUSHes
    headers, props = envelope["headers"], envelope["properties"]
    tid = headers["id"]
    args, kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
    expected = (headers["task"] == name and headers["root_id"] == tid and props["correlation_id"] == tid
                and props["body_encoding"] == "base64" and envelope["content-type"] == "application/json"
                and args == [probe_id] and kwargs == {} and headers["argsrepr"] == repr([probe_id])
                and props["delivery_info"].get("routing_key") == queue and props.get("priority", 0) == 0)
    if not expected:
        raise RuntimeError(f"unexpected Celery message layout for {name}: {envelope!r}")
    return {"queue": queue, "envelope": envelope, "embed": embed}


def clone_message(template: dict, run_id: int) -> str:
    """The template's envelope for `[run_id]` with fresh task id and delivery tag (JSON text)."""
    env = template["envelope"]
    tid = str(uuid.uuid4())
    body = json.dumps([[run_id], {}, template["embed"]]).encode()
    headers = {**env["headers"], "id": tid, "root_id": tid, "argsrepr": repr([run_id])}
    props = {**env["properties"], "correlation_id": tid, "delivery_tag": str(uuid.uuid4()),
             "delivery_info": dict(env["properties"]["delivery_info"])}
    return json.dumps({**env, "body": base64.b64encode(body).decode(), "headers": headers, "properties": props})
