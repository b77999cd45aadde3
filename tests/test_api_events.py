"""GET /events opens a stream only when it can serve it (404 for an unknown sweep, 503 without the database), and a
database lost mid-stream ends the stream cleanly."""
from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from service.app import create_app
from test_plots import seed_sweep


def test_events_of_an_unknown_sweep_are_404(app_client, db_url, monkeypatch):
    from service.routers import events as events_router

    monkeypatch.setattr(events_router, "MAX_STREAM_S", 0.5)  # a stream opened by mistake ends soon
    for params in ({"sweep_id": 99999}, {"sweep_id": 99999, "since": 0}):
        resp = app_client.get("/events", params=params)
        assert resp.status_code == 404 and resp.json() == {"detail": "sweep 99999 not found"}, resp.text
    sid, _ = seed_sweep(db_url)
    with app_client.stream("GET", "/events", params={"sweep_id": sid, "since": 0}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")


def test_events_without_the_database_are_503_before_any_stream(settings, enqueuer, monkeypatch):
    from service.routers import events as events_router

    monkeypatch.setattr(events_router, "MAX_STREAM_S", 0.5)
    settings.database_url = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1
    with TestClient(create_app(settings, enqueuer=enqueuer, broker_check=lambda: None),
                    raise_server_exceptions=False) as client:
        for params in ({}, {"since": 0}, {"sweep_id": 1}):
            resp = client.get("/events", params=params)
            assert resp.status_code == 503 and resp.headers["retry-after"] == "5", (params, resp.text)
            assert "database is unreachable" in resp.json()["detail"]
        resp = client.get("/events", headers={"Last-Event-ID": "7"})
        assert resp.status_code == 503, resp.text


class _Client:
    """The request of a client that stays connected."""

    async def is_disconnected(self) -> bool:
        return False


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_database_lost_mid_stream_ends_it_with_one_warning(db_url, monkeypatch, caplog):
    from service.routers import events as events_router

    calls = []

    def fetch(url: str, after: int, sweep_id: int | None) -> list[dict]:
        calls.append(after)
        if len(calls) > 1:
            raise OperationalError("SELECT", {}, ConnectionRefusedError("connection refused"))
        return []

    monkeypatch.setattr(events_router, "_fetch", fetch)

    async def frames() -> list[str]:
        stream = events_router.event_stream(_Client(), db_url, 0, None, poll_s=0.01, max_s=30)
        return [frame async for frame in stream]

    with caplog.at_level(logging.WARNING, logger="service.routers.events"):
        got = asyncio.run(asyncio.wait_for(frames(), 20))  # ends: no traceback, no hang until max_s
    assert got == ["retry: 2000\n\n"] and len(calls) == 2
    warnings = [r for r in caplog.records if r.name == "service.routers.events"]
    assert len(warnings) == 1 and "database is unreachable" in warnings[0].getMessage()
    assert warnings[0].exc_info is None  # one line, not a traceback


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_open_streams_are_capped_and_a_closed_one_frees_its_place(settings, enqueuer, db_url):
    import time

    import httpx

    from test_events import serve

    settings.max_event_streams = 2
    app = create_app(settings, enqueuer=enqueuer, broker_check=lambda: None)
    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        opened, readers = [], []  # a reader dropped would close its response
        for _ in range(2):
            resp = client.send(client.build_request("GET", "/events"), stream=True)
            readers.append(resp.iter_text())
            assert resp.status_code == 200 and next(readers[-1]).startswith("retry:")
            opened.append(resp)
        full = client.get("/events")
        assert full.status_code == 503 and full.headers["retry-after"] == "5"
        assert "too many open event streams (2, the server's NCSWEEP_MAX_EVENT_STREAMS)" in full.json()["detail"]
        assert app.state.event_streams == 2
        opened.pop().close()  # a client goes away: its place frees within a poll
        deadline, status = time.monotonic() + 10, 503
        while status == 503 and time.monotonic() < deadline:
            with client.stream("GET", "/events") as again:
                status = again.status_code
            time.sleep(0.2)
        assert status == 200
        for resp in opened:
            resp.close()



@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_burst_of_streams_cannot_pass_the_cap(settings, enqueuer, db_url):
    import httpx

    from test_events import serve

    settings.max_event_streams = 2
    app = create_app(settings, enqueuer=enqueuer, broker_check=lambda: None)

    async def burst(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            async def one() -> int:
                async with client.stream("GET", "/events") as resp:
                    await asyncio.sleep(1.0)  # held open while the others arrive
                    return resp.status_code
            return await asyncio.gather(*(one() for _ in range(10)))

    with serve(app) as url:
        codes = asyncio.run(burst(url))
    assert sorted(codes) == [200, 200] + [503] * 8, codes
