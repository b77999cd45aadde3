"""What makes the service's speed goals reachable, checked as behaviour (the timings themselves are
bench/service_bench.py's: tests never assert wall-clock time on a shared machine): a 10,000-run sweep
goes in with a bounded number of SQL statements and a run's metric series
with 1,000,000 metric rows in PostgreSQL is read through an index, never a sequential scan."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, event, text
from starlette.testclient import TestClient

from nc_core.db.migrate import upgrade
from nc_core.db.session import session_scope
from nc_core.metric_keys import METRIC_KEYS
from nc_core.sweep import SweepSpec, expand

BIG = {"name": "big", "base": {"epochs": 5, "data": {"name": "gaussian"}}, "max_runs": 20000, "seeds": list(range(10)),
       "grid": {"optim.lr": [round(0.001 * i, 3) for i in range(1, 51)], "model.width": [16 * i for i in range(1, 21)]}}


@contextmanager
def captured_sql() -> Iterator[list[tuple[str, object]]]:
    """Every (statement, parameters) any SQLAlchemy engine sends to its database inside the block."""
    seen: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        seen.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


@pytest.fixture
def broker(tmp_path):  # noqa: ANN001, ANN201
    """A private redis-server on a free port (no other consumer can drain its queue)."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is required under CI=true")
        pytest.skip("redis-server not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.url = f"redis://127.0.0.1:{port}/0"
    yield client
    proc.terminate()
    proc.wait(10)


def test_submit_10k_runs_with_real_enqueue(db_url, settings, write_token, broker, row_counts):
    from service.app import create_app

    settings.broker_url = broker.url
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {write_token}"}) as client:
        client.post("/sweeps", json={"name": "warm", "base": {"data": {"name": "gaussian"}}})  # templates, pools
        broker.delete("celery")
        with captured_sql() as statements:
            resp = client.post("/sweeps", json=BIG)
    assert resp.status_code == 201 and resp.json()["runs"] == 10_000 and resp.json()["enqueued"] is True
    assert broker.llen("celery") == 10_000 and row_counts()["run"] == 10_001
    # bulk work: a few dozen statements (multi-row INSERTs), not one per run
    print(f"{len(statements)} SQL statements for a 10,000-run sweep on {db_url.split(':')[0]}")
    assert 0 < len(statements) <= 60, f"{len(statements)} SQL statements for a 10,000-run sweep"


@pytest.fixture(scope="module")
def million_metrics(pg_server):  # noqa: ANN001, ANN201
    """A PostgreSQL database with 2,000 runs × 500 metric rows (2 splits × 10 keys × 25 epochs)."""
    url = pg_server.create("ncsweep_perf")
    upgrade(url)
    with session_scope(url) as s:
        s.execute(text("INSERT INTO sweep (id, name, spec, axes, owner, created_at) "
                       "VALUES (1, 'perf', '{}', '[]', '', now())"))
        s.execute(text("INSERT INTO run (sweep_id, kind, spec, spec_hash, grid, seed, options, status, cancel_requested,"
                       " attempt, max_attempts, epoch, epochs_total, step, steps_total, created_at, updated_at) "
                       "SELECT 1, 'train', '{}', md5(g::text), '{}', 0, '{}', 'succeeded', false, 1, 3, 25, 25, 0, 0,"
                       " now(), now() FROM generate_series(1, 2000) g"))
        s.execute(text("INSERT INTO metric (run_id, epoch, split, key, value, metric_version, created_at) "
                       "SELECT r, e, sp, k, random(), 1, now() FROM generate_series(1, 2000) r, "
                       "generate_series(1, 25) e, unnest(ARRAY['train', 'test']) sp, unnest(CAST(:keys AS text[])) k"),
                  {"keys": list(METRIC_KEYS[:10])})
        s.execute(text("ANALYZE metric"))
    yield url
    pg_server.drop(url)


def test_metric_series_reads_an_index_among_a_million_rows(million_metrics, tmp_path):
    from nc_core.settings import Settings
    from service.app import create_app

    app = create_app(Settings(database_url=million_metrics, home=tmp_path), enqueuer=lambda jobs: None)
    with session_scope(million_metrics) as s:
        assert s.scalar(text("SELECT count(*) FROM metric")) == 1_000_000
    with TestClient(app) as client:
        for i in range(6):
            rid = 1 + (i * 37) % 2000
            params = {"split": "test", "key": METRIC_KEYS[3]} if i % 2 else {}
            with captured_sql() as statements:
                resp = client.get(f"/runs/{rid}/metrics", params=params)
            assert resp.status_code == 200 and resp.json()["series"][0]["epochs"] == list(range(1, 26))
            reads = [(sql, p) for sql, p in statements if "FROM metric" in sql]
            assert reads, f"no query of the metric table among {[sql for sql, _ in statements]}"
            with session_scope(million_metrics) as s:
                for sql, p in reads:
                    plan = "\n".join(row[0] for row in s.connection().exec_driver_sql("EXPLAIN " + sql, p))
                    assert "Index" in plan and "Seq Scan on metric" not in plan, plan
