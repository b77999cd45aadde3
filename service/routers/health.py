"""Liveness (/healthz) and readiness (/readyz: database SELECT 1, its schema at head, and broker ping)."""
from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from nc_core.db.migrate import schema_problem
from nc_core.settings import config_error, error_text, mask_url

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive (no dependencies checked)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: {status, checks, failed} naming each check "
                                                              "(database, schema, broker) that failed"}})
def readyz(request: Request) -> JSONResponse:
    """200 when the database answers SELECT 1 with this code's schema and the broker answers a ping; 503 naming
    what failed."""
    checks: dict[str, str] = {}
    try:
        with request.app.state.session_factory() as session:
            session.execute(text("SELECT 1"))
            schema, _ = schema_problem(session.connection())
        checks["database"] = "ok"
        # revisions are no secret; an API on a stale or newer schema fails requests, so it is not ready
        checks["schema"] = "ok" if schema is None else f"failed: {schema} (`alembic upgrade head` migrates)"
    except Exception as exc:  # noqa: BLE001
        # the open probe says only what failed; which database and why (a host, a path) go to the server's log
        checks["database"] = f"failed: {type(exc).__name__} (the server's log says which database and why)"
        log.warning("readyz: database check failed: %s", _database_failure(exc, request.app.state.database_url))
    try:
        request.app.state.broker_check()
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        log.warning("readyz: broker check failed: %s", exc)
        checks["broker"] = f"failed: {type(exc).__name__}"
    failed = [name for name, state in checks.items() if state != "ok"]
    body = {"status": "ready" if not failed else "unavailable", "checks": checks, "failed": failed}
    return JSONResponse(body, status_code=503 if failed else 200)


def _database_failure(exc: Exception, url: str) -> str:
    """Which database (password masked) failed and how: the error's class and first lines."""
    why = config_error(exc, url)
    if why is None:
        why = f"{mask_url(url)}: {type(exc).__name__}: {error_text(exc)}"
    return why[:1000]
