"""runs_repo on SQLite and PostgreSQL: claims, fencing, metric/distribution upserts, expiry and re-queue."""
from __future__ import annotations

import math
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from nc_core.db import distributions_repo, results_repo, runs_repo, states
from nc_core.db.models import Checkpoint, Event, Metric, MetricDistribution, Run, Sweep
from nc_core.db.session import session_scope
from tests.helpers_stack import postgres_db, sqlite_db


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield sqlite_db(tmp_path)
        return
    pg, drop = postgres_db()
    yield pg
    drop()


def _new_run(url: str, *, spec: dict | None = None, **values) -> int:
    with session_scope(url) as s:
        sweep = Sweep(name="t", spec={}, axes=[])
        s.add(sweep)
        s.flush()
        run = Run(sweep_id=sweep.id, kind="train", spec=spec or {}, spec_hash="h" * 64, **values)
        s.add(run)
        s.flush()
        return run.id


def _run(url: str, run_id: int) -> Run:
    with session_scope(url) as s:
        return s.get(Run, run_id)


def test_claim_is_exclusive_and_counts_attempts(url):
    rid = _new_run(url)
    with session_scope(url) as s:
        run = runs_repo.claim(s, rid, "w1", 30)
    assert run is not None and run.status == states.RUNNING and run.attempt == 1 and run.lease_owner == "w1"
    with session_scope(url) as s:
        assert runs_repo.claim(s, rid, "w2", 30) is None  # duplicate delivery: a no-op
    assert _run(url, rid).lease_owner == "w1"


def test_fencing_rejects_writes_after_the_lease_moved(url):
    rid = _new_run(url)
    with session_scope(url) as s:
        runs_repo.claim(s, rid, "w1", 30, now=runs_repo.utcnow() - timedelta(seconds=60))  # already expired
    with session_scope(url) as s:
        assert runs_repo.claim(s, rid, "w2", 30).attempt == 2  # expired lease: claimable again
    with session_scope(url) as s:
        assert runs_repo.heartbeat(s, rid, "w1", 30) is False
        assert results_repo.upsert_metrics(s, rid, "w1", 1, "train", {"acc": 0.5}, 1) is False
        assert runs_repo.finish(s, rid, "w1", states.SUCCEEDED) is False
        assert runs_repo.heartbeat(s, rid, "w2", 30, epoch=1, step=3, samples_per_s=10.0) is True
        assert runs_repo.finish(s, rid, "w2", states.SUCCEEDED) is True
    run = _run(url, rid)
    assert run.status == states.SUCCEEDED and run.epoch == 1 and run.lease_expires_at is None


def test_metric_upsert_one_row_per_point_and_nan_is_null(url):
    rid = _new_run(url)
    with session_scope(url) as s:
        runs_repo.claim(s, rid, "w", 30)
    for value in (0.1, 0.2):  # a retried epoch overwrites
        with session_scope(url) as s:
            assert results_repo.upsert_metrics(s, rid, "w", 1, "train",
                                            {"acc": value, "nc1": math.nan, "nc2": math.inf, "_reasons": "x"}, 2)
    with session_scope(url) as s:
        rows = {m.key: m.value for m in s.scalars(select(Metric).where(Metric.run_id == rid))}
        assert rows == {"acc": 0.2, "nc1": None, "nc2": None}
        assert results_repo.record_checkpoint(s, rid, "w", 1, "/a", 10, "0" * 64)
        assert results_repo.record_checkpoint(s, rid, "w", 1, "/b", 11, "1" * 64)
        assert s.scalar(select(func.count()).select_from(Checkpoint).where(Checkpoint.run_id == rid)) == 1


def test_distribution_upsert_is_fenced_and_overwrites(url):
    rid = _new_run(url)
    with session_scope(url) as s:
        runs_repo.claim(s, rid, "w1", 30, now=runs_repo.utcnow() - timedelta(seconds=60))  # already expired
    with session_scope(url) as s:
        assert results_repo.upsert_distribution(s, rid, "w1", 1, "train", "cos_margin", [0.1, 0.2]) is True
    with session_scope(url) as s:
        runs_repo.claim(s, rid, "w2", 30)
    with session_scope(url) as s:
        assert results_repo.upsert_distribution(s, rid, "w1", 1, "train", "cos_margin", [9.0]) is False  # fenced
        for values in ([-0.5, 0.25, 1.0], [-0.25, math.nan, 1.5]):  # a retried epoch overwrites; NaN → null
            assert results_repo.upsert_distribution(s, rid, "w2", 1, "train", "cos_margin", values) is True
        assert results_repo.upsert_distribution(s, rid, "w2", 2, "train", "cos_margin", [0.5, 1.0]) is True
        assert results_repo.upsert_distribution(s, rid, "w2", 1, "test", "cos_margin", [0.0]) is True
    with session_scope(url) as s:
        rows = s.scalars(select(MetricDistribution).where(MetricDistribution.run_id == rid)
                         .order_by(MetricDistribution.split, MetricDistribution.epoch)).all()
        assert [(r.split, r.epoch, r.values, r.n) for r in rows] == [
            ("test", 1, [0.0], 1), ("train", 1, [-0.25, None, 1.5], 3), ("train", 2, [0.5, 1.0], 2)]
        last = distributions_repo.distributions(s, rid)
        assert [(d.split, d.epoch) for d in last] == [("test", 1), ("train", 2)]
        assert [d.values for d in distributions_repo.distributions(s, rid, split="train", epoch=1)] == [[-0.25, None, 1.5]]
        assert distributions_repo.distributions(s, rid, key="nope") == []


def test_db_reporter_writes_distributions_until_the_lease_is_lost(url, tmp_path):
    from nc_core.settings import Settings
    from worker.reporter import DBReporter

    rid = _new_run(url)
    with session_scope(url) as s:
        runs_repo.claim(s, rid, "w1", 30)
    rep = DBReporter(Settings(home=tmp_path / "home", database_url=url), rid, "w1")  # thread not started
    rep.on_distribution(2, "test", "cos_margin", [-0.1, 0.4, 1.0])
    assert not rep.lease_lost
    with session_scope(url) as s:
        assert [d.values for d in distributions_repo.distributions(s, rid)] == [[-0.1, 0.4, 1.0]]
        s.get(Run, rid).lease_owner = "w2"  # the lease moved
    rep.on_distribution(3, "test", "cos_margin", [0.0])
    assert rep.lease_lost and rep.should_stop()
    with session_scope(url) as s:
        assert [d.epoch for d in distributions_repo.distributions(s, rid)] == [2]


def test_db_reporter_shows_a_resumed_runs_epochs_from_the_first_heartbeat(url, tmp_path):
    from nc_core.settings import Settings
    from worker.reporter import DBReporter

    rid = _new_run(url)
    with session_scope(url) as s:
        runs_repo.claim(s, rid, "w1", 30)
    rep = DBReporter(Settings(home=tmp_path / "home", database_url=url), rid, "w1")  # thread not started
    rep.on_resume(6)
    rep.on_start(10, 50)
    assert rep.beat()
    with session_scope(url) as s:
        run = s.get(Run, rid)
        assert (run.epoch, run.step, run.epochs_total, run.steps_total) == (6, 0, 10, 50)


def test_db_reporter_sees_a_cancel_between_heartbeats(url, tmp_path):
    # heartbeats every 30 s (the lease), the cancel flag read every 0.05 s: a cancel stops the job at once
    import time

    from nc_core.settings import Settings
    from worker.reporter import DBReporter

    rid = _new_run(url)
    with session_scope(url) as s:
        runs_repo.claim(s, rid, "w1", 60)
    settings = Settings(home=tmp_path / "home", database_url=url, heartbeat_seconds=30, cancel_poll_seconds=0.05)
    rep = DBReporter(settings, rid, "w1").start()
    try:
        time.sleep(0.2)
        assert not rep.should_stop()
        with session_scope(url) as s:
            s.get(Run, rid).cancel_requested = True
        deadline = time.monotonic() + 10
        while not rep.should_stop() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rep.cancelled and not rep.lease_lost
    finally:
        rep._stop.set()
    with session_scope(url) as s:
        assert s.get(Run, rid).lease_owner == "w1"  # a poll reads; it neither beats nor gives up the lease


def test_heartbeat_reports_cancel_and_finish_checks_transitions(url):
    rid = _new_run(url)
    with session_scope(url) as s:
        runs_repo.claim(s, rid, "w", 30)
        s.get(Run, rid).cancel_requested = True
    with session_scope(url) as s:
        assert runs_repo.heartbeat(s, rid, "w", 30) is False
        with pytest.raises(states.IllegalTransition):
            runs_repo.finish(s, rid, "w", states.RUNNING)
        assert runs_repo.finish(s, rid, "w", states.CANCELLED)
    with session_scope(url) as s:
        kinds = [e.payload["status"] for e in s.scalars(select(Event).where(Event.run_id == rid, Event.kind == "status"))]
    assert kinds == ["running", "cancelled"]


def test_requeue_expired_until_max_attempts_then_fail(url):
    rid = _new_run(url, max_attempts=2)
    past = runs_repo.utcnow() - timedelta(seconds=120)
    for attempt in (1, 2):
        with session_scope(url) as s:
            assert runs_repo.claim(s, rid, f"w{attempt}", 1, now=past).attempt == attempt
        with session_scope(url) as s:
            requeued, failed = runs_repo.requeue_expired(s, runs_repo.utcnow(), 2)
        assert (requeued, failed) == (([rid], []) if attempt == 1 else ([], [rid]))
    run = _run(url, rid)
    assert run.status == states.FAILED and "no attempts left" in run.error


def test_stale_queued_and_touch(url):
    rid = _new_run(url)
    later = runs_repo.utcnow() + timedelta(seconds=5)
    with session_scope(url) as s:
        assert runs_repo.stale_queued(s, later) == [(rid, "train")]
        runs_repo.touch(s, [rid], now=later + timedelta(seconds=1))
    with session_scope(url) as s:
        assert runs_repo.stale_queued(s, later) == []
        assert runs_repo.count_queued(s) == 1
