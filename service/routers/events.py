"""GET /events: server-sent events (status, progress, metric, worker) read incrementally from the DB."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any, AsyncIterator

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.exc import InterfaceError, OperationalError

from nc_core.db import events_repo
from nc_core.db.models import Sweep
from nc_core.db.session import session_factory
from nc_core.settings import Settings, get_settings
from service.deps import EVENT_ID_MAX, EventCursor, Id
from service.errors import NotFound
from service.schemas import EVENT_STREAM, STREAMS_FULL, problems

log = logging.getLogger(__name__)
router = APIRouter(tags=["events"])
POLL_S = 0.5
PING_S = 15.0
MAX_STREAM_S = 300.0  # end a stream after this long; EventSource reconnects with Last-Event-ID (nothing lost)
AUTH_RECHECK_S = 10.0  # with auth_reads, a stream whose token was revoked ends within this long
BATCH = 500


def app_settings(request: Request) -> Settings:
    """The app's Settings (set by the app factory on app.state.settings), else the environment's."""
    settings = getattr(request.app.state, "settings", None)
    return settings if settings is not None else get_settings()


def db_url(request: Request) -> str:
    return app_settings(request).resolved_database_url()


def _fetch(url: str, after: int, sweep_id: int | None) -> list[dict]:
    with session_factory(url)() as session:
        return [events_repo.event_dict(e) for e in events_repo.events_since(session, after, sweep_id, BATCH)]


def _opening(url: str, sweep_id: int | None) -> int:
    """The latest event id, once the database has answered and the sweep (when one is asked for) exists:
    a stream opens only when it can be served (else 503 or 404, as on every other route)."""
    with session_factory(url)() as session:
        if sweep_id is not None and session.get(Sweep, sweep_id) is None:
            raise NotFound(f"sweep {sweep_id} not found")
        return events_repo.latest_event_id(session)


def _still_authorised(url: str, request: Request) -> bool:
    """Whether the request's token (header or the dashboard's cookie) is still valid: not revoked since."""
    from service.auth import read_refusal

    with session_factory(url)() as session:
        return read_refusal(session, request) is None


def format_sse(event: dict) -> str:
    return f"id: {event['id']}\nevent: {event['kind']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


async def event_stream(request: Request, url: str, cursor: int, sweep_id: int | None, *,
                       poll_s: float = POLL_S, ping_s: float = PING_S, max_s: float = MAX_STREAM_S,
                       recheck_s: float | None = None) -> AsyncIterator[str]:
    """Yield SSE frames for events after `cursor` until the client disconnects (or after `max_s`, so that
    server shutdowns never wait on an open dashboard; clients reconnect and resume from Last-Event-ID), or —
    with ``recheck_s`` (reads need a token) — until a recheck, every that many seconds, finds its token revoked.

    PostgreSQL sequences can commit out of order, so there the poll re-reads a small id window
    behind the cursor and drops ids already sent; SQLite commits in id order.
    """
    window = 0 if url.startswith("sqlite") else 64
    floor = cursor  # never send what the client already had
    sent: deque[int] = deque(maxlen=4 * BATCH)
    sent_set: set[int] = set()
    yield "retry: 2000\n\n"
    last_out = started = checked = time.monotonic()
    while not await request.is_disconnected() and time.monotonic() - started < max_s:
        try:
            if recheck_s is not None and time.monotonic() - checked >= recheck_s:
                checked = time.monotonic()
                if not await asyncio.to_thread(_still_authorised, url, request):
                    return  # the token was revoked: the reconnect meets the 401
            events = await asyncio.to_thread(_fetch, url, max(floor, cursor - window), sweep_id)
        except (OperationalError, InterfaceError) as exc:  # the database went away: end the stream, the
            log.warning("event stream ended: the database is unreachable: %s", exc)  # reconnect meets the 503
            return
        frames = []
        for ev in events:
            if ev["id"] in sent_set:
                continue
            if len(sent) == sent.maxlen:
                sent_set.discard(sent[0])
            sent.append(ev["id"])
            sent_set.add(ev["id"])
            cursor = max(cursor, ev["id"])
            frames.append(format_sse(ev))
        if frames:  # one write per poll: a client gone mid-backlog costs one failed write, not hundreds
            last_out = time.monotonic()
            yield "".join(frames)
        if len(events) >= BATCH:
            continue  # a backlog: read on without sleeping
        if time.monotonic() - last_out >= ping_s:
            last_out = time.monotonic()
            yield ": ping\n\n"
        await asyncio.sleep(poll_s)


@router.get("/events", response_class=StreamingResponse,
            responses=problems(404, 422, ok={**EVENT_STREAM, **STREAMS_FULL}))
async def events(request: Request, sweep_id: Id | None = Query(None, description="only this sweep's events"),
                 since: EventCursor | None = Query(None, description="replay events after this id (default: only new)"),
                 last_event_id: str | None = Header(None, alias="Last-Event-ID")) -> StreamingResponse:
    """Server-sent events; each frame's data is the event JSON (id, kind, sweep_id, run_id, at, payload)."""
    url = db_url(request)
    cursor = since
    resume = (last_event_id or "").strip()
    if resume.isascii() and resume.isdigit() and len(resume) <= 19 and int(resume) <= EVENT_ID_MAX:
        cursor = int(resume)  # a malformed or out-of-range Last-Event-ID is ignored, like a missing one
    settings = app_settings(request)
    state = request.app.state
    if getattr(state, "event_streams", 0) >= settings.max_event_streams:  # each polls the database twice a second
        return JSONResponse({"detail": f"too many open event streams ({state.event_streams}, the server's "
                                       "NCSWEEP_MAX_EVENT_STREAMS); retry shortly"},
                            status_code=503, headers={"Retry-After": "5"})
    state.event_streams = getattr(state, "event_streams", 0) + 1  # the place is taken before any await
    try:
        latest = await asyncio.to_thread(_opening, url, sweep_id)  # 404 / 503 before the stream opens
    except BaseException:
        state.event_streams -= 1
        raise
    cursor = latest if cursor is None else cursor
    recheck = AUTH_RECHECK_S if settings.auth_required and settings.auth_reads else None
    stream = event_stream(request, url, cursor, sweep_id, poll_s=POLL_S, ping_s=PING_S, max_s=MAX_STREAM_S,
                          recheck_s=recheck)
    return _CountedStream(state, stream, media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _CountedStream(StreamingResponse):
    """A stream that gives its place in state.event_streams back when it ends, however it ends (its end, the
    client's disconnect, even before its first frame)."""

    def __init__(self, state: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._state.event_streams -= 1
