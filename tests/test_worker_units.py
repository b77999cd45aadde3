"""Worker pieces without a full stack: Celery config, import hygiene, launch specs, reconciler re-send."""
from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest

from nc_core.settings import Settings
from tests.helpers_stack import ROOT, RedisServer, make_settings, sqlite_db


def test_celery_config_for_long_gpu_jobs():
    from worker.celery_app import make_celery

    conf = make_celery(Settings(visibility_timeout=12345)).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.task_ignore_result
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_max_tasks_per_child == 1
    assert conf.broker_transport_options["visibility_timeout"] == 12345
    assert conf.accept_content == ["json"] and conf.task_serializer == "json" and conf.result_serializer == "json"
    assert conf.result_backend is None
    assert conf.broker_connection_retry_on_startup
    assert not conf.worker_cancel_long_running_tasks_on_connection_loss  # the lease fences a redelivered message


def test_worker_modules_import_without_torch_or_io():
    code = ("import sys, os; import worker.celery_app, worker.tasks, worker.launch, worker.reconciler, "
            "service.embedded; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert os.environ['PYTORCH_NVML_BASED_CUDA_CHECK'] == '1'; "
            "assert sorted(t for t in worker.celery_app.app.tasks if t.startswith('ncsweep.')) == "
            "['ncsweep.reconcile', 'ncsweep.train', 'ncsweep.ufm', 'ncsweep.validate']")
    env = {"PATH": "/usr/bin:/bin", "NCSWEEP_BROKER_URL": "redis://127.0.0.1:1/0"}  # unreachable: no I/O allowed
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)


def test_launch_one_worker_per_gpu_or_cpu_workers():
    from worker.launch import worker_command, worker_specs

    gpu = worker_specs([0, 2])
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in gpu] == ["0", "2"]
    assert gpu[1].name.startswith("ncsweep-gpu2@")
    cpu = worker_specs([], cpu_workers=2, threads=1)
    assert len(cpu) == 2 and all(s.env["CUDA_VISIBLE_DEVICES"] == "" and s.env["OMP_NUM_THREADS"] == "1" for s in cpu)
    cmd = worker_command("x@h")
    assert cmd[cmd.index("-c") + 1] == "1" and cmd[cmd.index("-P") + 1] == "prefork" and "worker.celery_app" in cmd


def test_readable_error_is_one_line():
    from worker.runner import readable_error

    assert readable_error(ValueError("bad lr\nTraceback ...")) == "ValueError: bad lr"
    assert readable_error(KeyError()) == "KeyError"


def _stale_queued_runs(settings: Settings, n: int) -> list[int]:
    """n queued runs last touched ten minutes ago (past the reconciler's re-send grace)."""
    from nc_core.db.models import Run, Sweep
    from nc_core.db.session import session_scope

    with session_scope(settings.resolved_database_url()) as s:
        sweep = Sweep(name="stale", spec={}, axes=[])
        s.add(sweep)
        s.flush()
        runs = [Run(sweep_id=sweep.id, spec={}, spec_hash=str(i)) for i in range(n)]
        s.add_all(runs)
        s.flush()
        ids = [r.id for r in runs]
    _make_stale(settings, ids)
    return ids


def _make_stale(settings: Settings, ids: list[int]) -> None:
    from nc_core.db import runs_repo
    from nc_core.db.session import session_scope

    with session_scope(settings.resolved_database_url()) as s:
        runs_repo.touch(s, ids, now=runs_repo.utcnow() - timedelta(minutes=10))


@pytest.mark.integration
def test_reconciler_resends_only_lost_messages(tmp_path):
    import redis as redis_lib

    from worker.reconciler import broker_run_ids, reconcile_once

    server = RedisServer(tmp_path / "redis").start()
    try:
        settings = make_settings(tmp_path, sqlite_db(tmp_path), server.url())
        ids = _stale_queued_runs(settings, 2)
        first = reconcile_once(settings, resend_after_s=60)
        assert first["resent"] == ids and first["requeued"] == [] and first["failed"] == []
        assert redis_lib.Redis.from_url(server.url()).llen("celery") == 2
        assert broker_run_ids(settings.broker_url, backlog=10) == set(ids)
        _make_stale(settings, ids)
        assert reconcile_once(settings, resend_after_s=60)["resent"] == []  # messages present: no duplicates
    finally:
        server.stop()


@pytest.mark.integration
def test_reconciler_resends_a_run_whose_message_is_only_unacked(tmp_path):
    """A worker that received the message and died leaves it in 'unacked' (restored only after the
    visibility timeout): the queued run must be re-sent — unless the delivery is recent (a fresh child
    is starting and will claim it)."""
    import redis as redis_lib

    from worker.reconciler import reconcile_once

    server = RedisServer(tmp_path / "redis").start()
    try:
        settings = make_settings(tmp_path, sqlite_db(tmp_path), server.url())
        [rid] = _stale_queued_runs(settings, 1)
        client = redis_lib.Redis.from_url(server.url())
        client.hset("unacked", "tag", '[{"body": "W1sxXSwge30sIHt9XQ==", "properties": {"body_encoding": "base64"}}, "", "celery"]')
        client.zadd("unacked_index", {"tag": time.time() - 5})  # delivered 5 s ago: a child is starting
        assert reconcile_once(settings, resend_after_s=60)["resent"] == []
        assert client.llen("celery") == 0
        _make_stale(settings, [rid])  # the pass touched it
        client.zadd("unacked_index", {"tag": time.time() - 3600})  # delivered an hour ago: worker lost
        assert reconcile_once(settings, resend_after_s=60)["resent"] == [rid]
        assert client.llen("celery") == 1
        _make_stale(settings, [rid])
        client.delete("unacked_index", "celery")  # no delivery time at all: lost as well
        assert reconcile_once(settings, resend_after_s=60)["resent"] == [rid]
    finally:
        server.stop()


def test_writes_are_retried_through_a_database_outage_and_only_then(tmp_path, monkeypatch):
    from sqlalchemy.exc import IntegrityError, OperationalError

    import worker.reporter as reporter

    slept: list[float] = []
    monkeypatch.setattr(reporter.time, "sleep", slept.append)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    calls = {"n": 0}

    def flaky(session):  # noqa: ANN001, ANN202 - down twice (a restart), then written
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OperationalError("INSERT ...", {}, ConnectionRefusedError("connection refused"))
        return "written"

    assert reporter.write_retrying(url, flaky, 60.0, "run 1: metrics") == "written"
    assert calls["n"] == 3 and slept == [0.5, 1.0]
    calls["n"] = 0
    with pytest.raises(OperationalError):  # the outage outlasts the patience: the job fails, as before
        reporter.write_retrying(url, flaky, 0.0, "run 1: metrics")

    def conflict(session):  # noqa: ANN001, ANN202 - not an outage: never retried
        calls["n"] += 1
        raise IntegrityError("INSERT ...", {}, Exception("UNIQUE constraint failed"))

    calls["n"] = 0
    with pytest.raises(IntegrityError):
        reporter.write_retrying(url, conflict, 60.0, "run 1: metrics")
    assert calls["n"] == 1
