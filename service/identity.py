"""How a client knows it talks to the ncsweep API before it sends a token: the ``X-Ncsweep-Api`` header.

Every response carries it (a port a stopped stack left in <home>/api_url may now serve another program).
"""
from __future__ import annotations

from typing import Any

HEADER = "x-ncsweep-api"
VALUE = "1"


class IdentityHeaderMiddleware:
    """Adds ``X-Ncsweep-Api: 1`` to every HTTP response (pure ASGI: streamed responses stay streamed)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def marked(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (HEADER.encode(), VALUE.encode())]}
            await send(message)

        return await self.app(scope, receive, marked)
