"""Error handlers and the body-size middleware: 422 with field paths, 404/409/413, no stack traces."""
from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from nc_core.db.states import IllegalTransition
from nc_core.db.sweeps_repo import StateConflict
from nc_core.sweep import SpecError, field_loc

log = logging.getLogger(__name__)
_SOURCES = ("body", "query", "path", "header", "cookie")  # request parts FastAPI puts first in loc
_PATH_PREFIX = re.compile(r"^([A-Za-z_][\w]*(?:\.[\w]+)*): ")


class NotFound(LookupError):
    """An unknown sweep/run id (HTTP 404)."""


def error_item(field: str, msg: str, loc: list[Any] | None = None) -> dict[str, Any]:
    return {"loc": loc if loc is not None else field_loc(field), "msg": msg, "field": field}


def spec_error_response(exc: SpecError) -> JSONResponse:
    """422 with one item per (field, message) of the error: every bad value of a sweep, not just the first."""
    return JSONResponse({"detail": [error_item(f, m) for f, m in exc.errors]}, status_code=422)


def pydantic_items(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic errors → [{loc, msg, field}]; a model-level 'path: message' error names its path."""
    items = []
    for err in errors:
        loc = [x for x in err.get("loc", ()) if x != "__root__"]
        msg = str(err.get("msg", "")).removeprefix("Value error, ")  # pydantic's wrapper of a validator's text
        if err.get("type") == "json_invalid":  # loc is ("body", character offset)
            items.append({"loc": ["body"], "msg": f"malformed JSON at character {loc[-1]}: {msg}",
                          "field": "body", "type": "json_invalid"})
            continue
        parts = [str(x) for x in (loc[1:] if loc and loc[0] in _SOURCES else loc)]
        m = _PATH_PREFIX.match(msg)
        if not parts and m:  # model validator: "grid.foo: unknown field ..." names the path itself
            parts = m.group(1).split(".")
        field = ".".join(parts) or "body"
        items.append({"loc": loc, "msg": msg, "field": field, "type": err.get("type")})
    return items


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": pydantic_items(list(exc.errors()))}, status_code=422)


async def _pydantic(_: Request, exc: ValidationError) -> JSONResponse:
    return JSONResponse({"detail": pydantic_items(exc.errors(include_url=False))}, status_code=422)


async def _spec(_: Request, exc: SpecError) -> JSONResponse:
    return spec_error_response(exc)


async def _illegal(_: Request, exc: IllegalTransition) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "run_id": exc.run_id, "status": exc.current}, status_code=409)


async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _conflict(_: Request, exc: StateConflict) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error (logged on the server)"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ValidationError, _pydantic)
    app.add_exception_handler(SpecError, _spec)
    app.add_exception_handler(IllegalTransition, _illegal)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(StateConflict, _conflict)
    app.add_exception_handler(Exception, _internal)


class BodyLimitMiddleware:
    """413 for request bodies above `max_bytes`: checks Content-Length, then counts streamed bytes."""

    def __init__(self, app, max_bytes: int):  # noqa: ANN001
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
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
        replayed = False

        async def replay():  # noqa: ANN202
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _reject(self, send, size: int) -> None:  # noqa: ANN001
        payload = json.dumps({"detail": f"request body too large: {size} bytes, the limit is "
                                        f"{self.max_bytes} bytes (settings.max_body_bytes)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
