"""Rich renderings of the `ncsweep` CLI: the watch view, run and worker tables, one run in full."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import typer
from rich.console import Group
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from nc_core.cli_report import TABLE_KEYS
from nc_core.db import progress
from nc_core.db.progress import attempt_eta
from nc_core.db.states import RUN_UNITS, metric_step
from nc_core.spec_fields import value_text
from nc_core.sweep import short_names
from service.cli_results import fmt_value
from service.run_text import environments_text

STATUS_STYLE = {"queued": "grey50", "running": "cyan", "succeeded": "green", "failed": "red",
                "cancelled": "yellow", "busy": "cyan", "idle": "green", "lost": "red", "stopped": "grey50"}


def _bar(fraction: float, width: int = 24) -> Any:
    return ProgressBar(total=1.0, completed=max(0.0, min(1.0, fraction or 0.0)), width=width)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _status(text: str) -> str:
    return f"[{STATUS_STYLE.get(text, 'white')}]{text}[/]"


#: A running run whose worker has not reported for this long may have lost it (heartbeats come every 5 s by
#: default; the lease, 120 s, decides): the views say so instead of showing it as healthy.
SILENT_AFTER_S = 30.0


def _silent(run: dict) -> bool:
    """A running run whose worker has not reported for SILENT_AFTER_S (its ETA means nothing then)."""
    return run["status"] == "running" and (run.get("silent_s") or 0.0) >= SILENT_AFTER_S


def _run_status(run: dict) -> str:
    """The run's status, and for a running one its worker's silence when it has not reported lately."""
    if _silent(run):
        return f"{_status('running')} [yellow](silent {run['silent_s']:.0f} s: worker lost?)[/]"
    return _status(run["status"])


def _grid(run: dict) -> str:
    grid = run.get("grid") or {}
    return " ".join(f"{k}={value_text(v)}" for k, v in zip(short_names(list(grid)), grid.values())) + \
        f" seed={run.get('seed')}"  # a width stored as 64.0 reads 64, a list [1, 2]


def run_eta(run: dict) -> float | None:
    """The reporter's ETA, else extrapolated from the progress the current attempt made since it started
    (started_at, start_epoch; progress.attempt_eta); None for a run that is not running."""
    if run["status"] != "running":
        return None
    if run.get("eta_s") is not None or not run.get("started_at"):
        return run.get("eta_s")

    started = datetime.fromisoformat(run["started_at"])
    started = started if started.tzinfo else started.replace(tzinfo=timezone.utc)
    return attempt_eta((datetime.now(timezone.utc) - started).total_seconds(), run_fraction(run),
                       run.get("epochs_total") or 0, run.get("start_epoch") or 0)


def _enrich_workers(workers: list[dict], runs: list[dict]) -> list[dict]:
    """Fill a worker's run progress and heartbeat age when the API's /workers does not give them."""

    by_id = {r["id"]: r for r in runs}
    out = []
    for w in workers:
        w = dict(w)
        if w.get("age_s") is None and w.get("last_seen"):
            seen = datetime.fromisoformat(w["last_seen"])
            seen = seen if seen.tzinfo else seen.replace(tzinfo=timezone.utc)
            w["age_s"] = (datetime.now(timezone.utc) - seen).total_seconds()
        run = by_id.get(w.get("current_run_id"))
        if w.get("run") is None and run is not None and w.get("status") == "busy":
            w["run"] = {"id": run["id"], "epoch": run.get("epoch"), "epochs_total": run.get("epochs_total"),
                        "eta_s": run_eta(run)}
        out.append(w)
    return out


def run_fraction(run: dict) -> float:
    """A run's work done, 0..1, by the API's rule (nc_core.db.progress.run_fraction)."""
    return progress.run_fraction(run["status"], run.get("epoch") or 0, run.get("epochs_total") or 0,
                                 run.get("step") or 0, run.get("steps_total") or 0)


def _add_columns(table: Table, cols: tuple[str, ...] | list[str], runs: list[dict]) -> None:
    """Status words ('succeeded', 'cancelled') and config words ('loss=label_smoothing') stay whole on
    narrow terminals; the other columns give way."""
    longest = max((len(w) for r in runs for w in _grid(r).split()), default=6)
    for col in cols:
        table.add_column(col, no_wrap=col in ("run", "status", "epoch"),
                         min_width={"status": 9, "config": min(longest, 30)}.get(col))


def _counts(runs: list[dict]) -> str:
    """'failed 1  succeeded 12': runs per status, coloured."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return _count_text(counts)


def _count_text(counts: dict[str, int]) -> str:
    return "  ".join(f"{_status(k)} {v}" for k, v in sorted(counts.items()) if v)


#: The order in which watch shows runs (and fetches them: only the rows it shows).
WATCH_ORDER = ("running", "failed", "queued", "succeeded", "cancelled")


def watch_view(detail: dict, runs: list[dict], workers: list[dict], max_rows: int = 25) -> Any:
    """The sweep's bar and its runs' status counts (as GET /sweeps/{id} counts them: its grid's runs), a table of
    its runs and, when it has any, one of its validate jobs (they recompute a finished run's metrics from its
    checkpoints: not runs of the grid, counted apart), then the workers. ``runs`` may be only the rows to show
    (running, failed, queued, then the rest): the counts and totals come from ``detail`` when it has them."""
    primary = [r for r in runs if r.get("kind", "train") != "validate"]
    jobs = [r for r in runs if r.get("kind", "train") == "validate"]
    head = Table.grid(padding=(0, 2))
    frac = detail.get("progress")
    frac = frac if frac is not None else progress.sweep_fraction([run_fraction(r) for r in primary])
    counts, job_counts = detail.get("counts"), detail.get("validate_jobs")
    totals = (sum(counts.values()) if counts is not None else len(primary),
              sum(job_counts.values()) if job_counts is not None else len(jobs))
    summary = _count_text(counts) if counts is not None else _counts(primary)
    job_summary = _count_text(job_counts) if job_counts is not None else _counts(jobs)
    summary += f"  [dim]validate jobs:[/] {job_summary}" if totals[1] else ""
    head.add_row(f"[bold]sweep {detail['id']}[/] {escape(str(detail.get('name', '')))}", _bar(frac, 40),
                 f"{100 * frac:5.1f}%", f"ETA {_eta(detail.get('eta_s')) or '?'}", summary)
    order = {status: i for i, status in enumerate(WATCH_ORDER)}
    parts: list[Any] = [head]
    for rows, total, title in ((primary, totals[0], "runs"), (jobs, totals[1], "validate jobs")):
        shown = sorted(rows, key=lambda r: (order.get(r["status"], len(order)), r["id"]))[:max_rows]
        if total or title == "runs":
            parts.append(_progress_table(f"{title} ({len(shown)} of {max(total, len(rows))})", shown, title != "runs"))
    return Group(*parts, workers_table(_enrich_workers(workers, runs)))


def _progress_table(title: str, shown: list[dict], validate: bool) -> Table:
    """Rows of runs with their progress bars; a validate job's row names the run it validates."""
    table = Table(title=title, title_justify="left", expand=False)
    kinds = {r.get("kind", "train") for r in shown} if not validate else {"validate"}
    step, rate = RUN_UNITS[kinds.pop()] if len(kinds) == 1 else ("step", "rate")  # a UFM counts iterations, ...
    cols = ("job", "status", "validates", "config") if validate else ("run", "status", "config")
    _add_columns(table, (*cols, "progress", "", step, rate, "ETA"), shown)
    for r in shown:
        f = run_fraction(r)
        unit = "" if rate != "rate" else " " + RUN_UNITS[r.get("kind", "train")][1]
        table.add_row(str(r["id"]), _run_status(r), *([f"run {r.get('parent_run_id', '?')}"] if validate else []),
                      _grid(r), _bar(f), f"{100 * f:5.1f}%", f"{r.get('epoch', 0)}/{r.get('epochs_total', 0)}",
                      f"{r['samples_per_s']:.0f}{unit}" if r.get("samples_per_s") else "",
                      "?" if _silent(r) else _eta(run_eta(r)))
    return table


def workers_table(workers: list[dict]) -> Any:
    table = Table(title=f"workers ({len(workers)})", title_justify="left")
    for col in ("worker", "status", "device", "util", "", "memory", "run", "epoch", "ETA", "seen"):
        table.add_column(col)
    for w in workers:
        util = w.get("util_percent")
        used, total = w.get("memory_used"), w.get("memory_total")
        mem = f"{used / 2**30:.1f}/{total / 2**30:.1f} GiB" if used is not None and total else ""
        run = w.get("run") or {}
        table.add_row(w["name"], _status(w["status"]), w.get("gpu_name") or w.get("device", ""),
                      _bar((util or 0) / 100, 12), f"{util:.0f}%" if util is not None else "", mem,
                      str(w.get("current_run_id") or ""),
                      f"{run.get('epoch', '')}/{run.get('epochs_total', '')}" if run else "",
                      _eta(run.get("eta_s")), f"{w['age_s']:.0f}s ago" if w.get("age_s") is not None else "")
    return table


def runs_table(rows: list[dict], total: int | None = None) -> Any:
    """Runs with status, config, progress, worker and last error line; the sweep and kind columns only when
    the runs differ in them. The title says how many of ``total`` matching runs are shown when not all."""
    shown = f"{len(rows)} run{'' if len(rows) == 1 else 's'}"
    table = Table(title=shown if total is None or total <= len(rows) else f"runs ({len(rows)} of {total})",
                  title_justify="left")
    cells = {"run": lambda r: str(r["id"]), "sweep": lambda r: str(r["sweep_id"]), "kind": lambda r: r.get("kind", ""),
             "status": _run_status, "config": _grid,
             "epoch": lambda r: f"{r.get('epoch', 0)}/{r.get('epochs_total', 0)}",
             "progress": lambda r: f"{100 * run_fraction(r):.0f}%", "worker": lambda r: "" if r.get("status") == "queued" else r.get("worker_name") or "",
             "error": _error_cell}
    same = {c for c in ("sweep", "kind") if len({cells[c](r) for r in rows}) <= 1 and (c != "kind" or all(
        r.get("kind", "train") == "train" for r in rows))}
    cols = [c for c in cells if c not in same]
    _add_columns(table, cols, rows)
    for r in rows:
        table.add_row(*(cells[c](r) for c in cols))
    if any(_error_cell(r).endswith("…") or "\n" in (r.get("error") or "").strip() for r in rows):
        table.caption = "the whole error of a run: ncsweep show RUN"
    return table


def _error_cell(run: dict) -> str:
    """The last line of a run's error, cut to 60 characters with an ellipsis."""
    last = (run.get("error") or "").strip().splitlines()[-1:] or [""]
    return last[0] if len(last[0]) <= 60 else last[0][:59] + "…"


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted path: leaf value} of a nested spec mapping (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def spec_changes(spec: dict) -> str:
    """The run's spec as the fields that differ from RunSpec's defaults ('epochs=30 optim.lr=0.1 …'), seed aside."""
    from nc_core.spec import RunSpec

    defaults = _flat(RunSpec().model_dump(mode="json"))
    changed = {p: v for p, v in _flat(spec).items() if p != "seed" and (p not in defaults or defaults[p] != v)}
    shown = {p: int(v) if isinstance(v, float) and v.is_integer() else v for p, v in changed.items()}  # width=256
    return " ".join(f"{p}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for p, v in shown.items()) or \
        "every field at its default"


#: What a run's cancel_requested flag means in each unfinished status (a finished run's flag says nothing more).
CANCEL_NOTE = {"running": " (cancel requested: it stops at its next step)",
               "queued": " (cancel requested: it is cancelled before it starts)"}


def run_detail(run: dict, metrics: list[dict]) -> Any:
    """One run in full: status, config, progress, worker, times, the whole error and its last metrics."""
    from rich.text import Text

    head = Table.grid(padding=(0, 2))
    parent = f" (validates run {run['parent_run_id']})" if run.get("parent_run_id") else ""
    rows = [("run", f"{run['id']} of sweep {run['sweep_id']}, {run.get('kind', 'train')}{parent}"),
            ("status", _run_status(run) + (CANCEL_NOTE.get(run.get("status"), "") if run.get("cancel_requested")
                                           else "")),
            ("config", _grid(run)), *((("spec", spec_changes(run["spec"])),) if isinstance(run.get("spec"), dict) else ()),
            ("spec hash", run.get("spec_hash", "")),
            ("progress", f"{RUN_UNITS.get(run.get('kind'), RUN_UNITS['train'])[0]} {run.get('epoch', 0)}/"
                         f"{run.get('epochs_total', 0)}, {100 * run_fraction(run):.0f}%"),
            ("attempt", f"{run.get('attempt', 0)} of {run.get('max_attempts', 0)}"),
            ("worker", (f"none (its last attempt ran on {run['worker_name']})" if run.get("status") == "queued"
                        else run["worker_name"]) if run.get("worker_name") else ""),
            *((("queue", f"{run['queued_ahead']} queued run(s) ahead of it"),) if run.get("queued_ahead") is not None
              else ()),
            *((("ran with", environments_text(run["environments"])),) if run.get("environments") else ()),
            *((k, str(run[k])) for k in ("created_at", "started_at", "finished_at") if run.get(k))]
    for name, value in rows:
        head.add_row(f"[bold]{name}[/]", value)
    parts: list[Any] = [head]
    if run.get("error"):
        parts += [Text("error:", style="bold red"), Text(run["error"])]
    last: dict[str, dict[str, tuple[int, Any]]] = {}
    notes: dict[tuple[str, str], str] = {}  # (split, key) → why its last value is NaN
    for m in metrics:
        seen = last.setdefault(m["split"], {}).get(m["key"])
        if seen is None or m["epoch"] >= seen[0]:
            last[m["split"]][m["key"]] = (m["epoch"], m["value"])
            notes.pop((m["split"], m["key"]), None)
            if m.get("note"):
                notes[(m["split"], m["key"])] = m["note"]
    if last:
        keys = TABLE_KEYS
        table = Table(title="last measured metrics", title_justify="left")
        for col in ("split", metric_step([run.get("kind", "train")]), *keys):
            table.add_column(col, justify="right")
        for split, values in sorted(last.items(), key=lambda kv: kv[0] != "train"):
            epoch = max(e for e, _ in values.values())
            table.add_row(split, str(epoch), *(fmt_value(values[k][1]) if k in values else "" for k in keys))
        parts.append(table)
        parts += [Text(f"nan {key} [{split}]: {why}", style="dim") for (split, key), why in sorted(notes.items())
                  if key in keys]
    return Group(*parts)


def parse_filter(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise typer.BadParameter(f"expected AXIS=VALUE such as loss.name=mse, got {text!r}", param_hint="--filter")
    path, value = text.split("=", 1)
    return path.strip(), value.strip()
