"""Sweep progress is work done: cancelled and failed runs count only the epochs they completed, in every view."""
from __future__ import annotations

import pytest
from rich.console import Console
from sqlalchemy import select, update

from nc_core.db.models import Run
from nc_core.db.session import session_scope
from service.cli_views import run_fraction, watch_view

BODY = {"name": "p", "base": {"epochs": 4, "data": {"name": "gaussian"}},
        "grid": {"loss.name": ["ce", "mse"], "model.width": [2, 4]}, "seeds": [0, 1]}


def _submit(app_client, db_url: str, states: dict[int, dict]) -> tuple[int, list[int]]:  # noqa: ANN001
    """Submit the 8-run sweep, then give run i the column values states[i]."""
    resp = app_client.post("/sweeps", json=BODY)
    assert resp.status_code == 201, resp.text
    sid = resp.json()["sweep_id"]
    with session_scope(db_url) as s:
        ids = list(s.scalars(select(Run.id).where(Run.sweep_id == sid).order_by(Run.id)))
        for i, values in states.items():
            s.execute(update(Run).where(Run.id == ids[i]).values(steps_total=10, **values))
    return sid, ids


def _everywhere(app_client, sid: int) -> dict[str, float]:  # noqa: ANN001
    """The sweep's progress as the API (detail, list), the dashboard (index, sweep page) and the CLI see it."""
    runs = app_client.get("/runs", params={"sweep_id": sid, "limit": 1000}).json()["items"]
    listed = next(i for i in app_client.get("/sweeps").json()["items"] if i["id"] == sid)
    board = next(i for i in app_client.get("/ui/sweeps.json").json() if i["id"] == sid)
    return {"detail": app_client.get(f"/sweeps/{sid}").json()["progress"], "list": listed["progress"],
            "dashboard index": board["progress"],
            "dashboard sweep": app_client.get(f"/ui/sweeps/{sid}/state.json").json()["progress"],
            "cli runs": sum(map(run_fraction, runs)) / len(runs)}


def test_a_sweep_whose_runs_were_all_cancelled_is_not_complete(app_client, db_url):
    # run 0 was stopped in the middle of epoch 3 (2 epochs done); the others were cancelled while queued
    states = {0: {"status": "cancelled", "epoch": 2, "step": 5}, **{i: {"status": "cancelled"} for i in range(1, 8)}}
    sid, ids = _submit(app_client, db_url, states)
    seen = _everywhere(app_client, sid)
    assert seen == pytest.approx({k: (2 / 4) / 8 for k in seen}), seen
    run0 = app_client.get(f"/runs/{ids[0]}").json()
    assert run_fraction(run0) == 0.5  # the partial epoch is redone on a retry: not work done
    cells = {r["id"]: r["progress"] for r in app_client.get(f"/ui/sweeps/{sid}/state.json").json()["runs"]}
    assert cells[ids[0]] == 0.5 and cells[ids[1]] == 0.0
    console = Console(width=160, record=True)
    console.print(watch_view(app_client.get(f"/sweeps/{sid}").json(), [run0], []))
    text = console.export_text()
    assert "6.2%" in text and "100.0%" not in text, text


def test_every_view_agrees_on_a_mixed_sweep(app_client, db_url):
    states = {0: {"status": "succeeded", "epoch": 4},
              1: {"status": "failed", "epoch": 1, "step": 3},  # diverged in epoch 2
              2: {"status": "running", "epoch": 1, "step": 5},  # half-way through epoch 2
              3: {"status": "cancelled", "epoch": 2, "step": 7},
              4: {"status": "queued", "epoch": 3}}  # retried, resumes after epoch 3
    sid, _ = _submit(app_client, db_url, states)
    expected = (1 + 1 / 4 + 1.5 / 4 + 2 / 4 + 3 / 4) / 8
    seen = _everywhere(app_client, sid)
    assert seen == pytest.approx({k: expected for k in seen}), seen
