"""Bearer tokens: sha256-hashed in api_token; write endpoints need a write/admin-scope token.

With settings.auth_reads every read needs a token of any scope (header, or the dashboard's cookie).
"""
from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from nc_core.db.models import ApiToken
from nc_core.db.session import session_scope
from service.deps import SessionDep, SettingsDep

SCOPES = ("read", "write", "admin")
WRITE_SCOPES = frozenset({"write", "admin"})
TOKEN_PREFIX = "ncs_"
#: The cookie the dashboard keeps a read token in (set by its token form; reads only, never writes).
TOKEN_COOKIE = "ncsweep_token"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_token(session: Session, name: str = "", scope: str = "write") -> str:
    """Insert a new token (hashed) into `session` and return the plain token (shown once)."""
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=hash_token(token), scope=scope))
    return token


def create_token(url: str, name: str = "", scope: str = "write") -> str:
    """Create a token in the database at `url` (the CLI's `ncsweep token create`); returns it once."""
    with session_scope(url) as session:
        return add_token(session, name, scope)


def revoke_token(url: str, token: str) -> bool:
    """Mark a token revoked; False if it is unknown."""
    with session_scope(url) as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
        if row is None:
            return False
        row.revoked = True
        return True


def revoke_named(url: str, name: str) -> int:
    """Revoke every live token labelled ``name``; how many were."""
    with session_scope(url) as session:
        rows = list(session.scalars(select(ApiToken).where(ApiToken.name == name, ApiToken.revoked.is_(False))))
        for row in rows:
            row.revoked = True
        return len(rows)


def list_tokens(url: str) -> list[dict]:
    """Every token's id, name, scope, creation time and whether it is revoked (never the token itself)."""
    with session_scope(url) as session:
        return [{"id": t.id, "name": t.name, "scope": t.scope, "created_at": t.created_at, "revoked": t.revoked}
                for t in session.scalars(select(ApiToken).order_by(ApiToken.id))]


def _unauthorized(msg: str) -> HTTPException:
    return HTTPException(401, msg, headers={"WWW-Authenticate": "Bearer"})


def lookup_token(session: Session, request: Request, *, cookie: bool = False) -> ApiToken:
    """The valid token of the request (its Authorization header; with ``cookie``, else the dashboard's
    cookie), or 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header and cookie and request.cookies.get(TOKEN_COOKIE):
        scheme, token = "bearer", request.cookies[TOKEN_COOKIE]
    elif not header:
        raise _unauthorized("missing 'Authorization: Bearer <token>' header (create one with "
                            "`ncsweep token create --save`, or pass --token / NCSWEEP_TOKEN)")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("expected 'Authorization: Bearer <token>'")
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token.strip())))
    if row is None or row.revoked:
        raise _unauthorized("invalid or revoked token")
    return row


def require_write(request: Request, session: SessionDep, settings: SettingsDep) -> ApiToken | None:
    """Dependency of every mutating endpoint: 401 without a valid token, 403 for read-only scope."""
    if not settings.auth_required:
        return None
    row = lookup_token(session, request)
    if row.scope not in WRITE_SCOPES:
        raise HTTPException(403, f"token {row.name!r} has scope {row.scope!r}; this endpoint needs 'write' or 'admin'")
    return row


WriteAuth = Annotated[ApiToken | None, Depends(require_write)]


def require_read(request: Request, session: SessionDep, settings: SettingsDep) -> ApiToken | None:
    """Dependency of every reading route when settings.auth_reads (and auth_required): 401 without a valid
    token of any scope, from the Authorization header or the dashboard's cookie."""
    if not (settings.auth_required and settings.auth_reads):
        return None
    return lookup_token(session, request, cookie=True)


ReadAuth = Depends(require_read)


def read_refusal(session: Session, request: Request) -> str | None:
    """Why the request may not read (the 401's detail: no, a wrong or a revoked token, by header or the
    dashboard's cookie), or None; for the callers that answer otherwise than with a 401 (the dashboard's token
    form, an open event stream)."""
    try:
        lookup_token(session, request, cookie=True)
        return None
    except HTTPException as exc:
        return str(exc.detail)
