"""fit() and a workdir another process holds: it waits (retrying every LOCK_POLL_S) and trains once the holder lets
go, or is refused naming the holder; the waits are checked on a fake clock, never by the time the test takes."""
from __future__ import annotations

import subprocess

import pytest

from nc_core.train import NullReporter, fit
from nc_core.training import checkpoint as ck
from test_lease_takeover import Waiting, hold_workdir, tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeClock:
    """Stands in for checkpoint.py's ``time``: monotonic() moves only by the sleep() calls, which it records (the
    wait is checked by what fit() did, not by how long the test took)."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ReleasedWhileWaiting(Waiting):
    """Waits for a busy workdir; ends ``holder`` at fit()'s ``polls``-th look at it (each look asks should_stop),
    recording the order of events: "busy" (a look while held), "released", "trained" (fit() started training)."""

    def __init__(self, wait_s: float, holder: subprocess.Popen, polls: int):
        super().__init__(wait_s)
        self.holder, self.polls, self.events = holder, polls, []

    def should_stop(self):
        if "released" not in self.events:
            self.events.append("busy")
            if self.events.count("busy") == self.polls:
                self.holder.kill()
                self.holder.wait()
                self.events.append("released")
        return False

    def on_start(self, total_epochs, steps_per_epoch):
        self.events.append("trained")


def test_fit_waits_for_the_workdir_holder_then_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(ck, "time", FakeClock())
    holder = hold_workdir(tmp_path, 60.0)
    reporter = ReleasedWhileWaiting(30.0, holder, polls=2)
    try:
        out = fit(tiny(epochs=1), reporter, workdir=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert out["epochs_done"] == 1 and not out["stopped"]
    assert reporter.events == ["busy", "busy", "released", "trained"], "fit() trained while another process held " \
        f"the workdir: {reporter.events}"
    assert list(ck.list_checkpoints(tmp_path)) == [1]


def test_without_a_wait_a_busy_workdir_is_refused_at_once(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(ck, "time", clock)
    holder = hold_workdir(tmp_path, 30.0)
    try:
        with pytest.raises(ck.WorkdirBusy, match=rf"workdir: {tmp_path} is in use by another run \(pid {holder.pid}\); "
                                                  r"wait for it to end") as caught:
            fit(tiny(epochs=1), NullReporter(), workdir=tmp_path)
        assert clock.sleeps == [] and caught.value.waited_s == 0.0  # no wait at all
    finally:
        holder.kill()
        holder.wait()
    assert issubclass(ck.WorkdirBusy, ValueError) and not ck.list_checkpoints(tmp_path)


def test_a_workdir_held_for_the_whole_wait_fails_naming_the_holder(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(ck, "time", clock)
    holder = hold_workdir(tmp_path, 60.0)
    try:
        with pytest.raises(ck.WorkdirBusy, match=rf"still in use by another run \(pid {holder.pid}\) after waiting "
                                                  r"1\.5 s") as caught:
            fit(tiny(epochs=1), Waiting(1.5), workdir=tmp_path)
        # retried every LOCK_POLL_S for the whole wait
        assert clock.sleeps == [ck.LOCK_POLL_S] * 3 and ck.LOCK_POLL_S == 0.5, clock.sleeps
    finally:
        holder.kill()
        holder.wait()
    assert (caught.value.holder, caught.value.waited_s) == (f"pid {holder.pid}", 1.5)
    assert not ck.list_checkpoints(tmp_path)
