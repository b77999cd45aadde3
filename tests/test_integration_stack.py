"""End to end through real services: HTTP submit → Redis → Celery worker processes → SQL metrics,
on PostgreSQL + the shared Redis (own DB number) and on SQLite + a Redis server started here."""
from __future__ import annotations

import httpx
import pytest

from tests.helpers_stack import (ApiServer, CeleryWorker, RedisServer, local_redis_url, make_settings,
                                 postgres_db, sqlite_db, wait_for)

pytestmark = pytest.mark.integration
REDIS_DB = 11  # this test's database on the shared 127.0.0.1:6379

SWEEP = {"name": "it-gaussian",
         "base": {"epochs": 3, "batch_size": 64, "device": "cpu",
                  "data": {"name": "gaussian", "train_size": 400, "test_size": 200, "gaussian_classes": 4,
                           "gaussian_dim": 16},
                  "model": {"name": "mlp", "width": 32, "depth": 2}, "eval": {"every": 1},
                  "checkpoint": {"every": 1}},
         "grid": {"loss.name": ["ce", "mse"]}, "seeds": [0, 1]}


@pytest.fixture(params=["postgresql", "sqlite"])
def stack(request, tmp_path):
    cleanups = []
    if request.param == "postgresql":
        url, drop = postgres_db()
        cleanups.append(drop)
        broker = local_redis_url(REDIS_DB)
    else:
        url = sqlite_db(tmp_path)
        redis = RedisServer(tmp_path / "redis").start()
        cleanups.append(redis.stop)
        broker = redis.url()
    settings = make_settings(tmp_path, url, broker)
    api = ApiServer(settings).start()
    cleanups.append(api.stop)
    workers = [CeleryWorker(settings, f"w{i}").start() for i in range(2)]
    cleanups.extend(w.stop for w in workers)
    yield settings, api, workers
    for fn in reversed(cleanups):
        fn()


def runs_of(api: ApiServer, sweep_id: int) -> list[dict]:
    return httpx.get(f"{api.url}/runs", params={"sweep_id": sweep_id, "limit": 100}).json()["items"]


def test_sweep_runs_to_completion_with_metrics(stack):
    settings, api, workers = stack
    created = httpx.post(f"{api.url}/sweeps", json=SWEEP, timeout=30)
    assert created.status_code == 201, created.text
    sweep_id = created.json()["sweep_id"]
    assert created.json()["runs"] == 4

    def finished():
        runs = runs_of(api, sweep_id)
        return runs if all(r["status"] in ("succeeded", "failed", "cancelled") for r in runs) else None

    try:
        runs = wait_for(finished, 90, 0.5, "all runs to finish")
    except AssertionError:
        raise AssertionError("\n".join(w.tail() for w in workers)) from None
    assert [r["status"] for r in runs] == ["succeeded"] * 4, [r["error"] for r in runs]
    assert all(r["attempt"] == 1 and r["epoch"] == 3 for r in runs)

    series = httpx.get(f"{api.url}/runs/{runs[0]['id']}/metrics").json()["series"]
    acc = next(s for s in series if s["split"] == "test" and s["key"] == "acc")
    assert acc["epochs"] == [1, 2, 3] and all(v is not None for v in acc["values"])
    dists = httpx.get(f"{api.url}/runs/{runs[0]['id']}/distributions").json()["items"]  # sorted cosine margins
    assert {(d["split"], d["key"], d["epoch"]) for d in dists} == {(s, "cos_margin", 3) for s in ("train", "test")}
    assert all(d["n"] == len(d["values"]) > 1 and d["values"] == sorted(d["values"]) for d in dists)

    results = httpx.get(f"{api.url}/sweeps/{sweep_id}/results", params={"keys": "acc,nc1"}).json()
    assert results["group_by"] == ["loss.name"]
    assert [g["values"]["loss.name"] for g in results["groups"]] == ["ce", "mse"]
    for group in results["groups"]:
        assert group["runs"] == 2 and group["metrics"]["acc"]["count"] == 2
        assert group["metrics"]["acc"]["std"] is not None
