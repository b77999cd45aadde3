"""`ncsweep delete` and `ncsweep prune`: reclaim disk (registered on the root app by service.cli)."""
from __future__ import annotations

import sys

import typer

from service.cli_args import int_range
from service.cli_context import err, invocation, out

cleanup_app = typer.Typer()


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # not reached


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _not_removed(res: dict) -> None:
    for line in res.get("not_removed") or []:
        err.print(f"not removed: {line}", highlight=False, markup=False)


def interactive() -> bool:
    """Whether a person can answer the confirmation (stdin is a terminal)."""
    return sys.stdin is not None and sys.stdin.isatty()


@cleanup_app.command()
def delete(ctx: typer.Context, sweep: int = typer.Argument(..., help="sweep id"),
           yes: bool = typer.Option(False, "--yes", "-y", help="delete without asking (needed when stdin is not a "
                                    "terminal)")):
    """Delete a sweep with its runs, metrics, checkpoints and artifact folders (`cancel` its runs first)."""
    client = invocation(ctx).client
    if not yes:
        detail = client.sweep(sweep)  # an unknown sweep: its 404 before any question
        counts = ", ".join(f"{n} {status}" for status, n in sorted(detail.get("counts", {}).items()) if n)
        jobs = sum((detail.get("validate_jobs") or {}).values())
        jobs_text = f" and {_plural(jobs, 'validate job')}" if jobs else ""
        what = (f"sweep {sweep} {detail.get('name', '')!r}: {_plural(detail.get('runs', 0), 'run')}"
                f"{f' ({counts})' if counts else ''}{jobs_text}, with their metrics, checkpoints and artifact folders")
        if not interactive():
            raise typer.BadParameter(f"stdin is not a terminal, so deleting {what} cannot be confirmed; expected "
                                     "--yes to delete without asking", param_hint="--yes")
        if not typer.confirm(f"Delete {what}? This cannot be undone", default=False, err=True):
            err.print("nothing deleted", highlight=False)
            raise typer.Exit(1)
    res = client.delete_sweep(sweep)
    out.print(f"deleted sweep {sweep}: {_plural(res['runs'], 'run')}, {_plural(res['metric_rows'], 'metric row')}, "
              f"{_plural(res['checkpoint_files'], 'checkpoint file')} in {_plural(res['folders'], 'folder')}, "
              f"{_size(res['bytes_freed'])} freed", highlight=False)
    _not_removed(res)


@cleanup_app.command()
def prune(ctx: typer.Context, sweep: int = typer.Argument(..., help="sweep id"),
          keep_last: int = typer.Option(..., "--keep-last", callback=int_range(0), help="checkpoints kept per "
                                        "finished run, the newest (0: none; metrics always stay)")):
    """Keep only the newest --keep-last checkpoints of each finished run of a sweep (metrics stay)."""
    res = invocation(ctx).client.prune(sweep, keep_last)
    out.print(f"pruned sweep {sweep} to the newest {_plural(keep_last, 'checkpoint')} per finished run: "
              f"{_plural(res['checkpoint_rows'], 'checkpoint row')} and {_plural(res['checkpoint_files'], 'file')} "
              f"of {_plural(res['runs_pruned'], 'run')} removed, {_size(res['bytes_freed'])} freed", highlight=False)
    for run, job in sorted((res.get("skipped") or {}).items(), key=lambda kv: int(kv[0])):
        err.print(f"skipped run {run}: its validate job {job} is queued or running (prune it once that job has "
                  "ended)", highlight=False)
    if res.get("unfinished"):
        err.print(f"{_plural(res['unfinished'], 'queued or running run')} left as they are", highlight=False)
    _not_removed(res)
