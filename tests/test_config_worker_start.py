"""Bad configuration at start-up: a worker without a usable database, a bad setting: one line, a non-zero exit."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from tests.helpers_stack import PG_ADMIN, ROOT, local_redis_url, missing, sqlite_db, stamp_revision, wait_for
from worker.launch import worker_command


def _start(tmp_path: Path, url: str, broker: str = "redis://127.0.0.1:6379/14", wait_s: float = 1.0,
           control: bool = False) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCSWEEP_")}
    env.update({"NCSWEEP_HOME": str(tmp_path), "NCSWEEP_DATABASE_URL": url, "NCSWEEP_BROKER_URL": broker,
                "NCSWEEP_DB_WAIT_SECONDS": str(wait_s), "NCSWEEP_PRELOAD": "0", "CUDA_VISIBLE_DEVICES": "",
                "PYTHONPATH": str(ROOT), **({"NCSWEEP_CONTROL": "1"} if control else {})})
    with open(log, "wb") as out:
        proc = subprocess.Popen(worker_command(f"startcheck-{uuid.uuid4().hex[:6]}@test", "INFO"), cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _exit_code(proc: subprocess.Popen, log: Path, timeout: float = 60) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(10)
        pytest.fail(f"the worker kept running with a database it cannot use:\n{log.read_text()[-3000:]}")


def _database_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if "NCSWEEP_DATABASE_URL" in line]


def test_a_database_that_does_not_exist_stops_the_worker_with_one_line(tmp_path):
    from sqlalchemy import create_engine, text

    try:
        with create_engine(PG_ADMIN).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        missing(f"PostgreSQL at {PG_ADMIN} ({type(exc).__name__})")  # skip here, fail under CI=true
    name = f"fixprod_missing_{uuid.uuid4().hex[:8]}"
    url = PG_ADMIN.rsplit("@", 1)[0] + ":s3cret@" + PG_ADMIN.rsplit("@", 1)[1].rsplit("/", 1)[0] + f"/{name}"
    proc, log = _start(tmp_path, url, wait_s=2)
    assert _exit_code(proc, log) != 0
    (line,) = _database_lines(log)
    assert line.endswith("(after waiting 2 s: NCSWEEP_DB_WAIT_SECONDS)"), line  # the wait is short and configurable
    assert "worker not started: NCSWEEP_DATABASE_URL: expected a database that accepts connections" in line
    assert f":***@127.0.0.1:5432/{name}" in line and "s3cret" not in log.read_text()
    assert f'database "{name}" does not exist' in line and "OperationalError" in line
    assert "NCSWEEP_DB_WAIT_SECONDS" in line and "ready" not in log.read_text()


@pytest.mark.parametrize("control", [False, True])
def test_a_database_without_schema_stops_the_worker(tmp_path, control):  # noqa: ANN001
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    proc, log = _start(tmp_path, f"sqlite:///{path}", control=control)
    assert _exit_code(proc, log) == 1
    (line,) = _database_lines(log)
    assert f"NCSWEEP_DATABASE_URL: expected a migrated ncsweep database (`alembic upgrade head`), got sqlite:///{path}"\
        " (no schema)" in line


@pytest.mark.parametrize("revision, wait_s, says", [
    ("0006", 2, "(schema at revision 0006, this code needs 0007) (after waiting 2 s: NCSWEEP_DB_WAIT_SECONDS)"),
    ("ffff", 3600, "(schema at revision ffff, which this code does not know (its newest is 0007): the database was "
                   "migrated by a newer ncsweep; run that version)")])
def test_a_schema_of_another_version_stops_the_worker(tmp_path, revision, wait_s, says):  # noqa: ANN001
    """Older: a migration may be running, so it waits, then exits; newer: it exits at once (waiting cannot help:
    the line says no wait, and a worker that waited out its hour would be stopped by _exit_code's guard)."""
    url = sqlite_db(tmp_path)
    stamp_revision(url, revision)
    proc, log = _start(tmp_path, url, wait_s=wait_s)
    assert _exit_code(proc, log) == 1
    (line,) = _database_lines(log)
    assert line.endswith(says), line


def test_a_bad_url_stops_the_worker_at_once(tmp_path):
    proc, log = _start(tmp_path, "postgres://u:s3cret@127.0.0.1:1/x", wait_s=3600)
    assert _exit_code(proc, log) == 1  # no wait (waiting cannot fix it): one of an hour would trip the guard
    (line,) = _database_lines(log)
    assert "after waiting" not in line and "no dialect 'postgres'" in line and "postgresql+psycopg://" in line and "s3cret" not in line


def test_a_database_that_comes_up_within_the_wait_lets_the_worker_start(tmp_path):
    broker = local_redis_url(14)
    url = f"sqlite:///{tmp_path / 'ncsweep.db'}"
    proc, log = _start(tmp_path, url, broker=broker, wait_s=30)
    timer = threading.Timer(2.0, sqlite_db, args=(tmp_path,))  # migrated 2 s after the worker started
    timer.start()
    try:
        wait_for(lambda: "ready" in log.read_text(errors="replace") or proc.poll() is not None, 60, 0.3,
                 "the worker to start")
        assert proc.poll() is None and _database_lines(log) == [], log.read_text()[-3000:]
    finally:
        timer.cancel()
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def test_a_bad_setting_stops_a_celery_process_with_one_line():
    import sys

    env = {**os.environ, "NCSWEEP_LEASE_SECONDS": "3"}  # below two heartbeats of 5 s
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.celery_app", "report"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode != 0 and "Traceback" not in out, out
    assert out.splitlines() == [out] and "NCSWEEP_LEASE_SECONDS: expected at least 2 × NCSWEEP_HEARTBEAT" in out


def test_a_bad_setting_stops_the_api_with_one_line():
    import sys

    env = {**os.environ, "NCSWEEP_MAX_ATTEMPTS": "abc"}
    proc = subprocess.run([sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--port", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode != 0 and "Traceback" not in out, out
    assert out.splitlines() == ["error: NCSWEEP_MAX_ATTEMPTS: expected a valid integer, got 'abc'"], out
