"""Server-rendered dashboard (Jinja2 + a little vanilla JS) under /ui; / redirects there."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from nc_core.db import events_repo, sweeps_repo, workers_repo
from nc_core.db.models import Run, Sweep
from nc_core.db.session import session_factory
from nc_core.db.states import STATUSES, metric_step
from nc_core.metric_keys import check_metric_keys
from nc_core.spec import SPLITS
from nc_core.sweep import SpecError
from service.auth import ReadAuth, read_refusal
from service.dashboard import data
from service.dashboard.common import eta_text, value_label
from service.dashboard.sweep_state import RUNS_SHOWN, RUNS_SHOWN_MAX, sweep_state
from service.deps import Id, SafeStr
from service.routers.events import app_settings

HERE = Path(__file__).resolve().parent
STATIC = {"dashboard.js": "text/javascript", "sweep.js": "text/javascript", "style.css": "text/css"}
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["value_label"] = value_label
templates.env.filters["eta"] = eta_text
router = APIRouter(include_in_schema=False)


def _session(request: Request):  # noqa: ANN202
    return session_factory(app_settings(request).resolved_database_url())()


def _page(request: Request, name: str, **ctx) -> HTMLResponse:  # noqa: ANN003
    return templates.TemplateResponse(request, name, ctx)


def _login_needed(request: Request) -> HTMLResponse | None:
    """With settings.auth_reads, the token form (401) for a browser without a valid token, else None."""
    settings = app_settings(request)
    if not (settings.auth_required and settings.auth_reads):
        return None
    with _session(request) as s:
        reason = read_refusal(s, request)
    if reason is None:
        return None
    page = _page(request, "login.html", reason=reason, title="token")
    page.status_code = 401
    return page


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/ui/static/{name}")
def static(name: str) -> FileResponse:
    if name not in STATIC:
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(HERE / "static" / name, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


@router.get("/ui", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    if (login := _login_needed(request)) is not None:
        return login
    with _session(request) as s:
        return _page(request, "index.html", sweeps=data.sweeps_overview(s), title="sweeps")


@router.get("/ui/sweeps.json", dependencies=[ReadAuth])
def sweeps_json(request: Request) -> JSONResponse:
    with _session(request) as s:
        return JSONResponse(data.sweeps_overview(s))


def _sweep_or_404(s, sweep_id: int) -> Sweep:  # noqa: ANN001 - a Session
    sweep = s.get(Sweep, sweep_id)
    if sweep is None:
        raise HTTPException(404, f"sweep {sweep_id} not found")
    return sweep


def _not_found(request: Request, what: str, number: int) -> HTMLResponse:
    """An HTML 404 page (with the nav) for a dashboard page of a sweep or run that does not exist (an id out of
    range, or not a number, is a 422 naming it, as in the API)."""
    page = _page(request, "error.html", title="not found", message=f"There is no {what} {number}.",
                 hint=f"{what}s are numbered from 1; see the list of sweeps.")
    page.status_code = 404
    return page


@router.get("/ui/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(request: Request, sweep_id: Id) -> HTMLResponse:
    if (login := _login_needed(request)) is not None:
        return login
    with _session(request) as s:
        sweep = s.get(Sweep, sweep_id)
        if sweep is None:
            return _not_found(request, "sweep", sweep_id)
        state = sweep_state(s, sweep_id)
        return _page(request, "sweep.html", sweep=sweep, state=state,
                     unit=metric_step(sweeps_repo.sweep_kinds(s, sweep_id)),  # what its runs count
                     cursor=events_repo.latest_event_id(s), title=f"{sweep.name} (sweep {sweep_id})")


@router.get("/ui/sweeps/{sweep_id}/state.json", dependencies=[ReadAuth])
def sweep_state_json(request: Request, sweep_id: Id, key: SafeStr | None = Query(None),
                     split: SafeStr | None = Query(None),
                     status: SafeStr | None = Query(None, description="only the runs table's runs of this status"),
                     limit: int = Query(RUNS_SHOWN, ge=1, le=RUNS_SHOWN_MAX)) -> JSONResponse:
    problems = []  # the matrix's metric: a key some run may store, on a split (else a 422 listing the valid ones)
    if status and status not in STATUSES:
        problems.append(("status", f"expected one of {', '.join(map(repr, STATUSES))}, got {status!r}"))
    try:
        check_metric_keys("key", [key] if key else [])
    except SpecError as exc:
        problems += exc.errors
    if split and split not in SPLITS:
        problems.append(("split", f"expected one of {', '.join(map(repr, SPLITS))}, got {split!r}"))
    if problems:
        raise SpecError.of(problems)
    with _session(request) as s:
        _sweep_or_404(s, sweep_id)
        return JSONResponse(sweep_state(s, sweep_id, key or None, split or None, status=status or None, limit=limit))


@router.get("/ui/workers", response_class=HTMLResponse)
def workers_page(request: Request) -> HTMLResponse:
    if (login := _login_needed(request)) is not None:
        return login
    settings = app_settings(request)
    with _session(request) as s:
        return _page(request, "workers.html", workers=workers_repo.list_workers(s, settings.worker_lost_after_seconds),
                     title="workers")


@router.get("/ui/workers.json", dependencies=[ReadAuth])
def workers_json(request: Request) -> JSONResponse:
    with _session(request) as s:
        return JSONResponse(workers_repo.list_workers(s, app_settings(request).worker_lost_after_seconds))


def _run_or_404(s, run_id: int) -> Run:  # noqa: ANN001 - a Session
    run = s.get(Run, run_id)
    if run is None:
        raise HTTPException(404, f"run {run_id} not found")
    return run


@router.get("/ui/runs/{run_id}.json", dependencies=[ReadAuth])  # before /ui/runs/{run_id}, which would match it
def run_json(request: Request, run_id: Id) -> JSONResponse:
    with _session(request) as s:
        cursor = events_repo.latest_event_id(s)  # read before the run: what changes it later is an event after this
        return JSONResponse({**data.run_view(s, _run_or_404(s, run_id)), "cursor": cursor})


@router.get("/ui/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: Id) -> HTMLResponse:
    if (login := _login_needed(request)) is not None:
        return login
    with _session(request) as s:
        cursor = events_repo.latest_event_id(s)  # as run_json's: the page follows its run's events from here
        run = s.get(Run, run_id)
        if run is None:
            return _not_found(request, "run", run_id)
        return _page(request, "run.html", run=run, view=data.run_view(s, run), title=f"run {run_id}", cursor=cursor,
                     spec_yaml=data.spec_yaml(run))
