"""GET /workers: the latest heartbeat row of every worker (read-only)."""
from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from nc_core.db.models import Worker
from service.deps import SessionDep
from service.schemas import WorkerOut

router = APIRouter(tags=["workers"])


@router.get("/workers", response_model=list[WorkerOut])
def list_workers(session: SessionDep) -> list[Worker]:
    """Every worker row, newest heartbeat first."""
    return list(session.scalars(select(Worker).order_by(Worker.last_seen.desc(), Worker.name)))
