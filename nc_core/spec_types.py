"""Constrained value types of the spec models (torch-free): bounded numbers that refuse booleans, NUL-free text."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field


def _no_bool(value: Any) -> Any:
    """Refuse true/false where a number is expected (pydantic's lax mode would read them as 1/0)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
    return value


NUL_MESSAGE = "must not contain NUL characters"


def no_nul(value: str) -> str:
    """Refuse NUL characters (PostgreSQL text and JSON cannot store or compare them)."""
    if "\x00" in value:
        raise ValueError(NUL_MESSAGE)
    return value


def int_in(ge: int = -2**31, le: int = 2**31 - 1) -> Any:
    """An integer in ge..le (default: the database's 32-bit columns), never a boolean. Bounds before the boolean check:
    the schema then says minimum/maximum (after a validator pydantic shows them as non-standard 'ge'/'le')."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_no_bool)]


def float_in(**bounds: float) -> Any:  # a float within bounds (ge, gt, le, lt), never a boolean; as int_in
    return Annotated[float, Field(**bounds), BeforeValidator(_no_bool)]


Int, Float = int_in(), float_in()  # floats are finite: the spec models set allow_inf_nan=False (JSON has no inf/nan)
Text = Annotated[str, AfterValidator(no_nul)]
PositiveInt = int_in(ge=1)
PositiveFloat = float_in(gt=0)
NonNegFloat = float_in(ge=0)
