"""Stopped or lost workers not heard from for a day leave GET /workers (containers get new names on every
restart); `?all=true` lists them too. A re-queued run is not shown on the worker of its last attempt."""
from __future__ import annotations

from datetime import timedelta

import pytest

from nc_core.db import workers_repo
from nc_core.db.models import Worker, utcnow
from nc_core.db.session import session_scope

@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_workers_gone_for_a_day_are_listed_only_on_request(app_client, db_url):
    with session_scope(db_url) as s:
        for name in ("old-stopped", "old-lost", "recent-stopped", "alive"):
            workers_repo.heartbeat(s, name, "host", 1, "cpu", {}, None, "stopped" if "stopped" in name else "idle")
    with session_scope(db_url) as s:
        for name in ("old-stopped", "old-lost"):
            s.get(Worker, name).last_seen = utcnow() - timedelta(seconds=workers_repo.GONE_AFTER_S + 60)
        s.get(Worker, "recent-stopped").last_seen = utcnow() - timedelta(hours=2)
    names = [w["name"] for w in app_client.get("/workers").json()]
    assert names == ["alive", "recent-stopped"]
    every = {w["name"]: w["status"] for w in app_client.get("/workers", params={"all": "true"}).json()}
    assert every == {"alive": "idle", "old-lost": "lost", "old-stopped": "stopped", "recent-stopped": "stopped"}
    assert app_client.get("/workers", params={"all": "maybe"}).status_code == 422


def test_a_requeued_run_is_not_shown_on_its_old_worker():
    from rich.console import Console

    from service.cli_views import run_detail, runs_table

    def text(renderable) -> str:  # noqa: ANN001
        console = Console(width=200, record=True)
        console.print(renderable)
        return " ".join(console.export_text().split())

    run = {"id": 7, "sweep_id": 2, "kind": "train", "status": "queued", "grid": {}, "spec": {}, "epoch": 3,
           "epochs_total": 9, "attempt": 1, "max_attempts": 3, "worker_name": "ncsweep-gpu0@old", "seed": 0}
    assert "ncsweep-gpu0@old" not in text(runs_table([run]))
    assert "worker none (its last attempt ran on ncsweep-gpu0@old)" in text(run_detail(run, []))
    running = {**run, "status": "running"}
    assert "ncsweep-gpu0@old" in text(runs_table([running]))
    assert "worker ncsweep-gpu0@old" in text(run_detail(running, []))
