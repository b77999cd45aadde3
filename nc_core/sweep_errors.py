"""Naming spec validation errors (torch-free): each error's field path and plain message, and their order in a sweep."""
from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Any, Sequence

from nc_core.spec import RunSpec, field_paths
from nc_core.spec_tree import get_path

if TYPE_CHECKING:
    from nc_core.sweep import SweepSpec

_PATH_AT_START = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)*): ")  # 'model.width: …', 'ufm: …' (a RunSpec field)


def error_field(err: dict[str, Any]) -> tuple[str, str]:
    """(field path, message) of a RunSpec validation error; a model validator's 'model.width: …' names its
    own field, deeper than pydantic's loc ('model'). pydantic's own messages are made to say what was
    expected and what was got: an unknown field lists the valid ones (closest first), a wrong value is
    echoed, and internal class names are dropped."""
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    loc = field_path([x for x in err.get("loc", ()) if x != "__root__"])
    named = _PATH_AT_START.match(msg)
    if named and named.group(1).split(".")[0] in RunSpec.model_fields and named.group(1).startswith(loc):
        return named.group(1), msg
    if err.get("type") == "extra_forbidden":
        return loc, _unknown_field(loc)
    return loc, with_input(_CLASS_NAME.sub("", msg), err)


def with_input(msg: str, err: dict[str, Any]) -> str:
    """A pydantic message with ', got <input>' appended (a scalar or list input, cut at 80 characters), unless
    it is a validator's own text or already says what it got."""
    given = err.get("input")
    echoed = given is None or isinstance(given, (str, int, float, list))
    if err.get("type") == "value_error" or "got " in msg or not echoed:
        return msg
    text = repr(given)
    return msg + f", got {text if len(text) <= 80 else text[:77] + '...'}"


_CLASS_NAME = re.compile(r" or instance of [A-Z]\w*")


def _unknown_field(loc: str) -> str:
    """'unknown field; did you mean …? expected one of …' for an extra field ``loc`` of a RunSpec."""
    parent, _, name = loc.rpartition(".")
    prefix = parent + "." if parent else ""
    siblings = sorted({p[len(prefix):].split(".")[0] for p in field_paths() if p.startswith(prefix)})
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown field; {hint}expected one of {', '.join(siblings)}"


_INDEX = re.compile(r"\[(\d+)\]")


def field_path(loc: Sequence[Any]) -> str:
    """A loc as the field path an error names, list positions as [i]: ['seeds', 0] → 'seeds[0]',
    ['base', 'eval', 'splits', 1] → 'base.eval.splits[1]'."""
    path = ""
    for part in loc:
        index = isinstance(part, int) and not isinstance(part, bool)
        path += f"[{part}]" if index else f".{part}" if path else str(part)
    return path


def field_loc(field: str) -> list[Any]:
    """An error's field as a loc (field_path inverted): 'grid.optim.lr[1]' → ['grid', 'optim', 'lr', 1];
    'base.epochs' → ['base', 'epochs']."""
    loc: list[Any] = []
    for segment in field.split("."):  # an axis key's empty part stays one: 'grid.loss..name' → [grid, loss, '', name]
        name, *indices = _INDEX.split(segment)
        loc += ([name] if name or not indices else []) + [int(i) for i in indices[0::2]]
    return loc


def error_order(sweep: SweepSpec, field: str) -> tuple[int, int, int]:
    """Sort key of an error's field: base fields first, then grid and zip axes in their order, by value index."""
    loc = field_loc(field)
    if loc[0] not in ("grid", "zip") or not isinstance(loc[-1], int):
        return (0, 0, 0)
    section, path, index = loc[0], ".".join(loc[1:-1]), loc[-1]
    axes = list(getattr(sweep, section))
    return (1 if section == "grid" else 2, axes.index(path) if path in axes else len(axes), index)


def value_field(sweep: SweepSpec, loc: str, grid_index: dict[str, int], zip_index: int, msg: str = "") -> str:
    """The field of an invalid value: 'grid.optim.lr[1]' (the axis's value at that index; also for an error
    inside a list value, 'data.class_counts[2]'; for an error of a section that only the axis put in the run,
    'ufm: …' of a ufm.dim axis), 'zip.…[i]', else the base field ('base.epochs'). A whole-spec error (a rule
    between fields, no loc) names the first axis its ``msg`` mentions ('head.name=… needs model.feature_dim …'
    over a model.feature_dim axis: 'grid.model.feature_dim[0]'), else 'base'."""
    if not loc:
        loc = _first_axis_named(msg, [*grid_index, *sweep.zip])
    for section, axes in (("grid", grid_index), ("zip", sweep.zip)):
        path = next((p for p in axes if loc == p or loc.startswith((p + ".", p + "["))), None) or next(
            (p for p in axes if loc and p.startswith(loc + ".") and get_path(sweep.base, loc) is None), None)
        if path is not None:
            return f"{section}.{path}[{grid_index[path] if section == 'grid' else zip_index}]"
    return f"base.{loc}" if loc else "base"


def _first_axis_named(msg: str, axes: Sequence[str]) -> str:
    """The axis path ``msg`` mentions first as a whole field ('model.width=5', not 'model.width_x'), or ''."""
    found = [(m.start(), path) for path in axes
             for m in [re.search(rf"(?<![\w.]){re.escape(path)}(?![\w.])", msg)] if m]
    return min(found)[1] if found else ""


def did_you_mean(name: str, choices: Sequence[str] | None = None) -> str:
    """'; did you mean 'model.width'?' for a misspelt field ``name`` (the nearest of ``choices``, default every
    spec field path), or '' when none is near: the tail of an 'unknown field' message."""
    near = difflib.get_close_matches(name, list(field_paths() if choices is None else choices), n=1)
    return f"; did you mean {near[0]!r}?" if near else ""
