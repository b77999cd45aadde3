"""`ncsweep down`: the launcher holding a home's lock records itself there, and `down` stops it as Ctrl-C would."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from service import cli
from service.embedded import StackError, _lock_home
from tests.helpers_stack import ROOT, TERMINAL_SIGNALS

# a launcher stand-in: holds the home's lock as `ncsweep up` does, and exits 130 on SIGTERM as its handler makes it
HOLDER = TERMINAL_SIGNALS + """
import signal, sys, time
from pathlib import Path
from service.embedded import _lock_home
def stop(*_):
    print("stopping", flush=True)
    sys.exit(130)
signal.signal(signal.SIGTERM, stop)
fh = _lock_home(Path(sys.argv[1]))
print("holding", flush=True)
time.sleep(120)
"""


def ncsweep(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_a_refused_start_keeps_the_running_launchers_record(tmp_path) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    held = _lock_home(home)
    try:
        record = json.loads((home / ".lock").read_text())
        assert record["pid"] == os.getpid() and record["created"] > 0
        with pytest.raises(StackError, match="another ncsweep stack is running .*`ncsweep down`"):
            _lock_home(home)
        assert json.loads((home / ".lock").read_text()) == record  # was: truncated by the refused start's open
    finally:
        held.close()


def test_down_stops_the_launcher_holding_the_home_and_waits_for_it(tmp_path, capsys) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    rc, out, _ = ncsweep(capsys, "down", "--home", home)
    assert rc == 0 and f"no stack is running with home {home}" in " ".join(out.split())
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(home)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "holding"
        rc, out, err = ncsweep(capsys, "down", "--home", home)
        assert rc == 0, err
        assert f"stopped the stack of {home} (pid {proc.pid})" in " ".join(out.split())
        assert proc.wait(10) == 130  # it was stopped by its SIGTERM handler (Ctrl-C's path), and has exited
        rc, out, _ = ncsweep(capsys, "down", "--home", home)
        assert rc == 0 and "no stack is running" in out
    finally:
        proc.kill()
        proc.wait()


def test_down_says_so_when_the_holder_is_not_on_record(tmp_path, capsys) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    held = _lock_home(home)
    try:
        (home / ".lock").write_text("")  # a stack started by an ncsweep that did not record its launcher
        rc, _, err = ncsweep(capsys, "down", "--home", home, "--timeout", "1")
        assert rc == 1 and "does not say which process it is" in " ".join(err.split()) and "Ctrl-C" in err
    finally:
        held.close()
