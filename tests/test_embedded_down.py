"""`ncsweep down`: the launcher holding a home's lock records itself there, and `down` stops it as Ctrl-C would."""
from __future__ import annotations

import json
import os
import signal
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


def launcher(code: str, home, **popen) -> subprocess.Popen:  # noqa: ANN001
    """A Python ``code`` process given ``home`` (this checkout on its path), its stdout a text pipe."""
    return subprocess.Popen([sys.executable, "-c", code, str(home)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, **popen)


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
        with pytest.raises(StackError, match="another ncsweep stack is running .*`ncsweep down --home .*/home`"):
            _lock_home(home)
        assert json.loads((home / ".lock").read_text()) == record  # was: truncated by the refused start's open
    finally:
        held.close()


def test_down_stops_the_launcher_holding_the_home_and_waits_for_it(tmp_path, capsys) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    rc, out, _ = ncsweep(capsys, "down", "--home", home)
    assert rc == 0 and f"no stack is running with home {home}" in " ".join(out.split())
    proc = launcher(HOLDER, home)
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


# the real launcher (embedded.main, its signal handlers) around a stand-in stack whose stop takes as long as the
# test wants: its last step waits for a file, as a worker's job writing its checkpoint keeps sup.stop waiting
SLOW_STOP = TERMINAL_SIGNALS + """
import sys, time
from pathlib import Path
import service.embedded as embedded
def start(stack, home, *_):
    stack.enter_context(embedded._lock_home(home))
    def stop():
        print("stopping", flush=True)
        while not (home / "release").exists():
            time.sleep(0.05)
        print("stopped cleanly", flush=True)
    stack.callback(stop)
    print("holding", flush=True)
    return embedded.get_settings()
embedded._start = start
sys.exit(embedded.main(Path(sys.argv[1]), example=False, keep_running=True))
"""


def test_down_again_keeps_waiting_and_does_not_cut_the_stop_short(tmp_path, capsys) -> None:  # noqa: ANN001
    # "run `ncsweep down` again to keep waiting": the second SIGTERM raised KeyboardInterrupt inside the stop in
    # progress (a worker's checkpoint wait), so the launcher skipped the rest of it and exited
    home = tmp_path / "home"
    home.mkdir()
    proc = launcher(SLOW_STOP, home)
    try:
        assert proc.stdout.readline().strip() == "holding"
        rc, _, err = ncsweep(capsys, "down", "--home", home, "--timeout", "0.2")
        assert rc == 1 and "still stopping" in err and f"`ncsweep down --home {home}` again" in " ".join(err.split())
        assert "stopping" in iter(lambda: proc.stdout.readline().strip(), "")  # its stop has begun
        rc, _, err = ncsweep(capsys, "down", "--home", home, "--timeout", "0.2")  # as the message says
        assert rc == 1 and "still stopping" in err
        (home / "release").touch()
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "stopped cleanly" in out, out
    finally:
        proc.kill()
        proc.wait()


def test_down_of_a_launcher_that_exits_meanwhile_says_it_stopped(tmp_path, capsys, monkeypatch) -> None:  # noqa: ANN001
    # the launcher exits between `down` reading its record and signalling it (its example finished, or another
    # `down` stopped it): psutil.NoSuchProcess escaped as "unexpected error ... a bug in ncsweep"
    from service import embedded_procs

    home = tmp_path / "home"
    proc = launcher(HOLDER, home)
    real_alive = embedded_procs._alive

    def alive_then_gone(rows):  # noqa: ANN001, ANN202
        found = real_alive(rows)
        proc.kill()
        proc.wait()
        return found

    try:
        assert proc.stdout.readline().strip() == "holding"
        monkeypatch.setattr(embedded_procs, "_alive", alive_then_gone)
        rc, out, err = ncsweep(capsys, "down", "--home", home, "--timeout", "10")
        assert rc == 0 and f"stopped the stack of {home} (pid {proc.pid})" in " ".join(out.split()), err
    finally:
        proc.kill()
        proc.wait()


def test_down_with_no_launcher_stops_what_one_killed_outright_left(tmp_path, capsys) -> None:  # noqa: ANN001
    from service.embedded_procs import ChildRecord

    home = tmp_path / "home"
    _lock_home(home).close()  # a stack ran here; its launcher was killed (the lock went with it)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        ChildRecord(home).add(child)  # e.g. its redis-server, still running
        rc, out, err = ncsweep(capsys, "down", "--home", home)
        assert rc == 0, err
        assert f"no stack is running with home {home}; stopped what one killed outright had left running: pid " \
               f"{child.pid}" in " ".join(out.split())
        assert child.wait(10) is not None  # stopped
    finally:
        child.kill()
        child.wait()


# a Celery worker stand-in: a process-group leader whose job runs in a child of the same group that keeps SIGTERM's
# default action (as Celery's pool processes do); the leader's SIGTERM (warm shutdown) tells the job to stop, which
# then gives its run back and exits — a SIGTERM to the whole group kills the job before it can
WORKER = """
import signal, subprocess, sys, time
from pathlib import Path
d = Path(sys.argv[1])
job = subprocess.Popen([sys.executable, "-c", '''
import sys, time
from pathlib import Path
d = Path(sys.argv[1])
(d / "job-started").touch()
while not (d / "stop").exists():
    time.sleep(0.05)
(d / "released").write_text("checkpointed, run given back")
''', str(d)])
def warm_shutdown(*_):
    (d / "stop").touch()
    sys.exit(job.wait())
signal.signal(signal.SIGTERM, warm_shutdown)
while not (d / "job-started").exists():
    time.sleep(0.05)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_leftover_workers_get_a_warm_shutdown_that_lets_their_job_give_its_run_back(tmp_path) -> None:  # noqa: ANN001
    # `up` (or `down`) after a launcher killed outright: stop_leftovers sent SIGTERM to each worker's whole process
    # group, killing its running job (Celery's pool process) mid-stop: the run stayed 'running', its attempt spent
    from service.embedded_procs import ChildRecord, stop_leftovers

    home = tmp_path / "home"
    home.mkdir()
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert worker.stdout.readline().strip() == "ready"
        ChildRecord(home).add(worker)
        assert [s.split(" (")[0] for s in stop_leftovers(home, timeout=60)] == [f"pid {worker.pid}"]
        assert worker.wait(10) is not None
        assert (tmp_path / "released").exists(), "the worker's job was killed instead of stopping"
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


# the launcher around a stand-in start whose SIGTERM lands in a finaliser (a __del__, a weakref callback run by the
# garbage collector): Python only prints an exception raised there, so the KeyboardInterrupt of the stop is lost
SWALLOWED = TERMINAL_SIGNALS + """
import sys, time
from pathlib import Path
import service.embedded as embedded
class Garbage:
    def __del__(self):
        print("in a finaliser", flush=True)
        while True:
            time.sleep(0.05)
def start(stack, home, *_):
    stack.enter_context(embedded._lock_home(home))
    stack.callback(print, "stopped cleanly", flush=True)
    Garbage()
    return embedded.get_settings()
embedded._start = start
sys.exit(embedded.main(Path(sys.argv[1]), example=False, keep_running=True))
"""


def test_down_stops_a_launcher_whose_interrupt_was_swallowed_by_a_finaliser(tmp_path, capsys) -> None:  # noqa: ANN001
    # `ncsweep down` right after `ncsweep up`: the launcher went on to serve, and ignored every later SIGTERM
    home = tmp_path / "home"
    home.mkdir()
    proc = launcher(SWALLOWED, home, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().strip() == "in a finaliser"
        rc, _, err = ncsweep(capsys, "down", "--home", home, "--timeout", "30")
        assert rc == 0, err
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130 and "stopped cleanly" in out, out
    finally:
        proc.kill()
        proc.wait()


def test_down_of_a_file_says_it_is_not_a_stacks_directory(tmp_path, capsys) -> None:  # noqa: ANN001
    home = tmp_path / "notes.txt"
    home.write_text("not a home")
    rc, _, err = ncsweep(capsys, "down", "--home", home)
    assert rc == 1 and f"--home: {home} is a file, expected a directory" in " ".join(err.split())


def test_down_stops_what_its_launcher_left_when_it_is_killed_during_the_wait(tmp_path, capsys) -> None:  # noqa: ANN001
    # the launcher is kill -9'd while `down` waits for it: `down` said "stopped" and left its children running
    from service.embedded_procs import ChildRecord

    home = tmp_path / "home"
    proc = launcher(HOLDER.replace("sys.exit(130)", "time.sleep(120)"), home)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        ChildRecord(home).add(child)  # e.g. its redis-server
        import threading

        threading.Timer(1.0, proc.kill).start()  # SIGTERM is ignored by this launcher; it dies during the wait
        rc, out, err = ncsweep(capsys, "down", "--home", home, "--timeout", "30")
        said = " ".join(out.split())
        assert rc == 0 and f"stopped the stack of {home} (pid {proc.pid})" in said, err
        assert f"stopped what one killed outright had left running: pid {child.pid}" in said
        assert child.wait(10) is not None
    finally:
        for p in (proc, child):
            p.kill()
            p.wait()
