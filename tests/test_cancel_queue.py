"""A cancel takes its runs' waiting job messages out of the broker's queue (real Redis and PostgreSQL, no worker)."""
from __future__ import annotations

import logging
from collections import Counter

import httpx
import pytest

from service.enqueue import TASK_BY_KIND, CeleryEnqueuer, RecordingEnqueuer, clone_message, message_template
from service.withdraw import JOB_TASKS, QUEUE_KEYS, find_waiting, job_run_id, remove_waiting
from tests.helpers_stack import ApiServer, local_redis_url, make_settings, postgres_db
from tests.test_integration_stack import SWEEP

pytestmark = pytest.mark.integration
REDIS_DB = 13  # this file's database on the shared 127.0.0.1:6379
FOREIGN = b"not a job message"  # another producer's entry in the list: never touched


@pytest.fixture
def idle_stack(tmp_path):
    """PostgreSQL, the shared Redis (own DB number) and the API; no worker: every message stays queued."""
    import redis

    url, drop = postgres_db()
    broker = local_redis_url(REDIS_DB)
    settings = make_settings(tmp_path, url, broker)
    api = ApiServer(settings).start()
    client = redis.Redis.from_url(broker)
    yield settings, api, client
    client.flushdb()
    client.close()
    api.stop()
    drop()


def submit(api: ApiServer, name: str, seeds: int) -> tuple[int, list[int]]:
    created = httpx.post(f"{api.url}/sweeps", json={**SWEEP, "name": name, "grid": {}, "seeds": list(range(seeds))},
                         timeout=30)
    assert created.status_code == 201 and created.json()["enqueued"], created.text
    sweep_id = created.json()["sweep_id"]
    runs = httpx.get(f"{api.url}/runs", params={"sweep_id": sweep_id, "limit": 1000}).json()["items"]
    return sweep_id, [r["id"] for r in runs]


def waiting_runs(client) -> Counter:  # noqa: ANN001 - redis.Redis
    """Run id → number of its job messages in the queue lists (the priority sub-queues too)."""
    return Counter(rid for key in QUEUE_KEYS for m in client.lrange(key, 0, -1) if (rid := job_run_id(m)) is not None)


def test_cancel_removes_exactly_the_cancelled_runs_messages(idle_stack):
    settings, api, client = idle_stack
    doomed_sweep, doomed = submit(api, "doomed", 40)
    _, kept = submit(api, "kept", 5)
    assert waiting_runs(client) == Counter(doomed + kept)
    slow = CeleryEnqueuer(settings.broker_url, fast=False)  # Celery's own send_task, as the reconciler re-sends
    slow([("train", doomed[0])])
    slow.app.send_task(TASK_BY_KIND["train"], [doomed[1]], priority=9)  # kombu's priority sub-queue
    client.lpush("celery", FOREIGN)
    assert client.llen("celery\x06\x169") == 1 and waiting_runs(client)[doomed[0]] == 2

    cancelled = httpx.post(f"{api.url}/sweeps/{doomed_sweep}/cancel", timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["cancelled"] == 40, cancelled.text
    assert waiting_runs(client) == Counter(kept)  # the other sweep's messages all stay
    assert FOREIGN in client.lrange("celery", 0, -1) and client.llen("celery") == len(kept) + 1

    one = httpx.post(f"{api.url}/runs/{kept[0]}/cancel", timeout=30)
    assert one.json()["cancelled"] == 1 and waiting_runs(client) == Counter(kept[1:])
    assert httpx.post(f"{api.url}/runs/{kept[0]}/retry", timeout=30).json()["enqueued"]
    assert waiting_runs(client) == Counter(kept)  # the retry's message is its own: a later cancel's to remove


def test_a_message_sent_after_the_cancel_read_the_queue_stays():
    # what a retry racing the cancel sends after its commit: a fresh task id, so another string, never removed
    import redis

    client = redis.Redis.from_url(local_redis_url(REDIS_DB))
    template = message_template(TASK_BY_KIND["train"])
    seven, eight, later = (clone_message(template, rid) for rid in (7, 8, 7))
    client.lpush("celery", seven, eight)
    waiting = find_waiting(client, [7, 9])
    assert waiting == {7: {("celery", seven.encode())}}
    client.lpush("celery", later)
    assert remove_waiting(client, waiting, [7, 8]) == 1
    assert client.lrange("celery", 0, -1) == [later.encode(), eight.encode()]
    assert remove_waiting(client, waiting, [7]) == 0  # gone already (as one a worker took): nothing else goes
    client.flushdb()
    client.close()


def test_a_broker_down_at_cancel_time_does_not_fail_the_cancel(settings, write_token, caplog):  # noqa: ANN001
    from starlette.testclient import TestClient

    from service.app import create_app

    down = CeleryEnqueuer("redis://127.0.0.1:1/0", timeout=0.5)  # nothing listens on port 1
    app = create_app(settings, enqueuer=down, broker_check=lambda: None)
    with TestClient(app, headers={"Authorization": f"Bearer {write_token}"}) as api, \
            caplog.at_level(logging.WARNING, logger="service.withdraw"):
        created = api.post("/sweeps", json={**SWEEP, "name": "down", "grid": {}, "seeds": [0, 1, 2]})
        assert created.status_code == 201 and created.json()["enqueued"] is False  # runs stay queued
        runs = api.get("/runs", params={"sweep_id": created.json()["sweep_id"]}).json()["items"]
        assert api.post(f"/runs/{runs[0]['id']}/cancel").json()["cancelled"] == 1
        swept = api.post(f"/sweeps/{created.json()['sweep_id']}/cancel")
        assert swept.status_code == 200 and swept.json()["cancelled"] == 2, swept.text
        assert {r["status"] for r in api.get("/runs", params={"sweep_id": created.json()["sweep_id"]})
                .json()["items"]} == {"cancelled"}
    assert "could not read the broker's queue" in caplog.text


def test_job_messages_are_recognised_by_task_and_single_run_id():
    assert JOB_TASKS == set(TASK_BY_KIND.values())
    for name in JOB_TASKS:
        assert job_run_id(clone_message(message_template(name), 42).encode()) == 42
    template = message_template("ncsweep.reconcile")  # another task: never a run's message
    assert job_run_id(clone_message(template, 42).encode()) is None
    assert job_run_id(FOREIGN) is None and job_run_id(b'{"headers": {}}') is None


class ConnectionCountingEnqueuer(RecordingEnqueuer):
    """Records how many database connections the API has checked out while a cancel reads or edits the
    broker's queue (a slow or hung Redis keeps it there for up to its socket timeout)."""

    def __init__(self, engine):  # noqa: ANN001 - sqlalchemy Engine
        super().__init__()
        self.engine, self.held = engine, []

    def find_waiting(self, run_ids):  # noqa: ANN001, ANN201
        self.held.append(("find", self.engine.pool.checkedout()))
        return {rid: {("celery", b"message of %d" % rid)} for rid in run_ids}

    def withdraw(self, waiting, run_ids):  # noqa: ANN001, ANN201
        self.held.append(("withdraw", self.engine.pool.checkedout()))
        return len(run_ids)


def test_a_cancel_holds_no_database_connection_while_it_reads_the_broker(settings, write_token):  # noqa: ANN001
    # the queue scan ran inside the request's open read transaction: on PostgreSQL a connection idle in
    # transaction (holding its locks) for as long as Redis took to answer, per concurrent cancel
    from starlette.testclient import TestClient

    from nc_core.db.session import make_engine
    from service.app import create_app

    counting = ConnectionCountingEnqueuer(make_engine(settings.resolved_database_url()))
    app = create_app(settings, enqueuer=counting, broker_check=lambda: None)
    with TestClient(app, headers={"Authorization": f"Bearer {write_token}"}) as api:
        created = api.post("/sweeps", json={**SWEEP, "name": "held", "grid": {}, "seeds": [0, 1, 2]})
        sweep_id = created.json()["sweep_id"]
        runs = api.get("/runs", params={"sweep_id": sweep_id}).json()["items"]
        assert api.post(f"/runs/{runs[0]['id']}/cancel").json()["cancelled"] == 1
        assert api.post(f"/sweeps/{sweep_id}/cancel").json()["cancelled"] == 2
    assert counting.held == [("find", 0), ("withdraw", 0)] * 2, counting.held
