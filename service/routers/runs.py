"""Run endpoints: filtered listing, detail, cancel, retry, validate jobs."""
from __future__ import annotations

import json
import types
from functools import lru_cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from nc_core.db import sweeps_repo as repo
from nc_core.db.models import Run
from nc_core.db.states import FINISHED, STATUSES
from nc_core.spec import RunSpec
from nc_core.sweep import SpecError
from service.auth import WriteAuth
from service.deps import EnqueuerDep, SessionDep, SettingsDep
from service.enqueue import safe_enqueue
from service.errors import NotFound
from service.schemas import ActionResult, RunDetail, RunPage, ValidateRequest

router = APIRouter(tags=["runs"])
RESERVED = {"sweep_id", "status", "kind", "limit", "offset"}


def _kind(annotation: Any) -> str:
    """'str' | 'num' | 'bool' | 'list' for a spec leaf annotation."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kind(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        kinds = {_kind(a) for a in get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else "str"
    if origin is Literal:
        return "str" if all(isinstance(a, str) for a in get_args(annotation)) else "num"
    if origin in (list, dict, tuple) or annotation in (list, dict):
        return "list"
    return {bool: "bool", int: "num", float: "num"}.get(annotation, "str")


@lru_cache(maxsize=1)
def spec_field_kinds() -> dict[str, str]:
    """Every dotted RunSpec leaf path → its filter kind."""
    out: dict[str, str] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            sub = next((a for a in (info.annotation, *get_args(info.annotation))
                        if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = _kind(info.annotation)
    walk(RunSpec, "")
    return out


def parse_filters(params: Any) -> list[tuple[str, str, Any]]:
    """Query parameters other than the reserved ones → (spec path, kind, value); 422 naming a bad one."""
    kinds, out = spec_field_kinds(), []
    for name, raw in params.multi_items():
        if name in RESERVED:
            continue
        if name not in kinds:
            raise SpecError(name, "unknown filter: expected sweep_id, status, kind, limit, offset or a spec field "
                                  "path such as loss.name or model.width (nc_core.spec.field_paths())")
        if kinds[name] == "list":
            raise SpecError(name, "filtering on list-valued spec fields is not supported")
        out.append((name, kinds[name], _parse_value(name, kinds[name], raw)))
    return out


def _parse_value(name: str, kind: str, raw: str) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if value is None or (kind == "str" and isinstance(value, str)):
        return value
    if kind == "str":
        return raw
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "num" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise SpecError(name, f"expected a {'number' if kind == 'num' else 'boolean (true/false)'}, got {raw!r}")


def _run_or_404(session, run_id: int) -> Run:  # noqa: ANN001
    run = repo.get_run(session, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


@router.get("/runs", response_model=RunPage)
def list_runs(request: Request, session: SessionDep, sweep_id: int | None = None,
              status: Literal[STATUSES] | None = None, kind: Literal["train", "validate", "ufm"] | None = None,  # type: ignore[valid-type]
              limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> RunPage:
    """Runs filtered by sweep, status, kind and any spec field (`?loss.name=mse&model.width=2`)."""
    filters = parse_filters(request.query_params)
    total, runs = repo.query_runs(session, sweep_id=sweep_id, status=status, kind=kind, filters=filters,
                                  limit=limit, offset=offset)
    return RunPage(total=total, limit=limit, offset=offset, items=runs)


@router.get("/runs/{run_id}", response_model=RunDetail)
def get_run(run_id: int, session: SessionDep) -> Run:
    """One run with its full spec and options."""
    return _run_or_404(session, run_id)


@router.post("/runs/{run_id}/cancel", response_model=ActionResult)
def cancel_run(run_id: int, session: SessionDep, _: WriteAuth) -> ActionResult:
    """queued → cancelled; running → cancel_requested; finished → 409."""
    _run_or_404(session, run_id)
    outcome = repo.cancel_run(session, run_id)
    session.commit()
    return ActionResult(**{outcome: 1})


@router.post("/runs/{run_id}/retry", response_model=ActionResult)
def retry_run(run_id: int, session: SessionDep, settings: SettingsDep, enqueuer: EnqueuerDep,
              _: WriteAuth) -> ActionResult:
    """failed/cancelled → queued (the attempt counter keeps increasing), re-enqueued; 409 otherwise."""
    _run_or_404(session, run_id)
    job = repo.retry_run(session, run_id, extra_attempts=settings.max_attempts)
    session.commit()
    return ActionResult(retried=1, enqueued=safe_enqueue(enqueuer, [job]))


@router.post("/runs/{run_id}/validate", status_code=201)
def validate_run(run_id: int, body: ValidateRequest, session: SessionDep, settings: SettingsDep,
                 enqueuer: EnqueuerDep, _: WriteAuth) -> dict[str, Any]:
    """A 'validate' job recomputing metrics from the checkpoints of a finished train run.
    409 unless the parent is a finished train run with stored checkpoints (covering `epochs` if given)."""
    parent = _run_or_404(session, run_id)
    if parent.kind != "train":
        raise repo.StateConflict(f"run {run_id} is a {parent.kind!r} run; only train runs have checkpoints to validate")
    if parent.status not in FINISHED:
        raise repo.StateConflict(f"run {run_id} is {parent.status}; validate a finished run (its checkpoints still change)")
    stored = repo.checkpoint_epochs(session, run_id)
    if not stored:
        raise repo.StateConflict(f"run {run_id} has no stored checkpoints to validate")
    missing = sorted(set(body.epochs or ()) - set(stored))
    if missing:
        raise repo.StateConflict(f"run {run_id} has no checkpoint for epochs {missing}; stored epochs: {stored}")
    options = {"epochs": sorted(set(body.epochs)) if body.epochs else None, "splits": list(dict.fromkeys(body.splits))}
    job = repo.create_validate_run(session, parent, options, epochs_total=len(options["epochs"] or stored),
                                   max_attempts=settings.max_attempts)
    session.commit()
    return {"run_id": job[1], "parent_run_id": run_id, "kind": "validate", "options": options,
            "enqueued": safe_enqueue(enqueuer, [job])}
