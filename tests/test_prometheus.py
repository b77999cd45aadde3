"""GET /metrics: Prometheus exposition read from the database (and the broker's queue lengths)."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers_stack import RedisServer
from nc_core.db import workers_repo
from nc_core.db.session import session_scope
from test_plots import seed_sweep


def scrape(client) -> dict[tuple[str, tuple], float]:  # noqa: ANN001
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def test_runs_queue_workers_and_durations(app_client, db_url: str) -> None:  # noqa: ANN001
    seed_sweep(db_url, statuses={0: "queued", 1: "queued", 2: "running", 3: "failed"})  # 8 runs, 4 succeeded
    with session_scope(db_url) as s:
        workers_repo.heartbeat(s, "w-busy", "h", 1, "cpu", {"util_percent": 10.0}, None, "idle")
    m = scrape(app_client)
    assert m[("ncsweep_runs", (("status", "queued"),))] == 2
    assert m[("ncsweep_runs", (("status", "succeeded"),))] == 4
    assert m[("ncsweep_runs", (("status", "cancelled"),))] == 0
    assert m[("ncsweep_queue_depth", (("queue", "runs"), ("source", "db")))] == 2
    assert m[("ncsweep_workers_alive", ())] == 1
    assert m[("ncsweep_workers", (("state", "idle"),))] == 1
    assert m[("ncsweep_job_duration_seconds_count", (("status", "succeeded"),))] == 4
    assert m[("ncsweep_job_duration_seconds_bucket", (("le", "10.0"), ("status", "succeeded")))] == 0
    assert m[("ncsweep_job_duration_seconds_bucket", (("le", "300.0"), ("status", "succeeded")))] == 4
    assert m[("ncsweep_job_duration_seconds_sum", (("status", "failed"),))] > 60
    # unreachable broker (conftest points at db 15 of a local Redis that may be absent): no redis series needed
    seed_sweep(db_url, name="more", statuses={i: "queued" for i in range(8)})
    assert scrape(app_client)[("ncsweep_queue_depth", (("queue", "runs"), ("source", "db")))] == 10


def test_redis_queue_length_when_broker_reachable(tmp_path, db_url: str) -> None:  # noqa: ANN001
    import redis
    from starlette.testclient import TestClient

    from nc_core.settings import Settings
    from service.app import create_app

    server = RedisServer(tmp_path / "redis").start()
    try:
        redis.Redis.from_url(server.url(3)).rpush("celery", "a", "b", "c")
        settings = Settings(home=tmp_path, database_url=db_url, broker_url=server.url(3))
        with TestClient(create_app(settings, enqueuer=lambda jobs: None, broker_check=lambda: None)) as client:
            m = scrape(client)
            assert m[("ncsweep_queue_depth", (("queue", "celery"), ("source", "redis")))] == 3
            assert m[("ncsweep_queue_depth", (("queue", "ncsweep.control"), ("source", "redis")))] == 0
            server.kill()
            m = scrape(client)
            assert not any(name == "ncsweep_queue_depth" and ("source", "redis") in labels for name, labels in m)
    finally:
        server.kill()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_prometheus_registry_is_per_app(app_client, db_url: str, tmp_path, sqlite_template) -> None:  # noqa: ANN001
    import shutil

    from starlette.testclient import TestClient

    from nc_core.settings import Settings
    from service.app import create_app

    seed_sweep(db_url, statuses={i: "queued" for i in range(8)})
    scrape(app_client)
    assert scrape(app_client)[("ncsweep_runs", (("status", "queued"),))] == 8  # a second scrape: no duplicate error
    other_db = tmp_path / "other.db"  # a second app on another, empty database reads its own, not the first's
    shutil.copy(sqlite_template, other_db)
    other = create_app(Settings(home=tmp_path / "other", database_url=f"sqlite:///{other_db}",
                                broker_url="redis://127.0.0.1:1/0"), enqueuer=lambda jobs: None, broker_check=lambda: None)
    with TestClient(other) as client:
        assert scrape(client)[("ncsweep_runs", (("status", "queued"),))] == 0
    assert scrape(app_client)[("ncsweep_runs", (("status", "queued"),))] == 8
