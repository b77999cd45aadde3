"""Request dependencies (settings, session, enqueuer) and the shared, bounded parameter types of every route."""
from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, Request
from pydantic import Field
from sqlalchemy.orm import Session

from nc_core.settings import Settings
from nc_core.spec import Text
from nc_core.sweep import SpecError
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


def refuse_repeated_query(request: Request) -> None:
    """422 naming a query parameter of the route given more than once: FastAPI would keep its last value
    silently. Names the route does not declare are the route's to read (GET /runs' spec-field filters, which
    may repeat: a run matching any of the values is listed)."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None or len(request.query_params) == len(request.query_params.multi_items()):
        return
    declared = _query_names(dependant)
    for name in dict.fromkeys(n for n, _ in request.query_params.multi_items() if n in declared):
        values = request.query_params.getlist(name)
        if len(values) > 1:
            hint = f" (several go comma-separated in one: {name}=a,b)" if name in ("keys", "group_by") else ""
            raise SpecError(name, f"expected one value{hint}, got {len(values)}: "
                                  f"{', '.join(repr(v) for v in values[:5])}{', …' if len(values) > 5 else ''}")


def _query_names(dependant) -> set[str]:  # noqa: ANN001 - fastapi's Dependant
    """The query parameter names a route (with its dependencies) declares."""
    return {p.alias for p in dependant.query_params}.union(*map(_query_names, dependant.dependencies))


SingleQuery = Depends(refuse_repeated_query)
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]
