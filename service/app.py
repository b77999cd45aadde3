"""FastAPI app factory: settings, session factory, enqueuer, error handlers, routers."""
from __future__ import annotations

import functools
from typing import Callable

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from nc_core.db.session import session_factory
from nc_core.settings import ConfigError, Settings, get_settings
from service.auth import ReadAuth
from service.deps import SingleQuery
from service.enqueue import CeleryEnqueuer, Enqueuer, broker_ping
from service.errors import BodyLimitMiddleware, install_error_handlers
from service.identity import IdentityHeaderMiddleware
from service.routers import health, metrics, runs, sweeps, workers
from service.schemas import problems
from service.routers import events, plots, prom  # telemetry/live/plots/prometheus (issue 5)
from service import dashboard


def create_app(settings: Settings | None = None, *, enqueuer: Enqueuer | None = None,
               broker_check: Callable[[], None] | None = None) -> FastAPI:
    """Build the API. `enqueuer` defaults to Celery on settings.broker_url (tests pass a fake);
    `broker_check` (used by /readyz) defaults to a ping of settings.broker_url.
    Serve with: uvicorn --factory service.app:create_app"""
    try:
        settings = settings or get_settings()
    except ConfigError as exc:  # a bad NCSWEEP_ setting: uvicorn stops with one line naming it, not a traceback
        raise SystemExit(f"error: {exc}") from None
    # /docs and /redoc load their scripts from this server (FastAPI's own pages fetch them from a CDN)
    app = FastAPIOffline(title="ncsweep", version="0.1.0", docs_url="/docs", redoc_url="/redoc",
                  description="Job queue for neural-collapse training sweeps. Mutating endpoints need "
                              "'Authorization: Bearer <token>' (ncsweep token create).")
    app.state.settings = settings
    app.state.database_url = settings.resolved_database_url()
    app.state.session_factory = session_factory(app.state.database_url)
    app.state.enqueuer = enqueuer or CeleryEnqueuer(settings.broker_url, visibility_timeout=settings.visibility_timeout)
    app.state.broker_check = broker_check or functools.partial(broker_ping, settings.broker_url)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(IdentityHeaderMiddleware)  # the CLI checks it before it sends a token to a remembered URL
    app.include_router(health.router)  # /healthz, /readyz: open for probes
    for module in (sweeps, runs, metrics, workers, events, plots, prom):  # reads need a token with auth_reads
        app.include_router(module.router, dependencies=[ReadAuth, SingleQuery],  # a parameter given twice: 422
                           responses=problems(401))  # reads answer 401 too under NCSWEEP_AUTH_READS
    app.include_router(dashboard.router, dependencies=[SingleQuery])  # its pages and data take ReadAuth themselves
    return app
