"""The embedded stack in one command: SQLite + a real redis-server + API + workers + reconciler under one home."""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from nc_core.settings import Settings, get_settings
from service.embedded_procs import LOCK, ChildRecord, launcher_record, stop_leftovers
from service.embedded_redis import (StackError, redis_password, redis_server_binary,  # noqa: F401 - re-exported
                                    start_redis, write_private)

log = logging.getLogger("ncsweep.embedded")
EXAMPLE = Path(__file__).resolve().parent / "examples" / "digits_sweep.yaml"
HOME_MARK = ".ncsweep-home"  # in a home the stack made itself: only such a home is made private (mode 700)


def free_port(preferred: int | None = None, *, required: bool = False) -> int:
    """`preferred` when it is free on 127.0.0.1 (a socket of a stopped server in TIME_WAIT counts as free: the
    servers bind with SO_REUSEADDR too), else any free port — or, when ``required`` (a port the user asked
    for), a StackError naming it."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                if required:
                    raise StackError(f"--port {port}: 127.0.0.1:{port} is in use (another ncsweep stack or server?); "
                                     "expected a free port, or leave --port out to take any") from None
                continue
            return s.getsockname()[1]
    raise StackError("no free TCP port on 127.0.0.1")


def stack_settings(home: Path, redis_port: int, api_port: int | None = None, redis_password: str | None = None) -> Settings:
    """Environment settings, pointed at this home's SQLite file, Redis (with its password) and a free API port."""
    base = get_settings()
    home = home.expanduser().resolve()
    auth = f":{redis_password}@" if redis_password else ""
    return base.model_copy(update={
        "home": home, "database_url": f"sqlite:///{home / 'ncsweep.db'}",
        "broker_url": f"redis://{auth}127.0.0.1:{redis_port}/0", "artifacts_dir": home / "artifacts",
        "api_host": "127.0.0.1", "api_url": "", "token": "",
        "api_port": free_port(api_port, required=True) if api_port else free_port(base.api_port)})


def child_env(settings: Settings) -> dict[str, str]:
    """NCSWEEP_* variables that give worker processes the same database, broker and artifacts."""
    return {"NCSWEEP_HOME": str(settings.home), "NCSWEEP_DATABASE_URL": settings.database_url,
            "NCSWEEP_BROKER_URL": settings.broker_url, "NCSWEEP_ARTIFACTS_DIR": str(settings.resolved_artifacts_dir()),
            "NCSWEEP_LEASE_SECONDS": str(settings.lease_seconds),
            "NCSWEEP_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds)}


def ensure_token(settings: Settings) -> str:
    """The CLI token in <home>/token: reused while the database knows it, else created (mode 600)."""
    from service.auth import create_token, hash_token
    from nc_core.db.models import ApiToken
    from nc_core.db.session import session_scope
    from sqlalchemy import select

    path = Path(settings.home) / "token"
    if path.is_file():
        token = path.read_text().strip()
        with session_scope(settings.resolved_database_url()) as s:
            row = s.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
            if row is not None and not row.revoked:
                return token
    token = create_token(settings.resolved_database_url(), name="embedded", scope="admin")
    write_private(path, token + "\n")
    return token


def release_dead_leases(settings: Settings) -> list[int]:
    """At start-up no worker of this home is alive: runs left 'running' by a previous stack go back to
    the queue now (attempt counts as used) instead of waiting for their leases to expire."""
    from datetime import timedelta

    from nc_core.db import runs_repo
    from nc_core.db.session import session_scope

    with session_scope(settings.resolved_database_url()) as s:
        far = runs_repo.utcnow() + timedelta(days=3650)
        requeued, _failed = runs_repo.requeue_expired(s, far)
        if requeued:
            runs_repo.touch(s, requeued, now=runs_repo.utcnow() - timedelta(days=1))  # re-send at once
    return requeued


class ApiThread:
    """uvicorn in a daemon thread (127.0.0.1 only)."""

    def __init__(self, settings: Settings):
        import uvicorn

        from service.app import create_app

        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.api_port,
                                log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="api", daemon=True)

    def start(self, timeout: float = 20.0) -> "ApiThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise StackError("the API did not start (port taken?)")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _lock_home(home: Path) -> Any:
    if home.exists() and not home.is_dir():
        raise StackError(f"--home: {home} is a file, expected a directory (the stack's state directory)")
    try:
        if not home.exists() or home.name == ".ncsweep":  # one the stack makes (or the default): marked as its own
            home.mkdir(parents=True, exist_ok=True)
            (home / HOME_MARK).touch()
        if (home / HOME_MARK).exists() and home.stat().st_uid == os.getuid():  # not a directory the user chose
            home.chmod(0o700)  # its database, checkpoints, logs and broker data are this user's alone
    except OSError as exc:
        raise StackError(f"--home: cannot create the directory {home} ({exc.strerror or exc})") from None
    fh = open(home / LOCK, "a+")  # not "w": a start refused here must not erase the running stack's record
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise StackError(f"another ncsweep stack is running with home {home}; stop it first (`ncsweep down --home "
                         f"{home}`, or Ctrl-C where it runs)") from None
    fh.seek(0)
    fh.truncate()
    fh.write(launcher_record())  # who holds the lock: what `ncsweep down` signals
    fh.flush()
    return fh


def main(home: Path | str | None = None, example: bool = True, *, keep_running: bool | None = None,
         workers: int | None = None, gpus: list[int] | None = None, api_port: int | None = None,
         fresh: bool = False) -> int:
    """Start everything, run the example sweep (if asked), print its results; Ctrl-C stops cleanly.

    keep_running (default: not example) serves the API until interrupted. A second invocation reuses
    the home: same database and token; an identical example sweep that already finished is reused
    (its results are shown at once), an unfinished one is resumed; fresh=True submits a new one.
    """
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)  # logs and pipes: keep the results table unwrapped
    home = Path(home or get_settings().home).expanduser().resolve()
    keep_running = (not example) if keep_running is None else keep_running
    previous, _STOP.requested = {}, False
    if threading.current_thread() is threading.main_thread():  # `kill` and a closed terminal stop as Ctrl-C does
        stops = [signal.SIGTERM] + ([signal.SIGHUP] if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN else [])
        previous = {sig: signal.signal(sig, _interrupt) for sig in stops}  # under nohup a hangup stays ignored
    try:
        with ExitStack() as stack:
            settings = _start(stack, home, workers, gpus, api_port, console)
            _raise_if_stop_requested()
            if example:
                from service.examples import run_example

                run_example(settings, console, fresh=fresh)
            if keep_running:
                console.print(f"serving {settings.resolved_api_url()} (Ctrl-C stops)")
                while True:
                    _raise_if_stop_requested()
                    time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        console.print("\ninterrupted: stopped the workers (a running job first checkpoints its last completed "
                      "epoch), the API and Redis; runs resume on the next start")
        return 130
    except StackError as exc:
        from rich.markup import escape

        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)  # one line, however long
        return 1
    finally:
        for sig, handler in previous.items():  # the caller's handlers again (main() may run in a longer process)
            signal.signal(sig, handler)


def _start(stack: ExitStack, home: Path, workers: int | None, gpus: list[int] | None, api_port: int | None,
           console: Any) -> Settings:
    """Lock the home, migrate, start Redis, API, workers and the reconciler (each stopped on exit)."""
    from worker import launch
    from worker.reconciler import run_forever

    if gpus is not None:  # before anything starts: a GPU twice, one not on this host or not allotted to it
        try:
            launch.check_gpu_selection(gpus)
        except launch.GpuSelectionError as exc:
            raise StackError(f"--gpus {','.join(map(str, gpus))}: {exc}") from None
    if workers is not None and workers < 1:
        raise StackError(f"--workers: expected at least 1 CPU worker, got {workers}")
    if api_port is not None and not 1 <= api_port <= 65535:
        raise StackError(f"--port: expected 1..65535, got {api_port}")
    stack.enter_context(_lock_home(home))
    leftovers = stop_leftovers(home)  # what a launcher that died without stopping it left running
    if leftovers:
        console.print(f"stopped what an earlier stack of {home} left running: {', '.join(leftovers)}")
    children = ChildRecord(home)
    stack.callback(children.clear)
    redis_port, password = free_port(), redis_password(home / "redis")
    settings = stack_settings(home, redis_port, api_port, password)
    with console.status("migrating the database ..."):
        _migrate(settings.resolved_database_url())
    start_redis(home / "redis", redis_port, password=password,
                on_spawn=lambda proc: (stack.callback(_stop_proc, proc), children.add(proc)))
    token = ensure_token(settings)
    requeued = release_dead_leases(settings)
    api = ApiThread(settings).start()
    stack.callback(api.stop)
    gpu_list = launch.detect_gpus() if gpus is None else gpus
    n_cpu = workers if workers is not None else min(2, max(1, os.cpu_count() or 1))
    sup = launch.supervisor(gpu_list, n_cpu, env=child_env(settings), log_dir=home / "logs", on_spawn=children.add)
    stack.callback(sup.stop)  # before any worker is spawned: an interrupt meanwhile stops those already running
    sup.start()
    stop = threading.Event()
    recon = threading.Thread(target=run_forever, args=(settings, max(2.0, settings.heartbeat_seconds)),
                             kwargs={"stop": stop, "resend_after_s": 20.0}, name="reconciler", daemon=True)
    recon.start()
    stack.callback(recon.join, 10)
    stack.callback(stop.set)
    where = f"{len(gpu_list)} GPU worker(s)" if gpu_list else f"{n_cpu} CPU worker(s)"
    (home / "api_url").write_text(settings.resolved_api_url() + "\n")  # where the CLI finds this API
    stack.callback((home / "api_url").unlink, missing_ok=True)  # a stopped stack's port may serve another program
    console.print(f"ncsweep up: API {settings.resolved_api_url()}  redis :{redis_port}  {where}  home {home}")
    console.print(f"token in {home / 'token'} (export NCSWEEP_HOME={home} for the CLI)"
                  + (f"; re-queued {len(requeued)} interrupted run(s)" if requeued else ""))
    return settings.model_copy(update={"token": token})


def _migrate(url: str) -> None:
    """Upgrade the home's database to this version's schema; a StackError saying why it cannot be (a database of
    a newer ncsweep, a migration that refuses the data it finds) instead of an "unexpected error"."""
    from alembic.util import CommandError

    from nc_core.db.migrate import current, head_revision, upgrade

    try:
        upgrade(url)
    except CommandError as exc:
        at = current(url)
        if at is not None and "locate revision" in str(exc):
            raise StackError(f"the database {url.removeprefix('sqlite:///')} is at schema revision {at}, which this "
                             f"ncsweep does not know (its newest is {head_revision()}): it was migrated by a newer "
                             "ncsweep; run that version, or give this one another --home") from None
        raise StackError(f"migrating {url.removeprefix('sqlite:///')} failed: {exc}") from None
    except RuntimeError as exc:  # a migration that refuses the rows it found says what to do about them
        raise StackError(f"migrating {url.removeprefix('sqlite:///')} stopped: {exc}") from None


class _STOP:
    """Whether SIGTERM or SIGHUP asked this launcher to stop (main() resets it)."""

    requested = False


def _interrupt(signum: int, _frame: Any = None) -> None:
    # the stop that follows runs to its end: a second `kill` or `ncsweep down` (which says "again to keep waiting"),
    # or the terminal closing meanwhile, must not cut it short (Ctrl-C still does). Recorded, not only raised: a
    # KeyboardInterrupt raised in a finaliser (a __del__ or weakref callback the garbage collector runs) is only
    # printed, and main() would go on to serve, deaf to any later SIGTERM, had it not read the record
    if _STOP.requested:
        return
    _STOP.requested = True
    raise KeyboardInterrupt


def _raise_if_stop_requested() -> None:
    if _STOP.requested:
        raise KeyboardInterrupt


def _stop_proc(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
