"""The embedded stack's child processes (redis-server, Celery workers), recorded in <home>/stack.pids.

Recorded while the stack runs, so that a stack started after its launcher died without stopping them (SIGKILL, a
crash) stops what that launcher left running — two brokers on one AOF directory, or two workers training one run,
otherwise.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

PIDS = "stack.pids"
LOCK = ".lock"  # held by the running stack's launcher, which records itself in it (launcher_record)


class ChildRecord:
    """Appends each spawned child's (pid, start time) to <home>/stack.pids; ``clear`` on a clean stop."""

    def __init__(self, home: Path):
        self.path, self._lock = home / PIDS, threading.Lock()

    def add(self, proc: subprocess.Popen) -> None:
        import psutil

        try:
            entry = {"pid": proc.pid, "created": psutil.Process(proc.pid).create_time()}
        except psutil.Error:  # exited already: nothing to stop later
            return
        with self._lock:
            rows = _read(self.path) + [entry]
            tmp = self.path.with_name(f".{PIDS}.{os.getpid()}")
            tmp.write_text(json.dumps(rows) + "\n")
            os.replace(tmp, self.path)

    def clear(self) -> None:
        """Forget the children once they have all exited (a stop cut short keeps them on record)."""
        if not _alive(_read(self.path)):
            self.path.unlink(missing_ok=True)


def launcher_record() -> str:
    """This process as the lock file records it: its pid and start time (JSON)."""
    import psutil

    return json.dumps({"pid": os.getpid(), "created": psutil.Process().create_time()}) + "\n"


def stop_stack(home: Path, timeout: float = 120.0) -> tuple[str | None, list[str]]:
    """Stop the stack running with ``home`` as Ctrl-C does (SIGTERM to its launcher: the workers' running jobs
    checkpoint their last completed epoch and give their runs back), and wait until it has released the home's
    lock. Returns ("pid N" of the launcher stopped, or None when no stack runs with ``home``; what a launcher
    killed outright had left running and was stopped now, :func:`stop_leftovers`). StackStopError when the
    lock's holder is not on record (an older ncsweep started it) or does not stop within ``timeout``."""
    import fcntl

    import psutil

    if home.exists() and not home.is_dir():
        raise StackStopError(f"--home: {home} is a file, expected a directory (a stack's state directory)")
    path = home / LOCK
    if not path.is_file():
        return None, []
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no launcher holds it: what a dead one left may go
            return None, stop_leftovers(home, timeout)  # closing the file lets the lock go again
        except OSError:
            pass
        try:
            row = json.loads(fh.read() or "{}")
        except ValueError:
            row = {}
    alive = _alive([row]) if isinstance(row, dict) else []
    if not alive:
        raise StackStopError(f"a stack runs with home {home}, but {path} does not say which process it is (one "
                             "started by an older ncsweep): stop it with Ctrl-C where it runs")
    try:
        alive[0].terminate()
    except psutil.NoSuchProcess:
        pass  # it has exited since (its example finished, another `down`): the wait below sees the lock free
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released; if it was killed meanwhile, what it left
                return f"pid {alive[0].pid}", stop_leftovers(home, max(1.0, deadline - time.monotonic()))
            except OSError:
                time.sleep(0.2)
    raise StackStopError(f"the stack of {home} (pid {alive[0].pid}) is still stopping after {timeout:g} s (a job "
                         f"writing its checkpoint?); run `ncsweep down --home {home}` again to keep waiting")


class StackStopError(Exception):
    """`ncsweep down` could not stop the stack: says why and what to do."""


def stop_leftovers(home: Path, timeout: float = 30.0) -> list[str]:
    """Stop the recorded children of an earlier launcher of ``home`` that are still alive (the same pid and start
    time: never a process that merely reuses a pid): SIGTERM to each of them — a worker's warm shutdown: its running
    job checkpoints and returns its run — then SIGKILL to each process group after ``timeout``. Not SIGTERM to the
    group: a Celery pool process (the job) dies of it before it can. Returns what was stopped ("pid N (name)").
    The caller holds the home's lock, so no live stack owns them."""
    import psutil

    path = home / PIDS
    alive = _alive(_read(path))
    stopped = [f"pid {p.pid} ({_name(p)})" for p in alive]
    for proc in alive:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout
    for proc in alive:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except psutil.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
        except psutil.Error:
            pass
    path.unlink(missing_ok=True)
    return stopped


def _alive(rows: list[dict]) -> list:
    """The psutil.Process of each recorded row still running: the same pid and start time."""
    import psutil

    alive = []
    for row in rows:
        try:
            proc = psutil.Process(int(row["pid"]))
            if abs(proc.create_time() - float(row["created"])) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)  # a zombie (exited, its new parent has not reaped it) needs no stop
        except (psutil.Error, KeyError, TypeError, ValueError):
            continue
    return alive


def _read(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text())
        return rows if isinstance(rows, list) else []
    except (OSError, ValueError):
        return []


def _name(proc) -> str:  # noqa: ANN001 - a psutil.Process
    try:
        return proc.name()
    except Exception:  # noqa: BLE001
        return "?"


def _signal_group(pid: int, sig: int) -> None:
    """``sig`` to the process group that ``pid`` leads (each child is spawned in a session of its own)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
