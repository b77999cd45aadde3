"""`python -m nc_core run` interrupted: a signal or a kill while --out or the metric history is replaced, SIGHUP
(the terminal closed) and a second Ctrl-C."""
from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from nc_core.cli import app
from test_run_cli import _ctrl_c_after_epoch
from tests.helpers_stack import TERMINAL_SIGNALS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()
TINY = {"epochs": 2, "device": "cpu", "data": {"name": "digits"}, "model": {"name": "mlp", "width": 32, "depth": 2},
        "eval": {"splits": ["train", "test"]}}
FOUR = {**TINY, "epochs": 4, "checkpoint": {"every": 1}}
OLD_CSV = "epoch,split,key,value,reason\n1,train,acc,99.0,\n"  # what an earlier run wrote


class Killed(BaseException):
    """What a kill does to the process at that point (no handler of the CLI may swallow it)."""


def _raise_killed(signum, frame):  # noqa: ANN001, ANN202 - a signal handler
    raise Killed(signum)


@pytest.fixture
def handler(monkeypatch):  # noqa: ANN001, ANN201
    """Install ``_raise_killed`` for a signal (instead of the default, which would end pytest); put back after."""
    before = {}

    def install(sig: int):  # noqa: ANN202
        before.setdefault(sig, signal.getsignal(sig))
        signal.signal(sig, _raise_killed)
    yield install
    for sig, h in before.items():
        signal.signal(sig, h)


def write_spec(tmp_path, tree=TINY):  # noqa: ANN001, ANN201
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _half_then(monkeypatch, then) -> None:  # noqa: ANN001
    """csv.DictWriter.writerows writes half of its rows, calls ``then()``, then the rest."""
    def writerows(self, rows):  # noqa: ANN001, ANN202
        rows = list(rows)
        for r in rows[:len(rows) // 2]:
            self.writerow(r)
        then()
        for r in rows[len(rows) // 2:]:
            self.writerow(r)

    monkeypatch.setattr(csv.DictWriter, "writerows", writerows)


def _no_temp_files(directory: pathlib.Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_sigterm_while_out_is_written_is_handled_after_the_write(tmp_path, monkeypatch, handler):
    out = tmp_path / "m.csv"
    out.write_text(OLD_CSV)
    handler(signal.SIGTERM)
    _half_then(monkeypatch, lambda: signal.raise_signal(signal.SIGTERM))
    res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w"), "--out", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert {(r["epoch"], r["split"]) for r in rows} == {("1", "train"), ("1", "test"), ("2", "train"), ("2", "test")}
    assert len(rows) == len((tmp_path / "w" / "metrics.jsonl").read_text().splitlines())  # every row, whole
    assert res.exit_code == 0 and "wrote" in res.output, res.output
    assert signal.getsignal(signal.SIGTERM) is _raise_killed and _no_temp_files(tmp_path)


def test_a_kill_while_out_is_written_keeps_the_previous_file(tmp_path, monkeypatch):
    out = tmp_path / "m.csv"
    out.write_text(OLD_CSV)

    def kill():  # noqa: ANN202
        raise Killed
    _half_then(monkeypatch, kill)
    with pytest.raises(Killed):
        runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w"), "--out", str(out)])
    assert out.read_text() == OLD_CSV and _no_temp_files(tmp_path)


def test_a_kill_while_the_history_is_rewritten_on_resume_loses_no_row(tmp_path, monkeypatch):
    out, work = tmp_path / "m.json", tmp_path / "w"
    args = ["run", str(write_spec(tmp_path, FOUR)), "--workdir", str(work), "--out", str(out)]
    with monkeypatch.context() as m:
        _ctrl_c_after_epoch(m, 2, sig=signal.SIGINT)
        assert runner.invoke(app, args).exit_code == 130
    history = (work / "metrics.jsonl").read_text()
    assert {json.loads(line)["epoch"] for line in history.splitlines()} == {1, 2}
    write_text, replace = pathlib.Path.write_text, os.replace

    def cut_write_text(self, data, *a, **kw):  # noqa: ANN001, ANN202 - killed halfway through the write
        if self.name != "metrics.jsonl":
            return write_text(self, data, *a, **kw)
        write_text(self, data[:len(data) // 2], *a, **kw)
        raise Killed

    def killed_before_rename(src, dst, *a, **kw):  # noqa: ANN001, ANN202
        if pathlib.Path(dst).name == "metrics.jsonl":
            raise Killed
        return replace(src, dst, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "write_text", cut_write_text)
        m.setattr(os, "replace", killed_before_rename)
        with pytest.raises(Killed):
            runner.invoke(app, args)
    assert (work / "metrics.jsonl").read_text() == history and _no_temp_files(work)
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "resuming after epoch 2 of 4" in res.output, res.output
    assert sorted({r["epoch"] for r in json.loads(out.read_text())}) == [1, 2, 3, 4]


def test_sighup_stops_like_sigterm_and_the_handler_is_put_back(tmp_path, monkeypatch, handler):
    out = tmp_path / "m.json"
    handler(signal.SIGHUP)
    _ctrl_c_after_epoch(monkeypatch, 1, sig=signal.SIGHUP)
    res = runner.invoke(app, ["run", str(write_spec(tmp_path, FOUR)), "--workdir", str(tmp_path / "w"),
                              "--out", str(out)])
    assert res.exit_code == 128 + signal.SIGHUP and "SIGHUP: stopping at the next step" in res.output, res.output
    assert "1 epoch done (stopped)" in res.output and (tmp_path / "w" / "ckpt" / "epoch_0001.pt").exists()
    assert {r["epoch"] for r in json.loads(out.read_text())} == {1}
    assert signal.getsignal(signal.SIGHUP) is _raise_killed


def test_an_ignored_sighup_stays_ignored(tmp_path, monkeypatch):
    """Under nohup SIGHUP is ignored on purpose: the run goes on when the terminal closes."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        _ctrl_c_after_epoch(monkeypatch, 1, sig=signal.SIGHUP)
        res = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--workdir", str(tmp_path / "w")])
        assert res.exit_code == 0 and "2 epochs done;" in res.output, res.output
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


@pytest.mark.parametrize("every, sig, expected", [
    (1, signal.SIGINT, "aborted by a second Ctrl-C: the same command resumes the run after epoch 1, its newest "
                       "checkpoint"),
    (3, signal.SIGTERM, "aborted by SIGTERM: no checkpoint yet: the same command starts the run from epoch 1")])
def test_a_second_signal_says_from_which_epoch_a_rerun_resumes(tmp_path, monkeypatch, every, sig, expected):
    tree = {**FOUR, "checkpoint": {"every": every}}
    args = ["run", str(write_spec(tmp_path, tree)), "--workdir", str(tmp_path / "w")]
    before = signal.getsignal(sig)
    with monkeypatch.context() as m:
        _ctrl_c_after_epoch(m, 2, times=2, sig=sig)  # epoch 2's metrics come before its checkpoint
        res = runner.invoke(app, args)
    text = " ".join(res.output.split())
    assert res.exit_code == 128 + sig and expected in text and "Traceback" not in text, res.output
    assert signal.getsignal(sig) is before
    if every == 1:
        assert "resuming after epoch 1 of 4" in runner.invoke(app, args).output


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_closing_the_terminal_stops_the_run_and_writes_out(tmp_path):
    """A real hangup: the CLI runs in a pseudo-terminal, its controlling terminal, whose master side is closed
    once a checkpoint exists (the kernel then sends SIGHUP, and writes to the terminal fail)."""
    import subprocess

    tree = {"epochs": 500, "device": "cpu", "data": {"name": "gaussian", "train_size": 200, "test_size": 50},
            "model": {"name": "mlp", "width": 16, "depth": 1}, "eval": {"every": 1, "splits": ["train"]}}
    out, work = tmp_path / "m.json", tmp_path / "w"
    take_terminal = (TERMINAL_SIGNALS + "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                     "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-c", take_terminal, "-m", "nc_core", "run",
                             str(write_spec(tmp_path, tree)), "--workdir", str(work), "--out", str(out)],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.close(slave)
    os.set_blocking(master, False)
    deadline = time.monotonic() + 60
    try:
        while not any((work / "ckpt").glob("epoch_*.pt")) and proc.poll() is None \
                and time.monotonic() < deadline:  # any: keep_last prunes the first ones
            try:
                os.read(master, 65536)  # keep the terminal drained
            except OSError:
                time.sleep(0.05)
    finally:
        os.close(master)  # the terminal closes
    try:
        rc = proc.wait(timeout=max(deadline - time.monotonic(), 5))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the run did not end after its terminal closed")
    assert rc == 128 + signal.SIGHUP, rc
    epochs = {r["epoch"] for r in json.loads(out.read_text())}
    assert epochs and (work / "ckpt" / f"epoch_{max(epochs):04d}.pt").exists()


def test_under_no_resume_the_messages_name_the_command_that_resumes(tmp_path, monkeypatch):
    """--no-resume deletes the checkpoints at start: 'the same command resumes' was wrong there (review)."""
    tree = {**FOUR, "checkpoint": {"every": 1}}
    args = ["run", str(write_spec(tmp_path, tree)), "--workdir", str(tmp_path / "w"), "--no-resume"]
    with monkeypatch.context() as m:
        _ctrl_c_after_epoch(m, 2, times=2, sig=signal.SIGINT)
        res = runner.invoke(app, args)
    text = " ".join(res.output.split())
    assert "the command without --no-resume resumes the run after epoch 1" in text, res.output
    with monkeypatch.context() as m:
        _ctrl_c_after_epoch(m, 2, times=1, sig=signal.SIGINT)
        res = runner.invoke(app, args)
    text = " ".join(res.output.split())
    assert "the command without --no-resume resumes the run from its last completed epoch" in text, res.output
