"""What the `ncsweep` commands share within one invocation: the two consoles and the settings with a lazy client."""
from __future__ import annotations

import typer
from rich.console import Console

from nc_core.settings import Settings
from service.client import Client

out = Console()
err = Console(stderr=True, soft_wrap=True)


class Ctx:
    """Settings and a lazily built client, shared by the commands of one invocation."""

    api_used = False  # a command of this process built a client (main's last-resort message reads it)

    def __init__(self, settings: Settings):
        self.settings = settings
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client.from_settings(self.settings)
            Ctx.api_used = True
        return self._client


def invocation(ctx: typer.Context) -> Ctx:
    """The Ctx that the root callback stored on the typer context."""
    return ctx.obj
