"""Fault tolerance with real Redis, SQLite and Celery worker processes: worker loss mid-run,
duplicate delivery, a diverging run, cancellation."""
from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from sqlalchemy import func, select

from nc_core.db.models import Event, Metric, Run
from nc_core.db.session import session_scope
from tests.helpers_stack import ApiServer, CeleryWorker, Reconciler, RedisServer, make_settings, sqlite_db, wait_for

pytestmark = pytest.mark.integration
FINISHED = ("succeeded", "failed", "cancelled")


def spec(epochs: int, *, lr: float = 0.05, eval_every: int = 10, train_size: int = 4000) -> dict:
    return {"epochs": epochs, "batch_size": 64, "device": "cpu", "optim": {"lr": lr},
            "data": {"name": "gaussian", "train_size": train_size, "test_size": 500, "gaussian_classes": 4,
                     "gaussian_dim": 32},
            "model": {"name": "mlp", "width": 256, "depth": 3}, "eval": {"every": eval_every},
            "checkpoint": {"every": 1, "keep_last": 2}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("faults")
    redis = RedisServer(home / "redis").start()
    settings = make_settings(home, sqlite_db(home), redis.url(), lease_seconds=3.0, heartbeat_seconds=0.5)
    api = ApiServer(settings).start()
    recon = Reconciler(settings)
    workers = [CeleryWorker(settings, f"f{i}").start() for i in range(2)]
    yield {"settings": settings, "api": api, "workers": workers, "url": settings.resolved_database_url()}
    recon.stop()
    for w in workers:
        w.stop()
    api.stop()
    redis.stop()


def submit(stack: dict, name: str, base: dict, **extra) -> list[int]:
    body = {"name": name, "base": base, **extra}
    r = httpx.post(f"{stack['api'].url}/sweeps", json=body, timeout=30)
    assert r.status_code == 201, r.text
    runs = httpx.get(f"{stack['api'].url}/runs", params={"sweep_id": r.json()["sweep_id"]}).json()["items"]
    return [run["id"] for run in runs]


def run_row(stack: dict, run_id: int) -> Run:
    with session_scope(stack["url"]) as s:
        return s.get(Run, run_id)


def wait_status(stack: dict, run_id: int, statuses: tuple, timeout: float) -> Run:
    try:
        return wait_for(lambda: (r := run_row(stack, run_id)).status in statuses and r, timeout, 0.2,
                        f"run {run_id} to reach {statuses}")
    except AssertionError:
        raise AssertionError("\n".join(w.tail(40) for w in stack["workers"])) from None


def test_killed_worker_run_is_requeued_and_resumes_from_checkpoint(stack):
    (rid,) = submit(stack, "kill", spec(40))
    run = wait_for(lambda: (r := run_row(stack, rid)).epoch >= 4 and r, 60, 0.1, "epoch 4")
    victim = next(w for w in stack["workers"] if run.worker_name and run.worker_name.startswith(w.name + "@"))
    victim.kill()  # kill -9 of the whole worker: parent and the child running the job
    killed_at = run_row(stack, rid).epoch
    done = wait_status(stack, rid, FINISHED, 150)  # generous: the machine is shared
    stack["workers"][stack["workers"].index(victim)] = CeleryWorker(stack["settings"], victim.name + "b").start()
    assert done.status == "succeeded" and done.attempt == 2, done.error
    assert not done.worker_name.startswith(victim.name + "@")
    with session_scope(stack["url"]) as s:
        rows = s.execute(select(Metric.epoch, Metric.split, Metric.key, func.count()).where(Metric.run_id == rid)
                         .group_by(Metric.epoch, Metric.split, Metric.key)).all()
        events = list(s.scalars(select(Event).where(Event.run_id == rid).order_by(Event.id)))
    assert rows and all(n == 1 for *_, n in rows)
    assert {e for e, *_ in rows} >= {10, 20, 30, 40}
    second = next(i for i, e in enumerate(events) if e.kind == "status" and e.payload.get("attempt") == 2)
    first_progress = next(e for e in events[second:] if e.kind == "progress" and "epoch" in e.payload)
    assert first_progress.payload["epoch"] >= killed_at - 1  # resumed near the kill, not from epoch 0


def test_duplicate_delivery_is_a_no_op(stack):
    from worker.celery_app import make_celery, send_runs

    (rid,) = submit(stack, "dup", spec(2, eval_every=1, train_size=400))
    send_runs(make_celery(stack["settings"]), [(rid, "train")])  # the same message again
    done = wait_status(stack, rid, FINISHED, 60)
    assert done.status == "succeeded" and done.attempt == 1
    with session_scope(stack["url"]) as s:
        running = s.scalar(select(func.count()).select_from(Event).where(
            Event.run_id == rid, Event.kind == "status", Event.payload["status"].as_string() == "running"))
    assert running == 1
    wait_for(lambda: any("not claimable" in w.tail(400) for w in stack["workers"]), 20, 0.5, "the dropped duplicate")


def test_diverging_run_fails_with_reason_and_worker_takes_next_job(stack):
    bad, good = submit(stack, "diverge", spec(3, eval_every=1, train_size=400), grid={"optim.lr": [1e6, 0.05]})
    failed = wait_status(stack, bad, FINISHED, 60)
    assert failed.status == "failed" and failed.error.startswith("TrainingDiverged: ")
    assert "Traceback" not in failed.error and "\n" not in failed.error
    assert wait_status(stack, good, FINISHED, 60).status == "succeeded"
    loser = next(w for w in stack["workers"] if failed.worker_name.startswith(w.name + "@"))
    assert loser.proc.poll() is None  # the worker survived the failure
    (after,) = submit(stack, "after-diverge", spec(1, eval_every=1, train_size=200), seeds=[7])
    assert wait_status(stack, after, FINISHED, 60).status == "succeeded"


def test_cancel_stops_a_running_job(stack):
    (rid,) = submit(stack, "cancel", spec(300))
    wait_for(lambda: run_row(stack, rid).epoch >= 1, 60, 0.1, "epoch 1")
    r = httpx.post(f"{stack['api'].url}/runs/{rid}/cancel", timeout=10)
    assert r.status_code == 200, r.text
    done = wait_status(stack, rid, FINISHED, 20)
    assert done.status == "cancelled" and done.epoch < 300


def test_killed_child_redelivery_is_dropped_and_reconciler_requeues(stack):
    (rid,) = submit(stack, "kill-child", spec(30))
    run = wait_for(lambda: (r := run_row(stack, rid)).epoch >= 3 and r, 60, 0.1, "epoch 3")
    worker = next(w for w in stack["workers"] if run.worker_name.startswith(w.name + "@"))
    children = worker.children()
    assert children, "the prefork child running the job"
    for pid in children:
        os.kill(pid, signal.SIGKILL)  # the job's process dies; the worker parent lives on
    done = wait_status(stack, rid, FINISHED, 150)  # generous: the machine is shared
    assert done.status == "succeeded" and done.attempt == 2, done.error
    with session_scope(stack["url"]) as s:
        dup = s.execute(select(Metric.epoch, Metric.split, Metric.key).where(Metric.run_id == rid)
                        .group_by(Metric.epoch, Metric.split, Metric.key).having(func.count() > 1)).all()
    assert dup == []


def test_validate_job_recomputes_metrics_from_checkpoints(stack):
    base = {**spec(3, eval_every=1, train_size=300), "eval": {"every": 1, "splits": ["train"]}}
    (rid,) = submit(stack, "validate", base, seeds=[3])
    assert wait_status(stack, rid, FINISHED, 60).status == "succeeded"
    with session_scope(stack["url"]) as s:
        from nc_core.db.models import Checkpoint

        stored = sorted(s.scalars(select(Checkpoint.epoch).where(Checkpoint.run_id == rid)))
    assert stored == [2, 3]  # keep_last=2: the pruned epoch-1 file is not listed
    r = httpx.post(f"{stack['api'].url}/runs/{rid}/validate", json={"splits": ["test"]}, timeout=10)
    assert r.status_code == 201, r.text
    vid = r.json()["run_id"]
    done = wait_status(stack, vid, FINISHED, 60)
    assert done.status == "succeeded", done.error
    with session_scope(stack["url"]) as s:
        points = set(s.execute(select(Metric.epoch, Metric.split).where(Metric.run_id == vid)).all())
    assert points == {(2, "test"), (3, "test")}


@pytest.mark.parametrize("stopped_by", ["supervisor", "celery"])
def test_a_clean_worker_stop_requeues_its_run_without_using_an_attempt(tmp_path, stopped_by):
    # Supervisor.stop (Ctrl-C of `ncsweep up`, SIGTERM of the launcher) or Celery's own warm shutdown (SIGTERM of
    # a worker started directly, as docker compose does): the job stops after its last completed epoch,
    # checkpoints it, and goes back to the queue with its attempt given back; the next worker resumes it
    from nc_core.db.models import Checkpoint
    from tests.helpers_stack import ROOT, settings_env
    from worker.launch import Supervisor, WorkerSpec
    from worker.reconciler import reconcile_once

    redis = RedisServer(tmp_path / "redis").start()
    settings = make_settings(tmp_path, sqlite_db(tmp_path), redis.url(), lease_seconds=30.0, heartbeat_seconds=0.5)
    api = ApiServer(settings).start()
    if stopped_by == "supervisor":
        env = {**settings_env(settings), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        first = Supervisor([WorkerSpec("stopping@test", {})], env, log_dir=tmp_path / "logs").start()
    else:
        first = CeleryWorker(settings, "stopping").start()
    local = {"api": api, "url": settings.resolved_database_url(), "workers": []}
    after = None
    try:
        (rid,) = submit(local, "stop", {**spec(60), "checkpoint": {"every": 50, "keep_last": 2}})
        wait_for(lambda: run_row(local, rid).epoch >= 3, 90, 0.1, "epoch 3")
        first.stop(**({"timeout": 60} if stopped_by == "celery" else {}))
        stopped = run_row(local, rid)
        assert (stopped.status, stopped.attempt, stopped.lease_owner) == ("queued", 0, None), stopped.error
        with session_scope(local["url"]) as s:
            saved = set(s.scalars(select(Checkpoint.epoch).where(Checkpoint.run_id == rid)))
            reason = s.scalars(select(Event.payload).where(Event.run_id == rid, Event.kind == "status")
                               .order_by(Event.id.desc())).first()
        assert stopped.epoch >= 3 and stopped.epoch in saved  # the last completed epoch, not the every-50 one
        assert reason == {"status": "queued", "reason": "worker stopped"}
        if stopped_by == "supervisor":
            assert not os.path.exists(first.stop_file)  # the flag is gone: a restarted worker is not told to stop
        after = CeleryWorker(settings, "after").start()
        assert rid in reconcile_once(settings)["resent"]  # re-sent at once, not after the grace period
        local["workers"] = [after]
        done = wait_status(local, rid, FINISHED, 150)
        assert (done.status, done.attempt, done.start_epoch) == ("succeeded", 1, stopped.epoch), done.error
    finally:
        first.stop()
        if after is not None:
            after.stop()
        api.stop()
        redis.stop()


def test_a_redis_restart_does_not_end_a_running_job_nor_spend_an_attempt(tmp_path):
    # the database lease fences the job: Redis going away and coming back leaves it running to the end
    redis = RedisServer(tmp_path / "redis").start()
    settings = make_settings(tmp_path, sqlite_db(tmp_path), redis.url(), lease_seconds=30.0, heartbeat_seconds=0.5)
    api = ApiServer(settings).start()
    worker = CeleryWorker(settings, "blip").start()
    local = {"api": api, "url": settings.resolved_database_url(), "workers": [worker]}
    try:
        (rid,) = submit(local, "blip", spec(40))
        wait_for(lambda: run_row(local, rid).epoch >= 3, 90, 0.1, "epoch 3")
        redis.kill()
        time.sleep(2.0)
        redis.start()  # same port, same data directory
        done = wait_status(local, rid, FINISHED, 150)
        assert (done.status, done.attempt) == ("succeeded", 1), (done.status, done.attempt, done.error)
        assert "Terminating it instead" not in worker.tail(400)
    finally:
        worker.stop()
        api.stop()
        redis.stop()
