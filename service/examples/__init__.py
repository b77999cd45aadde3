"""The embedded example: submit (or reuse) the digits sweep, show live progress, print the results table."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from nc_core.metric_keys import HEADLINE_KEYS
from nc_core.spec_fields import value_text
from nc_core.sweep import short_names

EXAMPLE = Path(__file__).resolve().parent / "digits_sweep.yaml"
RESULT_KEYS = HEADLINE_KEYS
FINISHED = ("succeeded", "failed", "cancelled")


def load_example(path: Path = EXAMPLE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def find_existing(client: Any, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The newest sweep submitted with exactly this spec (name, base, grid, seeds), if any."""
    from nc_core.sweep import SweepSpec

    want = SweepSpec.model_validate(spec).model_dump(mode="json")
    for summary in client.sweeps(limit=200):
        if summary.get("name") != spec.get("name"):
            continue
        detail = client.sweep(summary["id"])
        try:
            same = SweepSpec.stored(detail.get("spec") or {}).model_dump(mode="json") == want
        except Exception:  # noqa: BLE001 - an old spec that no longer validates
            same = False
        if same:
            return detail
    return None


def run_example(settings: Any, console: Any, *, fresh: bool = False, poll_s: float = 1.0) -> int:
    """Submit (or reuse) the example sweep, follow it to the end, print results; returns the sweep id."""
    from service.client import Client

    client = Client(settings.resolved_api_url(), settings.token)
    spec = load_example()
    existing = None if fresh else find_existing(client, spec)
    if existing is not None:
        counts = existing.get("counts", {})
        done = sum(counts.get(s, 0) for s in FINISHED)
        state = "finished" if done == existing.get("runs") else "unfinished: resuming"
        console.print(f"reusing example sweep {existing['id']} ({state}); pass --fresh for a new one")
        sweep_id = existing["id"]
    else:
        created = client.submit(spec)
        sweep_id = created["sweep_id"]
        console.print(f"submitted example sweep {sweep_id}: {created['runs']} runs")
    follow(client, sweep_id, console, poll_s)
    print_results(client, sweep_id, console)
    return sweep_id


def follow(client: Any, sweep_id: int, console: Any, poll_s: float = 1.0) -> None:
    """Rich progress: one bar for the sweep (finished runs), one per running run (epochs)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        detail = client.sweep(sweep_id)
        total = detail["runs"]
        sweep_bar = progress.add_task(f"sweep {sweep_id}", total=total)
        bars: dict[int, Any] = {}
        while True:
            runs = list(client.iter_runs(sweep_id=sweep_id))
            finished = sum(r["status"] in FINISHED for r in runs)
            progress.update(sweep_bar, completed=finished)
            _update_run_bars(progress, bars, runs)
            if finished >= total:
                return
            time.sleep(poll_s)


def _update_run_bars(progress: Any, bars: dict[int, Any], runs: list[dict[str, Any]]) -> None:
    for r in runs:
        rid, status = r["id"], r["status"]
        if status == "running" and rid not in bars:
            bars[rid] = progress.add_task(f"  run {rid} {_label(r)}", total=max(1, r.get("epochs_total") or 1))
        if rid in bars:
            total = max(1, r.get("epochs_total") or 1)
            done = total if status == "succeeded" else r.get("epoch", 0)
            progress.update(bars[rid], total=total, completed=done,
                            description=f"  run {rid} {_label(r)} [{status}]")
            if status in FINISHED:
                progress.remove_task(bars.pop(rid))


def _label(run: dict[str, Any]) -> str:
    axes = run.get("grid") or {}
    values = " ".join(f"{k}={value_text(v)}" for k, v in zip(short_names(list(axes)), axes.values()))
    return f"{values} seed={run.get('seed')}".strip()


def print_results(client: Any, sweep_id: int, console: Any) -> None:
    """Final test accuracy and NC metrics per configuration, mean ± std over seeds."""
    from rich.table import Table
    from rich.text import Text

    from service.cli_results import column_decimals, mean_std

    body = client.results(sweep_id, keys=list(RESULT_KEYS), split="test")
    runs = list(client.iter_runs(sweep_id=sweep_id))
    failed = [r for r in runs if r["status"] != "succeeded"]
    title = Text(f"sweep {sweep_id}: test split, last epoch, mean ± std over seeds", no_wrap=True, overflow="ignore")
    table = Table(title=title, title_justify="left")
    for label in short_names(body["group_by"]):
        table.add_column(label)
    table.add_column("runs", justify="right")
    for key in RESULT_KEYS:
        table.add_column(key, justify="right")
    decimals = {k: column_decimals(g["metrics"].get(k) for g in body["groups"]) for k in RESULT_KEYS}
    for group in body["groups"]:  # each column at one number of decimals (98.2±0.6, 0.110±0.001)
        cells = [value_text(group["values"].get(p)) for p in body["group_by"]] + [str(group["runs"])]
        table.add_row(*cells, *(mean_std(group["metrics"].get(k), decimals[k], "—") for k in RESULT_KEYS))
    console.print(table)
    for r in failed:
        console.print(f"run {r['id']} {_label(r)}: {r['status']}" + (f" — {r['error']}" if r.get("error") else ""))

