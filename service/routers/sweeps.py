"""Sweep endpoints: submit, list, detail, cancel, retry, extend, delete, prune."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from nc_core.db import actions_repo, cleanup_repo, sweeps_repo as repo
from nc_core.data_files import absent_files, missing
from nc_core.db.models import Run, Sweep
from nc_core.settings import Settings
from nc_core.spec_fields import normalized
from nc_core.sweep import (ExpandedRun, SpecError, SweepSpec, axis_problems, error_order, expand, field_loc,
                           get_path)
from service import cleanup
from service.auth import WriteAuth
from service.deps import EnqueuerDep, Id, Offset, SessionDep, SettingsDep
from service.enqueue import safe_enqueue
from service.withdraw import safe_find_waiting, safe_withdraw
from service.errors import NotFound
from service.schemas import (SWEEP_EXAMPLES, ActionResult, ExtendRequest, SweepCreated, SweepDetail, SweepExtended,
                             SweepPage, SweepSummary, problems)
from service.schemas_cleanup import PruneRequest, SweepDeleted, SweepPruned

log = logging.getLogger(__name__)
router = APIRouter(tags=["sweeps"])


def expand_checked(spec: SweepSpec, settings: Settings, *, refuse_unread: bool = True) -> list[ExpandedRun]:
    """Cap (min of spec.max_runs and settings.max_runs_per_sweep), expand, confine data roots. One SpecError
    lists every bad value and data root (error_order: base, then each axis by value index). ``refuse_unread``:
    as :func:`expand`'s."""
    cap = min(spec.max_runs, settings.max_runs_per_sweep)
    if spec.size > cap:
        raise SpecError("max_runs", f"the sweep expands to {spec.size} runs (grid × zip × seeds), above the cap of "
                                    f"{cap} (max_runs={spec.max_runs}, server max_runs_per_sweep="
                                    f"{settings.max_runs_per_sweep})")
    expanded, problems = [], []
    try:
        expanded = expand(spec, refuse_unread=refuse_unread)
    except SpecError as exc:
        problems = list(exc.errors)
    named = {field for field, _ in problems}
    problems += [p for p in data_root_problems(spec, settings) if p[0] not in named]
    if not problems and settings.check_data_files:
        problems = data_file_problems(spec, expanded, settings)
    if problems:
        raise SpecError.of(sorted(problems, key=lambda p: error_order(spec, p[0])))
    return expanded


def data_root_problems(spec: SweepSpec, settings: Settings) -> list[tuple[str, str]]:
    """(field, message) for every data.root (base value, or each value of its axis) that is not an absolute
    path inside one of settings.data_roots."""
    allowed = [Path(p).expanduser().resolve() for p in settings.data_roots]
    axis = next((s for s in ("grid", "zip") if "data.root" in getattr(spec, s)), None)
    roots = [(f"{axis}.data.root[{i}]", v) for i, v in enumerate(getattr(spec, axis)["data.root"])] if axis \
        else [("base.data.root", get_path(spec.base, "data.root"))]
    problems = []
    for field, root in roots:
        if not isinstance(root, str) or "\x00" in root:  # null: settings.data_root; others: expand names them
            continue
        try:
            path = Path(root).expanduser()
        except RuntimeError as exc:  # "~nosuchuser/…": Path.expanduser cannot determine that home directory
            problems.append((field, f"cannot expand {root!r} ({exc}); expected an existing user's ~ or a full path"))
            continue
        if path.is_absolute() and any(path.resolve().is_relative_to(a) for a in allowed):
            continue
        problems.append((field, f"{root!r} is not inside an allowed data root; expected an absolute path under one "
                                f"of {[str(a) for a in allowed]} (settings.data_roots)"))
    return problems


def data_file_problems(spec: SweepSpec, expanded: list[ExpandedRun], settings: Settings) -> list[tuple[str, str]]:
    """(field, message) for each dataset whose files are not under its data root on this host, in runs that
    do not download them (nothing is read; workers would fail each run with the same error). The field is
    the axis that chose the data root or dataset (grid.data.root[i], …), else base.data.root/base.data.name."""
    problems, seen = [], set()
    for run in expanded:  # up to 20,000 runs, a handful of distinct (dataset, root): each is checked once
        data = run.spec.data
        if run.spec.kind != "train" or data.download or (data.name, data.root) in seen:
            continue
        seen.add((data.name, data.root))
        root = Path(data.root or settings.data_root).expanduser()
        try:
            absent = absent_files(data.name, root)
        except OSError as exc:  # ENAMETOOLONG and the like: no such path can hold the files
            problems.append((_choosing_field(spec, run), f"{str(root)[:200]!r}… cannot be looked up ({exc.strerror}); "
                                                         "expected a path this host's filesystem accepts"))
            continue
        if absent:
            why = str(missing(data.name, root, absent))
            problems.append((_choosing_field(spec, run), f"{why} (Checked on the API's host when the sweep was "
                                                         "submitted; NCSWEEP_CHECK_DATA_FILES=false turns it off.)"))
    return problems


def _choosing_field(spec: SweepSpec, run: ExpandedRun) -> str:
    """The field that gave a run its data root or dataset: an axis value ('grid.data.root[1]'), else the base."""
    for path in ("data.root", "data.name"):
        for section in ("grid", "zip"):
            values = getattr(spec, section).get(path)
            if values is not None and run.grid.get(path) in values:
                return f"{section}.{path}[{values.index(run.grid[path])}]"
    return "base.data.root" if get_path(spec.base, "data.root") else "base.data.name"


def _sweep_or_404(session, sweep_id: int, *, lock: bool = False) -> Sweep:  # noqa: ANN001
    sweep = repo.get_sweep(session, sweep_id, lock=lock)
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} not found")
    return sweep


@router.post("/sweeps", status_code=201, response_model=SweepCreated,
             responses=problems(401, 403, 413, 422, 503))
def submit_sweep(spec: Annotated[SweepSpec, Body(openapi_examples=SWEEP_EXAMPLES)], session: SessionDep,
                 settings: SettingsDep, enqueuer: EnqueuerDep, token: WriteAuth) -> SweepCreated:
    """Validate and expand the sweep, insert sweep + runs in one transaction, commit, then enqueue.
    If the broker is down the runs stay queued (enqueued=false) and the reconciler re-sends them."""
    expanded = expand_checked(spec, settings)
    sweep_id, jobs = repo.create_sweep(session, normalized(spec), expanded, owner=token.name if token else "",
                                       max_attempts=settings.max_attempts)
    session.commit()
    return SweepCreated(sweep_id=sweep_id, runs=len(jobs), duplicates=spec.size - len(expanded),
                        enqueued=safe_enqueue(enqueuer, jobs))


@router.get("/sweeps", response_model=SweepPage, responses=problems(422, 503))
def list_sweeps(session: SessionDep, limit: int = Query(50, ge=1, le=1000), offset: Offset = 0) -> SweepPage:
    """Sweeps, newest first, with run counts per status and progress (0..1)."""
    total, sweeps = repo.list_sweeps(session, limit, offset)
    stats = repo.sweep_stats(session, [s.id for s in sweeps])
    items = [SweepSummary.model_validate({**_summary(s), **stats[s.id]}) for s in sweeps]
    return SweepPage(total=total, limit=limit, offset=offset, items=items)


def _summary(sweep: Sweep) -> dict[str, Any]:
    return {"id": sweep.id, "name": sweep.name, "owner": sweep.owner, "created_at": sweep.created_at,
            "axes": sweep.axes or []}


@router.get("/sweeps/{sweep_id}", response_model=SweepDetail, responses=problems(404, 422, 503))
def get_sweep(sweep_id: Id, session: SessionDep) -> SweepDetail:
    """One sweep: spec, axes, counts per status, progress and a rough ETA."""
    sweep = _sweep_or_404(session, sweep_id)
    stats = repo.sweep_stats(session, [sweep_id])[sweep_id]
    return SweepDetail.model_validate({**_summary(sweep), **stats, "spec": sweep.spec,
                                       "eta_s": repo.sweep_eta(session, sweep_id)})


@router.post("/sweeps/{sweep_id}/cancel", response_model=ActionResult, responses=problems(401, 403, 404, 422, 503))
def cancel_sweep(sweep_id: Id, session: SessionDep, enqueuer: EnqueuerDep, _: WriteAuth) -> ActionResult:
    """Queued runs → cancelled; running runs get cancel_requested (workers stop at the next step). Under the
    sweep's lock, so a concurrent retry or extend of the sweep acts wholly before or after it. The cancelled
    runs' messages waiting in the broker's queue are then taken out of it (service.withdraw: best effort, read
    before the lock; a message it misses is dropped unrun by the worker that takes it)."""
    queued = actions_repo.queued_run_ids(session, Run.sweep_id == sweep_id)
    session.rollback()  # end the read before the broker is asked: no connection held while Redis answers
    waiting = safe_find_waiting(enqueuer, queued)  # the lock below starts the cancel's own transaction
    _sweep_or_404(session, sweep_id, lock=True)
    counts, cancelled = actions_repo.cancel_sweep(session, sweep_id)
    session.commit()
    safe_withdraw(enqueuer, waiting, cancelled)
    return ActionResult(**counts)


@router.post("/sweeps/{sweep_id}/retry", response_model=ActionResult,
             responses=problems(401, 403, 404, 409, 422, 503))
def retry_sweep(sweep_id: Id, session: SessionDep, settings: SettingsDep, enqueuer: EnqueuerDep,
                _: WriteAuth) -> ActionResult:
    """Failed and cancelled runs → queued with a fresh allowance of attempts (as a run retry) and re-enqueued;
    409 when there is none. Runs whose checkpoints a queued or running validate job reads are skipped (as a run
    retry refuses them; the 409 names them when they are all there is, the change feed counts them). Under the
    sweep's lock, so a concurrent cancel or extend of the sweep acts wholly before or after it."""
    _sweep_or_404(session, sweep_id, lock=True)
    jobs, skipped = actions_repo.retry_sweep(session, sweep_id, max_attempts=settings.max_attempts)
    session.commit()
    if skipped:
        log.info("sweep %s retry: skipped %d runs whose checkpoints validate jobs read: %s", sweep_id, len(skipped),
                 dict(sorted(skipped.items())[:20]))
    return ActionResult(retried=len(jobs), enqueued=safe_enqueue(enqueuer, jobs), skipped=skipped)


@router.post("/sweeps/{sweep_id}/extend", response_model=SweepExtended,
             responses=problems(401, 403, 404, 409, 413, 422, 503))
def extend_sweep(sweep_id: Id, body: ExtendRequest, session: SessionDep, settings: SettingsDep,
                 enqueuer: EnqueuerDep, _: WriteAuth) -> SweepExtended:
    """Add axis values / seeds: re-expand the merged spec and insert only runs with a new spec_hash."""
    sweep = _sweep_or_404(session, sweep_id, lock=True)
    old = SweepSpec.stored(sweep.spec)
    merged = merge_spec(old, body)
    try:
        expanded = _expand_extension(old, merged, settings)
    except SpecError as exc:  # its fields index the merged grid: point them into the request instead
        raise SpecError.of([(_field_in_request(old, merged, body, f), m) for f, m in exc.errors]) from None
    have = repo.existing_hashes(session, sweep_id)
    new = [r for r in expanded if r.spec_hash not in have]
    jobs = repo.add_runs(session, sweep_id, new, max_attempts=settings.max_attempts) if new else []
    sweep.spec, sweep.axes = normalized(merged).model_dump(mode="json"), merged.axes
    session.commit()
    return SweepExtended(sweep_id=sweep_id, added=len(jobs), existing=len(expanded) - len(new),
                         enqueued=bool(jobs) and safe_enqueue(enqueuer, jobs))  # nothing added: nothing enqueued


@router.delete("/sweeps/{sweep_id}", response_model=SweepDeleted, responses=problems(401, 403, 404, 409, 422, 503))
def delete_sweep(sweep_id: Id, session: SessionDep, settings: SettingsDep, _: WriteAuth) -> SweepDeleted:
    """Delete the sweep with its runs and validate jobs and every row of them (metrics, distributions,
    checkpoints, events, telemetry) in one transaction, then their folders <artifacts>/run_<id>/ (a file that
    cannot be removed is listed in not_removed). 409, nothing deleted, while a run is queued or running: cancel
    first. Under the sweep's lock, as cancel and retry."""
    _sweep_or_404(session, sweep_id, lock=True)
    counts, runs, recorded = cleanup_repo.delete_sweep(session, sweep_id)
    session.commit()
    return SweepDeleted(sweep_id=sweep_id, **counts, **cleanup.remove_run_folders(settings, runs, recorded))


@router.post("/sweeps/{sweep_id}/prune", response_model=SweepPruned,
             responses=problems(401, 403, 404, 413, 422, 503))
def prune_sweep(sweep_id: Id, body: PruneRequest, session: SessionDep, settings: SettingsDep,
                _: WriteAuth) -> SweepPruned:
    """Keep the newest keep_last checkpoints (rows and files) of each finished train/ufm run; metrics stay. A run
    whose checkpoints a queued or running validate job reads is skipped (named in skipped, with that job);
    queued and running runs are not touched. Under the sweep's lock, as cancel and retry."""
    _sweep_or_404(session, sweep_id, lock=True)
    plan = cleanup_repo.prune_checkpoints(session, sweep_id, body.keep_last)
    session.commit()
    if plan.skipped:
        log.info("sweep %s prune: skipped %d runs whose checkpoints validate jobs read: %s", sweep_id,
                 len(plan.skipped), dict(sorted(plan.skipped.items())[:20]))
    return SweepPruned(sweep_id=sweep_id, keep_last=body.keep_last, runs=len(plan.runs), runs_pruned=len(plan.pruned),
                       checkpoint_rows=plan.rows, skipped=plan.skipped, unfinished=plan.unfinished,
                       **cleanup.remove_checkpoints(settings, plan.runs, plan.doomed))


def _expand_extension(old: SweepSpec, merged: SweepSpec, settings: Settings) -> list[ExpandedRun]:
    """The merged sweep's runs: under the unread-field rule, unless the stored sweep itself breaks it (stored
    before that rule); the stored sweep is expanded again only when the merged one is refused."""
    try:
        return expand_checked(merged, settings)
    except SpecError:
        if not old.value_problems():  # the stored sweep keeps to the rule: so does its extension
            raise
        return expand_checked(merged, settings, refuse_unread=False)


def merge_spec(old: SweepSpec, body: ExtendRequest) -> SweepSpec:
    """Append new values to grid axes (a new axis starts with the base value) and new seeds. One SpecError
    lists every axis that cannot be extended (the seed, an unknown field, no values, a zipped axis, …)."""
    grid = {path: list(values) for path, values in old.grid.items()}
    problems = axis_problems("grid", body.grid)
    named = {field for field, _ in problems}
    old_runs = None
    for path, values in body.grid.items():
        if f"grid.{path}" in named:
            continue
        if path in old.zip:
            problems.append((f"grid.{path}", "a zipped axis cannot be extended (its partners would need values too)"))
            continue
        if path not in grid:  # a new axis starts with the value the existing runs have
            old_runs = old_runs if old_runs is not None else expand(old, refuse_unread=False)
            current = {json.dumps(get_path(r.tree, path)): get_path(r.tree, path) for r in old_runs}
            if len(current) > 1:
                problems.append((f"grid.{path}", f"the existing runs differ in {path} ({', '.join(sorted(current))}: "
                                                 "it follows another axis), so it cannot become an axis of this sweep"))
                continue
            grid[path] = list(current.values())
        grid[path] += [v for v in values if v not in grid[path]]
    seeds = list(old.seeds) + [s for s in body.seeds if s not in old.seeds]
    if problems:  # with the bad values of the axes that can be extended, so one request shows both
        sound = old.model_copy(update={"grid": grid, "seeds": seeds})
        strict = not old.value_problems()  # as the extend itself: an older sweep without the unread-field rule
        raise SpecError.of(problems + [(_field_in_request(old, sound, body, f), m)
                                       for f, m in sound.value_problems(refuse_unread=strict)])
    return SweepSpec.model_validate({**old.model_dump(mode="json"), "grid": grid, "seeds": seeds})


def _field_in_request(old: SweepSpec, merged: SweepSpec, body: ExtendRequest, field: str) -> str:
    """An error's field in the merged spec as the request's: a value the request adds, at its index in the
    request ('grid.optim.lr[0]', not [4] of the merged axis); any other field as it is."""
    loc = field_loc(field)
    if loc[0] != "grid" or not isinstance(loc[-1], int):
        return field
    path, index = ".".join(str(x) for x in loc[1:-1]), loc[-1]
    existing = len(old.grid[path]) if path in old.grid else 1  # a new axis starts with the runs' value
    if path not in body.grid or index < existing:
        return field
    value = merged.grid[path][index]
    sent = next((j for j, v in enumerate(body.grid[path]) if v is value or v == value), None)
    return field if sent is None else f"grid.{path}[{sent}]"
