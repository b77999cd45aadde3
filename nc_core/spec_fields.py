"""RunSpec leaf fields (torch-free): each dotted path's value kind and allowed values, and keys to group values by."""
from __future__ import annotations

import json
import types
from functools import lru_cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import TypeAdapter

from nc_core.spec import RunSpec, _submodel, field_annotations


def filter_kind(annotation: Any) -> str:
    """'str' | 'num' | 'bool' | 'list' for a spec leaf annotation."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return filter_kind(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        kinds = {filter_kind(a) for a in get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else "str"
    if origin is Literal:
        return "str" if all(isinstance(a, str) for a in get_args(annotation)) else "num"
    if origin in (list, dict, tuple) or annotation in (list, dict):
        return "list"
    return {bool: "bool", int: "num", float: "num"}.get(annotation, "str")


def literal_values(annotation: Any) -> tuple | None:
    """The allowed values of a Literal leaf (None included when the field is optional); None if not a Literal."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return literal_values(get_args(annotation)[0])
    if origin is Literal:
        return get_args(annotation)
    if origin in (Union, types.UnionType):
        parts = [literal_values(a) for a in get_args(annotation) if a is not type(None)]
        if parts and all(p is not None for p in parts):
            values = tuple(v for p in parts for v in p)
            return values + (None,) if type(None) in get_args(annotation) else values
    return None


@lru_cache(maxsize=1)
def spec_field_kinds() -> dict[str, str]:
    """Every dotted RunSpec leaf path → its filter kind."""
    return {path: filter_kind(ann) for path, ann in field_annotations(RunSpec).items()}


@lru_cache(maxsize=1)
def spec_field_choices() -> dict[str, tuple]:
    """Dotted RunSpec leaf paths of enum-like (Literal) fields → their allowed values, e.g. loss.name."""
    out = {}
    for path, ann in field_annotations(RunSpec).items():
        values = literal_values(ann)
        if values is not None and filter_kind(ann) != "list":
            out[path] = values
    return out


def value_key(value: Any) -> Any:
    """A hashable key of a spec value to group runs by: the value itself, or for a list or dict value
    (schedule.milestones, eval.splits) its canonical JSON (sorted keys), tagged so it never equals a string."""
    if isinstance(value, (list, dict)):
        return ("json", json.dumps(value, sort_keys=True))
    return value


def distinct_values(values: Any) -> list:
    """The distinct values (by value_key), first occurrence kept, in the order given."""
    out: dict[Any, Any] = {}
    for v in values:
        out.setdefault(value_key(v), v)
    return list(out.values())


def value_text(value: Any) -> str:
    """A value as a label: lists, dicts and booleans as JSON ('[1, 2]', 'true'), anything else as str; a whole
    float as an integer (a width 64.0 reads '64')."""
    value = _plain(value)
    return json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return {k: _plain(v) for k, v in value.items()} if isinstance(value, dict) else value


def value_sort_key(value: Any) -> tuple:
    """Sort key of spec values: numbers by value, then lists element by element ([1] < [1, 2] < [2]), then
    anything else by its JSON text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), ())
    if isinstance(value, list):
        return (1, 0.0, tuple(value_sort_key(v) for v in value))
    return (2, 0.0, json.dumps(value, sort_keys=True))


def normalized(sweep: Any) -> Any:
    """A SweepSpec with each grid and zip value as its field validates it ([1, "2"] for epochs: [1, 2]; a width
    8: 8.0), as its runs have them, a grid axis's repeats dropped: what is stored. For a sweep that expanded
    without errors (zipped axes keep every position: they pair up by it)."""
    def valid(path: str, value: Any) -> Any:
        return leaf_adapter(path).dump_python(leaf_adapter(path).validate_python(value), mode="json")
    grid = {p: distinct_values(valid(p, v) for v in values) for p, values in sweep.grid.items()}
    return sweep.model_copy(update={"grid": grid, "zip": {p: [valid(p, v) for v in values]
                                                          for p, values in sweep.zip.items()}})


@lru_cache(maxsize=None)
def leaf_adapter(path: str) -> TypeAdapter:
    """The validator of one RunSpec leaf field (its type and constraints) by dotted path."""
    model: Any = RunSpec
    *parents, leaf = path.split(".")
    for part in parents:
        model = _submodel(model.model_fields[part].annotation)
    info = model.model_fields[leaf]
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)
