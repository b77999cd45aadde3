"""The embedded stack when its terminal closes (SIGHUP: stopped as by Ctrl-C) or its launcher is killed outright
(its workers stop by themselves; the next start stops the redis-server it left); spawned children are stopped
even when an interrupt lands while they start."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.helpers_stack import ROOT, TERMINAL_SIGNALS, free_port, missing, redis_binary, stop_tree, wait_for

pytestmark = pytest.mark.integration
CODE = "import sys; from service.embedded import main; sys.exit(main(sys.argv[1], example=False, workers=1))"


def _launch(home, port: int, nohup: bool = False) -> subprocess.Popen:  # noqa: ANN001
    env = {**os.environ, "NCSWEEP_API_PORT": str(port), "NCSWEEP_HEARTBEAT_SECONDS": "0.5", "PYTHONPATH": str(ROOT)}
    env.pop("NCSWEEP_DATABASE_URL", None)
    code = TERMINAL_SIGNALS + ("signal.signal(signal.SIGHUP, signal.SIG_IGN); " if nohup else "") + CODE
    return subprocess.Popen([sys.executable, "-c", code, str(home)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _children(home, port: int) -> list[psutil.Process]:  # noqa: ANN001
    """redis-server and the Celery worker, once both are recorded in <home>/stack.pids by the stack on ``port``."""
    def recorded():
        try:
            rows = json.loads((home / "stack.pids").read_text())
            url = (home / "api_url").read_text()
        except (OSError, ValueError):
            return None
        return rows if len(rows) >= 2 and url.strip().endswith(f":{port}") else None

    rows = wait_for(recorded, 90, 0.2, "the stack to record redis-server and its worker")
    return [psutil.Process(row["pid"]) for row in rows]


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_a_closed_terminal_stops_the_stack_as_ctrl_c_does(tmp_path):
    if redis_binary() is None:
        missing("a redis-server binary")  # skip here, fail under CI=true
    port = free_port()
    proc = _launch(tmp_path, port)
    try:
        children = _children(tmp_path, port)
        proc.send_signal(signal.SIGHUP)  # before: the launcher died at once, redis-server and the worker ran on
        out, _ = proc.communicate(timeout=60)
    finally:
        stop_tree(proc)
    assert proc.returncode == 130 and "interrupted" in out and "Traceback" not in out, out
    wait_for(lambda: not _running(children), 20, 0.2, "the stack's children to exit")
    assert not (tmp_path / "stack.pids").exists() and not (tmp_path / "api_url").exists()


def test_after_a_killed_launcher_its_workers_stop_and_the_next_start_stops_its_redis(tmp_path):
    if redis_binary() is None:
        missing("a redis-server binary")  # skip here, fail under CI=true
    port = free_port()
    first = _launch(tmp_path, port)
    children = _children(tmp_path, port)
    second = None
    try:
        first.kill()  # SIGKILL: no cleanup at all
        first.communicate(timeout=20)
        redis = [p for p in children if "redis" in p.name()]
        worker = [p for p in children if p not in redis]
        wait_for(lambda: not _running(worker), 30, 0.2, "the orphaned worker to stop by itself")
        assert _running(redis)  # nothing watches redis-server: the next start stops it
        port = free_port()
        second = _launch(tmp_path, port)
        wait_for(lambda: not _running(redis), 60, 0.2, "the next start to stop the orphaned redis-server")
        _children(tmp_path, port)
        second.send_signal(signal.SIGINT)
        out, _ = second.communicate(timeout=60)
    finally:
        if second is not None:
            stop_tree(second)
        for leftover in _running(children):  # a failure above must not leave the first stack's processes
            leftover.kill()
    said = " ".join(out.split())  # the console wraps long lines
    assert f"stopped what an earlier stack of {tmp_path} left running: pid {redis[0].pid} (redis-server)" in said, out


def test_redis_is_handed_to_the_caller_before_the_wait_for_it_to_answer(tmp_path, monkeypatch):
    if redis_binary() is None:
        missing("a redis-server binary")  # skip here, fail under CI=true
    import redis as redis_client

    from service.embedded import start_redis

    def interrupted(self) -> bool:  # noqa: ANN001
        raise KeyboardInterrupt

    monkeypatch.setattr(redis_client.Redis, "ping", interrupted)
    seen: list[subprocess.Popen] = []
    with pytest.raises(KeyboardInterrupt):
        start_redis(tmp_path / "redis", free_port(), on_spawn=seen.append)
    (proc,) = seen  # the stack registered its stop: Ctrl-C while redis starts no longer leaks it
    proc.kill()
    proc.wait(10)
    time.sleep(0.1)


def test_under_nohup_a_hangup_is_still_ignored(tmp_path):
    if redis_binary() is None:
        missing("a redis-server binary")  # skip here, fail under CI=true
    port = free_port()
    proc = _launch(tmp_path, port, nohup=True)
    try:
        _children(tmp_path, port)
        proc.send_signal(signal.SIGHUP)  # `nohup ncsweep up --serve &` and a logout
        time.sleep(2)
        assert proc.poll() is None  # still serving
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        stop_tree(proc)
    assert proc.returncode == 130, out
