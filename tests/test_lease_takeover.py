"""A run taken over after its lease moved: the new attempt waits for the old one's workdir lock, resumes only from
checkpoints the database records (re-training the epochs whose metrics the fenced-out attempt lost), and a
fenced-out attempt neither saves nor prunes checkpoint files."""
from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import select, update

from nc_core.db import results_repo, runs_repo, states
from nc_core.db.models import Checkpoint, Metric, Run
from nc_core.db.session import session_scope
from nc_core.spec import RunSpec
from nc_core.train import NullReporter, fit
from nc_core.training import checkpoint as ck

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = {"epochs": 4, "batch_size": 64, "device": "cpu", "deterministic": True,
        "data": {"name": "gaussian", "train_size": 256, "test_size": 64, "gaussian_classes": 4, "gaussian_dim": 8},
        "model": {"name": "mlp", "width": 16, "depth": 2}, "optim": {"name": "sgd", "lr": 0.05},
        "eval": {"every": 1}, "checkpoint": {"every": 1, "keep_last": None}}

HOLDER = """import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_workdir(workdir: Path, seconds: float) -> subprocess.Popen:
    """Another process holding ``workdir``'s run lock (as a previous attempt's fit() does) for ``seconds``."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir / ".lock"), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked", "the holder process did not take the lock"
    return proc


class Waiting(NullReporter):
    """A reporter that waits ``workdir_wait_s`` for a busy workdir (as the worker's DBReporter does)."""

    def __init__(self, wait_s: float):
        self.workdir_wait_s = wait_s


class LeaseLost(NullReporter):
    """A reporter whose lease is gone (``lease_lost``) from the start, or once ``after_epoch`` has completed."""

    def __init__(self, after_epoch: int = 0):
        self.after_epoch, self.checkpoints = after_epoch, []
        self.lease_lost = after_epoch == 0

    def on_metrics(self, epoch, split, metrics):
        if epoch >= self.after_epoch:
            self.lease_lost = True  # a fenced write failed

    def on_checkpoint(self, epoch, path, nbytes, sha256):
        self.checkpoints.append(epoch)

    def should_stop(self):
        return self.lease_lost


def tiny(**over) -> RunSpec:
    return RunSpec.model_validate({**BASE, **over})


# -- (a) fit() waits for a busy workdir: tests/test_workdir_wait.py ---------------------------------------------


# -- (b) the worker waits for the previous attempt --------------------------------------------------------------
def _queued_run(app_client) -> int:  # noqa: ANN001
    body = {"name": "takeover", "base": BASE, "seeds": [0]}
    created = app_client.post("/sweeps", json=body)
    assert created.status_code == 201, created.text
    sid = created.json()["sweep_id"]
    (item,) = app_client.get("/runs", params={"sweep_id": sid}).json()["items"]
    return item["id"]


def _row(db_url: str, run_id: int) -> Run:
    with session_scope(db_url) as s:
        return s.get(Run, run_id)


def test_a_new_attempt_waits_for_the_old_attempts_workdir_and_succeeds(app_client, settings, db_url):
    from worker.runner import execute, run_workdir

    rid = _queued_run(app_client)
    holder = hold_workdir(run_workdir(settings, rid), 2.0)  # the fenced-out attempt, stopping within a heartbeat
    try:
        assert execute(rid, "train", settings, hostname="new") == states.SUCCEEDED, _row(db_url, rid).error
    finally:
        holder.kill()
        holder.wait()
    assert _row(db_url, rid).epoch == 4


def test_a_stuck_holder_fails_the_run_with_a_readable_reason(app_client, settings, db_url):
    from worker.runner import execute, run_workdir

    rid = _queued_run(app_client)
    holder = hold_workdir(run_workdir(settings, rid), 60.0)
    try:
        status = execute(rid, "train", settings.model_copy(update={"lease_seconds": 1.0}), hostname="new")
    finally:
        holder.kill()
        holder.wait()
    error = _row(db_url, rid).error
    assert status == states.FAILED
    assert error.startswith(f"WorkdirBusy: workdir {run_workdir(settings, rid)} was held by another process "
                            f"(pid {holder.pid}) for the whole 1 s wait after this run's lease moved"), error
    assert "stuck" in error and "\n" not in error


# -- (c) resume only from recorded checkpoints ----------------------------------------------------------------
class StopAfter(NullReporter):
    """Keeps the metrics; stops the run once the checkpoint of ``epoch`` is written."""

    def __init__(self, epoch: int):
        self.epoch, self.metrics, self.done = epoch, {}, False

    def on_metrics(self, epoch, split, metrics):
        self.metrics[(epoch, split)] = dict(metrics)

    def on_checkpoint(self, epoch, path, nbytes, sha256):
        self.done = self.done or epoch >= self.epoch

    def should_stop(self):
        return self.done


def test_a_cancel_while_waiting_for_the_workdir_cancels_the_run(app_client, settings, db_url):
    # the wait for a stuck holder used to see no cancel: after the whole wait the run failed (WorkdirBusy)
    import threading

    from worker.runner import execute, run_workdir

    rid = _queued_run(app_client)
    holder = hold_workdir(run_workdir(settings, rid), 60.0)
    quick = settings.model_copy(update={"lease_seconds": 20.0, "heartbeat_seconds": 1.0})
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(execute(rid, "train", quick, hostname="new")))
    try:
        worker.start()
        for _ in range(200):  # claimed: the worker now waits for the workdir
            if _row(db_url, rid).status == states.RUNNING:
                break
            time.sleep(0.05)
        assert app_client.post(f"/runs/{rid}/cancel").status_code == 200
        worker.join(60)
    finally:
        holder.kill()
        holder.wait()
    assert outcome == [states.CANCELLED] and _row(db_url, rid).status == states.CANCELLED, _row(db_url, rid).error


def test_a_takeover_resumes_after_the_last_recorded_checkpoint_and_rewrites_the_rest(app_client, settings, db_url):
    from worker.runner import execute, run_workdir

    rid = _queued_run(app_client)
    workdir = run_workdir(settings, rid)
    spec = RunSpec.model_validate(_row(db_url, rid).spec)
    # the old attempt: files of epochs 1..3 on disk; its fenced writes of epoch 3 (metrics, checkpoint row) failed
    old = StopAfter(3)
    assert fit(spec, old, workdir=workdir)["epochs_done"] == 3
    assert list(ck.list_checkpoints(workdir)) == [1, 2, 3]
    fenced_out = {**ck.load_checkpoint(ck.ckpt_path(workdir, 3)), "fenced_out": True}  # to tell it from a rewrite
    ck.save_checkpoint(workdir, 3, fenced_out)
    with session_scope(db_url) as s:
        runs_repo.claim(s, rid, "old", 3600)
        for epoch in (1, 2):
            path = ck.ckpt_path(workdir, epoch)
            results_repo.record_checkpoint(s, rid, "old", epoch, str(path), path.stat().st_size, ck.sha256_file(path))
            for split in ("train", "test"):
                results_repo.upsert_metrics(s, rid, "old", epoch, split, old.metrics[(epoch, split)], 1)
    with session_scope(db_url) as s:  # its lease expires; the reconciler re-queues the run
        s.execute(update(Run).where(Run.id == rid).values(
            lease_expires_at=runs_repo.utcnow() - timedelta(minutes=1)))
    with session_scope(db_url) as s:
        assert runs_repo.requeue_expired(s, runs_repo.utcnow(), settings.max_attempts)[0] == [rid]

    assert execute(rid, "train", settings, hostname="new") == states.SUCCEEDED, _row(db_url, rid).error
    done = _row(db_url, rid)
    assert (done.attempt, done.start_epoch, done.epoch) == (2, 2, 4)
    with session_scope(db_url) as s:
        points = set(s.execute(select(Metric.epoch, Metric.split).where(Metric.run_id == rid)).all())
        recorded = sorted(s.scalars(select(Checkpoint.epoch).where(Checkpoint.run_id == rid)))
    assert points == {(e, split) for e in (1, 2, 3, 4) for split in ("train", "test")}
    assert recorded == [1, 2, 3, 4]
    assert "fenced_out" not in ck.load_checkpoint(ck.ckpt_path(workdir, 3)), "epoch 3 was not trained again"


def test_start_state_deletes_newer_unrecorded_checkpoints(tmp_path):
    for epoch in (1, 2, 3, 4):
        ck.save_checkpoint(tmp_path, epoch, {"epoch": epoch})
    assert ck.start_state(tmp_path, True, resumable={1, 2, 4})["epoch"] == 4  # every file recorded up to 4
    assert ck.start_state(tmp_path, True, resumable={1, 2})["epoch"] == 2
    assert list(ck.list_checkpoints(tmp_path)) == [1, 2]
    assert ck.start_state(tmp_path, True, resumable=set()) is None  # nothing recorded: a fresh start
    assert ck.list_checkpoints(tmp_path) == {}


# -- (d) a fenced-out attempt leaves the workdir alone ----------------------------------------------------------
def test_save_pruned_writes_and_prunes_nothing_once_the_lease_is_lost(tmp_path):
    for epoch in (1, 2):
        ck.save_checkpoint(tmp_path, epoch, {"epoch": epoch})
    before = {e: ck.sha256_file(p) for e, p in ck.list_checkpoints(tmp_path).items()}
    reporter = LeaseLost()
    ck.save_pruned(tmp_path, 3, {"epoch": 3, "weights": torch.zeros(3)}, 1, reporter)
    assert {e: ck.sha256_file(p) for e, p in ck.list_checkpoints(tmp_path).items()} == before
    assert reporter.checkpoints == [] and not list(ck.ckpt_dir(tmp_path).glob(".*.tmp"))


def test_a_stop_after_the_lease_is_lost_saves_no_checkpoint(tmp_path):
    # checkpoints every 3 epochs: a cooperative stop would save the pending epoch 1; not when the lease is lost
    reporter = LeaseLost(after_epoch=1)
    out = fit(tiny(checkpoint={"every": 3, "keep_last": None}), reporter, workdir=tmp_path)
    assert out["stopped"] and out["epochs_done"] == 1
    assert ck.list_checkpoints(tmp_path) == {} and reporter.checkpoints == []


class RefusesTheRecord(NullReporter):
    """on_checkpoint is refused: the lease moved while the new checkpoint was being saved."""

    def __init__(self):
        self.lease_lost, self.pruned = False, []

    def on_checkpoint(self, epoch: int, path: str, nbytes: int, sha256: str) -> None:
        self.lease_lost = True

    def on_pruned(self, epochs: list[int]) -> None:
        self.pruned.append(epochs)


def test_older_checkpoints_are_pruned_only_once_the_new_one_is_on_record(tmp_path):
    # keep_last 1: pruning before the record deleted epoch 2, the last recorded one, when the record was
    # refused; the attempt that took the run over then found nothing to resume from
    for epoch in (1, 2):
        ck.save_checkpoint(tmp_path, epoch, {"epoch": epoch})
    refused = RefusesTheRecord()
    ck.save_pruned(tmp_path, 3, {"epoch": 3}, 1, refused)
    assert list(ck.list_checkpoints(tmp_path)) == [1, 2, 3] and refused.pruned == []
    recorded = RefusesTheRecord()
    recorded.on_checkpoint = lambda *args: None  # the record succeeds
    ck.save_pruned(tmp_path, 4, {"epoch": 4}, 1, recorded)
    assert list(ck.list_checkpoints(tmp_path)) == [4] and recorded.pruned == [[1, 2, 3]]
