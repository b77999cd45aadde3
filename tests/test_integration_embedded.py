"""The embedded stack as a user starts it: one process, a run over HTTP with the local token, clean Ctrl-C."""
from __future__ import annotations

import os
import socket
import signal
import subprocess
import sys

import httpx
import psutil
import pytest

from tests.helpers_stack import ROOT, TERMINAL_SIGNALS, free_port, missing, redis_binary, stop_tree, wait_for
from tests.test_embedded_hangup import _running

pytestmark = pytest.mark.integration
SWEEP = {"name": "embedded-smoke",
         "base": {"epochs": 2, "batch_size": 64, "device": "cpu",
                  "data": {"name": "gaussian", "train_size": 200, "test_size": 100, "gaussian_classes": 3,
                           "gaussian_dim": 8},
                  "model": {"name": "mlp", "width": 16, "depth": 1}},
         "seeds": [0, 1]}


def test_embedded_stack_serves_runs_and_stops_cleanly(tmp_path):
    if redis_binary() is None:
        missing("a redis-server binary")  # skip here, fail under CI=true
    port = free_port()
    env = {**os.environ, "NCSWEEP_API_PORT": str(port), "NCSWEEP_HEARTBEAT_SECONDS": "0.5", "PYTHONPATH": str(ROOT)}
    env.pop("NCSWEEP_DATABASE_URL", None)
    code = "import sys; from service.embedded import main; sys.exit(main(sys.argv[1], example=False, workers=1))"
    proc = subprocess.Popen([sys.executable, "-c", TERMINAL_SIGNALS + code, str(tmp_path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        api = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ok(api), 60, 0.2, "the embedded API")
        token = (tmp_path / "token").read_text().strip()
        assert oct((tmp_path / "token").stat().st_mode)[-3:] == "600"
        headers = {"Authorization": f"Bearer {token}"}
        created = httpx.post(f"{api}/sweeps", json=SWEEP, headers=headers, timeout=30)
        assert created.status_code == 201, created.text
        sweep_id = created.json()["sweep_id"]

        def done():
            runs = httpx.get(f"{api}/runs", params={"sweep_id": sweep_id}).json()["items"]
            return runs if all(r["status"] == "succeeded" for r in runs) else None

        wait_for(done, 60, 0.5, "the runs to succeed")
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert len(descendants) >= 2  # redis-server and the worker parent (its prefork child is recycled per job)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            stop_tree(proc)  # not stopped by Ctrl-C: nothing of it may outlive the test
            raise
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    wait_for(lambda: not _running(descendants), 20, 0.1, "the stack's processes to exit")  # was: a fixed sleep
    assert (tmp_path / "ncsweep.db").is_file() and (tmp_path / "redis").is_dir()


def _ok(api: str) -> bool:
    try:
        return httpx.get(f"{api}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_port_asked_for_that_is_taken_is_an_error_not_another_port():
    from service.embedded import StackError, free_port as stack_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StackError, match=rf"--port {port}: 127.0.0.1:{port} is in use .* leave --port out"):
            stack_port(port, required=True)
        assert stack_port(port) not in (port, 0)  # the default port may move: the stack prints its URL
    assert stack_port(port, required=True) == port  # free again
