"""Sweep specifications: a base RunSpec, grid and zipped axes, seeds → de-duplicated RunSpecs."""
from __future__ import annotations

import difflib
import hashlib
import itertools
from dataclasses import dataclass
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nc_core.spec import Int, PositiveInt, RunSpec, Text, field_paths
from nc_core.spec_tree import canonical_text, copy_tree, get_path, set_path
from nc_core.spec_tree import canonical_json, short_names, spec_changes, spec_hash  # noqa: F401 - re-exported
from nc_core.sweep_errors import error_field, error_order, field_loc, value_field
from nc_core.sweep_errors import field_path, with_input  # noqa: F401 - re-exported


class SpecError(ValueError):
    """A sweep-level error that names the offending field path; ``errors`` lists every (field, message) a
    check found, the first being ``field``/``message`` (the API answers one 422 item per entry)."""

    def __init__(self, field: str, message: str, *, more: Sequence[tuple[str, str]] = ()):
        self.errors = [(field, message), *more]
        super().__init__("\n".join(f"{f}: {m}" for f, m in self.errors))
        self.field = field
        self.message = message

    @classmethod
    def of(cls, errors: Sequence[tuple[str, str]]) -> "SpecError":
        """One error carrying several (field, message) pairs, in the given order."""
        (field, message), *more = errors
        return cls(field, message, more=more)


class SweepShapeError(SpecError):
    """The SpecError of a sweep's shape, raised inside its validation: pydantic shows its text, one line
    ('field: message; also field: message'), and keeps it as the error's ctx['error'] (the API's items)."""

    def __str__(self) -> str:
        return "; also ".join(f"{field}: {message}" for field, message in self.errors)


def axis_problems(section: str, axes: dict[str, list[Any]]) -> list[tuple[str, str]]:
    """(field, message) for each axis of ``section`` ('grid' or 'zip') that is the seed, not a spec field
    (did-you-mean and the valid fields), or has no values."""
    valid, out = set(field_paths()), []
    for path, values in axes.items():
        if path == "seed":
            out.append((f"{section}.seed", "use the 'seeds' list for seeds"))
        elif path not in valid:
            near = difflib.get_close_matches(path, valid, n=1)
            close = sorted(p for p in valid if p.split(".")[0] == path.split(".")[0])[:12]
            out.append((f"{section}.{path}", "unknown field; " + (f"did you mean {near[0]!r}? " if near else "")
                        + f"valid fields include {', '.join(close or sorted(valid)[:12])}"))
        if not values:
            out.append((f"{section}.{path}", "expected a non-empty list of values"))
    return out


class SweepSpec(BaseModel):
    """A sweep: base run × grid axes (cartesian) × zipped axes (parallel) × seeds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Text = Field(min_length=1, max_length=200, description="a label for the sweep")
    base: dict[str, Any] = Field(default_factory=dict, description="a RunSpec (`python -m nc_core example-spec`) "
                                 "every run starts from, without seed; a field left out takes its default")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="spec field path → values "
                                       "({\"loss.name\": [\"ce\", \"mse\"]}); the runs are their cartesian product")
    zip: dict[str, list[Any]] = Field(default_factory=dict, description="spec field path → values, all of one "
                                      "length, varied together (position i of each in the same run)")
    seeds: list[Int] = Field(default_factory=lambda: [0], description="each grid × zip cell runs once per seed "
                             "(default [0])")
    max_runs: PositiveInt = Field(1000, description="refuse the sweep if it expands to more runs than "
                                  "this (the server's NCSWEEP_MAX_RUNS_PER_SWEEP caps it too)")

    @model_validator(mode="after")
    def _check(self) -> "SweepSpec":
        """Every problem of the sweep's shape in one error, then the bad values of the axes that are sound
        (so one submission shows both): the first names its field, the rest follow it."""
        problems = self._problems()
        if problems:
            raise SweepShapeError.of(problems + self._sound_part().value_problems())
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _all_problems(cls, data: Any, handler: Any) -> "SweepSpec":
        """Every problem of a sweep in one error: an unknown top-level key ('gird') as RunSpec's unknown fields
        are told (did-you-mean and the keys a sweep has), the errors of the sweep's own fields, and then the
        shape problems and bad values of the parts that are sound (see :meth:`_sound_problems`)."""
        if not isinstance(data, dict):
            return handler(data)
        from pydantic_core import InitErrorDetails, PydanticCustomError

        errors = []
        for key in [k for k in data if k not in cls.model_fields]:
            near = difflib.get_close_matches(str(key), list(cls.model_fields), n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}? " if near else \
                "a run's field goes under 'base'; " if key in RunSpec.model_fields else ""
            kind = PydanticCustomError("extra_forbidden", "unknown field; {hint}expected one of {keys}",
                                       {"hint": hint, "keys": ", ".join(cls.model_fields)})
            errors.append(InitErrorDetails(type=kind, loc=(key,), input=data[key]))
        known = {k: v for k, v in data.items() if k in cls.model_fields}
        try:
            spec = handler(known)
        except ValidationError as exc:
            found = exc.errors(include_url=False)
            sound = cls._sound_problems(known, {e["loc"][0] for e in found if e["loc"]}, handler)
            if not errors and not sound:
                raise  # only the sweep's own errors: pydantic's report, unchanged
            errors += [InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"], ctx=e.get("ctx") or {})
                       for e in found]
            if sound:  # one model-level error naming each problem (as _check's)
                errors.append(InitErrorDetails(type="value_error", loc=(), input=data,
                                               ctx={"error": SweepShapeError.of(sound)}))
        else:
            if not errors:
                return spec
        try:
            error = ValidationError.from_exception_data(cls.__name__, errors)
        except Exception:  # noqa: BLE001 - an error type pydantic cannot rebuild: its own report, unchanged
            return handler(data)
        raise error

    @classmethod
    def _sound_problems(cls, data: dict[str, Any], bad: set[Any], handler: Any) -> list[tuple[str, str]]:
        """When some of the sweep's own fields are invalid (``bad``: a seed out of range, max_runs 'x'; the
        model's checks did not run), the shape problems and bad values of the rest, each field that is bad
        left at its default (a placeholder name), and none that names a bad field: [] where those were not
        the errors (a shape problem, already with the values)."""
        if not bad or not bad <= set(cls.model_fields):
            return []
        rest = {k: v for k, v in data.items() if k not in bad} | ({"name": "sweep"} if "name" in bad else {})
        try:
            problems = handler(rest).value_problems()
        except ValidationError as exc:
            causes = [(e.get("ctx") or {}).get("error") for e in exc.errors(include_url=False)]
            problems = [p for c in causes if isinstance(c, SpecError) for p in c.errors]
        if "base" in bad:  # the axes' values are checked against the base: only the shape problems
            problems = [p for p in problems if not p[0].endswith("]")]
        return list(dict.fromkeys(p for p in problems if field_loc(p[0])[0] not in bad))

    def _sound_part(self) -> "SweepSpec":
        """The sweep without what its shape problems name (unknown, empty or seed axes, an axis in both grid
        and zip, zipped axes of unequal lengths, base.seed, duplicate seeds), built without validation."""
        named = {f for section in ("grid", "zip") for f, _ in axis_problems(section, getattr(self, section))}
        grid = {p: v for p, v in self.grid.items() if f"grid.{p}" not in named}
        zipped = {p: v for p, v in self.zip.items() if f"zip.{p}" not in named and p not in grid}
        if len({len(v) for v in zipped.values()}) > 1:
            zipped = {}
        base = {k: v for k, v in self.base.items() if k != "seed"}
        return SweepSpec.model_construct(name=self.name, base=base, grid=grid, zip=zipped,
                                         seeds=list(dict.fromkeys(self.seeds)) or [0], max_runs=self.max_runs)

    def value_problems(self, *, refuse_unread: bool = True) -> list[tuple[str, str]]:
        """(field, message) of each bad value :func:`expand` would refuse; none checked past max_runs."""
        if self.size > self.max_runs:
            return []
        try:
            expand(self, refuse_unread=refuse_unread)
        except SpecError as exc:
            return list(exc.errors)
        return []

    def _problems(self) -> list[tuple[str, str]]:
        out = [problem for section in ("grid", "zip") for problem in axis_problems(section, getattr(self, section))]
        out += [(f"zip.{p}", f"{p} is also a grid axis; an axis goes in grid or in zip, not both")
                for p in sorted(set(self.grid) & set(self.zip))]
        if "seed" in self.base:
            out.append(("base.seed", "use the 'seeds' list for seeds (every run gets its seed from it)"))
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1:
            out.append(("zip", f"all zipped axes must have the same length, got lengths {sorted(lengths)}"))
        if not self.seeds:
            out.append(("seeds", "expected at least one seed"))
        if len(set(self.seeds)) != len(self.seeds):
            out.append(("seeds", "duplicate seeds"))
        return out

    @classmethod
    def stored(cls, tree: dict[str, Any]) -> "SweepSpec":
        """A sweep as the database keeps it. Sweeps stored before base.seed was refused may carry one; the
        seeds list always overrode it, so it is dropped (their runs keep their spec hashes)."""
        base = tree.get("base")
        if isinstance(base, dict) and "seed" in base:
            tree = {**tree, "base": {k: v for k, v in base.items() if k != "seed"}}
        return cls.model_validate(tree)

    @property
    def size(self) -> int:
        """Number of runs before de-duplication."""
        n = len(self.seeds)
        for v in self.grid.values():
            n *= len(v)
        if self.zip:
            n *= len(next(iter(self.zip.values())))
        return n

    @property
    def axes(self) -> list[str]:
        return list(self.grid) + list(self.zip)


@dataclass(frozen=True, slots=True)
class ExpandedRun:
    """One run of an expanded sweep, with its JSON form computed once (the API stores all of it)."""

    spec: RunSpec
    grid: dict[str, Any]  # axis path -> its value in the validated spec ("2" given for epochs: 2; seed excluded)
    tree: dict[str, Any]  # spec.model_dump(mode="json")
    canonical: str  # canonical_json(spec)
    spec_hash: str  # sha256 of canonical


def expand(sweep: SweepSpec, *, refuse_unread: bool = True) -> list[ExpandedRun]:
    """Expand to runs: grid × zip × seeds, de-duplicated by spec hash, order stable.

    Every run is validated; a SpecError lists each invalid value once, named by its field ('grid.optim.lr[1]',
    'zip.model.width[0]', 'base.epochs') in error_order, with a run that shows it (one with the fewest errors).
    ``refuse_unread``: also refuse values no run reads (:func:`nc_core.sweep_unread.unread_problems`); off for a
    sweep stored before that rule (extending it)."""
    if sweep.size > sweep.max_runs:
        raise SpecError("max_runs", f"the sweep expands to {sweep.size} runs, above the cap of {sweep.max_runs}")
    grid_items = list(sweep.grid.items())
    zip_len = len(next(iter(sweep.zip.values()))) if sweep.zip else 1
    out: list[ExpandedRun] = []
    seen: set[str] = set()
    problems: dict[str, tuple[int, str]] = {}  # field -> (errors of the run, message): the plainest run shown
    for combo in itertools.product(*(range(len(values)) for _, values in grid_items)):
        for zi in range(zip_len):
            for seed in sweep.seeds:
                tree = copy_tree(sweep.base)
                axes: dict[str, Any] = {}
                for (path, values), i in zip(grid_items, combo):
                    set_path(tree, path, values[i])
                    axes[path] = values[i]
                for path, values in sweep.zip.items():
                    set_path(tree, path, values[zi])
                    axes[path] = values[zi]
                tree["seed"] = seed
                try:
                    run = RunSpec.model_validate(tree)
                except ValidationError as exc:
                    where = ", ".join(f"{k}={v!r}" for k, v in axes.items())
                    index = {path: i for (path, _), i in zip(grid_items, combo)}
                    errors = exc.errors()
                    for err in errors:
                        loc, msg = error_field(err)
                        field = value_field(sweep, loc, index, zi, msg)
                        if field not in problems or len(errors) < problems[field][0]:
                            problems[field] = (len(errors), f"{msg} (run with {where or 'base values'})")
                    continue
                if problems:
                    continue  # the sweep is refused: only look for more bad values
                dumped = run.model_dump(mode="json")
                canonical = canonical_text(dumped)
                h = hashlib.sha256(canonical.encode()).hexdigest()
                if h in seen:
                    continue
                seen.add(h)
                out.append(ExpandedRun(run, {p: get_path(dumped, p) for p in axes}, dumped, canonical, h))
    if problems:
        raise SpecError.of([(f, m) for f, (_, m) in sorted(problems.items(), key=lambda kv: error_order(sweep, kv[0]))])
    if refuse_unread:
        from nc_core.sweep_unread import unread_problems

        unread = unread_problems(sweep, out)
        if unread:
            raise SpecError.of(unread)
    return out
