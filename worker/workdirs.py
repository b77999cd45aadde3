"""A train run's artifacts folder, run_<id>, marked with the identity of the database row that made it.

A folder left by another database (a restored backup, a shared NCSWEEP_ARTIFACTS_DIR, an id reused after a row was
deleted) is moved aside to <artifacts>/orphaned/ instead of having its checkpoints pruned as unrecorded.
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)
MARKER = "run.json"  # {"run_id", "sweep_id", "created_at"} of the row whose checkpoints the folder holds


def run_folder(artifacts: Path, run_id: int) -> Path:
    """A run's artifacts folder, <artifacts>/run_<id> (its checkpoints under ckpt/, its MARKER)."""
    return Path(artifacts) / f"run_{run_id}"


def identity(run: Any) -> dict[str, Any]:
    """What tells one run row from another that had the same id: its sweep and creation time (UTC, μs)."""
    from nc_core.db.models import as_utc

    created = as_utc(run.created_at)
    return {"run_id": run.id, "sweep_id": run.sweep_id, "created_at": created.isoformat()}


def claim_workdir(artifacts: Path, run: Any, has_records: Callable[[], bool], wait_s: float = 0.0,
                  stop: Callable[[], bool] | None = None) -> Path:
    """``artifacts``/run_<id>, made or adopted for ``run`` (a Run row). Its checkpoints are another row's when
    its marker names another identity, or, in a folder without a marker (written before markers), when
    ``has_records()`` says the database holds no checkpoint of this run: then the folder is moved aside
    (never deleted) and a fresh one made — under the folder's lock, waited for up to ``wait_s`` as the run
    itself waits (WorkdirBusy after that): a process still writing into it (an attempt of older code that
    wrote no marker, another database's worker) keeps its folder until it lets go."""
    from nc_core.training.checkpoint import list_checkpoints, workdir_lock

    workdir, mine = run_folder(artifacts, run.id), identity(run)

    def foreign() -> dict[str, Any] | str | None:
        found = _read(workdir / MARKER)
        if list_checkpoints(workdir) and (found != mine if found is not None else not has_records()):
            return found or "no marker, and this database records none of them"
        return None

    if foreign() is not None:
        with workdir_lock(workdir, wait_s, stop):
            whose = foreign()  # again, now that no one writes: the holder may have recorded its checkpoints
            if whose is not None:
                aside = _move_aside(artifacts, workdir)
                log.warning("run %s: %s held checkpoints of another run row (%s); moved them to %s, this run "
                            "starts afresh", run.id, workdir, whose, aside)
    found = _read(workdir / MARKER)
    workdir.mkdir(parents=True, exist_ok=True)
    if found != mine or not (workdir / MARKER).exists():
        tmp = workdir / f".{MARKER}.{os.getpid()}"
        tmp.write_text(json.dumps(mine) + "\n")
        os.replace(tmp, workdir / MARKER)
    return workdir


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _move_aside(artifacts: Path, workdir: Path) -> Path:
    """Rename ``workdir`` into artifacts/orphaned/ under a name no earlier move took."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = artifacts / "orphaned" / f"{workdir.name}-{stamp}"
    aside.parent.mkdir(parents=True, exist_ok=True)
    os.rename(workdir, aside)
    return aside
