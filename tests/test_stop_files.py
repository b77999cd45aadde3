"""A SIGTERM to one supervised worker stops only that worker's job: one stop file per spawned worker process."""
from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import select

from nc_core.db.models import Event
from nc_core.db.session import session_scope
from tests.helpers_stack import (ROOT, ApiServer, Reconciler, RedisServer, make_settings, settings_env, sqlite_db,
                                 wait_for)
from tests.test_faults import FINISHED, run_row, spec, submit

pytestmark = pytest.mark.integration


def statuses(url: str, run_id: int) -> list[dict]:
    with session_scope(url) as s:
        return list(s.scalars(select(Event.payload).where(Event.run_id == run_id, Event.kind == "status")
                              .order_by(Event.id)))


def stop_file_of(pid: int) -> str:
    import psutil

    return psutil.Process(pid).environ()["NCSWEEP_STOP_FILE"]


def worker_of(run, names: list[str]) -> str:  # noqa: ANN001
    return next(n for n in names if run.worker_name and run.worker_name.split("@")[0] == n.split("@")[0])


def test_sigterm_to_one_supervised_worker_stops_only_its_own_job(tmp_path):
    from worker.launch import Supervisor, WorkerSpec

    redis = RedisServer(tmp_path / "redis").start()
    settings = make_settings(tmp_path, sqlite_db(tmp_path), redis.url(), lease_seconds=30.0, heartbeat_seconds=0.5)
    api = ApiServer(settings).start()
    # the reconciler re-sends the released run at its next pass (runs_repo.release marks it as not sent)
    recon = Reconciler(settings)
    env = {**settings_env(settings), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    names = ["stopfile0@test", "stopfile1@test"]
    sup = Supervisor([WorkerSpec(n, {}) for n in names], env, log_dir=tmp_path / "logs").start()
    local = {"api": api, "url": settings.resolved_database_url()}

    def logs() -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted((tmp_path / "logs").glob("*.log")))

    def wait(predicate, timeout: float, what: str):  # noqa: ANN001, ANN202
        try:
            return wait_for(predicate, timeout, 0.2, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs()}") from None

    try:
        a, b = submit(local, "stop-one", spec(40), seeds=[1, 2])
        wait(lambda: all(run_row(local, r).status == "running" and run_row(local, r).epoch >= 2 for r in (a, b)),
             180, "both runs running past epoch 2")
        rows = {r: run_row(local, r) for r in (a, b)}
        by_worker = {worker_of(rows[r], names): r for r in (a, b)}
        assert set(by_worker) == set(names), rows  # one run on each worker
        victim, bystander = names
        signalled, other = by_worker[victim], by_worker[bystander]
        old_pid = sup.procs[victim].pid
        flags = {n: stop_file_of(sup.procs[n].pid) for n in names}

        os.kill(old_pid, signal.SIGTERM)  # the celery main process of one worker: a warm shutdown
        back = wait(lambda: (r := run_row(local, signalled)).status == "queued" and r, 120, "the signalled run queued")
        assert back.attempt == 0 and back.lease_owner is None and back.epoch >= 2
        assert statuses(local["url"], signalled)[-1] == {"status": "queued", "reason": "worker stopped"}
        wait(lambda: sup.procs[victim].pid != old_pid, 60, "the supervisor to restart the signalled worker")
        # the bystander's run was never interrupted: one claim, no trip back to the queue
        assert [e["status"] for e in statuses(local["url"], other)] in (["running"], ["running", "succeeded"]), \
            (statuses(local["url"], other), logs())
        assert run_row(local, other).attempt == 1
        # the restarted worker claims the re-sent run and trains it (a stale flag would interrupt it at once)
        wait(lambda: (r := run_row(local, signalled)).status == "running" and r.epoch > back.epoch, 180,
             "the restarted worker to resume the signalled run")

        done = {r: wait(lambda r=r: (x := run_row(local, r)).status in FINISHED and x, 300, f"run {r} to finish")
                for r in (other, signalled)}
        for r in (other, signalled):
            assert (done[r].status, done[r].attempt) == ("succeeded", 1), (r, done[r].status, done[r].error)
        assert [(e["status"], e.get("attempt")) for e in statuses(local["url"], other)] == [
            ("running", 1), ("succeeded", None)]
        # the signalled run went back to the queue once and resumed from its checkpoint: no queued/running cycle
        assert [(e["status"], e.get("attempt")) for e in statuses(local["url"], signalled)] == [
            ("running", 1), ("queued", None), ("running", 1), ("succeeded", None)]
        assert done[signalled].start_epoch == back.epoch
        assert sup.procs[victim].poll() is None and sup.procs[bystander].poll() is None
        # one flag per spawned process: the restarted worker got a fresh one, and none is raised now
        now = {n: stop_file_of(sup.procs[n].pid) for n in names}
        assert flags[victim] != flags[bystander] and now[victim] not in flags.values(), (flags, now)
        assert now[bystander] == flags[bystander]
        assert not any(os.path.exists(p) for p in [*flags.values(), *now.values()])
    finally:
        sup.stop(timeout=60)
        recon.stop()
        api.stop()
        redis.stop()
    assert not any(os.path.exists(p) for p in [*flags.values(), *now.values()])  # stop() removes every flag
