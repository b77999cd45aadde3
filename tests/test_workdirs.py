"""A run's artifacts folder left by another database row with the same id (a restored backup, a shared artifacts
directory, a reused id) is moved aside, never pruned; the run's own folder is adopted, marker or not."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from nc_core.db import states
from nc_core.db.models import Run
from nc_core.db.session import session_scope
from test_lease_takeover import BASE
from worker.workdirs import MARKER, claim_workdir, identity

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROW = SimpleNamespace(id=1, sweep_id=1, created_at=datetime(2026, 11, 30, 1, 2, 3, 456789))  # naive, as SQLite


def _old_checkpoints(folder: Path, marker: dict | None) -> None:
    (folder / "ckpt").mkdir(parents=True)
    for epoch in (2, 3):
        (folder / "ckpt" / f"epoch_{epoch:04d}.pt").write_bytes(b"another run's weights")
    if marker is not None:
        (folder / MARKER).write_text(json.dumps(marker))


def _orphans(artifacts: Path) -> list[Path]:
    return sorted((artifacts / "orphaned").glob("run_1-*/ckpt/*.pt"))


def test_identity_reads_naive_and_aware_times_alike():
    aware = SimpleNamespace(**{**vars(ROW), "created_at": ROW.created_at.replace(tzinfo=timezone.utc)})
    assert identity(ROW) == identity(aware) == {"run_id": 1, "sweep_id": 1,
                                                "created_at": "2026-11-30T01:02:03.456789+00:00"}


def test_a_folder_marked_by_another_row_is_moved_aside(tmp_path):
    _old_checkpoints(tmp_path / "run_1", {**identity(ROW), "created_at": "2025-01-01T00:00:00+00:00"})
    workdir = claim_workdir(tmp_path, ROW, lambda: True)
    assert len(_orphans(tmp_path)) == 2 and not (workdir / "ckpt").exists()
    assert json.loads((workdir / MARKER).read_text()) == identity(ROW)


@pytest.mark.parametrize("recorded", [False, True])
def test_an_unmarked_folder_is_adopted_only_when_the_database_records_its_checkpoints(tmp_path, recorded):  # noqa: ANN001
    _old_checkpoints(tmp_path / "run_1", None)
    workdir = claim_workdir(tmp_path, ROW, lambda: recorded)
    assert (len(_orphans(tmp_path)), len(list((workdir / "ckpt").glob("*.pt")) if recorded else [])) == \
        ((0, 2) if recorded else (2, 0))
    assert json.loads((workdir / MARKER).read_text()) == identity(ROW)


def test_the_rows_own_folder_is_kept(tmp_path):
    _old_checkpoints(tmp_path / "run_1", identity(ROW))
    assert len(list((claim_workdir(tmp_path, ROW, lambda: False) / "ckpt").glob("*.pt"))) == 2
    assert not (tmp_path / "orphaned").exists()


@pytest.mark.parametrize("marked", [True, False])
def test_a_new_run_keeps_the_checkpoints_another_database_left_under_its_id(app_client, settings, db_url, marked):  # noqa: ANN001
    from worker.runner import execute, run_workdir

    created = app_client.post("/sweeps", json={"name": "reused-id", "base": BASE, "seeds": [0]})
    assert created.status_code == 201, created.text
    (item,) = app_client.get("/runs", params={"sweep_id": created.json()["sweep_id"]}).json()["items"]
    rid, artifacts = item["id"], Path(settings.resolved_artifacts_dir())
    other = {"run_id": rid, "sweep_id": 99, "created_at": "2025-01-01T00:00:00+00:00"} if marked else None
    _old_checkpoints(run_workdir(settings, rid), other)
    assert execute(rid, "train", settings, hostname="w") == states.SUCCEEDED
    kept = sorted(p.name for p in (artifacts / "orphaned").glob(f"run_{rid}-*/ckpt/*.pt"))
    assert kept == ["epoch_0002.pt", "epoch_0003.pt"]  # before: deleted as "written by an attempt that lost its lease"
    with session_scope(db_url) as s:
        assert s.get(Run, rid).epoch == 4
    assert json.loads((run_workdir(settings, rid) / MARKER).read_text())["run_id"] == rid


def test_a_folder_in_use_is_moved_only_once_its_holder_lets_go(tmp_path, monkeypatch):
    """Moving it from under a writer would hand the writer's path to this run (review: the lock moved with it)."""
    import subprocess
    import sys

    from nc_core.training import checkpoint as ck
    from nc_core.training.checkpoint import WorkdirBusy
    from test_lease_takeover import HOLDER
    from test_workdir_wait import FakeClock

    _old_checkpoints(tmp_path / "run_1", None)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run_1" / ".lock"), "30"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusy):
            claim_workdir(tmp_path, ROW, lambda: False, wait_s=0.0)
        assert not (tmp_path / "orphaned").exists() and len(list((tmp_path / "run_1" / "ckpt").glob("*.pt"))) == 2
        seen: list[bool] = []  # at each look at the busy folder while it waits: was anything moved yet?

        def lets_go_at_the_second_look() -> bool:  # claim_workdir's stop(), asked at each retry
            seen.append((tmp_path / "orphaned").exists())
            if len(seen) == 2:
                holder.kill()  # the holder lets go
                holder.wait()
            return False
        monkeypatch.setattr(ck, "time", FakeClock())
        claim_workdir(tmp_path, ROW, lambda: False, wait_s=20.0, stop=lets_go_at_the_second_look)
        assert seen == [False, False] and len(_orphans(tmp_path)) == 2
    finally:
        holder.kill()
        holder.wait()
