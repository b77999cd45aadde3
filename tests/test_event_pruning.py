"""The reconciler's pass prunes change-feed events older than NCSWEEP_EVENT_RETENTION_SECONDS, keeping recent ones."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from nc_core.db import events_repo
from nc_core.db.models import Event, utcnow
from nc_core.db.session import session_scope
from nc_core.settings import Settings

DAY = 24 * 3600


def _feed(db_url: str, ages_s: list[float]) -> list[int]:
    """Events appended oldest first (as the feed grows), each `age` seconds old; returns their ids."""
    ids = []
    with session_scope(db_url) as s:
        for i, age in enumerate(ages_s):
            event = events_repo.append_event(s, "status", 1, i, {"status": "queued"})
            s.execute(update(Event).where(Event.id == event.id).values(at=utcnow() - timedelta(seconds=age)))
            ids.append(event.id)
    return ids


def _left(db_url: str) -> list[int]:
    with session_scope(db_url) as s:
        return list(s.scalars(select(Event.id).order_by(Event.id)))


def test_the_reconcile_pass_prunes_old_events_and_keeps_recent_ones(settings, db_url):  # noqa: ANN001
    from worker.reconciler import reconcile_once

    assert Settings().event_retention_seconds == 7 * DAY  # the default: a week
    ids = _feed(db_url, [30 * DAY, 8 * DAY, 7 * DAY + 60, 6 * DAY, 3600, 0])
    summary = reconcile_once(settings, resend_after_s=60)
    assert summary["pruned_events"] == 3 and _left(db_url) == ids[3:]
    assert reconcile_once(settings, resend_after_s=60)["pruned_events"] == 0 and _left(db_url) == ids[3:]
    keep_all = settings.model_copy(update={"event_retention_seconds": 0})
    ids += _feed(db_url, [9 * DAY])  # out of order: an old event with a newer id
    assert reconcile_once(keep_all, resend_after_s=60)["pruned_events"] == 0 and _left(db_url) == ids[3:]
    hour = settings.model_copy(update={"event_retention_seconds": 7200})
    assert reconcile_once(hour, resend_after_s=60)["pruned_events"] == 1  # the 6-day-old one; not yet the 9-day one
    assert reconcile_once(hour, resend_after_s=60)["pruned_events"] == 0  # behind one that is kept, it waits
    assert _left(db_url) == [ids[4], ids[5], ids[6]]


def test_prune_events_works_in_bounded_batches_of_the_oldest_ids(db_url):  # noqa: ANN001
    ids = _feed(db_url, [10 * DAY] * 5 + [0])
    with session_scope(db_url) as s:
        assert events_repo.prune_events(s, 7 * DAY, batch=2) == 2
    assert _left(db_url) == ids[2:]
    with session_scope(db_url) as s:
        assert events_repo.prune_events(s, 7 * DAY, batch=2) == 2
        assert events_repo.prune_events(s, 7 * DAY, batch=2) == 1
        assert events_repo.prune_events(s, 7 * DAY, batch=2) == 0
    assert _left(db_url) == ids[5:]


def test_the_retention_comes_from_the_environment(monkeypatch):  # noqa: ANN001
    monkeypatch.setenv("NCSWEEP_EVENT_RETENTION_SECONDS", "86400")
    assert Settings().event_retention_seconds == 86400
