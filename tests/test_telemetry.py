"""Worker telemetry: samples, heartbeats upserting the worker row, bounded samples, lost workers."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select

from helpers_stack import wait_for
from nc_core.db import workers_repo
from nc_core.db.models import Event, Worker, WorkerSample
from nc_core.db.session import session_scope
from nc_core.settings import Settings
from test_plots import seed_sweep
from worker.telemetry import Heartbeater, sample

FIELDS = {"device", "gpu_index", "gpu_name", "util_percent", "memory_used", "memory_total", "temperature_c"}


def test_sample_without_gpu_reports_cpu_and_ram() -> None:
    for gpu in (None, 0):  # no NVIDIA driver here: a GPU index falls back to CPU telemetry
        snap = sample(gpu)
        assert FIELDS <= set(snap)
        if snap["device"] == "cpu":
            assert snap["gpu_name"] is None and 0 <= snap["util_percent"] <= 100
            assert 0 < snap["memory_used"] <= snap["memory_total"]


def test_gpu_sample_through_nvml(monkeypatch) -> None:  # noqa: ANN001
    from types import SimpleNamespace

    from worker import telemetry

    fake = SimpleNamespace(
        NVML_TEMPERATURE_GPU=0, nvmlDeviceGetHandleByIndex=lambda i: f"h{i}",
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=5 * 2**30, total=80 * 2**30),
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=93),
        nvmlDeviceGetTemperature=lambda h, kind: 67)
    monkeypatch.setattr(telemetry, "_nvml", lambda: fake)
    snap = telemetry.sample(1)
    assert snap == {"device": "cuda:1", "gpu_index": 1, "gpu_name": "NVIDIA H100 80GB HBM3", "util_percent": 93.0,
                    "memory_used": 5 * 2**30, "memory_total": 80 * 2**30, "temperature_c": 67.0}
    fake.nvmlDeviceGetHandleByIndex = lambda i: (_ for _ in ()).throw(RuntimeError("GPU is lost"))
    assert telemetry.sample(1)["device"] == "cpu"  # a failing GPU query falls back, never raises


def test_heartbeat_upserts_worker_and_bounds_samples(db_url: str) -> None:
    _, runs = seed_sweep(db_url, statuses={0: "running"})
    snap = {"device": "cuda:0", "gpu_index": 0, "gpu_name": "Fake GPU", "util_percent": 50.0,
            "memory_used": 100, "memory_total": 1000, "temperature_c": 60.0}
    for i in range(8):
        with session_scope(db_url) as s:
            workers_repo.heartbeat(s, "w1", "host", 123, "cuda:0", {**snap, "memory_used": 100 + i,
                                                                     "samples_per_s": 10.0 * (i + 1)},
                                   runs[0], "busy", max_samples=5)
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Worker)) == 1
        w = s.get(Worker, "w1")
        assert (w.gpu_name, w.memory_used, w.current_run_id, w.status) == ("Fake GPU", 107, runs[0], "busy")
        kept = s.scalars(select(WorkerSample.memory_used).where(WorkerSample.run_id == runs[0])
                         .order_by(WorkerSample.id)).all()
        assert kept == [103, 104, 105, 106, 107]  # the newest 5 of 8
        tele = workers_repo.run_telemetry(s, runs[0])
        assert tele["samples"] == 5 and tele["peak_memory"] == 107
        assert tele["peak_samples_per_s"] == 80.0 and abs(tele["mean_samples_per_s"] - 60.0) < 1e-9
        # one worker event when the worker appeared busy on the run, none for unchanged beats
        assert s.scalar(select(func.count()).select_from(Event).where(Event.kind == "worker")) == 1
        (listed,) = workers_repo.list_workers(s, lost_after_s=30)
        assert listed["status"] == "busy" and listed["run"]["id"] == runs[0]
        assert listed["run"]["epoch"] == 1 and listed["run"]["epochs_total"] == 4
        assert 0 < listed["run"]["progress"] < 1 and listed["run"]["eta_s"] > 0


def test_heartbeater_thread_beats_then_turns_lost(db_url: str, tmp_path) -> None:  # noqa: ANN001
    _, runs = seed_sweep(db_url, statuses={0: "running"})
    settings = Settings(home=tmp_path, database_url=db_url, heartbeat_seconds=0.1, worker_lost_after_seconds=0.6)

    def listed(lost_after_s: float = 60.0) -> dict:
        """A generous window while beating (a loaded CI host may take over 0.6 s to commit one beat)."""
        with session_scope(db_url) as s:
            rows = workers_repo.list_workers(s, lost_after_s)
            return rows[0] if rows else {}

    hb = Heartbeater(settings, "gpu-worker-0", gpu_index=None)
    hb.start()
    try:
        wait_for(lambda: hb.beats >= 2, 10, what="two heartbeats")
        assert listed()["status"] == "idle" and listed()["device"] == "cpu"
        hb.set_run(runs[0])
        assert listed()["status"] == "busy" and listed()["current_run_id"] == runs[0]
        first_seen = listed()["last_seen"]
        wait_for(lambda: listed()["last_seen"] != first_seen, 10, what="last_seen to advance")
    finally:
        hb.stop(mark_stopped=False)  # a crash: the beats just stop
    assert hb.last_error is None
    assert listed()["status"] == "busy"
    lost_after = settings.worker_lost_after_seconds
    wait_for(lambda: listed(lost_after)["status"] == "lost", 10, what="the silent worker to turn lost")
    lost = listed(lost_after)
    assert lost["run"] is None and lost["age_s"] >= lost_after
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(WorkerSample)) >= 2


def test_heartbeater_clean_stop_marks_stopped(db_url: str, tmp_path) -> None:  # noqa: ANN001
    settings = Settings(home=tmp_path, database_url=db_url, heartbeat_seconds=0.05, worker_lost_after_seconds=0.2)
    hb = Heartbeater(settings, "cpu-worker", gpu_index=None)
    hb.start()
    wait_for(lambda: hb.beats >= 1, 10, what="a heartbeat")
    hb.stop()
    later = datetime.now(timezone.utc) + timedelta(seconds=1)  # past worker_lost_after_seconds: still not "lost"
    with session_scope(db_url) as s:
        (row,) = workers_repo.list_workers(s, settings.worker_lost_after_seconds, now=later)
    assert row["status"] == "stopped"


def test_heartbeat_survives_a_database_outage(tmp_path) -> None:  # noqa: ANN001
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/missing/dir/db.sqlite", heartbeat_seconds=0.05)
    hb = Heartbeater(settings, "w", gpu_index=None)
    hb.beat()  # no tables, no directory: logged, not raised
    assert hb.beats == 0 and hb.last_error


def test_fork_waits_for_a_beat_in_progress(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Celery forks a fresh child while the parent's idle heartbeat may be inside SQLite or NVML: the fork
    must wait for the beat to finish, or the child inherits those locks held and hangs on its first query."""
    import os
    import threading

    from worker import telemetry

    inside, entered = {"now": False}, threading.Event()

    def slow_heartbeat(*_a, **_kw) -> None:  # noqa: ANN002, ANN003
        inside["now"] = True
        entered.set()
        time.sleep(0.3)
        inside["now"] = False

    monkeypatch.setattr(telemetry.workers_repo, "heartbeat", slow_heartbeat)
    beat = Heartbeater(Settings(home=tmp_path), "w-fork")
    thread = threading.Thread(target=beat.beat)
    thread.start()
    assert entered.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: exit 1 if it was forked in the middle of the beat
        os._exit(1 if inside["now"] else 0)
    _, status = os.waitpid(pid, 0)
    thread.join(10)
    assert os.waitstatus_to_exitcode(status) == 0, "forked while a heartbeat was inside the database driver"
    assert beat.beats == 1
