"""Checks of the `ncsweep` CLI's arguments, made before any request: sweep files, --out paths, integer ranges; --version."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import typer


def int_range(lo: int, hi: int | None = None) -> Callable[[int | None], int | None]:
    """A typer option callback refusing an integer outside lo..hi (no upper bound when hi is None): the
    option's usage error says 'expected 1..65535, got 99999'; None (the option left out) passes."""
    def check(value: int | None) -> int | None:
        if value is not None and (value < lo or (hi is not None and value > hi)):
            raise typer.BadParameter(f"expected {lo}..{hi}, got {value}" if hi is not None else
                                     f"expected an integer of at least {lo}, got {value}")
        return value
    return check


def repeated_axis_values(spec: dict[str, Any]) -> list[str]:
    """'grid.model.width[2] repeats grid.model.width[0] (32)' for each grid value a sweep file gives again (the API
    runs it once and only counts the runs it dropped: the submit line names them)."""
    grid = spec.get("grid") if isinstance(spec.get("grid"), dict) else {}
    found = []
    for path, values in grid.items():
        for i, value in enumerate(values if isinstance(values, list) else []):
            first = next(j for j, v in enumerate(values) if (v, type(v) is bool) == (value, type(value) is bool))
            if first < i:
                found.append(f"grid.{path}[{i}] repeats grid.{path}[{first}] ({value!r})")
    return found


def read_sweep_file(path: Path) -> dict[str, Any]:
    """A sweep YAML/JSON file → its mapping; unreadable, non-UTF-8, invalid or duplicate-key files → BadParameter."""
    from nc_core.cli_files import read_yaml_file, yaml_kind
    from nc_core.spec import RunSpec
    from nc_core.sweep import SweepSpec

    try:
        spec = read_yaml_file(path, "a sweep YAML or JSON file")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not isinstance(spec, dict):
        raise typer.BadParameter(f"{path}: expected a mapping (a SweepSpec: name, base, grid, seeds), got "
                                 f"{yaml_kind(spec)}")
    run_fields = set(RunSpec.model_fields) - set(SweepSpec.model_fields)
    if "name" not in spec and "base" not in spec and run_fields & set(spec):
        raise typer.BadParameter(f"{path} looks like a RunSpec (one run), not a sweep: a sweep file has a `name:` "
                                 "and the run's fields under `base:`, e.g. name: my-sweep / base: {...this file...} / "
                                 "grid: {loss.name: [ce, mse]} / seeds: [0, 1]; to train this one run locally use "
                                 f"`python -m nc_core run {path}`")
    bad = _non_finite(spec)
    if bad:
        raise typer.BadParameter(f"{path}: " + "; ".join(f"{field}: expected a finite number, got {value!r}"
                                                         for field, value in bad))
    return spec


def _non_finite(tree: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(field, value) of every inf/nan float in a YAML tree (JSON cannot carry them), fields named as the API
    names them: 'base.optim.lr', 'grid.optim.lr[1]'."""
    if isinstance(tree, float) and not math.isfinite(tree):
        return [(prefix or ".", tree)]
    if isinstance(tree, dict):
        items = [(f"{prefix}.{key}" if prefix else str(key), value) for key, value in tree.items()]
    elif isinstance(tree, list):
        items = [(f"{prefix}[{i}]", value) for i, value in enumerate(tree)]
    else:
        items = []
    return [found for field, value in items for found in _non_finite(value, field)]


def check_out_dir(path: Path, suffixes: tuple[str, ...]) -> None:
    """Refuse an output path with another suffix, that is a directory, or whose directory does not exist."""
    from nc_core.cli_files import out_path_problem

    problem = out_path_problem(path, suffixes)
    if problem:
        raise typer.BadParameter(f"{str(path)!r}: {problem}", param_hint="--out")


def export_format(out_path: Path, fmt: str | None) -> str:
    """csv or parquet: --format, else --out's suffix; the two must agree when both are given."""
    suffix = out_path.suffix.lower().lstrip(".")
    if fmt is None and suffix not in ("csv", "parquet"):
        raise typer.BadParameter(f"expected a file name ending in .csv or .parquet (or give --format), got "
                                 f"{str(out_path)!r}", param_hint="--out")
    fmt = fmt or suffix
    if fmt not in ("csv", "parquet"):
        raise typer.BadParameter(f"expected csv or parquet, got {fmt!r}", param_hint="--format")
    if suffix in ("csv", "parquet") and suffix != fmt:
        raise typer.BadParameter(f"{str(out_path)!r} ends in .{suffix} but --format is {fmt}; make them agree",
                                 param_hint="--out")
    check_out_dir(out_path, (f".{fmt}",))
    return fmt


def check_png_out(out_path: Path) -> None:
    """Plots are PNG images: --out must end in .png, in a directory that exists."""
    check_out_dir(out_path, (".png",))


def show_version(value: bool) -> None:
    """``--version``: the installed ncsweep's version, then exit."""
    if value:
        from importlib.metadata import version

        typer.echo(f"ncsweep {version('ncsweep')}")
        raise typer.Exit()


def comma_ints(text: str, what: str) -> list[int]:
    """'0,1' → [0, 1]; anything else a usage error naming ``what``."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers for {what}, got {text!r}") from None


def comma_items(text: str | None) -> list[str] | None:
    """'a, b' → ['a', 'b']; None (the option's default) for nothing given."""
    return [x.strip() for x in text.split(",") if x.strip()] if text else None
