"""Request dependencies: settings, database session, enqueuer."""
from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from nc_core.settings import Settings
from service.enqueue import Enqueuer


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; routers commit explicitly, anything uncommitted is rolled back."""
    session = request.app.state.session_factory()
    try:
        yield session
    finally:
        session.close()


def get_enqueuer(request: Request) -> Enqueuer:
    return request.app.state.enqueuer


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]
