"""Each attempt records what the run's numbers came from (device, torch, its CPU thread count, host): another
thread count sums in other orders and makes another run (a reproducibility audit), so it must be readable."""
from __future__ import annotations

import io
import platform

import pytest
import torch
from rich.console import Console
from sqlalchemy import update

from nc_core.db import runs_repo, states
from nc_core.db.models import Run
from nc_core.db.session import session_scope
from nc_core.training.environment import cpu_model
from service.cli_views import run_detail
from service.run_text import environments_text

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = {"epochs": 1, "batch_size": 64, "device": "cpu", "deterministic": True,
        "data": {"name": "gaussian", "train_size": 128, "test_size": 32, "gaussian_classes": 4, "gaussian_dim": 8},
        "model": {"name": "mlp", "width": 8, "depth": 2}, "optim": {"name": "sgd", "lr": 0.05}}


def _queued_run(app_client) -> int:  # noqa: ANN001
    created = app_client.post("/sweeps", json={"name": "env", "base": BASE, "seeds": [0]})
    assert created.status_code == 201, created.text
    (item,) = app_client.get("/runs", params={"sweep_id": created.json()["sweep_id"]}).json()["items"]
    return item["id"]


def test_a_worker_records_the_device_threads_and_torch_of_each_attempt(app_client, settings):  # noqa: ANN001
    from worker.runner import execute

    rid = _queued_run(app_client)
    assert app_client.get(f"/runs/{rid}").json()["environments"] == []  # not started: nothing yet
    assert execute(rid, "train", settings, hostname="w") == states.SUCCEEDED
    run = app_client.get(f"/runs/{rid}").json()
    (env,) = run["environments"]
    assert env == {"attempt": 1, "n": 1, "worker": run["worker_name"] and env["worker"], "device": "cpu",
                   "device_name": cpu_model(), "threads": 1, "torch": torch.__version__,
                   "python": platform.python_version(), "host": env["host"]}
    assert env["worker"].startswith("w/")  # the attempt's lease owner: worker name / pid / nonce
    assert env["host"] and app_client.get("/runs", params={"sweep_id": run["sweep_id"]}).json()["items"][0][
        "environments"] == [env]
    out = io.StringIO()
    Console(file=out, width=200).print(run_detail(run, []))
    assert f"attempt 1: cpu ({cpu_model()}), 1 CPU thread, torch {torch.__version__} on {env['host']}" in out.getvalue()


def test_environments_are_fenced_idempotent_per_lease_and_keep_the_newest(db_url, app_client):  # noqa: ANN001
    rid = _queued_run(app_client)
    with session_scope(db_url) as s:
        assert runs_repo.claim(s, rid, "owner-a", 60.0) is not None
    entry = {"device": "cpu", "threads": 2, "torch": "x"}
    with session_scope(db_url) as s:
        assert not runs_repo.record_environment(s, rid, "owner-b", entry)  # not the lease holder
    for i in range(runs_repo.MAX_ENVIRONMENTS + 5):
        with session_scope(db_url) as s:
            assert runs_repo.record_environment(s, rid, "owner-a", {**entry, "threads": i})
            s.commit()
    with session_scope(db_url) as s:
        envs = s.get(Run, rid).environments
    assert envs == [{"attempt": 1, "n": 1, "worker": "owner-a", **entry, "threads": 24}]  # one lease: replaced
    with session_scope(db_url) as s:  # later attempts (other leases) add theirs, the newest MAX_ENVIRONMENTS kept
        for i in range(runs_repo.MAX_ENVIRONMENTS + 5):
            s.execute(update(Run).where(Run.id == rid).values(lease_owner=f"owner-{i}"))
            assert runs_repo.record_environment(s, rid, f"owner-{i}", {**entry, "threads": i})
    with session_scope(db_url) as s:
        envs = s.get(Run, rid).environments
    assert [e["threads"] for e in envs] == list(range(5, 25)) and envs[-1]["worker"] == "owner-24"
    assert [e["n"] for e in envs] == list(range(7, 27))  # numbered in order, the dropped ones' numbers gone


def test_show_groups_attempts_by_what_they_ran_with():
    envs = [{"attempt": 1, "device": "cuda:0", "device_name": "NVIDIA H200", "threads": 8, "torch": "2.14.1", "host": "g"},
            {"attempt": 2, "device": "cpu", "device_name": "Xeon", "threads": 2, "torch": "2.14.1", "host": "c"},
            {"attempt": 3, "device": "cpu", "device_name": "Xeon", "threads": 2, "torch": "2.14.1", "host": "c"}]
    assert environments_text(envs).splitlines() == [
        "attempt 1: cuda:0 (NVIDIA H200), 8 CPU threads, torch 2.14.1 on g",
        "attempts 2, 3: cpu (Xeon), 2 CPU threads, torch 2.14.1 on c"]


def _attempt(db_url: str, rid: int, owner: str, threads: int, then: str) -> None:
    """A worker's attempt: claim, record what it runs with, then end it ``then`` (queued again, or failed)."""
    with session_scope(db_url) as s:
        assert runs_repo.claim(s, rid, owner, 60.0) is not None
    with session_scope(db_url) as s:
        assert runs_repo.record_environment(s, rid, owner, {"device": "cpu", "threads": threads, "torch": "x"})
    with session_scope(db_url) as s:
        s.execute(update(Run).where(Run.id == rid).values(status=then, lease_owner=None, lease_expires_at=None))


def test_entries_stay_in_order_when_a_retry_starts_the_attempts_again(db_url, app_client):  # noqa: ANN001
    rid = _queued_run(app_client)
    _attempt(db_url, rid, "owner-a", 1, states.QUEUED)  # attempt 1: its worker lost, re-queued
    _attempt(db_url, rid, "owner-b", 2, states.FAILED)  # attempt 2: failed, no attempts left
    assert app_client.post(f"/runs/{rid}/retry").status_code == 200  # attempt 0 again
    _attempt(db_url, rid, "owner-c", 1, states.FAILED)  # attempt 1 of the retry
    with session_scope(db_url) as s:  # a commit whose reply was lost, written again: the same entry, same n
        s.execute(update(Run).where(Run.id == rid).values(status=states.RUNNING, lease_owner="owner-c"))
        assert runs_repo.record_environment(s, rid, "owner-c", {"device": "cpu", "threads": 1, "torch": "x"})
    run = app_client.get(f"/runs/{rid}").json()
    assert [(e["attempt"], e["n"], e["worker"]) for e in run["environments"]] == [
        (1, 1, "owner-a"), (2, 2, "owner-b"), (1, 3, "owner-c")]
    shown = ["starts 1, 3 (attempts 1, 1): cpu, 1 CPU thread, torch x", "start 2 (attempt 2): cpu, 2 CPU threads, torch x"]
    assert environments_text(run["environments"]).splitlines() == shown
    out = io.StringIO()
    Console(file=out, width=200).print(run_detail(run, []))
    assert all(line in out.getvalue() for line in shown)
    assert app_client.get(f"/ui/runs/{rid}.json").json()["ran_with"] == "\n".join(shown)


def test_entries_stored_without_a_number_count_by_their_place(db_url, app_client):  # noqa: ANN001
    rid = _queued_run(app_client)
    old = [{"attempt": 1, "worker": "w-1", "device": "cpu", "threads": 4, "torch": "x"},
           {"attempt": 1, "worker": "w-2", "device": "cpu", "threads": 4, "torch": "x"}]  # recorded before n, a retry between
    with session_scope(db_url) as s:
        s.get(Run, rid).environments = old
    assert environments_text(old) == "starts 1, 2 (attempts 1, 1): cpu, 4 CPU threads, torch x"
    _attempt(db_url, rid, "owner-a", 4, states.FAILED)
    with session_scope(db_url) as s:
        envs = s.get(Run, rid).environments
    assert [(e["worker"], e.get("n")) for e in envs] == [("w-1", 1), ("w-2", 2), ("owner-a", 3)]
