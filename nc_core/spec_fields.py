"""RunSpec leaf fields for filters (torch-free): each dotted path's value kind and its allowed values."""
from __future__ import annotations

import types
from functools import lru_cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from nc_core.spec import RunSpec, field_annotations


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
