"""`ncsweep down`: stop the embedded stack that `ncsweep up` (or `run.sh`) runs with this home."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from service.cli_context import err, invocation, out

# service.cli registers this command on its app, after `up` in `ncsweep --help`


def down(ctx: typer.Context, home: Optional[Path] = typer.Option(None, "--home", help="the stack's state directory "
                                                                 "(default: ncsweep's --home, else NCSWEEP_HOME, "
                                                                 "else .ncsweep)"),
         timeout: float = typer.Option(120.0, "--timeout", min=0.0, help="seconds to wait for it to stop (a running "
                                       "job first checkpoints its last completed epoch)")):
    """Stop the embedded stack running with this home, as Ctrl-C where it runs would (runs resume on the next start)."""
    from service.embedded_procs import StackStopError, stop_stack

    where = Path(home or invocation(ctx).settings.home).expanduser().resolve()
    try:
        stopped, leftovers = stop_stack(where, timeout)
    except StackStopError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    said = f"stopped the stack of {where} ({stopped})" if stopped else f"no stack is running with home {where}"
    out.print(said + (f"; stopped what one killed outright had left running: {', '.join(leftovers)}"
                      if leftovers else ""), highlight=False)
