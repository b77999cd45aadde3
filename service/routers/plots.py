"""PNG plot endpoints: sweep NC dynamics and heatmaps, run cosine margins and metric curves."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nc_core.db.models import Event, Run, Sweep
from nc_core.db.session import session_factory
from nc_core.db.states import FINISHED
from nc_core.db.sweeps_repo import PRIMARY_KINDS, default_split
from nc_core.metric_keys import check_metric_keys, parse_metric_keys
from nc_core.sweep import SpecError
from service import plots
from service.deps import Id
from service.errors import NotFound, error_item
from service.plots_dynamics import MAX_LINES, parse_filters
from service.routers.metrics import parse_keys
from service.schemas import PNG, problems
from service.routers.events import db_url

router = APIRouter(tags=["plots"])
_NO_CACHE = {"Cache-Control": "no-store"}
_PNG = problems(404, 422, 503, ok=PNG)  # a PNG, or the errors as JSON
CACHE_ENTRIES = 32  # rendered sweep PNGs kept per app (~0.1-0.5 MB each)
PARAM_LENGTH = 2000  # characters of a group_by or filter parameter
#: Seconds a figure of a sweep with unfinished runs stays cached though its version is unchanged: the version's
#: newest event id is no commit order (on PostgreSQL a transaction holding id 100 may commit after the one holding
#: 101), so a figure drawn without id 100's metrics may be stored under version 101; it is drawn again this soon.
UNFINISHED_SECONDS = 5.0


class PlotCache:
    """The latest rendered sweep PNGs, by request and sweep version (least recently used dropped first); one
    render per key at a time: a page refreshing while others wait for the same figure gets the same bytes. An
    entry stored with ``ttl`` is drawn again once ``ttl`` seconds of ``clock`` have passed."""

    def __init__(self, size: int = CACHE_ENTRIES, clock: Callable[[], float] = time.monotonic):
        self.size, self.clock, self._items, self._lock = size, clock, OrderedDict(), threading.Lock()
        self._rendering: dict[tuple, threading.Lock] = {}

    def _get(self, key: tuple) -> bytes | None:
        with self._lock:
            if key not in self._items:
                return None
            png, expires = self._items[key]
            if expires is not None and self.clock() >= expires:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return png

    def get(self, key: tuple, render: Callable[[], bytes], ttl: float | None = None) -> bytes:
        """The PNG stored under ``key``, else ``render()``'s (stored, for ``ttl`` seconds if given)."""
        png = self._get(key)
        if png is not None:
            return png
        with self._lock:
            gate = self._rendering.setdefault(key, threading.Lock())
        with gate:
            png = self._get(key)
            if png is not None:
                return png
            try:
                png = render()
                with self._lock:
                    self._items[key] = (png, None if ttl is None else self.clock() + ttl)
                    while len(self._items) > self.size:
                        self._items.popitem(last=False)
            finally:
                with self._lock:
                    self._rendering.pop(key, None)
        return png


_CACHE_LOCK = threading.Lock()


def plot_cache(request: Request) -> PlotCache:
    """The app's cache (a test's app, on its own database, has its own)."""
    with _CACHE_LOCK:
        if getattr(request.app.state, "plot_cache", None) is None:
            request.app.state.plot_cache = PlotCache()
        return request.app.state.plot_cache


def sweep_version(session: Session, sweep_id: int) -> tuple:
    """What a sweep's figures are drawn from, changing with it: its newest metric or status event, and its runs'
    count, total epochs and newest id by status (a run added, finished or advanced, or its metrics written)."""
    event = session.scalar(select(func.max(Event.id)).where(Event.sweep_id == sweep_id,
                                                             Event.kind.in_(("metric", "status"))))
    runs = session.execute(select(Run.status, func.count(), func.sum(Run.epoch), func.max(Run.id))
                           .where(Run.sweep_id == sweep_id, Run.kind.in_(PRIMARY_KINDS)).group_by(Run.status))
    return event, tuple(sorted(tuple(r) for r in runs))


def _render(request: Request, model: type, obj_id: int, draw,  # noqa: ANN001
            cache_key: tuple | None = None) -> Response:
    """``draw(session)``'s PNG; with ``cache_key`` (a sweep plot's parameters) the cached one while the sweep's
    version is the same (the dashboard redraws a running sweep's plots every few seconds, from every page)."""
    factory = session_factory(db_url(request))
    try:  # no lock: each figure has its own canvas (plots_layout.new_figure), requests draw in parallel
        if cache_key is None:
            with factory() as session:
                _exists(session, model, obj_id)
                png = draw(session)
        else:
            with factory() as session:  # closed before the cache: a request waiting there holds no connection
                _exists(session, model, obj_id)
                version = sweep_version(session, obj_id)
            unfinished = any(status not in FINISHED for status, *_ in version[1])

            def render() -> bytes:  # only on a miss: its own session, for the draw's time
                with factory() as session:
                    return draw(session)

            png = plot_cache(request).get((*cache_key, obj_id, version), render,
                                          UNFINISHED_SECONDS if unfinished else None)
    except plots.PlotError as exc:
        where = "path" if exc.field in ("sweep_id", "run_id") else "query"  # a sweep without runs: its id
        raise HTTPException(422, detail=[error_item(exc.field, exc.message, where)]) from None
    return Response(png, media_type="image/png", headers=_NO_CACHE)


def _exists(session: Session, model: type, obj_id: int) -> None:
    if session.get(model, obj_id) is None:
        raise NotFound(f"{model.__tablename__} {obj_id} not found")


Split = Literal["train", "test"]
_DEFAULT_KEYS = ",".join(plots.DEFAULT_KEYS)


def _query_error(parse: Callable[[], Any]) -> Any:
    try:
        return parse()
    except plots.PlotError as exc:
        raise SpecError(exc.field, exc.message) from None


@router.get("/sweeps/{sweep_id}/plots/dynamics.png", response_class=Response, responses=_PNG)
def dynamics(request: Request, sweep_id: Id,
             keys: str | None = Query(None, description=f"comma-separated metric keys (default {_DEFAULT_KEYS})"),
             split: Split | None = Query(None, description="one split for all panels (default: NC train, acc both; "
                                                           "train for a UFM sweep)"),
             group_by: str | None = Query(None, min_length=1, max_length=PARAM_LENGTH, description=(
                 f"comma-separated axes: a line per value of them, mean ± std over their runs (the other axes' and "
                 f"the seeds'); default a line per configuration, up to {MAX_LINES}, else per value of the first "
                 f"axis with at most {MAX_LINES}"), examples=["loss.name"]),
             filter: str | None = Query(None, min_length=1, max_length=PARAM_LENGTH, description=(  # noqa: A002
                 "only the runs with these comma-separated AXIS=VALUE (an axis named twice: either value)"),
                 examples=["model.width=64,loss.name=ce"]),
             log: str | None = Query(None, min_length=1, max_length=PARAM_LENGTH, description=(
                 "comma-separated metric keys drawn on a log y axis, or 'all' (a panel with a value ≤ 0 stays "
                 "linear and says so)"), examples=["nc1,nc2_w,nc3"])):
    """PNG of the sweep's metrics vs epoch, a panel per key: mean ± sample std over the seeds of each configuration
    (or over the runs of each `group_by` value), ▽ where a curve averages fewer runs; cached until the sweep's next
    metric or status change."""
    key_list = parse_keys(keys)  # 422s before the 404 check, as on every route
    log_keys = ["all"] if log is not None and log.strip() == "all" else parse_metric_keys("log", log) or []
    paths = [p.strip() for p in group_by.split(",") if p.strip()] if group_by is not None else None
    if paths == []:
        raise SpecError("group_by", f"expected comma-separated axes such as loss.name, got {group_by!r}")
    filters = _query_error(lambda: parse_filters(filter))
    key = ("dynamics", tuple(key_list or ()), split, tuple(paths) if paths is not None else None, tuple(filters),
           tuple(log_keys))
    return _render(request, Sweep, sweep_id, lambda s: plots.dynamics_png(
        s, sweep_id, key_list, split or (None if default_split(s, sweep_id) == "test" else "train"), paths, filters,
        log_keys), key)


@router.get("/sweeps/{sweep_id}/plots/heatmap.png", response_class=Response, responses=_PNG)
def heatmap(request: Request, sweep_id: Id, x: str = Query(..., description="grid axis for columns, e.g. model.width"),
            y: str = Query(..., description="grid axis for rows, e.g. loss.name, or seed"), key: str = "acc",
            split: Split | None = Query(None, description="default test; train for a UFM sweep"),
            mode: str = Query("value", pattern="^(value|diff_vs|variance)$"),
            ref: str | None = Query(None, description="diff_vs reference AXIS:VALUE, e.g. loss.name:ce")):
    """PNG of `key` over two axes at each run's last measured epoch: `mode=value` the mean per cell,
    `variance` its sample variance (ddof 1), `diff_vs` |key(ref) − key(other value)| per cell for each other
    value of the ref axis (neither x nor y); a cell that includes a run that has not succeeded is marked *."""
    check_metric_keys("key", [key])
    if x == y:
        raise SpecError("y", f"expected an axis other than x, got {y!r} for both (a heatmap spans two axes)")
    if ref is not None and mode != "diff_vs":
        raise SpecError("ref", f"ref only applies to mode=diff_vs (it names the reference panel), got mode={mode!r}; "
                               "leave ref out or use mode=diff_vs")
    return _render(request, Sweep, sweep_id, lambda s: plots.heatmap_png(
        s, sweep_id, x, y, key, split or default_split(s, sweep_id), mode, ref),
        ("heatmap", x, y, key, split, mode, ref))


@router.get("/runs/{run_id}/plots/margins.png", response_class=Response, responses=_PNG)
def margins(request: Request, run_id: Id):
    """PNG of the run's sorted per-sample cosine margins at its last stored epoch per split, and their lowest 2%
    (without a stored distribution: cos_margin_mean, median and min vs epoch)."""
    return _render(request, Run, run_id, lambda s: plots.margins_png(s, run_id))


@router.get("/runs/{run_id}/plots/curves.png", response_class=Response, responses=_PNG)
def curves(request: Request, run_id: Id,
           keys: str | None = Query(None, description=f"comma-separated metric keys (default {_DEFAULT_KEYS})")):
    """PNG of one run's metric curves: a panel per key, train and test lines."""
    key_list = parse_keys(keys)
    return _render(request, Run, run_id, lambda s: plots.run_curves_png(s, run_id, key_list))
