"""PNG plot endpoints: sweep NC dynamics and heatmaps, run cosine margins and metric curves."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from nc_core.db.models import Run, Sweep
from nc_core.db.session import session_factory
from nc_core.db.sweeps_repo import default_split
from nc_core.metric_keys import check_metric_keys
from nc_core.sweep import SpecError
from service import plots
from service.deps import Id
from service.errors import NotFound, error_item
from service.routers.metrics import parse_keys
from service.schemas import PNG, problems
from service.routers.events import db_url

router = APIRouter(tags=["plots"])
_NO_CACHE = {"Cache-Control": "no-store"}
_PNG = problems(404, 422, 503, ok=PNG)  # a PNG, or the errors as JSON


def _render(request: Request, model: type, obj_id: int, draw) -> Response:  # noqa: ANN001
    with session_factory(db_url(request))() as session:
        if session.get(model, obj_id) is None:
            raise NotFound(f"{model.__tablename__} {obj_id} not found")
        try:  # no lock: each figure has its own canvas (service.plots.new_figure), requests draw in parallel
            png = draw(session)
        except plots.PlotError as exc:
            where = "path" if exc.field in ("sweep_id", "run_id") else "query"  # a sweep without runs: its id
            raise HTTPException(422, detail=[error_item(exc.field, exc.message, where)]) from None
    return Response(png, media_type="image/png", headers=_NO_CACHE)


Split = Literal["train", "test"]


@router.get("/sweeps/{sweep_id}/plots/dynamics.png", response_class=Response, responses=_PNG)
def dynamics(request: Request, sweep_id: Id, keys: str | None = Query(None, description="comma-separated metric keys"),
             split: Split | None = Query(None, description="one split for all panels (default: NC train, acc both; "
                                                           "train for a UFM sweep)")):
    key_list = parse_keys(keys)  # 422s before the 404 check, as on every route
    return _render(request, Sweep, sweep_id, lambda s: plots.dynamics_png(
        s, sweep_id, key_list, split or (None if default_split(s, sweep_id) == "test" else "train")))


@router.get("/sweeps/{sweep_id}/plots/heatmap.png", response_class=Response, responses=_PNG)
def heatmap(request: Request, sweep_id: Id, x: str = Query(..., description="grid axis for columns, e.g. model.width"),
            y: str = Query(..., description="grid axis for rows, e.g. loss.name, or seed"), key: str = "acc",
            split: Split | None = Query(None, description="default test; train for a UFM sweep"),
            mode: str = Query("value", pattern="^(value|diff_vs|variance)$"),
            ref: str | None = Query(None, description="diff_vs reference AXIS:VALUE, e.g. loss.name:ce")):
    check_metric_keys("key", [key])
    if x == y:
        raise SpecError("y", f"expected an axis other than x, got {y!r} for both (a heatmap spans two axes)")
    if ref is not None and mode != "diff_vs":
        raise SpecError("ref", f"ref only applies to mode=diff_vs (it names the reference panel), got mode={mode!r}; "
                               "leave ref out or use mode=diff_vs")
    return _render(request, Sweep, sweep_id, lambda s: plots.heatmap_png(
        s, sweep_id, x, y, key, split or default_split(s, sweep_id), mode, ref))


@router.get("/runs/{run_id}/plots/margins.png", response_class=Response, responses=_PNG)
def margins(request: Request, run_id: Id):
    return _render(request, Run, run_id, lambda s: plots.margins_png(s, run_id))


@router.get("/runs/{run_id}/plots/curves.png", response_class=Response, responses=_PNG)
def curves(request: Request, run_id: Id, keys: str | None = None):
    key_list = parse_keys(keys)
    return _render(request, Run, run_id, lambda s: plots.run_curves_png(s, run_id, key_list))
