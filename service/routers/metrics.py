"""Metric endpoints: one run's series and distributions, and a sweep's results aggregated over seeds."""
from __future__ import annotations

import math
from collections import Counter
from typing import Annotated, Any, Iterable, Literal, Sequence

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from nc_core.db import distributions_repo, metrics_repo, sweeps_repo as repo
from nc_core.db.models import Metric, Run, Sweep
from nc_core.db.states import default_split, metric_step, unfinished_runs
from nc_core.metric_keys import check_metric_keys, parse_metric_keys
from nc_core.spec import field_paths
from nc_core.spec_fields import spec_field_kinds, value_key, value_sort_key
from nc_core.sweep import SpecError, get_path
from nc_core.sweep_errors import did_you_mean
from service.deps import ID_MAX, Epoch, Id, SessionDep
from service.errors import NotFound
from service.routers.runs import RESERVED as RUNS_RESERVED, parse_filters
from service.schemas import SweepMetricsPage, problems

router = APIRouter(tags=["metrics"])
MAX_PAGE_RUNS = 500  # runs of one GET /sweeps/{id}/metrics
MAX_PAGE_ROWS = 100_000  # its row budget: ~3 MB of JSON


def parse_keys(raw: str | None) -> list[str] | None:
    """The comma-separated `keys` parameter (parse_metric_keys); None when it is absent (every key), a 422 when
    it is given blank (`?keys=`), as a blank `key` is."""
    if raw is not None and not raw.replace(",", "").strip():
        raise SpecError("keys", f"expected one or more comma-separated metric keys such as acc,nc1, got {raw!r}; "
                                "leave keys out for every key")
    return parse_metric_keys("keys", raw)


def group_series(rows: Iterable[Sequence[Any]], with_run_id: bool = False) -> list[dict[str, Any]]:
    """Metric rows ([run_id,] split, key, epoch, value, note, metric_version), ordered by ([run_id,] split, key,
    epoch) as sweeps_repo.metric_series_query orders them, as series: [{[run_id,] split, key, epochs, values,
    versions, notes: {epoch: why}}], one per ([run_id,] split, key)."""
    names = ("run_id", "split", "key") if with_run_id else ("split", "key")
    series: list[dict[str, Any]] = []
    last: list[Any] | None = None
    for *head, epoch, value, note, version in rows:
        if head != last:
            last = head
            series.append({**dict(zip(names, head)), "epochs": [], "values": [], "versions": [], "notes": {}})
        series[-1]["epochs"].append(epoch)
        series[-1]["values"].append(value)
        series[-1]["versions"].append(version)
        if note is not None:
            series[-1]["notes"][str(epoch)] = note
    return series


@router.get("/runs/{run_id}/metrics", responses=problems(404, 422, 503))
def run_metrics(run_id: Id, session: SessionDep, split: Literal["train", "test"] | None = None,
                key: str | None = None, keys: str | None = None) -> JSONResponse:
    """The run's metric series: [{split, key, epochs: [...], values: [...], versions: [...], notes: {epoch:
    why}}] (a null value is NaN/undefined, and `notes` says why where the metric suite did; `versions`: the
    metric definition version of each value, docs/metrics.md); only `key`, or the comma-separated `keys`
    (as /sweeps/{id}/results takes them), when given."""
    if key is not None and keys is not None:
        raise SpecError("keys", "give either key (one metric) or keys (comma-separated), not both")
    key_list = parse_keys(keys) if keys is not None else [key] if key is not None else None
    if key is not None:
        check_metric_keys("key", [key])
    if session.scalar(select(Run.id).where(Run.id == run_id)) is None:
        raise NotFound(f"run {run_id} not found")
    rows = repo.metric_series(session, run_id, split, key_list)
    return JSONResponse({"run_id": run_id, "series": group_series(rows)})


@router.get("/sweeps/{sweep_id}/metrics", summary="Metric series of a page of a sweep's runs",
            responses=problems(404, 422, 503, ok={200: {"model": SweepMetricsPage, "description": "a page of runs"}}))
def sweep_metrics(
        sweep_id: Id, session: SessionDep,
        after_run: Annotated[int, Query(ge=0, le=ID_MAX, description="the cursor: only runs with a larger id (0: "
                                        "from the first; then the last page's next_after_run)")] = 0,
        runs: Annotated[int, Query(ge=1, le=MAX_PAGE_RUNS, description="at most this many runs")] = 100,
        max_rows: Annotated[int, Query(ge=1, le=MAX_PAGE_ROWS, description="row budget: the page ends before the "
                                       "run that would take its metric points past it (a run larger than it "
                                       "comes whole, alone)")] = MAX_PAGE_ROWS,
        split: Annotated[Literal["train", "test"] | None, Query(description="only this split")] = None,
        keys: Annotated[str | None, Query(description="only these comma-separated metric keys, e.g. acc,nc1")] = None,
) -> JSONResponse:
    """The metric series of many runs in one request, as GET /runs/{run_id}/metrics gives each (the same rows
    and order, each series with its run_id): the sweep's runs (every kind, by id, as GET /runs?sweep_id= lists
    them) with id > `after_run`, at most `runs` of them, ending early at the `max_rows` budget. `run_ids` lists
    the runs answered, those without metric rows too; `next_after_run` is the cursor for the runs that follow
    (null when none do). An `after_run` that is no run of the sweep is just a cursor; past its last run the
    page is empty. 404: no such sweep."""
    key_list = parse_keys(keys) if keys is not None else None
    if session.scalar(select(Sweep.id).where(Sweep.id == sweep_id)) is None:
        raise NotFound(f"sweep {sweep_id} not found")
    ids, rows, more = metrics_repo.sweep_metric_series(session, sweep_id, after_run, runs, max_rows, split, key_list)
    return JSONResponse({"sweep_id": sweep_id, "run_ids": ids, "series": group_series(rows, with_run_id=True),
                         "next_after_run": ids[-1] if more and ids else None})


@router.get("/runs/{run_id}/distributions", responses=problems(404, 422, 503))
def run_distributions(run_id: Id, session: SessionDep, split: Literal["train", "test"] | None = None,
                      key: Literal["cos_margin"] | None = None, epoch: Epoch | None = None) -> JSONResponse:
    """Stored sorted distributions (cos_margin: ≤ 1001 quantiles of the per-sample margins, ascending):
    [{epoch, split, key, n, values}] at `epoch` (default: the last stored epoch of each split and key)."""
    if session.scalar(select(Run.id).where(Run.id == run_id)) is None:
        raise NotFound(f"run {run_id} not found")
    items = [{"epoch": d.epoch, "split": d.split, "key": d.key, "n": d.n, "values": d.values}
             for d in distributions_repo.distributions(session, run_id, split=split, key=key, epoch=epoch)]
    if epoch is not None and not items:  # a 422 naming `epoch` (as /sweeps/{id}/results), never a silent []
        have = distributions_repo.distribution_epochs(session, run_id, split=split, key=key)
        which = "".join(f" {name}={value!r}" for name, value in (("split", split), ("key", key)) if value)
        shown = ", ".join(map(str, have[:20])) + (f", … ({len(have)} epochs, the last {have[-1]})" if len(have) > 20
                                                   else "")
        expected = f"expected an epoch that has them: {shown}" if have else \
            "it has none stored at any epoch (they are written when the run evaluates)"
        raise SpecError("epoch", f"run {run_id} has no{which} distributions at epoch {epoch}; {expected}")
    return JSONResponse({"run_id": run_id, "items": items})


def aggregate(values: list[float | None]) -> dict[str, Any]:
    """mean, sample std (ddof 1; null for n < 2), min, max, count of defined values, missing (NaN/null)."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n and min(xs) == max(xs):  # equal values (e.g. lr over seeds): themselves and 0, not 0.05000000000000001 ± 8e-18
        mean, std = xs[0], (0.0 if n > 1 else None)
    else:  # fsum: one rounding per sum, fast on a 20,000-run sweep (statistics.mean's exact fractions: ~70× slower)
        mean = math.fsum(xs) / n if n else None
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "min": min(xs) if xs else None, "max": max(xs) if xs else None,
            "count": n, "missing": len(values) - n}


def _parse_epoch(epoch: str) -> int | None:
    """'last' → None; an epoch (they start at 1) → int; anything else is a 422 naming `epoch`."""
    if epoch == "last":
        return None
    if epoch.isascii() and epoch.isdigit() and len(epoch) <= 10 and 1 <= int(epoch) <= ID_MAX:
        return int(epoch)
    raise SpecError("epoch", f"expected 'last' or an epoch >= 1, got {epoch!r}")


def _sort_key(values: tuple) -> tuple:
    return tuple(map(value_sort_key, values))


RESULTS_PARAMS = ("group_by", "keys", "split", "epoch")  # the query names /sweeps/{id}/results declares


class _QueryItems:
    """Some of a query's (name, value) items, read as parse_filters reads a request's query_params."""

    def __init__(self, items: list[tuple[str, str]]):
        self.items = items

    def multi_items(self) -> list[tuple[str, str]]:
        return self.items


def results_filters(params: Any) -> list[tuple[str, str, Any]]:
    """The spec-field filters of a /sweeps/{id}/results query (`?loss.name=mse&model.width=64`), parsed as
    GET /runs parses its own (runs.parse_filters); a 422 naming any other parameter and the accepted ones."""
    kinds = spec_field_kinds()
    items = [(name, raw) for name, raw in params.multi_items() if name not in RESULTS_PARAMS]
    for name, _ in items:
        if name not in kinds or name in RUNS_RESERVED:  # `kind`: GET /runs' own parameter, never its filter
            raise SpecError(name, f"unknown parameter: expected {', '.join(RESULTS_PARAMS)} or a spec field filter "
                                  "such as loss.name=mse or model.width=64 (a path of nc_core.spec.field_paths()"
                                  + (", not kind" if name in kinds else "") + ")" + did_you_mean(name))
    return parse_filters(_QueryItems(items))


def _matching(filters: list[tuple[str, str, Any]]) -> list[Any]:
    """SQL conditions on Run for ``filters``, as sweeps_repo.query_runs combines them: different paths must all
    match, several values of one path any of them."""
    by_path: dict[str, list] = {}
    for path, kind, value in filters:
        by_path.setdefault(path, []).append(repo.spec_condition(path, kind, value))
    return [c[0] if len(c) == 1 else or_(*c) for c in by_path.values()]


def _epochs_with_values(session: Session, sweep_id: int, conds: list[Any], split: str,
                        keys: list[str] | None) -> list[int]:
    """The epochs at which any of the sweep's primary runs that ``conds`` keep stored a row of ``keys`` (every
    key when None) in ``split``: what an --epoch that found nothing could have asked for."""
    runs = select(Run.id).where(Run.sweep_id == sweep_id, Run.kind.in_(repo.PRIMARY_KINDS), *conds)
    q = select(Metric.epoch).distinct().where(Metric.run_id.in_(runs), Metric.split == split)
    if keys:
        q = q.where(Metric.key.in_(keys))
    return list(session.scalars(q.order_by(Metric.epoch)))


@router.get("/sweeps/{sweep_id}/results", responses=problems(404, 422, 503))
def sweep_results(request: Request, sweep_id: Id, session: SessionDep, group_by: str | None = None,
                  keys: str | None = None, split: Literal["train", "test"] | None = None,
                  epoch: str = "last") -> dict[str, Any]:
    """Group the sweep's runs by spec fields (default: its axes) and aggregate each metric over the
    group (seeds, and the axes `group_by` leaves out): each run's value of a key at the last epoch that run
    measured that key in `split` (default test; train for a UFM sweep), or at `epoch`. Per key and group:
    `mean`, `std` (the sample standard deviation, ddof = 1; null for fewer than 2 values), `min`, `max`,
    `count` (runs with a finite value) and `missing` (runs whose value is NaN/null). Any other query parameter
    is a filter on a spec field, as GET /runs takes them (`loss.name=mse&model.width=64`: different fields must
    all match, a repeated field any of its values); an unknown one is a 422. Per key: a run evaluates NC
    metrics and acc only at its eval epochs but stores its training keys every epoch, so a run stopped between
    eval epochs shows its last evaluation beside its latest running_loss. `unit` says what the epochs count:
    'iteration' for a sweep of UFM runs. `axes`: the sweep's axes (those not in `group_by` are pooled);
    `filters`: the filters applied, {field: [values]}. Each group says which epochs its values are from
    (`measured_epochs`: every epoch any of its measured runs' values is from), which of its measured runs
    have not succeeded (`unfinished_runs`: running, cancelled or failed, so their last epochs may be short of
    the others') and how many of its runs are in each status (`statuses`). `epochs_with_values`: with an
    `epoch` at which no run has a value, the epochs at which they have (else null)."""
    sweep = repo.get_sweep(session, sweep_id)
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} not found")
    filters = results_filters(request.query_params)
    kinds = repo.sweep_kinds(session, sweep_id)
    split, unit = split or default_split(kinds), metric_step(kinds)
    paths = [p for p in group_by.split(",") if p] if group_by is not None else list(sweep.axes or [])
    valid = set(field_paths())
    for p in paths:
        if p not in valid:
            raise SpecError("group_by", f"{p!r} is not a spec field path (e.g. loss.name, model.width)"
                            + did_you_mean(p))
    key_list = parse_keys(keys)
    at = _parse_epoch(epoch)
    runs, rows = repo.sweep_values(session, sweep_id, split, key_list, at)
    conds = _matching(filters)
    if filters:
        kept = set(session.scalars(select(Run.id).where(Run.sweep_id == sweep_id, *conds)))
        runs, rows = [r for r in runs if r[0] in kept], [r for r in rows if r[0] in kept]
    last = max((int(spec.get("epochs", 0) if spec.get("kind") != "ufm" else (spec.get("ufm") or {}).get(
        "iterations", 0)) for _, spec, _ in runs), default=0)
    if at is not None and runs and at > last:
        raise SpecError("epoch", f"{at} is past the last {unit} of every run of sweep {sweep_id} (the longest has "
                                 f"{last}); expected 'last' or an {unit} in 1..{last}")
    by_run: dict[int, dict[str, float | None]] = {}
    run_epochs: dict[int, set[int]] = {}  # the epochs each run's values are from (one per key at 'last')
    for rid, k, v, e in rows:
        by_run.setdefault(rid, {})[k] = v
        run_epochs.setdefault(rid, set()).add(e)
    all_keys = key_list or sorted({k for _, k, _, _ in rows})
    groups: dict[tuple, tuple[tuple, list[int]]] = {}  # by value_key (a list value is unhashable): (values, ids)
    status = {rid: st for rid, _, st in runs}
    for rid, spec, _ in runs:
        values = tuple(get_path(spec, p) for p in paths)
        groups.setdefault(tuple(map(value_key, values)), (values, []))[1].append(rid)
    out = []
    for gvalues, ids in sorted(groups.values(), key=lambda g: _sort_key(g[0])):
        measured = [rid for rid in ids if rid in by_run]
        out.append({"values": dict(zip(paths, gvalues)), "runs": len(ids), "run_ids": ids,
                    "measured_epochs": sorted({e for r in measured for e in run_epochs[r]}),
                    "unfinished_runs": unfinished_runs(measured, status),
                    "statuses": dict(Counter(status[r] for r in ids)),
                    "metrics": {k: aggregate([by_run[r].get(k) for r in measured if k in by_run[r]]) for k in all_keys}})
    none_at_epoch = at is not None and runs and not rows
    by_field: dict[str, list[Any]] = {}
    for path, _, value in filters:
        by_field.setdefault(path, []).append(value)
    return {"sweep_id": sweep_id, "group_by": paths, "keys": all_keys, "split": split,
            "epoch": epoch if at is None else at, "unit": unit, "axes": list(sweep.axes or []), "filters": by_field,
            "epochs_with_values": _epochs_with_values(session, sweep_id, conds, split, key_list) if none_at_epoch
            else None, "groups": out}
