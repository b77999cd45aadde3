"""Run endpoints: filtered listing, detail, cancel, retry, validate jobs."""
from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from sqlalchemy import and_, func, or_, select

from nc_core.db import actions_repo, sweeps_repo as repo
from nc_core.db.models import Run
from nc_core.db.states import FINISHED, QUEUED, STATUSES
from nc_core.spec_fields import spec_field_choices, spec_field_kinds
from nc_core.sweep import SpecError
from nc_core.sweep_errors import did_you_mean
from service.auth import WriteAuth
from nc_core.spec import NUL_MESSAGE
from service.deps import EnqueuerDep, Id, Offset, SessionDep, SettingsDep
from service.enqueue import safe_enqueue
from service.withdraw import safe_find_waiting, safe_withdraw
from service.errors import NotFound
from service.schemas import ActionResult, RunDetail, RunPage, ValidateRequest, problems

router = APIRouter(tags=["runs"])
RESERVED = {"sweep_id", "status", "kind", "limit", "offset"}
MAX_FILTER_VALUES = 100  # values of one repeated filter (each is one more OR term of the run query)


def parse_filters(params: Any) -> list[tuple[str, str, Any]]:
    """Query parameters other than the reserved ones → (spec path, kind, value); 422 naming a bad one.
    A repeated path (`?loss.name=mse&loss.name=ce`) gives one tuple per value: the run query ORs them."""
    kinds, choices, out = spec_field_kinds(), spec_field_choices(), []
    counts = Counter(name for name, _ in params.multi_items())
    for name, n in counts.items():
        if n > MAX_FILTER_VALUES:
            raise SpecError(name, f"expected at most {MAX_FILTER_VALUES} values of one filter, got {n}")
    for name, raw in params.multi_items():
        if name in RESERVED:
            continue
        if name not in kinds:
            raise SpecError(name, "unknown filter: expected sweep_id, status, kind, limit, offset or a spec field "
                                  "path such as loss.name or model.width (nc_core.spec.field_paths())"
                                  + did_you_mean(name))
        if kinds[name] == "list":
            raise SpecError(name, "filtering on list-valued spec fields is not supported")
        if "\x00" in raw:
            raise SpecError(name, NUL_MESSAGE)
        value = _parse_value(name, kinds[name], raw)
        if name in choices and value not in choices[name]:
            allowed = ", ".join("null" if c is None else repr(c) for c in choices[name])
            raise SpecError(name, f"expected one of {allowed}; got {raw!r}")
        out.append((name, kinds[name], value))
    return out


def _parse_value(name: str, kind: str, raw: str) -> Any:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = raw
    if value is None or (kind == "str" and isinstance(value, str)):
        return value
    if kind == "str":
        return raw
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "num" and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            if math.isfinite(float(value)):
                return value
        except OverflowError:
            pass
        raise SpecError(name, f"expected a finite number, got {raw!r}")
    raise SpecError(name, f"expected a {'number' if kind == 'num' else 'boolean (true/false)'}, got {raw!r}")


def _run_or_404(session, run_id: int, *, lock: bool = False) -> Run:  # noqa: ANN001
    """The run, or NotFound; lock=True locks its row first (sweeps_repo.get_run) for a status change."""
    run = repo.get_run(session, run_id, lock=lock)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


@router.get("/runs", response_model=RunPage, responses=problems(422, 503))
def list_runs(request: Request, session: SessionDep, sweep_id: Id | None = None,
              status: Literal[STATUSES] | None = None, kind: Literal["train", "validate", "ufm"] | None = None,  # type: ignore[valid-type]
              limit: int = Query(100, ge=1, le=1000), offset: Offset = 0) -> RunPage:
    """Runs filtered by sweep, status, kind and any spec field (`?loss.name=mse&model.width=2`): different
    fields must all match, a repeated field matches any of its values (`?loss.name=mse&loss.name=ce`)."""
    filters = parse_filters(request.query_params)
    total, runs = repo.query_runs(session, sweep_id=sweep_id, status=status, kind=kind, filters=filters,
                                  limit=limit, offset=offset)
    return RunPage(total=total, limit=limit, offset=offset, items=runs)


@router.get("/runs/{run_id}", response_model=RunDetail, responses=problems(404, 422, 503))
def get_run(run_id: Id, session: SessionDep) -> Run:
    """One run with its full spec and options; a queued run also with `queued_ahead`."""
    run = _run_or_404(session, run_id)
    if run.status == QUEUED:  # the broker hands runs out in the order they were (re-)queued: updated_at, then id
        run.queued_ahead = session.scalar(select(func.count()).select_from(Run).where(
            Run.status == QUEUED, or_(Run.updated_at < run.updated_at,
                                      and_(Run.updated_at == run.updated_at, Run.id < run.id))))
    return run


@router.post("/runs/{run_id}/cancel", response_model=ActionResult, responses=problems(401, 403, 404, 409, 422, 503))
def cancel_run(run_id: Id, session: SessionDep, enqueuer: EnqueuerDep, _: WriteAuth) -> ActionResult:
    """queued → cancelled; running → cancel_requested; finished → 409. A cancelled run's messages waiting in
    the broker's queue are then taken out of it (as a sweep cancel does)."""
    queued = actions_repo.queued_run_ids(session, Run.id == run_id)
    session.rollback()  # end the read before the broker is asked: no connection held while Redis answers
    waiting = safe_find_waiting(enqueuer, queued)  # the lock below starts the cancel's own transaction
    _run_or_404(session, run_id, lock=True)
    outcome = actions_repo.cancel_run(session, run_id)
    session.commit()
    if outcome == "cancelled":
        safe_withdraw(enqueuer, waiting, [run_id])
    return ActionResult(**{outcome: 1})


@router.post("/runs/{run_id}/retry", response_model=ActionResult, responses=problems(401, 403, 404, 409, 422, 503))
def retry_run(run_id: Id, session: SessionDep, settings: SettingsDep, enqueuer: EnqueuerDep,
              _: WriteAuth) -> ActionResult:
    """failed/cancelled → queued with a fresh allowance (attempt 0 of settings.max_attempts; the start time,
    rate and ETA of the ended attempt cleared), re-enqueued; 409 otherwise."""
    _run_or_404(session, run_id, lock=True)
    job = actions_repo.retry_run(session, run_id, max_attempts=settings.max_attempts)
    session.commit()
    return ActionResult(retried=1, enqueued=safe_enqueue(enqueuer, [job]))


@router.post("/runs/{run_id}/validate", status_code=201, responses=problems(401, 403, 404, 409, 413, 422, 503))
def validate_run(run_id: Id, body: ValidateRequest, session: SessionDep, settings: SettingsDep,
                 enqueuer: EnqueuerDep, _: WriteAuth) -> dict[str, Any]:
    """A 'validate' job recomputing metrics from the checkpoints of a finished train run.
    409 unless the parent is a finished train run with stored checkpoints (covering `epochs` if given). The
    parent's row is locked before these checks, as a retry of it locks it: the two act one after the other."""
    parent = _run_or_404(session, run_id, lock=True)
    if parent.kind != "train":
        raise repo.StateConflict(f"run {run_id} is a {parent.kind!r} run; only train runs have checkpoints to validate")
    if parent.status not in FINISHED:
        raise repo.StateConflict(f"run {run_id} is {parent.status}; validate a finished run (its checkpoints still change)")
    stored = actions_repo.checkpoint_epochs(session, run_id)
    if not stored:
        raise repo.StateConflict(f"run {run_id} has no stored checkpoints to validate")
    missing = sorted(set(body.epochs or ()) - set(stored))
    if missing:
        raise repo.StateConflict(f"run {run_id} has no checkpoint for epochs {missing}; stored epochs: {stored}")
    options = {"epochs": sorted(set(body.epochs)) if body.epochs else None,
               "splits": [s for s in ("train", "test") if s in body.splits]}  # one order: the same options, one job
    job = actions_repo.create_validate_run(session, parent, options, epochs_total=len(options["epochs"] or stored),
                                           max_attempts=settings.max_attempts)
    session.commit()
    return {"run_id": job[1], "parent_run_id": run_id, "kind": "validate", "options": options,
            "enqueued": safe_enqueue(enqueuer, [job])}
