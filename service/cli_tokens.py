"""`ncsweep token create/list/revoke`: API tokens in the configured database (the CLI's `token` group)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from service.cli_context import err, invocation, out

token_app = typer.Typer(help="API tokens.", no_args_is_help=True)


@token_app.command("create")
def token_create(ctx: typer.Context, name: str = typer.Option("cli", "--name", help="a label stored with the token"),
                 scope: str = typer.Option("write", "--scope", help="read | write | admin"),
                 save: bool = typer.Option(False, "--save", help="also write it to <home>/token")):
    """Create an API token in the configured database and print it (shown once)."""
    from nc_core.db.migrate import upgrade
    from service.auth import SCOPES, create_token

    if scope not in SCOPES:
        raise typer.BadParameter(f"expected one of {', '.join(SCOPES)}, got {scope!r}", param_hint="--scope")
    settings = invocation(ctx).settings
    url = settings.resolved_database_url()
    upgrade(url)
    token = create_token(url, name, scope)
    replaced = ""
    if save:
        path = Path(settings.home).expanduser() / "token"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.read_text().strip():
            replaced = f" (it replaces the token that was there; a {scope} token cannot do what a broader one did)" \
                if scope != "admin" else " (it replaces the token that was there)"
        from service.embedded import write_private

        write_private(path, token + "\n")  # private from its first byte (a chmod after the write left a window)
    out.print(token, highlight=False)
    err.print(f"saved to {path}; the CLI uses it from there{replaced}" if save else
              "not saved: the CLI uses it with --token, NCSWEEP_TOKEN, or `token create --save`", highlight=False)


@token_app.command("list")
def token_list(ctx: typer.Context):
    """The configured database's tokens: id, name, scope, created, revoked (never the tokens themselves)."""
    from rich.table import Table

    from nc_core.db.migrate import upgrade
    from service.auth import list_tokens

    url = invocation(ctx).settings.resolved_database_url()
    upgrade(url)
    table = Table(title="API tokens", title_justify="left")
    for col in ("id", "name", "scope", "created", "revoked"):
        table.add_column(col)
    for t in list_tokens(url):
        table.add_row(str(t["id"]), t["name"], t["scope"], f"{t['created_at']:%Y-%m-%d %H:%M}", "yes" if t["revoked"] else "")
    out.print(table)


@token_app.command("revoke")
def token_revoke(ctx: typer.Context, token: Optional[str] = typer.Argument(None, help="the token to revoke"),
                 name: Optional[str] = typer.Option(None, "--name", help="revoke every live token with this name")):
    """Revoke a token (or every token with a name): its next request gets 401."""
    from nc_core.db.migrate import upgrade
    from service.auth import revoke_named, revoke_token

    if (token is None) == (name is None):
        raise typer.BadParameter("expected a TOKEN or --name NAME (one of them)", param_hint="TOKEN / --name")
    url = invocation(ctx).settings.resolved_database_url()
    upgrade(url)
    if token is not None:
        if not revoke_token(url, token.strip()):
            raise typer.BadParameter("no such token in this database (`ncsweep token list` shows their names)",
                                     param_hint="TOKEN")
        out.print("revoked 1 token", highlight=False)
        return
    n = revoke_named(url, name)
    if not n:
        raise typer.BadParameter(f"no live token named {name!r} (`ncsweep token list` shows them)", param_hint="--name")
    out.print(f"revoked {n} token{'' if n == 1 else 's'} named {name!r}", highlight=False)
