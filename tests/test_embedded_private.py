"""The embedded stack keeps to its user: a Redis password in mode-600 files, a mode-700 home."""
from __future__ import annotations

import stat

import pytest
import redis

from service.embedded import _lock_home, free_port, redis_password, start_redis, stack_settings, write_private


def test_the_embedded_redis_refuses_clients_without_its_password(tmp_path):
    data = tmp_path / "redis"
    password = redis_password(data)
    assert redis_password(data) == password and len(password) >= 24  # kept across restarts
    assert stat.S_IMODE((data / "password").stat().st_mode) == 0o600
    port = free_port()
    proc = start_redis(data, port, password=password)
    try:
        assert password not in " ".join(proc.args) and stat.S_IMODE((data / "redis.conf").stat().st_mode) == 0o600
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=2).config_set("dir", str(tmp_path))
        assert redis.Redis(port=port, password=password, socket_timeout=2).ping()
        url = stack_settings(tmp_path, port, redis_password=password).broker_url
        assert url == f"redis://:{password}@127.0.0.1:{port}/0" and redis.Redis.from_url(url).ping()
    finally:
        proc.kill()
        proc.wait()


def test_the_stack_home_is_private_to_its_user(tmp_path):
    home = tmp_path / "home"
    _lock_home(home).close()  # made by the stack
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    default = tmp_path / ".ncsweep"  # the default home of an older stack
    default.mkdir()
    default.chmod(0o755)
    _lock_home(default).close()
    assert stat.S_IMODE(default.stat().st_mode) == 0o700
    shared = tmp_path / "team"
    shared.mkdir()
    shared.chmod(0o755)  # a directory the user chose that no stack made: left as it is, start after start
    for _ in range(2):
        _lock_home(shared).close()
        assert stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_a_private_file_that_was_there_is_made_private(tmp_path):
    path = tmp_path / "token"
    path.write_text("old\n")
    path.chmod(0o644)
    write_private(path, "new\n")
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
