"""Reclaiming disk: DELETE /sweeps/{id}, POST /sweeps/{id}/prune and `ncsweep delete` / `ncsweep prune`, on SQLite and
PostgreSQL: every row of a deleted sweep goes (and its folders, after the commit), a busy sweep is refused with
nothing deleted, prune keeps the newest checkpoints' rows and files and every metric."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from nc_core.db.models import Checkpoint, Event, Metric, MetricDistribution, Run, Worker, WorkerSample
from nc_core.db.session import session_scope
from test_api_runs import set_status
from test_cli import SQLITE, live, ncsweep  # noqa: F401 - live is a fixture
from worker.workdirs import MARKER, identity

SPEC = {"name": "c", "base": {"epochs": 4, "data": {"name": "gaussian"}}, "grid": {"loss.name": ["ce", "mse"]},
        "seeds": [0, 1]}


def submit(client, name: str = "c") -> tuple[int, list[int]]:  # noqa: ANN001
    sid = client.post("/sweeps", json={**SPEC, "name": name}).json()["sweep_id"]
    return sid, [r["id"] for r in client.get("/runs", params={"sweep_id": sid}).json()["items"]]


def artifacts(settings) -> Path:  # noqa: ANN001
    return Path(settings.resolved_artifacts_dir())


def store(settings, db_url: str, run_id: int, epochs: list[int], *, rows: bool = True) -> Path:  # noqa: ANN001
    """Checkpoint files (+ sidecars, the folder's marker) of ``epochs`` under run_<id>/, rows when ``rows``,
    and metric and distribution rows for each epoch; returns the run's folder."""
    folder = artifacts(settings) / f"run_{run_id}"
    (folder / "ckpt").mkdir(parents=True, exist_ok=True)
    with session_scope(db_url) as s:
        (folder / MARKER).write_text(json.dumps(identity(s.get(Run, run_id))) + "\n")
        for e in epochs:
            path = folder / "ckpt" / f"epoch_{e:04d}.pt"
            path.write_bytes(b"x" * (100 + e))
            path.with_name(path.name + ".sha256").write_text("0" * 64 + "\n")
            if rows:
                s.add(Checkpoint(run_id=run_id, epoch=e, uri=str(path), bytes=100 + e))
            s.add(Metric(run_id=run_id, epoch=e, split="test", key="acc", value=0.5))
            s.add(MetricDistribution(run_id=run_id, epoch=e, split="test", key="cos_margin", values=[0.1], n=1))
    return folder


def count(db_url: str, model, *where) -> int:  # noqa: ANN001
    with session_scope(db_url) as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def epochs_on_disk(folder: Path) -> list[int]:
    return sorted(int(p.name[6:10]) for p in (folder / "ckpt").glob("epoch_*.pt"))


def finish(db_url: str, ids: list[int], status: str = "succeeded") -> None:
    for rid in ids:
        set_status(db_url, rid, status)


def test_delete_of_a_finished_sweep_removes_every_row_and_folder(app_client, settings, db_url, row_counts):
    keep_sid, keep_ids = submit(app_client, "other")  # another sweep's rows and folder stay
    finish(db_url, keep_ids)
    kept_folder = store(settings, db_url, keep_ids[0], [1, 2])
    before = row_counts()
    sid, ids = submit(app_client)
    finish(db_url, ids[:2])
    finish(db_url, ids[2:], "cancelled")
    folders = [store(settings, db_url, rid, [1, 2, 3]) for rid in ids]
    job = app_client.post(f"/runs/{ids[0]}/validate", json={}).json()["run_id"]
    set_status(db_url, job, "failed")
    with session_scope(db_url) as s:
        s.add(Metric(run_id=job, epoch=1, split="test", key="acc", value=0.4))
        s.add(WorkerSample(worker_name="w1", run_id=ids[1]))
        s.add(Worker(name="w1", current_run_id=ids[1], status="stopped"))
        s.add(Event(kind="progress", sweep_id=None, run_id=ids[2], payload={}))
    (folders[0] / "notes.txt").write_text("extra")
    size = sum(p.stat().st_size for f in folders for p in f.rglob("*") if p.is_file())

    resp = app_client.delete(f"/sweeps/{sid}")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body == {"sweep_id": sid, "runs": 5, "metric_rows": 13, "distribution_rows": 12, "checkpoint_rows": 12,
                    "event_rows": body["event_rows"], "telemetry_rows": 1, "folders": 4, "checkpoint_files": 12,
                    "bytes_freed": size, "not_removed": []}
    assert body["event_rows"] >= 3  # the sweep's creation, the validate job, the run's progress
    assert not any(f.exists() for f in folders) and epochs_on_disk(kept_folder) == [1, 2]
    after = row_counts()
    assert {**after, "event": after["event"] - 1, "worker": after["worker"] - 1} == before  # + the tombstone, w1
    with session_scope(db_url) as s:
        tombstone = s.scalars(select(Event).order_by(Event.id.desc())).first()
        assert (tombstone.sweep_id, tombstone.run_id, tombstone.payload["sweep_deleted"]) == (None, None, sid)
        assert s.get(Worker, "w1").current_run_id is None
    assert app_client.get(f"/sweeps/{sid}").status_code == 404
    assert app_client.delete(f"/sweeps/{sid}").status_code == 404
    assert app_client.get(f"/sweeps/{keep_sid}").json()["runs"] == 4


@pytest.mark.parametrize("busy", ["queued", "running", "validate"])
def test_delete_is_refused_while_a_run_is_queued_or_running(app_client, settings, db_url, row_counts, busy):
    sid, ids = submit(app_client)
    finish(db_url, ids)
    folder = store(settings, db_url, ids[0], [1, 2])
    if busy == "validate":
        busy_id = app_client.post(f"/runs/{ids[0]}/validate", json={}).json()["run_id"]
    else:
        busy_id = ids[1]
        set_status(db_url, busy_id, busy)
    before = row_counts()
    resp = app_client.delete(f"/sweeps/{sid}")
    assert resp.status_code == 409, resp.text
    detail = resp.json()["detail"]
    assert f"run {busy_id} (" in detail and "cancel them first" in detail and f"ncsweep cancel {sid}" in detail
    assert "\n" not in detail and row_counts() == before and epochs_on_disk(folder) == [1, 2]


def test_a_folder_of_another_run_row_is_left_and_named(app_client, settings, db_url):
    sid, ids = submit(app_client)
    finish(db_url, ids)
    folder = store(settings, db_url, ids[0], [1])
    (folder / MARKER).write_text(json.dumps({"run_id": ids[0], "sweep_id": 999, "created_at": "x"}))
    body = app_client.delete(f"/sweeps/{sid}").json()
    assert body["folders"] == 0 and body["checkpoint_rows"] == 1 and epochs_on_disk(folder) == [1]
    assert len(body["not_removed"]) == 1 and "names another run row" in body["not_removed"][0]
    assert count(db_url, Run, Run.sweep_id == sid) == 0


def test_files_go_only_after_the_commit_and_one_that_stays_is_named(app_client, settings, db_url, row_counts,
                                                                     monkeypatch):
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    sid, ids = submit(app_client)
    finish(db_url, ids)
    folders = [store(settings, db_url, rid, [1, 2]) for rid in ids]
    before = row_counts()
    with monkeypatch.context() as m:  # the commit fails: rolled back, every file still there
        m.setattr(Session, "commit", lambda self: (_ for _ in ()).throw(OperationalError("COMMIT", {}, OSError("x"))))
        assert app_client.delete(f"/sweeps/{sid}").status_code == 503
        assert app_client.post(f"/sweeps/{sid}/prune", json={"keep_last": 0}).status_code == 503
    assert row_counts() == before and all(epochs_on_disk(f) == [1, 2] for f in folders)
    stuck = folders[0] / "ckpt" / "epoch_0001.pt"
    unlink = Path.unlink
    monkeypatch.setattr(Path, "unlink", lambda self, **kw: (_ for _ in ()).throw(PermissionError(13, "Permission "
                        "denied", str(self))) if self == stuck else unlink(self, **kw))
    body = app_client.delete(f"/sweeps/{sid}").json()
    assert body["folders"] == 3 and body["checkpoint_files"] == 7 and count(db_url, Run, Run.sweep_id == sid) == 0
    assert body["not_removed"] == [f"{stuck}: Permission denied", f"{folders[0]}: Directory not empty"]
    assert stuck.exists() and not (folders[0] / "ckpt" / "epoch_0002.pt").exists()


def test_prune_keeps_the_newest_checkpoints_and_every_metric(app_client, settings, db_url):
    sid, ids = submit(app_client)
    finish(db_url, ids[:3])
    set_status(db_url, ids[3], "running")
    folders = {rid: store(settings, db_url, rid, [1, 2, 3, 4]) for rid in ids}
    (folders[ids[1]] / "ckpt" / "epoch_0005.pt").write_bytes(b"stray")  # a file without a row
    job = app_client.post(f"/runs/{ids[2]}/validate", json={}).json()["run_id"]  # reads run 3's checkpoints
    metrics = count(db_url, Metric)
    resp = app_client.post(f"/sweeps/{sid}/prune", json={"keep_last": 1})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    freed = 2 * sum(100 + e + 65 for e in (1, 2, 3))  # the files of the deleted rows only: the stray one stays
    assert body == {"sweep_id": sid, "keep_last": 1, "runs": 2, "runs_pruned": 2, "checkpoint_rows": 6,
                    "checkpoint_files": 6, "bytes_freed": freed, "not_removed": [],
                    "skipped": {str(ids[2]): job}, "unfinished": 1}
    for rid in ids[:2]:
        assert count(db_url, Checkpoint, Checkpoint.run_id == rid) == 1
        assert sorted(p.name for p in (folders[rid] / "ckpt").iterdir() if p.name != ".lock") == \
            ["epoch_0004.pt", "epoch_0004.pt.sha256", *(["epoch_0005.pt"] if rid == ids[1] else [])]
    for rid in ids[2:]:  # read by a validate job; running
        assert epochs_on_disk(folders[rid]) == [1, 2, 3, 4] and count(db_url, Checkpoint, Checkpoint.run_id == rid) == 4
    assert count(db_url, Metric) == metrics and count(db_url, MetricDistribution) == 16
    again = app_client.post(f"/sweeps/{sid}/prune", json={"keep_last": 1}).json()
    assert (again["checkpoint_rows"], again["checkpoint_files"], again["bytes_freed"]) == (0, 0, 0)
    none = app_client.post(f"/sweeps/{sid}/prune", json={"keep_last": 0}).json()
    assert (none["checkpoint_rows"], none["checkpoint_files"]) == (2, 2)
    assert epochs_on_disk(folders[ids[0]]) == [] and epochs_on_disk(folders[ids[1]]) == [5]  # the stray file stays
    assert count(db_url, Metric) == metrics


@pytest.mark.parametrize("body, says", [
    ({"keep_last": -1}, "greater than or equal to 0"), ({"keep_last": "two"}, "valid integer"),
    ({"keep_last": 1.5}, "integer"), ({"keep_last": True}, "boolean"), ({}, "Field required"),
    ({"keep_last": None}, "integer")])
def test_bad_keep_last_is_a_422_naming_the_field(app_client, row_counts, body, says):
    sid, _ = submit(app_client)
    before = row_counts()
    resp = app_client.post(f"/sweeps/{sid}/prune", json=body)
    assert resp.status_code == 422, resp.text
    (item,) = resp.json()["detail"]
    assert item["field"] == "keep_last" and says in item["msg"], item
    assert row_counts() == before
    unknown = app_client.post(f"/sweeps/{sid}/prune", json={"keep_last": 1, "keep": 2}).json()["detail"]
    assert [i["field"] for i in unknown] == ["keep"]


def test_unknown_sweep_is_404(app_client):
    assert app_client.delete("/sweeps/999").status_code == 404
    assert app_client.post("/sweeps/999/prune", json={"keep_last": 1}).status_code == 404


def test_delete_and_prune_need_a_write_token(app_client, anon_client, read_token, settings, db_url, row_counts):
    sid, ids = submit(app_client)
    finish(db_url, ids)
    folder = store(settings, db_url, ids[0], [1, 2])
    before = row_counts()
    ro = {"Authorization": f"Bearer {read_token}"}
    assert anon_client.delete(f"/sweeps/{sid}").status_code == 401
    assert anon_client.delete(f"/sweeps/{sid}", headers=ro).status_code == 403
    assert anon_client.post(f"/sweeps/{sid}/prune", json={"keep_last": 0}).status_code == 401
    assert anon_client.post(f"/sweeps/{sid}/prune", json={"keep_last": 0}, headers=ro).status_code == 403
    assert row_counts() == before and epochs_on_disk(folder) == [1, 2]


@SQLITE
def test_openapi_lists_both_routes_with_their_errors(app_client):
    paths = app_client.get("/openapi.json").json()["paths"]
    assert {"401", "403", "404", "409", "422", "503"} <= set(paths["/sweeps/{sweep_id}"]["delete"]["responses"])
    assert {"401", "403", "404", "422", "503"} <= set(paths["/sweeps/{sweep_id}/prune"]["post"]["responses"])


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@SQLITE
def test_cli_delete_asks_first_and_prune(live, app, settings, db_url, capsys, monkeypatch):  # noqa: ANN001
    from starlette.testclient import TestClient

    from service.auth import create_token

    api = TestClient(app, headers={"Authorization": f"Bearer {create_token(db_url, 'w', 'write')}"})
    sid, ids = submit(api)
    finish(db_url, ids)
    folders = [store(settings, db_url, rid, [1, 2, 3]) for rid in ids]

    rc, out, err = ncsweep(capsys, "prune", sid, "--keep-last", "-1")
    assert rc == 2 and "--keep-last" in err and "at least 0" in err
    rc, out, err = ncsweep(capsys, "prune", sid, "--keep-last", "1")
    assert rc == 0 and "8 checkpoint rows and 8 files of 4 runs removed" in out, out + err
    assert all(epochs_on_disk(f) == [3] for f in folders)

    rc, out, err = ncsweep(capsys, "delete", sid)  # stdin is not a terminal here
    assert rc == 2 and "--yes" in err and "cannot be confirmed" in err and count(db_url, Run) == 4
    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    rc, out, err = ncsweep(capsys, "delete", sid)
    assert rc == 1 and "4 runs (4 succeeded)" in err and "nothing deleted" in err and count(db_url, Run) == 4
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    rc, out, err = ncsweep(capsys, "delete", sid)
    assert rc == 0 and f"deleted sweep {sid}: 4 runs" in out and "4 checkpoint files in 4 folders" in out, out + err
    assert count(db_url, Run) == 0 and not any(f.exists() for f in folders)

    sid, ids = submit(api)
    set_status(db_url, ids[0], "running")
    rc, out, err = ncsweep(capsys, "delete", sid, "--yes")
    assert rc == 1 and "HTTP 409" in err and "cancel them first" in err and count(db_url, Run) == 4
    rc, out, err = ncsweep(capsys, "delete", 999, "--yes")
    assert rc == 1 and "HTTP 404" in err


def test_an_unmarked_folder_of_a_run_without_checkpoint_rows_is_left(app_client, settings, db_url):  # noqa: ANN001
    """As the worker decides (worker.workdirs): such a folder is another database's (review: delete removed it)."""
    sid, ids = submit(app_client)
    finish(db_url, ids)
    folder = store(settings, db_url, ids[0], [1], rows=False)
    (folder / MARKER).unlink()
    body = app_client.delete(f"/sweeps/{sid}").json()
    assert epochs_on_disk(folder) == [1] and any(str(folder) in line and "no run.json" in line
                                                 for line in body["not_removed"]), body


def test_prune_leaves_the_files_of_a_folder_in_use(app_client, settings, db_url):  # noqa: ANN001
    """A retry may resume the run between prune's commit and its file removal (review): a held lock keeps them."""
    import fcntl
    import os

    sid, ids = submit(app_client)
    finish(db_url, ids)
    folder = store(settings, db_url, ids[0], [1, 2])
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what workdir_lock takes for a training attempt
    try:
        body = app_client.post(f"/sweeps/{sid}/prune", json={"keep_last": 1}).json()
    finally:
        os.close(fd)
    assert epochs_on_disk(folder) == [1, 2] and any("in use by a process" in line for line in body["not_removed"])
