"""Test helpers: real Redis servers on free ports, PostgreSQL scratch databases, Celery worker
processes and a uvicorn API in a thread (skip when a service is absent; fail under CI=true)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("NCSWEEP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
LOCAL_REDIS = os.environ.get("NCSWEEP_TEST_REDIS", "redis://127.0.0.1:6379")


def missing(what: str) -> None:
    """Skip locally, fail in CI (CI=true), when a required service is absent."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required under CI=true")
    pytest.skip(f"{what} not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- Redis -------------------------------------------------------------------------------------------
def redis_binary() -> str | None:
    try:
        from service.embedded import redis_server_binary

        return redis_server_binary()
    except Exception:  # noqa: BLE001
        return shutil.which("redis-server")


class RedisServer:
    """A real redis-server on a free 127.0.0.1 port; kill()/start() simulate a broker crash."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir, self.port = Path(data_dir), port or free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> "RedisServer":
        binary = redis_binary()
        if binary is None:
            missing("a redis-server binary")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                                      str(self.data_dir), "--appendonly", "yes", "--save", ""],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _redis_ok(self.url()), 10, what=f"redis-server on port {self.port}")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    stop = kill


def _redis_ok(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001
        return False


def local_redis_url(db: int) -> str:
    """The shared Redis at 127.0.0.1:6379, database `db` flushed (skip/fail when absent)."""
    import redis

    url = f"{LOCAL_REDIS}/{db}"
    if not _redis_ok(url):
        missing(f"Redis at {LOCAL_REDIS}")
    redis.Redis.from_url(url).flushdb()
    return url


# -- databases ---------------------------------------------------------------------------------------
def postgres_db() -> tuple[str, Callable[[], None]]:
    """A fresh, migrated PostgreSQL database; returns (url, drop)."""
    from sqlalchemy import create_engine, text

    name = f"ncsweep_t_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        missing(f"PostgreSQL at {PG_ADMIN} ({type(exc).__name__})")
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    _migrate(url)

    def drop() -> None:
        from nc_core.db.session import _ENGINES

        engine = _ENGINES.pop(url, None)
        if engine is not None:
            engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def sqlite_db(directory: Path) -> str:
    url = f"sqlite:///{Path(directory).resolve() / 'ncsweep.db'}"
    _migrate(url)
    return url


#: prefix of a ``python -c`` child that must get a closed terminal's SIGHUP and Ctrl-C's SIGINT whatever this test
#: run inherited (nohup ignores SIGHUP; a background job without job control ignores SIGINT)
TERMINAL_SIGNALS = "import signal; signal.signal(signal.SIGHUP, signal.SIG_DFL); signal.signal(signal.SIGINT, " \
                   "signal.default_int_handler); "


def stop_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher that is still running and every process it started (redis-server and the workers run
    in sessions of their own: a killpg of the launcher's group misses them) — what a failed test must not leave."""
    import psutil

    if proc.poll() is not None:
        return
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)  # before the launcher goes: then they are orphans
    except psutil.Error:
        kids = []
    for kid in kids:
        try:
            kid.kill()
        except psutil.Error:
            pass
    proc.kill()
    proc.wait(10)


def stamp_revision(url: str, revision: str) -> None:
    """Make the migrated database at ``url`` claim schema ``revision`` (an older or a newer ncsweep's)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    engine.dispose()


def _migrate(url: str) -> None:
    from nc_core.db.migrate import upgrade

    upgrade(url)


# -- settings and processes ---------------------------------------------------------------------------
def make_settings(home: Path, database_url: str, broker_url: str, **overrides: Any) -> Any:
    from nc_core.settings import Settings

    values = dict(home=Path(home), database_url=database_url, broker_url=broker_url, lease_seconds=30.0,
                  heartbeat_seconds=0.5, auth_required=False, api_port=free_port())
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Any) -> dict[str, str]:
    """NCSWEEP_* environment reproducing `settings` in a child process."""
    keys = ("home", "database_url", "broker_url", "lease_seconds", "heartbeat_seconds", "max_attempts",
            "visibility_timeout", "artifacts_dir", "data_root", "auth_required")
    env = {f"NCSWEEP_{k.upper()}": str(getattr(settings, k)) for k in keys}
    env["NCSWEEP_ARTIFACTS_DIR"] = str(settings.resolved_artifacts_dir())
    env["NCSWEEP_AUTH_REQUIRED"] = "true" if settings.auth_required else "false"
    return env


class Reconciler:
    """worker.reconciler.run_forever in a daemon thread of the test process, every `interval` seconds."""

    def __init__(self, settings: Any, interval: float = 0.5):
        from worker.reconciler import run_forever

        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=run_forever, args=(settings, interval),
                                       kwargs={"stop": self.stop_event}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)


class CeleryWorker:
    """`celery -A worker.celery_app worker` as a real subprocess (prefork -c1), logs under home."""

    def __init__(self, settings: Any, name: str, *, extra_env: dict[str, str] | None = None):
        self.settings, self.name = settings, name
        self.log = Path(settings.home) / f"{name}.log"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "CeleryWorker":
        from worker.launch import worker_command

        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **settings_env(self.settings), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
               "NCSWEEP_WORKER_NAME": f"{self.name}@test", "PYTHONPATH": str(ROOT), **self.extra_env}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(worker_command(f"{self.name}@test", "INFO"), cwd=ROOT, env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def children(self) -> list[int]:
        import psutil

        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the whole worker (parent and children): a machine loss."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        try:  # orphans of a killed parent
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, TypeError, AttributeError):
            pass

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""


class ApiServer:
    """uvicorn serving service.app.create_app(settings) in a thread on 127.0.0.1."""

    def __init__(self, settings: Any):
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.api_port}"
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def start(self) -> "ApiServer":
        import httpx
        import uvicorn

        from service.app import create_app

        config = uvicorn.Config(create_app(self.settings), host="127.0.0.1", port=self.settings.api_port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: _http_ok(httpx, self.url + "/healthz"), 20, what="the API")
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(10)


def _http_ok(httpx: Any, url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except Exception:  # noqa: BLE001
        return False


def python() -> str:
    return sys.executable
