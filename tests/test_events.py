"""Change feed: events_repo and GET /events (server-sent events from a live uvicorn server)."""
from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from typing import Iterator

import httpx
import pytest

from helpers_stack import free_port, wait_for
from nc_core.db import events_repo, runs_repo
from nc_core.db.session import session_scope
from test_plots import seed_sweep


@contextlib.contextmanager
def serve(app) -> Iterator[str]:  # noqa: ANN001
    """Serve `app` with uvicorn in a thread on a free port; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    wait_for(up, 20, what="uvicorn")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


class SSEReader(threading.Thread):
    """Reads an SSE stream in the background; parsed frames (dicts) and comments land in `frames`."""

    def __init__(self, url: str, headers: dict | None = None):
        super().__init__(daemon=True)
        self.url, self.headers = url, headers or {}
        self.frames: queue.Queue = queue.Queue()
        self.content_type = ""
        self.connected = threading.Event()
        self._response = None

    def run(self) -> None:
        with contextlib.suppress(Exception), httpx.stream("GET", self.url, headers=self.headers, timeout=30) as r:
            self._response, self.content_type = r, r.headers.get("content-type", "")
            self.connected.set()
            frame: dict = {}
            for line in r.iter_lines():
                if line.startswith(":"):
                    self.frames.put({"comment": line[1:].strip()})
                elif not line:
                    if frame:
                        self.frames.put(frame)
                    frame = {}
                else:
                    field, _, value = line.partition(":")
                    frame[field] = value.strip()

    def next_event(self, timeout: float = 10.0, kind: str | None = None) -> dict:
        while True:
            frame = self.frames.get(timeout=timeout)
            if "data" in frame and (kind is None or frame.get("event") == kind):
                return {**frame, "data": json.loads(frame["data"])}

    def close(self) -> None:
        if self._response is not None:
            with contextlib.suppress(Exception):
                self._response.close()


@pytest.fixture
def live(app, db_url: str) -> Iterator[str]:  # noqa: ANN001
    with serve(app) as url:
        yield url


def test_append_and_read_events(db_url: str) -> None:
    sid, runs = seed_sweep(db_url, statuses={0: "running"})
    with session_scope(db_url) as s:
        start = events_repo.latest_event_id(s)
        events_repo.append_event(s, "progress", sid, runs[0], {"epoch": 1, "step": 2})
        events_repo.append_event(s, "status", sid + 1000, None, {"status": "running"})
        events_repo.append_event(s, "worker", None, None, {"worker": "w0", "status": "idle"})
        with pytest.raises(ValueError, match="event kind"):
            events_repo.append_event(s, "bogus", sid, None, {})
    with session_scope(db_url) as s:
        mine = [events_repo.event_dict(e) for e in events_repo.events_since(s, start, sid)]
        assert [(e["kind"], e["run_id"]) for e in mine] == [("progress", runs[0]), ("worker", None)]
        assert mine[0]["epoch"] == 1 and mine[0]["sweep_id"] == sid and mine[0]["id"] > start
        assert len(events_repo.events_since(s, start, None)) == 3
        assert events_repo.events_since(s, mine[0]["id"], sid, limit=1)[0].kind == "worker"


def test_sse_delivers_progress_of_a_running_job(live: str, db_url: str) -> None:
    sid, runs = seed_sweep(db_url, statuses={0: "queued", 1: "queued"})
    other, _ = seed_sweep(db_url, name="other", statuses={0: "queued"})
    reader = SSEReader(f"{live}/events?sweep_id={sid}")
    reader.start()
    try:
        assert reader.connected.wait(10) and reader.content_type.startswith("text/event-stream")
        with session_scope(db_url) as s:  # the worker's side: claim, then report progress (runs_repo writes events)
            assert runs_repo.claim(s, runs[0], "worker-a", 60) is not None
        with session_scope(db_url) as s:
            assert runs_repo.heartbeat(s, runs[0], "worker-a", 60, epoch=2, step=3, epochs_total=4, steps_total=10,
                                       samples_per_s=1234.0)
        with session_scope(db_url) as s:
            events_repo.append_event(s, "progress", other, None, {"epoch": 9})  # another sweep: filtered out
            events_repo.append_event(s, "metric", sid, runs[0], {"epoch": 2, "split": "train", "keys": ["nc1"]})
        status = reader.next_event(kind="status")
        assert status["data"]["run_id"] == runs[0] and status["data"]["status"] == "running"
        progress = reader.next_event(kind="progress")
        assert progress["data"]["run_id"] == runs[0] and progress["data"]["epoch"] == 2
        assert progress["data"]["samples_per_s"] == 1234.0 and int(progress["id"]) > int(status["id"])
        metric = reader.next_event(kind="metric")
        assert metric["data"]["sweep_id"] == sid
    finally:
        reader.close()


def test_sse_last_event_id_replays_and_pings(live: str, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.routers import events as events_router

    monkeypatch.setattr(events_router, "PING_S", 0.3)
    sid, runs = seed_sweep(db_url)
    ids = []
    with session_scope(db_url) as s:
        for epoch in (1, 2, 3):
            ids.append(events_repo.append_event(s, "progress", sid, runs[0], {"epoch": epoch}).id)
    reader = SSEReader(f"{live}/events?sweep_id={sid}", headers={"Last-Event-ID": str(ids[0])})
    reader.start()
    try:
        got = [reader.next_event()["data"]["epoch"] for _ in range(2)]
        assert got == [2, 3]  # resumed after the last id the client saw
        wait_for(lambda: {"comment": "ping"} in list(reader.frames.queue), 10, what="a heartbeat comment")
    finally:
        reader.close()
    replay = SSEReader(f"{live}/events?sweep_id={sid}&since=0")
    replay.start()
    try:
        assert replay.next_event()["data"]["epoch"] == 1
    finally:
        replay.close()


def test_sse_stream_ends_after_max_lifetime(live: str, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.routers import events as events_router

    monkeypatch.setattr(events_router, "MAX_STREAM_S", 0.5)  # shutdowns never wait on an open dashboard
    reader = SSEReader(f"{live}/events")
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and reader.content_type.startswith("text/event-stream")


def test_a_client_gone_mid_backlog_costs_no_stream_of_failed_writes(live: str, db_url: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    sid, runs = seed_sweep(db_url)
    with session_scope(db_url) as s:
        for epoch in range(1500):  # a backlog of three batches
            events_repo.append_event(s, "progress", sid, runs[0], {"epoch": epoch, "pad": "x" * 200})
    with caplog.at_level("WARNING", logger="asyncio"):
        for _ in range(4):
            with httpx.stream("GET", f"{live}/events?since=0", timeout=5) as r:
                for i, _line in enumerate(r.iter_lines()):
                    if i > 5:
                        break  # the client leaves after a few lines
        time.sleep(2.0)
    failed = [r for r in caplog.records if "socket.send() raised exception" in r.getMessage()]
    assert not failed, f"{len(failed)} writes to a closed socket were logged"


def test_a_stream_ends_soon_after_its_token_is_revoked(app, db_url: str, read_token: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from service.auth import revoke_token
    from service.routers import events as events_router

    monkeypatch.setattr(events_router, "AUTH_RECHECK_S", 0.3)
    app.state.settings.auth_reads = True  # reads need a token
    with serve(app) as url:
        reader = SSEReader(f"{url}/events", headers={"Authorization": f"Bearer {read_token}"})
        reader.start()
        assert reader.connected.wait(10) and reader.content_type.startswith("text/event-stream")
        time.sleep(1.0)
        assert reader.is_alive()  # a valid token: the stream stays open
        revoke_token(db_url, read_token)
        reader.join(10)
        assert not reader.is_alive()  # ended within a recheck, not at MAX_STREAM_S (300 s)
        assert httpx.get(f"{url}/events", headers={"Authorization": f"Bearer {read_token}"}).status_code == 401
