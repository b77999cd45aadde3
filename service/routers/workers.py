"""GET /workers: every worker's latest heartbeat, with lost/idle/busy status and its run's progress."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from nc_core.db import workers_repo
from service.deps import SessionDep, SettingsDep
from service.schemas import WorkerOut, problems

router = APIRouter(tags=["workers"])


@router.get("/workers", response_model=list[WorkerOut], responses=problems(422, 503))
def list_workers(session: SessionDep, settings: SettingsDep,
                 all: bool = Query(False, description="also the stopped or lost workers not heard from for a "
                                                            "day (left out by default)")) -> list[dict[str, Any]]:
    """Workers by name; `status` is `lost` once no heartbeat came for settings.worker_lost_after_seconds."""
    return workers_repo.list_workers(session, settings.worker_lost_after_seconds, include_gone=all)
