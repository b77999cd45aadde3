"""The `ncsweep` command line: start the stack, submit sweeps, watch them, query results, export, plot."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from nc_core.cli_report import TABLE_KEYS
from nc_core.metric_keys import HEADLINE_KEYS
from nc_core.settings import Settings, config_error, warn_unknown_variables
from service.cli_actions import cancel, retry, validate
from service.cli_args import (comma_ints as _ints, comma_items as _csv, int_range, read_sweep_file,
                              repeated_axis_values, show_version)
from service.cli_cleanup import cleanup_app
from service.cli_context import Ctx, err, out
from service.cli_context import invocation as _ctx
from service.cli_output import export, plot
from service.cli_results import (body_counts, empty_header, results_caveat, results_filter, results_hint, results_json,
                                 results_table, shown_results)
from service.cli_stack import down
from service.cli_sweeps import sweeps
from service.cli_tokens import token_app
from service.cli_views import _enrich_workers, parse_filter, run_detail, runs_table, watch_view, workers_table
from service.cli_watch import sweep_finished, watch_rows
from service.client import ApiError, Unreachable

app = typer.Typer(help="ncsweep: neural-collapse training sweeps on a job queue.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.add_typer(token_app, name="token")


@app.callback()
def _root(ctx: typer.Context,
          api: Optional[str] = typer.Option(None, "--api", envvar="NCSWEEP_API_URL", help="API base URL (default: "
                                            "<home>/api_url, which `ncsweep up` writes, else NCSWEEP_API_HOST:_PORT)"),
          home: Optional[Path] = typer.Option(None, "--home", envvar="NCSWEEP_HOME",
                                              help="state directory (default: .ncsweep)"),
          token: Optional[str] = typer.Option(None, "--token", help="bearer token (default: NCSWEEP_TOKEN or <home>/token)"),
          version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                       help="print the version and exit")):
    warn_unknown_variables()  # a misspelt NCSWEEP_ variable would otherwise be ignored without a word
    overrides: dict[str, Any] = {}
    if api:
        overrides["api_url"] = api
    if home:
        overrides["home"] = home
    if token:
        overrides["token"] = token
    ctx.obj = Ctx(Settings(**overrides))


@app.command()
def up(ctx: typer.Context, example: bool = typer.Option(True, "--example/--no-example", help="submit the bundled example sweep"),
       home: Optional[Path] = typer.Option(None, "--home", help="state directory (default: ncsweep's --home, "
                                           "else NCSWEEP_HOME, else .ncsweep)"),
       workers: Optional[int] = typer.Option(None, "--workers", callback=int_range(1), help="CPU workers when "
                                             "there is no GPU (default: 2, or 1 on a one-core machine)"),
       gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU indices, e.g. 0,1 (default: every GPU found)"),
       port: Optional[int] = typer.Option(None, "--port", callback=int_range(1, 65535), help="API port; one given "
                                          "must be free (default: NCSWEEP_API_PORT, else 8765, or any free port if "
                                          "that one is taken)"),
       serve: Optional[bool] = typer.Option(None, "--serve/--no-serve", help="keep serving after the example "
                                            "(default: serve only with --no-example)"),
       fresh: bool = typer.Option(False, "--fresh", help="submit the example again even if it already ran")):
    """Start the embedded stack (SQLite + Redis + workers + API) under one directory."""
    from service import embedded

    rc = embedded.main(home=home or _ctx(ctx).settings.home, example=example, keep_running=serve, workers=workers,
                       gpus=_ints(gpus, "--gpus") if gpus else None, api_port=port, fresh=fresh)
    if rc:
        raise typer.Exit(rc)


app.command()(down)  # service.cli_stack's command, after up in --help


@app.command()
def worker(gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU indices, e.g. 0,1 (default: every GPU found)"),
           cpu: int = typer.Option(1, "--cpu", callback=int_range(1), help="CPU workers when no GPU is used")):
    """Start one worker process per GPU (or CPU workers) against the configured broker and database."""
    from worker import launch

    try:
        rc = launch.main(_ints(gpus, "--gpus") if gpus else None, cpu)
    except launch.GpuSelectionError as exc:
        raise typer.BadParameter(str(exc), param_hint="--gpus") from None
    if rc:
        raise typer.Exit(rc)


@app.command()
def submit(ctx: typer.Context, path: Path = typer.Argument(..., exists=True, dir_okay=False, help="sweep YAML or JSON")):
    """Submit a sweep; prints its id and run count."""
    spec = read_sweep_file(path)
    res = _ctx(ctx).client.submit(spec)
    dup = res.get("duplicates")
    extra = f", {dup} duplicate{'' if dup == 1 else 's'} dropped" if dup else ""
    queued = "" if res.get("enqueued", True) else " (broker unreachable: runs stay queued)"
    n = res["runs"]
    out.print(f"sweep {res['sweep_id']}: {n} run{'' if n == 1 else 's'}{extra}{queued}", highlight=False)
    for repeat in repeated_axis_values(spec) if dup else ():
        err.print(f"note: {repeat}: its runs were submitted once", highlight=False, markup=False)


@app.command()
def watch(ctx: typer.Context, sweep: int = typer.Argument(..., help="sweep id"),
          once: bool = typer.Option(False, "--once", help="print the current view once and exit"),
          interval: float = typer.Option(1.0, "--interval", help="refresh seconds"),
          max_rows: int = typer.Option(25, "--max-rows", help="runs shown (running first)"),
          timeout: float = typer.Option(0, "--timeout", help="give up after this many seconds (exit 3); 0 = never")):
    """Live progress bars per run and for the sweep, plus workers; exits when the sweep finishes."""
    from rich.live import Live

    client = _ctx(ctx).client

    def snapshot() -> tuple[Any, bool]:
        detail = client.sweep(sweep)
        return watch_view(detail, watch_rows(client, detail, max_rows), client.workers(), max_rows), \
            sweep_finished(detail)

    view, done = snapshot()
    if once:
        out.print(view)
        return
    deadline = time.monotonic() + timeout if timeout > 0 else None

    def wait(update) -> Any:  # noqa: ANN001
        nonlocal view, done
        while not done:
            if deadline is not None and time.monotonic() > deadline:
                err.print(f"sweep {sweep} still running after {timeout:g} s (--timeout)")
                raise typer.Exit(3)
            time.sleep(interval)
            view, done = snapshot()
            update(view)

    if out.is_terminal:
        with Live(view, console=out, refresh_per_second=4) as live:
            wait(live.update)
    else:  # a pipe or a log: no redraws, the final view once
        wait(lambda _: None)
        out.print(view)
    out.print(f"sweep {sweep} finished", highlight=False)


app.command()(sweeps)  # service.cli_sweeps' command, before runs in --help


@app.command()
def runs(ctx: typer.Context, sweep: Optional[int] = typer.Option(None, "--sweep", help="only this sweep's runs"),
         status: Optional[str] = typer.Option(None, "--status", help="only runs that are queued | running | "
                                              "succeeded | failed | cancelled"),
         filter: list[str] = typer.Option([], "--filter", help="AXIS=VALUE on the run spec, e.g. loss.name=mse; "
                                          "repeat an AXIS for any of several values"),
         limit: int = typer.Option(200, "--limit", callback=int_range(1), help="at most this many runs (the "
                                   "title says how many match)")):
    """List runs (optionally of one sweep, with one status, matching spec filters)."""
    filters = [parse_filter(f) for f in filter]
    client = _ctx(ctx).client
    rows, total = client.first_runs(limit, sweep_id=sweep, status=status, filters=filters)
    if not rows and sweep is not None:
        client.sweep(sweep)  # no such sweep: its 404, as results/show/watch give
    out.print(runs_table(rows, total))
    if total > len(rows):
        err.print(f"showing the first {len(rows)} of {total} matching runs (--limit {limit})", highlight=False)


@app.command()
def show(ctx: typer.Context, run: int = typer.Argument(..., help="run id")):
    """One run in full: status, config, progress, worker, times, its whole error and its last metrics."""
    client = _ctx(ctx).client
    out.print(run_detail(client.run(run), client.run_metrics(run, keys=list(TABLE_KEYS))))


@app.command()
def results(ctx: typer.Context, sweep: int = typer.Argument(..., help="sweep id"),
            group_by: Optional[str] = typer.Option(None, "--group-by", help="comma-separated axes (default: all the "
                                                   "sweep's axes)"),
            keys: Optional[str] = typer.Option(None, "--keys", help="comma-separated metric keys (default: "
                                               f"{','.join(HEADLINE_KEYS)}; 'all' for every key the sweep stores "
                                               "that has a defined value)"),
            split: Optional[str] = typer.Option(None, "--split", help="train | test (default: test; train for a "
                                                "sweep of UFM runs, which have no test split)"),
            epoch: str = typer.Option("last", "--epoch", help="'last' (each run's last measured epoch) or a number"),
            all_groups: bool = typer.Option(False, "--all-groups", help="also list the groups none of whose runs "
                                            "has metrics yet (left out by default, counted on stderr)"),
            filter: list[str] = typer.Option([], "--filter", help="only the runs with FIELD=VALUE, a spec field "
                                             "such as loss.name=mse (repeatable: a repeated field matches any of "
                                             "its values, different fields must all match)"),
            as_json: bool = typer.Option(False, "--json", help="print the API's response as JSON (no table, no "
                                         "notes)")):
    """Results grouped by axes at the last (or a given) epoch: mean ± sample std over seeds (and the axes
    --group-by leaves out)."""
    key_list = None if keys == "all" else (_csv(keys) or list(HEADLINE_KEYS))
    filters = [results_filter(f) for f in filter]
    client = _ctx(ctx).client
    body = client.results(sweep, _csv(group_by), key_list, split, epoch, filters)
    if as_json:
        typer.echo(results_json(body))
        return
    split = body.get("split", split or "test")
    shown, notes = shown_results(body, split, epoch, all_groups=all_groups, all_keys=keys == "all")
    counts = body_counts(body)
    asked = key_list if keys and keys != "all" else None  # keys the user named: the hint names them
    hint = results_hint(body, sweep, split, epoch, counts=counts, asked=asked)
    if hint and counts is None:  # an API without the groups' statuses: the sweep's counts say why
        counts = client.sweep(sweep).get("counts")
        hint = results_hint(body, sweep, split, epoch, counts=counts, asked=asked)
    out.print(results_table(shown, sweep, split, epoch, width=out.width,
                            empty=empty_header(body, split, epoch, counts)))
    for note in notes:
        err.print(note, highlight=False, markup=False)
    caveat = results_caveat(body)
    if caveat:
        err.print(caveat, highlight=False, markup=False)
    if hint:
        err.print(hint, highlight=False)


app.command()(export)  # service.cli_output's commands, registered in their --help places


@app.command()
def workers(ctx: typer.Context, every: bool = typer.Option(False, "--all", help="also the workers stopped or lost "
                                                           "for over a day (left out by default)")):
    """Workers with status (busy/idle/lost), GPU use and their run's progress."""
    client = _ctx(ctx).client
    workers = client.workers(every)
    runs = [client.run(w["current_run_id"]) for w in workers if w.get("current_run_id") and not w.get("run")]
    out.print(workers_table(_enrich_workers(workers, runs)))


app.command()(cancel)  # service.cli_actions' commands, then service.cli_output's plot, in their --help places
app.command()(retry)
app.command()(validate)
app.command()(plot)
app.registered_commands += cleanup_app.registered_commands  # delete, prune: service.cli_cleanup's, last in --help


# -- entry point ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Console entry point: API errors and an unreachable API print one line and exit 1."""
    from nc_core.cli_help import plain_flags

    plain_flags()
    Ctx.api_used = False
    for console in (out, err):
        if not console.is_terminal:  # a pipe or a log: keep table rows whole rather than 80 columns
            console.width = max(console.width, 160)
    try:
        rc = app(args=argv, prog_name="ncsweep", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("aborted")
        return 130
    except typer.TyperException as exc:  # usage errors (typer vendors click): show like click does
        if hasattr(exc, "show"):
            exc.show()
            return getattr(exc, "exit_code", 2)
        err.print(f"error: {exc}", highlight=False)
    except Unreachable as exc:
        err.print(f"error: {exc}", highlight=False)
    except ApiError as exc:  # every problem of a 422, one per line
        err.print("error: " + "\n".join(exc.lines()), highlight=False, markup=False)
    except (OSError, ValueError) as exc:  # a bad NCSWEEP_ setting (a ValueError) names its variable
        err.print(f"error: {config_error(exc) or exc}", highlight=False, markup=False)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - e.g. a reply of another ncsweep version: one line, not a traceback
        if os.environ.get("NCSWEEP_DEBUG"):
            raise
        if config_error(exc):  # the database URL: a dialect SQLAlchemy lacks, a database it cannot reach
            err.print(f"error: {config_error(exc)}", highlight=False, markup=False)
            return 1
        why = "is the API the same ncsweep version as this CLI? " if _reading_a_reply(exc) else ""
        err.print(f"error: unexpected {type(exc).__name__}: {exc} ({why or 'a bug in ncsweep; '}NCSWEEP_DEBUG=1 "
                  "shows the traceback)", highlight=False, markup=False)
    return 1


def _reading_a_reply(exc: Exception) -> bool:
    """Whether ``exc`` looks like a reply the CLI could not read: an error of a missing or mistyped value
    (KeyError, TypeError, ...) raised while a command was using the API (it had built its client), such as a
    reply of another ncsweep version gives — not, say, a local bind() error of `ncsweep up`."""
    return isinstance(exc, (LookupError, TypeError, AttributeError)) and Ctx.api_used


if __name__ == "__main__":
    sys.exit(main())
