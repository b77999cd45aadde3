"""Request dependencies (settings, session, enqueuer) and the shared, bounded parameter types of every route."""
from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, Request
from pydantic import Field
from sqlalchemy.orm import Session

from nc_core.settings import Settings
from nc_core.spec import Text
from service.enqueue import Enqueuer

ID_MAX = 2**31 - 1  # run/sweep/epoch columns are 32-bit INTEGER on PostgreSQL
EVENT_ID_MAX = 2**63 - 1  # event ids are BIGINT (SQLite: 64-bit INTEGER)
# Id policy: a run or sweep id (path or query) outside 1..2**31-1 cannot exist, and would overflow the
# database's integer column; it is refused with 422 naming the parameter, the same as any other malformed
# id (e.g. /runs/abc), before the database is asked. An id in range that does not exist is 404.
Id = Annotated[int, Field(ge=1, le=ID_MAX)]
Epoch = Annotated[int, Field(ge=1, le=ID_MAX)]  # epochs start at 1
Offset = Annotated[int, Field(ge=0, le=ID_MAX)]
EventCursor = Annotated[int, Field(ge=0, le=EVENT_ID_MAX)]
SafeStr = Text  # free text that reaches a database query: no NUL characters


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
