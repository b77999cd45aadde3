"""`ncsweep results`: the results table over seeds and its notes (why values differ in epoch, why none).

The words and cell numbers come from service.cli_results_text.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from nc_core.sweep import short_names
from service.cli_results_text import (FEWER_NOTE, body_counts, cell_text, empty_header, epochs_text, pending,
                                      spread_note, status_text)

__all__ = ["body_counts", "empty_header", "results_filter", "results_json", "results_table", "shown_results",
           "results_caveat", "results_hint", "column_decimals", "mean_std", "fmt_value"]
RESULTS_PARAMS = ("group_by", "keys", "split", "epoch")  # the API's own parameters: never a --filter's field


def results_filter(text: str) -> tuple[str, str]:
    """One --filter of `ncsweep results`: FIELD=VALUE as `runs --filter` takes it (the API parses the value as
    GET /runs does), FIELD not one of the results' own parameters."""
    from service.cli_views import parse_filter  # cli_views imports this module

    path, value = parse_filter(text)
    if path in RESULTS_PARAMS:
        raise typer.BadParameter(f"expected a spec field path such as loss.name=mse, got {path!r} (use "
                                 f"--{path.replace('_', '-')})", param_hint="--filter")
    return path, value


def results_json(body: Any) -> str:
    """The API's response as `ncsweep results --json` prints it: indented JSON, nothing else."""
    return json.dumps(body, indent=2)


def fmt_value(x: Any) -> str:
    """A table cell: floats to 4 significant digits, None empty, anything else as text."""
    return f"{x:.4g}" if isinstance(x, float) else ("" if x is None else str(x))


def column_decimals(aggs: Iterable[dict | None]) -> int | None:
    """Decimals of one column of mean ± std cells of the example's table (service.examples.print_results; `ncsweep
    results` formats each cell on its own, cli_results_text.cell_text), from the largest |mean| in it, so that its
    cells line up:
    1 from 10 up (accuracy in %: 98.2±0.6), 3 from 0.1 up (0.110±0.001, 1.371±0.269), below that 3 significant
    digits of the largest (0.0512), and None (scientific notation) under 1e-5."""
    means = [abs(m["mean"]) for m in aggs if m and isinstance(m.get("mean"), (int, float))
             and math.isfinite(m["mean"]) and m["mean"] != 0]
    top = max(means, default=1.0)
    if top >= 10:
        return 1
    if top >= 0.1:
        return 3
    digits = 2 - math.floor(math.log10(top))
    return digits if digits <= 7 else None


def mean_std(m: dict | None, decimals: int | None, empty: str = "") -> str:
    """'mean±std' of one aggregate with ``decimals`` (None: scientific); the mean alone for a single run,
    ``empty`` when nothing was measured."""
    mean, std = (m or {}).get("mean"), (m or {}).get("std")
    if mean is None:
        return empty
    text = (lambda x: f"{x:.{decimals}f}") if decimals is not None else (lambda x: f"{x:.2e}")
    return text(mean) + (f"±{text(std)}" if std is not None else "")


def results_table(body: Any, sweep: int, split: str, epoch: str | int = "last", width: int = 10**6,
                  empty: str = "no finished results yet") -> Any:
    """Render /sweeps/{id}/results: groups (axis values) × keys with mean ± std over seeds (the title says what
    else was pooled), each cell at its own precision (cell_text), marked (n=k) where fewer runs are behind it
    than the row's runs column counts (a footnote says why). When the keys do not fit in ``width`` columns: one
    table per run of keys that fits (groups × those keys), or one row per group and key where that takes fewer
    lines (few groups), so many groups × many keys stay a few tables. ``empty``: the header of a table without
    groups."""
    items = body.get("groups", []) if isinstance(body, dict) else body
    group_by = body.get("group_by") if isinstance(body, dict) else None
    keys = body.get("keys") if isinstance(body, dict) else None
    unit = body.get("unit", "epoch") if isinstance(body, dict) else "epoch"  # 'iteration' for a UFM sweep
    at = f"last {unit}" if str(epoch) == "last" else f"{unit} {epoch}"
    title = f"sweep {sweep} results [{split}, {at}] ({spread_note(body if isinstance(body, dict) else {})})"
    if not items:
        table = _table(title)
        table.add_column(empty)
        return table
    group_by = group_by or list((items[0].get("values") or {}).keys())
    keys = keys or list((items[0].get("metrics") or {}).keys())
    rows, fewer = [], False
    for item in items:
        group, metrics = item.get("values") or {}, item.get("metrics") or {}
        counts = [(metrics.get(k) or {}).get("count", 0) for k in keys]
        n = max(counts, default=0)
        marks = [c < n and (metrics.get(k) or {}).get("mean") is not None for k, c in zip(keys, counts)]
        cells = [cell_text(metrics.get(k)) + (f" (n={c})" if mark else "") for k, c, mark in zip(keys, counts, marks)]
        fewer = fewer or any(marks)
        rows.append(([fmt_value(group.get(g)) for g in group_by], str(n) if n == item.get("runs") else
                     f"{n}/{item.get('runs', '')}", cells))
    heads = [*short_names(group_by), "runs"]
    fixed = [max([len(h)] + [len(r[0][i]) for r in rows]) for i, h in enumerate(heads[:-1])] + [5]
    cells = [max([len(k)] + [len(r[2][i]) for r in rows]) for i, k in enumerate(keys)]
    chunks = _key_chunks(cells, width - sum(w + 3 for w in fixed) - 1)
    if len(chunks) == 1 or len(chunks) * (len(rows) + 5) < len(rows) * (len(keys) + 1) + 4:
        tables = []
        for c, (a, b) in enumerate(chunks):
            tables.append(_wide(title if c == 0 else f"sweep {sweep} results, continued", heads, keys[a:b],
                                [(v, n, row[a:b]) for v, n, row in rows]))
            if len(chunks) > 1:
                tables[-1].caption = f"keys {a + 1}–{b} of {len(keys)}"
        if fewer:
            tables[-1].caption = "; ".join(filter(None, (tables[-1].caption, FEWER_NOTE)))
        return tables[0] if len(tables) == 1 else Group(*tables)
    table = _table(title)
    for col in heads:
        table.add_column(col, justify="right" if col == "runs" else "left", no_wrap=True)
    table.add_column("key", no_wrap=True)
    table.add_column("mean ± std", justify="right", no_wrap=True)
    for values, n, row in rows:
        for i, (k, cell) in enumerate(zip(keys, row)):
            table.add_row(*(values if i == 0 else [""] * len(values)), n if i == 0 else "", k, cell)
        table.add_section()
    table.caption = FEWER_NOTE if fewer else None
    return table


def _table(title: str) -> Table:
    """A table whose title stays one line, however narrow the table below it."""
    return Table(title=Text(title, no_wrap=True, overflow="ignore"), title_justify="left",
                 caption_justify="left")


def _key_chunks(cells: list[int], room: int) -> list[tuple[int, int]]:
    """[start, end) runs of key columns (of widths ``cells``) that each fit in ``room`` (at least one key each)."""
    chunks, start, used = [], 0, 0
    for i, w in enumerate(cells):
        if i > start and used + w + 3 > room:
            chunks.append((start, i))
            start, used = i, 0
        used += w + 3
    return chunks + [(start, len(cells))]


def _wide(title: str, heads: list[str], keys: list[str], rows: list[tuple[list[str], str, list[str]]]) -> Table:
    """Groups × ``keys``: a row per group."""
    table = _table(title)
    for col in heads:
        table.add_column(col, justify="right" if col == "runs" else "left", no_wrap=True)
    for k in keys:
        table.add_column(k, justify="right", no_wrap=True)
    for values, n, row in rows:
        table.add_row(*values, n, *row)
    return table


def _measured(group: dict) -> bool:
    """Whether any run of the group has a row of the keys asked for (a value, or a NaN) at that epoch."""
    return bool(group.get("measured_epochs")) or any((m or {}).get("count")
                                                     for m in (group.get("metrics") or {}).values())


def shown_results(body: dict, split: str, epoch: str, *, all_groups: bool = False,
                  all_keys: bool = False) -> tuple[dict, list[str]]:
    """The results as the table shows them, and notes (for stderr) on what it leaves out: groups none of whose
    runs measured anything (unless ``all_groups``; all of them when no group has, results_hint then says why;
    the note tells groups whose runs may still measure from those whose runs all ended) and, for ``--keys
    all`` (``all_keys``), the keys no run has a defined value of in any group (the sweep stores them, as NaN: a
    GOF key the run's loss has no λ's for)."""
    groups = body.get("groups") or []
    notes = []
    measured = [g for g in groups if _measured(g)]
    if not all_groups and len(measured) < len(groups):
        body = {**body, "groups": measured}
        if measured:
            notes.append(_unmeasured_note([g for g in groups if not _measured(g)], len(groups), split, epoch,
                                          body.get("unit", "epoch")))
    keys = body.get("keys") or []
    defined = {k for g in measured for k, m in (g.get("metrics") or {}).items() if (m or {}).get("count")}
    empty = [k for k in keys if k not in defined]
    if all_keys and measured and empty and len(empty) < len(keys):
        body = {**body, "keys": [k for k in keys if k in defined]}
        notes.append(f"{len(empty)} key(s) with no defined value in any group not shown (NaN or not measured): "
                     f"{', '.join(empty)}")
    return body, notes


def _unmeasured_note(missing: list[dict], total: int, split: str, epoch: str, unit: str) -> str:
    """'2 of 4 groups have no run with test metrics yet (…)', saying whether their runs are still to come or all
    ended (failed, cancelled, or succeeded without them), from the groups' `statuses`."""
    head = f"{len(missing)} of {total} groups have no run with {split} metrics" + ("" if epoch == "last" else
                                                                                   f" at {unit} {epoch}")
    tail = "(not shown; --all-groups lists them)"
    if any("statuses" not in g for g in missing):  # an API that does not say: as before it said
        return f"{head}{' yet' if epoch == 'last' else ''} {tail}"
    waiting = [g for g in missing if pending(g["statuses"])]
    ended = [g for g in missing if not pending(g["statuses"])]
    if not ended:
        return f"{head} yet {tail}"
    stopped: dict[str, int] = {}
    for g in ended:
        for status, n in g["statuses"].items():
            stopped[status] = stopped.get(status, 0) + n
    if not waiting:
        return f"{head} {tail}: their runs ended without them ({status_text(stopped)})"
    return (f"{head} {tail}: {len(waiting)} {'has' if len(waiting) == 1 else 'have'} runs queued or running; "
            f"{len(ended)} {'has' if len(ended) == 1 else 'have'} only runs that ended without them "
            f"({status_text(stopped)})")


def results_caveat(body: dict) -> str | None:
    """A note when the values of the table do not all come from finished runs (a cancelled or running run's
    values stand beside finished ones) or, at 'last', from one epoch (a cancelled run's last epoch is short of
    the others'), naming them and the --epoch that lines them up."""
    groups = body.get("groups") or [] if isinstance(body, dict) else []
    unit = body.get("unit", "epoch") if isinstance(body, dict) else "epoch"
    epochs = sorted({e for g in groups for e in g.get("measured_epochs") or []})
    unfinished = sorted({r for g in groups for r in g.get("unfinished_runs") or []})
    if len(epochs) < 2 and not unfinished:
        return None
    parts = []
    if unfinished:
        shown = ", ".join(map(str, unfinished[:8])) + (", …" if len(unfinished) > 8 else "")
        parts.append(f"{len(unfinished)} run(s) behind these values have not succeeded (run {shown})")
    if len(epochs) > 1:
        parts.append(f"the values come from {unit}s {epochs[0]}–{epochs[-1]}, each run's last measurement of each key; "
                     f"--epoch {epochs[0]} compares every run at one {unit}")
    return "note: " + "; ".join(parts)


def results_hint(body: dict, sweep: int, split: str, epoch: str, counts: dict[str, int] | None = None,
                 asked: list[str] | None = None) -> str | None:
    """Why a results table with groups is empty: no run has metrics at that epoch (yet), else None; with the
    run ``counts`` per status (cli_results_text.body_counts, or GET /sweeps/{id}'s), how many runs ended
    without any (failed or cancelled) and whether any are still to come; at an ``epoch``, the epochs that have
    them (the body's `epochs_with_values`). ``asked``: the keys --keys named (None: the headline keys or all),
    so that runs with other metrics are not said to have none of the split."""
    measured = any(m.get("count") for g in body.get("groups", []) for m in (g.get("metrics") or {}).values())
    if not body.get("groups") or measured:
        return None
    unit = body.get("unit", "epoch")
    at = f"their last {unit}" if epoch == "last" else f"{unit} {epoch}"
    what = f"a {split} value of {' or '.join(asked)}" if asked else f"{split} metrics"
    if epoch != "last":
        hint = f"no run of sweep {sweep} has {what} at {at} (a run measures only the {unit}s of its " \
               "eval schedule)"
        if counts is not None:
            waiting, total = pending(counts), sum(counts.values())
            hint += (f": {waiting} of its {total} run(s) {'is' if waiting == 1 else 'are'} still queued or running"
                     if waiting else f", and none of its {total} run(s) is queued or running ({status_text(counts)})")
        have = body.get("epochs_with_values")
        if have is not None:
            hint += f"; its runs have them at {unit}s {epochs_text(have)}" if have else \
                f"; its runs have none at any {unit}"
        return hint
    if counts is None:
        return f"no run of sweep {sweep} has {what} at {at} yet"
    stopped = [f"{counts[s]} {s}" for s in ("failed", "cancelled") if counts.get(s)]
    ended = [" and ".join(stopped) + " before measuring any"] if stopped else []
    if counts.get("succeeded"):
        ended.append(f"{counts['succeeded']} succeeded without one (`ncsweep results {sweep} --keys all` lists the "
                     "keys they have)" if asked else f"{counts['succeeded']} succeeded without {split} metrics (see "
                     "their eval.splits)")
    why = "; ".join(ended)
    waiting, total = pending(counts), sum(counts.values())
    if waiting:
        return (f"no run of sweep {sweep} has {what} at {at} yet: {waiting} of its {total} run(s) "
                f"{'is' if waiting == 1 else 'are'} queued or running" + (f"; {why}" if why else ""))
    return (f"no run of sweep {sweep} has {what}, and none is queued or running: of its {total} run(s), "
            f"{why or 'none measured any'}" + (f" (`ncsweep runs --sweep {sweep}` shows why; `ncsweep retry "
                                               f"{sweep}` runs them again)" if stopped else ""))
