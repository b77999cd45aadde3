"""Error handlers and the body middleware (size, JSON depth): 422 with field paths, 404/409/413, no stack traces."""
from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, ProgrammingError
from starlette.exceptions import HTTPException

from nc_core.db.states import IllegalTransition
from nc_core.db.sweeps_repo import StateConflict
from nc_core.sweep import SpecError, field_loc, field_path, with_input
from service.errors_db import lasting_db_problem

log = logging.getLogger(__name__)
_SOURCES = ("body", "query", "path", "header", "cookie")  # request parts FastAPI puts first in loc
_PATH_PREFIX = re.compile(r"^([A-Za-z_]\w*(?:\.\w+|\[\d+\])*): ")  # 'grid.optim.lr[1]: …' names its field
MAX_JSON_DEPTH = 64  # JSON nesting a request body may have (a sweep spec needs 5); deeper is a 422 naming `body`
_PARSE_FAILED = "There was an error parsing the body"  # FastAPI's 400 for a body json.loads raised on (not JSON)


class NotFound(LookupError):
    """An unknown sweep/run id (HTTP 404)."""


def error_item(field: str, msg: str, source: str = "body", kind: str = "value_error") -> dict[str, Any]:
    """One 422 item as FastAPI writes them: loc = [source ('body', 'query', 'path'), *the field's path], msg,
    type, and the field in dotted form ('grid.optim.lr[1]', 'loss.name')."""
    return {"loc": [source, *field_loc(field)], "msg": msg, "field": field, "type": kind}


def request_source(request: Request) -> str:
    """Where a request's values come from: a GET's in its query, any other request's in its JSON body."""
    return "query" if request.method in ("GET", "HEAD") else "body"


def spec_error_response(exc: SpecError, source: str = "body") -> JSONResponse:
    """422 with one item per (field, message) of the error: every bad value of a sweep, not just the first."""
    return JSONResponse({"detail": [error_item(f, m, source) for f, m in exc.errors]}, status_code=422)


def pydantic_items(errors: list[dict[str, Any]], content_type: str | None = None,
                   source: str | None = None) -> list[dict[str, Any]]:
    """Pydantic errors → [{loc, msg, type, field}], list positions as [i] ('seeds[0]'), the input echoed, loc
    starting with its source (``source`` where pydantic gave none: a model validated in a route); a model-level
    error of several problems (a SpecError, or 'path: message; also path: message') gives one item per field."""
    items = []
    for err in errors:
        loc = [x for x in err.get("loc", ()) if x != "__root__"]
        if source is not None and not (loc and loc[0] in _SOURCES):
            loc = [source, *loc]
        msg = str(err.get("msg", "")).removeprefix("Value error, ")  # pydantic's wrapper of a validator's text
        if err.get("type") == "json_invalid":  # loc is ("body", character offset)
            items.append({"loc": ["body"], "msg": f"malformed JSON at character {loc[-1]}: {msg}",
                          "field": "body", "type": "json_invalid"})
            continue
        prefix = loc[:1] if loc and loc[0] in _SOURCES else []
        parts = loc[len(prefix):]
        cause = (err.get("ctx") or {}).get("error")
        if not parts and isinstance(cause, SpecError):  # a sweep's shape problems, each naming its field
            items += [{"loc": [*prefix, *field_loc(f)], "msg": m, "field": f, "type": err.get("type")}
                      for f, m in cause.errors]
            continue
        if not parts and _PATH_PREFIX.match(msg):  # model validator: "grid.foo: unknown field …" names its path
            items += [_named_item(prefix, piece, err.get("type")) for piece in msg.split("; also ")]
            continue
        if prefix == ["body"] and not parts:
            msg = _body_message(err, msg, content_type)
        items.append({"loc": loc, "msg": with_input(msg, err), "field": field_path(parts) or "body",
                      "type": err.get("type")})
    return items


def _named_item(source: list[Any], text: str, kind: str | None) -> dict[str, Any]:
    """The item of one 'path: message' problem of a model validator, loc and field from its path."""
    m = _PATH_PREFIX.match(text)
    field, msg = (m.group(1), text[m.end():]) if m else ("body", text)
    return {"loc": [*source, *field_loc(field)], "msg": msg, "field": field, "type": kind}


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _body_message(err: dict[str, Any], msg: str, content_type: str | None) -> str:
    """What was wrong with the body as a whole: empty, not sent as JSON, or JSON but not an object (else ``msg``,
    the validator's own text)."""
    if err.get("type") == "missing":
        return "expected a JSON object body with content-type application/json, got an empty body"
    if not _is_json(content_type):
        got = f"content-type {content_type!r}" if content_type else "no content-type header"
        return f"expected a JSON object body with content-type application/json, got {got}"
    given = err.get("input")
    if given is None:
        return "expected a JSON object, got null"
    if isinstance(given, (list, str, int, float, bool)):
        kind = {list: "an array", str: "a string", bool: "a boolean"}.get(type(given), "a number")
        return f"expected a JSON object, got {kind}: {json.dumps(given)[:80]}"
    return msg


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    items = pydantic_items(list(exc.errors()), request.headers.get("content-type"))
    return JSONResponse({"detail": items}, status_code=422)


async def _pydantic(request: Request, exc: ValidationError) -> JSONResponse:
    """A model a route validated itself (a merged sweep): its loc as the request's body's or query's."""
    items = pydantic_items(exc.errors(include_url=False), source=request_source(request))
    return JSONResponse({"detail": items}, status_code=422)


async def _http(request: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's bare 400 for a body the JSON parser raised on, as a 422 saying why; other HTTP errors as is."""
    cause = exc.__cause__
    if exc.status_code != 400 or exc.detail != _PARSE_FAILED or cause is None:
        return await http_exception_handler(request, exc)
    if isinstance(cause, UnicodeDecodeError):
        msg = f"expected a JSON object body in UTF-8, got a byte that is not UTF-8 at byte {cause.start}"
    elif isinstance(cause, RecursionError):
        msg = f"expected JSON nested at most {MAX_JSON_DEPTH} levels deep, got nesting too deep to parse"
    else:
        msg = f"expected a JSON object body, got one that could not be parsed ({type(cause).__name__}: {cause})"
    return JSONResponse({"detail": [{"loc": ["body"], "msg": msg, "field": "body", "type": "json_invalid"}]},
                        status_code=422)


async def _spec(request: Request, exc: SpecError) -> JSONResponse:
    return spec_error_response(exc, request_source(request))


async def _illegal(_: Request, exc: IllegalTransition) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "run_id": exc.run_id, "status": exc.current}, status_code=409)


async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _conflict(_: Request, exc: StateConflict) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


def constraint_conflict(exc: IntegrityError) -> str | None:
    """The constraint a unique or foreign-key violation broke ('uq_run_sweep_kind_hash', or SQLite's 'UNIQUE
    constraint failed: run.sweep_id, …' text), else None: a NOT NULL or CHECK violation is a bug, no race."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None)  # psycopg: 23505 unique, 23503 foreign key
    if state in ("23505", "23503"):
        diag = getattr(orig, "diag", None)
        return getattr(diag, "constraint_name", None) or f"SQLSTATE {state}"
    text = str(orig).strip()
    if text.startswith(("UNIQUE constraint failed", "FOREIGN KEY constraint failed")):  # SQLite
        return text
    return None


async def _integrity(request: Request, exc: IntegrityError) -> JSONResponse:
    """A unique or foreign-key violation that the repository's checks did not prevent: a concurrent request
    wrote the same row first. 409, not 500: nothing was changed (each request is one transaction), and the
    state the other request left is what a retry of this one meets. Logged with its traceback all the same:
    each one is a race that a row lock should have serialised. Other integrity errors are bugs: 500."""
    constraint = constraint_conflict(exc)
    if constraint is None:
        return await _internal(request, exc)
    log.error("integrity conflict on %s %s (a race the repository did not serialise): %s", request.method,
              request.url.path, constraint, exc_info=exc)
    return JSONResponse({"detail": f"conflict with a concurrent request: expected this request's rows to be new, "
                                   f"but another request wrote the same one first ({constraint}); nothing was "
                                   "changed: read the current state and retry if it is still needed"},
                        status_code=409)


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    """The database cannot be reached (a restart, a failover): 503 with Retry-After, not a 500 — nothing was
    written (each request is one transaction) and the same request succeeds once it is back (see /readyz).
    A full disk, a read-only database or a stale schema is a 503 that says so, without Retry-After."""
    lasting = lasting_db_problem(exc)
    if lasting is not None:
        log.error("database error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": lasting}, status_code=503)
    log.warning("database unreachable on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": "the database is unreachable; nothing was changed, retry shortly (GET /readyz "
                                   "says when it is back)"}, status_code=503, headers={"Retry-After": "5"})


async def _database_programming(request: Request, exc: Exception) -> JSONResponse:
    """PostgreSQL's undefined table/column (a schema older than the code) as the stale-schema 503; else a 500."""
    if lasting_db_problem(exc) is not None:
        return await _database_down(request, exc)
    return await _internal(request, exc)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error (logged on the server)"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ValidationError, _pydantic)
    app.add_exception_handler(SpecError, _spec)
    app.add_exception_handler(IllegalTransition, _illegal)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(StateConflict, _conflict)
    app.add_exception_handler(IntegrityError, _integrity)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(InterfaceError, _database_down)
    app.add_exception_handler(ProgrammingError, _database_programming)
    app.add_exception_handler(Exception, _internal)


_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # a string (skipped whole) or a bracket


def json_depth_problem(body: bytes, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Why a JSON body nests deeper than ``limit`` (where the first level past it opens), else None."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return None
    depth = 0
    for token in _JSON_TOKEN.finditer(body):
        if token.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return (f"expected JSON nested at most {limit} levels deep, got deeper nesting (level {depth} "
                        f"opens at byte {token.start()})")
        elif token.group() in (b"]", b"}"):
            depth -= 1
    return None


class BodyLimitMiddleware:
    """413 for request bodies above `max_bytes` (checks Content-Length, then counts streamed bytes); 422 for a
    JSON body nested deeper than MAX_JSON_DEPTH (Python's parser would fail with a bare 400)."""

    def __init__(self, app, max_bytes: int):  # noqa: ANN001
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(send, int(length))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._reject(send, size)
        body = b"".join(chunks)
        too_deep = json_depth_problem(body) if _is_json(headers.get(b"content-type", b"").decode("latin-1")) else None
        if too_deep:
            item = {"loc": ["body"], "msg": too_deep, "field": "body", "type": "json_too_deep"}
            return await _send_json(send, 422, {"detail": [item]})
        replayed = False

        async def replay():  # noqa: ANN202
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _reject(self, send, size: int) -> None:  # noqa: ANN001
        await _send_json(send, 413, {"detail": f"request body too large: {size} bytes, the limit is "
                                               f"{self.max_bytes} bytes (settings.max_body_bytes)"})


async def _send_json(send, status: int, content: dict[str, Any]) -> None:  # noqa: ANN001
    payload = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
