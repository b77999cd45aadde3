"""`ncsweep cancel`, `retry` and `validate`: act on a sweep's runs, or on one run, through the API."""
from __future__ import annotations

from typing import Optional

import typer

from service.cli_args import comma_ints, comma_items
from service.cli_context import invocation, out

# service.cli registers these commands on its app, each in its place in the listing of `ncsweep --help`


def cancel(ctx: typer.Context, sweep: Optional[int] = typer.Argument(None, help="sweep id (or --run)"),
           run: Optional[int] = typer.Option(None, "--run", help="cancel one run instead of a sweep")):
    """Cancel a sweep's unfinished runs, or one run (running runs stop at the next step)."""
    _need_one(sweep, run)
    out.print(action_line("cancel", invocation(ctx).client.cancel(sweep, run)), highlight=False)


def retry(ctx: typer.Context, sweep: Optional[int] = typer.Argument(None, help="sweep id (or --run)"),
          run: Optional[int] = typer.Option(None, "--run", help="retry one run instead of a sweep")):
    """Re-queue a sweep's failed/cancelled runs, or one run."""
    _need_one(sweep, run)
    out.print(action_line("retry", invocation(ctx).client.retry(sweep, run)), highlight=False)


def validate(ctx: typer.Context, run: int = typer.Argument(..., help="a finished train run"),
             epochs: Optional[str] = typer.Option(None, "--epochs",
                                                  help="checkpoint epochs, e.g. 10,20 (default: every stored one)"),
             splits: str = typer.Option("train,test", "--splits", help="train, test or train,test")):
    """Recompute a finished run's NC metrics from its stored checkpoints (a validate job on a worker)."""
    body = {"epochs": comma_ints(epochs, "--epochs") if epochs else None, "splits": comma_items(splits)}
    job = invocation(ctx).client.post(f"/runs/{run}/validate", body)
    which = ", ".join(map(str, job["options"]["epochs"])) if job["options"]["epochs"] else "every stored checkpoint"
    queued = "queued" if job["enqueued"] else "saved, but the broker was unreachable: the reconciler will send it"
    out.print(f"run {job['run_id']}: validate job of run {run} {queued} (epochs: {which}; splits: "
              f"{', '.join(job['options']['splits'])}); follow it with `ncsweep show {job['run_id']}`", highlight=False)


def _need_one(sweep: Optional[int], run: Optional[int]) -> None:
    if (sweep is None) == (run is None):
        given = "both" if sweep is not None else "neither"
        raise typer.BadParameter(f"expected a SWEEP id or --run ID (one of them), got {given}")


def action_line(action: str, res: dict) -> str:
    """'retry: retried: 3, sent to the workers, skipped: run 5 (its validate job 9 reads its checkpoints)'."""
    parts = [f"{k.replace('_', ' ')}: {v}" for k, v in res.items()
             if v not in (None, 0, False, {}) and k not in ("skipped", "enqueued")]
    if res.get("enqueued") is not None and res.get("retried"):
        parts.append("sent to the workers" if res["enqueued"] else "saved, but the broker was unreachable: the "
                     "reconciler will send " + ("it" if res["retried"] == 1 else "them"))
    parts += [f"skipped: run {run} (its validate job {job} reads its checkpoints)"
              for run, job in (res.get("skipped") or {}).items()]
    return f"{action}: " + (", ".join(parts) if parts else "nothing to do")
