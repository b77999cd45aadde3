"""`ncsweep sweeps`: the sweeps, newest first, with their runs per status and progress."""
from __future__ import annotations

import json

import typer

from service.cli_args import int_range
from service.cli_context import err, invocation, out

# service.cli registers this command on its app, in its place in the listing of `ncsweep --help`


def sweeps(ctx: typer.Context, limit: int = typer.Option(20, "--limit", callback=int_range(1, 1000),
                                                         help="at most this many, the newest first"),
           as_json: bool = typer.Option(False, "--json", help="the API's page as JSON, for scripts")):
    """List the sweeps, newest first: name, owner, when, axes, runs per status and progress."""
    page = invocation(ctx).client.get("/sweeps", limit=limit)
    if as_json:
        out.print_json(json.dumps(page))
        return
    out.print(sweeps_table(page["items"], page["total"]))
    if page["total"] > len(page["items"]):
        err.print(f"showing the newest {len(page['items'])} of {page['total']} sweeps (--limit {limit})",
                  highlight=False)


def sweeps_table(items: list[dict], total: int):  # noqa: ANN201 - a rich Table
    """A row per sweep: id, name, owner, created (UTC, to the minute), axes, runs, runs per status, progress (the
    users' words as written: never read as rich markup)."""
    from rich.markup import escape
    from rich.table import Table

    from service.cli_views import _bar, _count_text

    shown = f"{len(items)} sweep{'' if len(items) == 1 else 's'}"
    table = Table(title=shown if total <= len(items) else f"sweeps ({len(items)} of {total})", title_justify="left")
    for col in ("sweep", "name", "owner", "created (UTC)", "axes", "runs", "status", "", "progress"):
        table.add_column(col, no_wrap=col in ("sweep", "created (UTC)", "progress"))
    for s in items:
        progress = float(s.get("progress") or 0.0)
        table.add_row(str(s["id"]), escape(s["name"]), escape(s.get("owner", "")), _minute(s.get("created_at", "")),
                      escape(", ".join(map(str, s.get("axes") or []))) or "—", str(s.get("runs", 0)),
                      _count_text(s.get("counts") or {}), _bar(progress, width=16), f"{100 * progress:.0f}%")
    if not items:
        table.caption = "no sweep yet: `ncsweep submit sweep.yaml` submits one"
    return table


def _minute(stamp: str) -> str:
    """'2026-11-30T06:45:02.123+00:00' → '2026-11-30 06:45' (the API's times are UTC)."""
    return stamp.replace("T", " ")[:16]
