"""Append-only change feed (status, progress, metric, worker events) read incrementally by SSE clients."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from nc_core.db.models import Event, utcnow

KINDS = ("status", "progress", "metric", "worker")


def append_event(session: Session, kind: str, sweep_id: int | None, run_id: int | None,
                 payload: dict[str, Any] | None = None) -> Event:
    """Add an event to the caller's transaction (visible to readers when the caller commits)."""
    if kind not in KINDS:
        raise ValueError(f"event kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    event = Event(kind=kind, sweep_id=sweep_id, run_id=run_id, payload=dict(payload or {}), at=utcnow())
    session.add(event)
    session.flush()
    return event


def events_since(session: Session, last_id: int, sweep_id: int | None = None, limit: int = 500) -> list[Event]:
    """Events with id > last_id (optionally of one sweep), oldest first, at most `limit`.

    Worker events without a sweep are included in a sweep's feed so dashboards see workers come and go.
    """
    q = select(Event).where(Event.id > last_id)
    if sweep_id is not None:
        q = q.where((Event.sweep_id == sweep_id) | ((Event.kind == "worker") & Event.sweep_id.is_(None)))
    return list(session.scalars(q.order_by(Event.id).limit(limit)))


def latest_event_id(session: Session) -> int:
    """The newest event id (0 when the feed is empty): the cursor of a client that wants only new events."""
    return int(session.scalar(select(func.max(Event.id))) or 0)


def event_dict(event: Event) -> dict[str, Any]:
    at = event.at
    return {**(event.payload or {}), "id": event.id, "kind": event.kind, "sweep_id": event.sweep_id,
            "run_id": event.run_id, "at": at.isoformat() if at is not None else None}


def prune_events(session: Session, older_than_s: float, batch: int = 50_000) -> int:
    """Delete events older than `older_than_s` seconds, at most the `batch` oldest ids a call; returns the number
    removed. Ids grow with `at` (an event's id comes from its insert), so the expired events are the oldest ids:
    the first one kept is found by walking the primary key from the oldest, and the delete is an id range,
    never a scan of the whole feed (the reconciler calls this every pass)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    oldest = session.scalar(select(func.min(Event.id)))
    if oldest is None:
        return 0
    first_kept = session.scalar(select(Event.id).where(Event.at >= cutoff).order_by(Event.id).limit(1))
    upto = oldest + batch if first_kept is None else min(first_kept, oldest + batch)
    return session.execute(delete(Event).where(Event.id < upto, Event.at < cutoff)).rowcount or 0
