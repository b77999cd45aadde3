"""Sweep specifications: a base RunSpec, grid and zipped axes, seeds → de-duplicated RunSpecs."""
from __future__ import annotations

import hashlib
import difflib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nc_core.spec import Int, PositiveInt, RunSpec, Text, field_paths


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

    name: Text = Field(min_length=1, max_length=200)
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    zip: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[Int] = Field(default_factory=lambda: [0])
    max_runs: PositiveInt = 1000

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
    def _known_keys(cls, data: Any, handler: Any) -> "SweepSpec":
        """An unknown top-level key ('gird') as RunSpec's unknown fields are told: did-you-mean and the keys a
        sweep has, beside every other problem of the rest of the sweep."""
        unknown = [k for k in data if k not in cls.model_fields] if isinstance(data, dict) else []
        if not unknown:
            return handler(data)
        from pydantic_core import InitErrorDetails, PydanticCustomError

        errors = []
        for key in unknown:
            near = difflib.get_close_matches(str(key), list(cls.model_fields), n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}? " if near else \
                "a run's field goes under 'base'; " if key in RunSpec.model_fields else ""
            kind = PydanticCustomError("extra_forbidden", "unknown field; {hint}expected one of {keys}",
                                       {"hint": hint, "keys": ", ".join(cls.model_fields)})
            errors.append(InitErrorDetails(type=kind, loc=(key,), input=data[key]))
        try:
            handler({k: v for k, v in data.items() if k in cls.model_fields})
        except ValidationError as exc:
            errors += [InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"], ctx=e.get("ctx") or {})
                       for e in exc.errors(include_url=False)]
        try:
            error = ValidationError.from_exception_data(cls.__name__, errors)
        except Exception:  # noqa: BLE001 - an error type pydantic cannot rebuild: its own report, unchanged
            return handler(data)
        raise error

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

    def value_problems(self) -> list[tuple[str, str]]:
        """(field, message) of each bad value :func:`expand` would refuse; none checked past max_runs."""
        if self.size > self.max_runs:
            return []
        try:
            expand(self)
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


def short_names(paths: list[str]) -> list[str]:
    """Display labels of spec paths: the last part ('model.width' → 'width'; 'loss.name' → 'loss'), or the
    whole path where two labels would collide ('head.depth_linear', 'ufm.depth_linear')."""
    labels = [p.split(".")[0] if p.endswith(".name") and p.count(".") == 1 else p.split(".")[-1] for p in paths]
    return [label if labels.count(label) == 1 else p for label, p in zip(labels, paths)]


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in a nested dict, creating sub-dicts."""
    parts = path.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def get_path(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for p in path.split("."):
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def _canonical(tree: dict[str, Any]) -> str:
    return json.dumps(tree, sort_keys=True, separators=(",", ":"))


def canonical_json(spec: RunSpec) -> str:
    """The spec as JSON with sorted keys and every default included: the input of spec_hash."""
    return _canonical(spec.model_dump(mode="json"))


def spec_hash(spec: RunSpec) -> str:
    """sha256 of the canonical JSON (sorted keys, defaults included)."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def spec_changes(stored: dict[str, Any], spec: RunSpec, limit: int = 3) -> str:
    """The leaf fields where ``spec`` differs from a stored spec tree, as "epochs 1000 → 1200, optim.lr 0.1 →
    0.05" (at most ``limit``, then "and n more"); "" when none can be named (an older spec format)."""
    tree = spec.model_dump(mode="json")
    diffs = [f"{p} {get_path(stored, p)!r} → {get_path(tree, p)!r}" for p in field_paths()
             if get_path(stored, p) != get_path(tree, p)]
    more = f", and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more


@dataclass(frozen=True, slots=True)
class ExpandedRun:
    """One run of an expanded sweep, with its JSON form computed once (the API stores all of it)."""

    spec: RunSpec
    grid: dict[str, Any]  # axis path -> its value in the validated spec ("2" given for epochs: 2; seed excluded)
    tree: dict[str, Any]  # spec.model_dump(mode="json")
    canonical: str  # canonical_json(spec)
    spec_hash: str  # sha256 of canonical


def _copy_tree(node: Any) -> Any:
    """Deep copy of a JSON-like tree (dicts and lists; leaves are immutable)."""
    if isinstance(node, dict):
        return {k: _copy_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy_tree(v) for v in node]
    return node


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


def _value_field(sweep: SweepSpec, loc: str, grid_index: dict[str, int], zip_index: int) -> str:
    """The field of an invalid value: 'grid.optim.lr[1]' (the axis's value at that index; also for an error
    inside a list value, 'data.class_counts[2]'; for an error of a section that only the axis put in the run,
    'ufm: …' of a ufm.dim axis), 'zip.…[i]', else the base field ('base.epochs'; 'base' for a whole-spec error)."""
    for section, axes in (("grid", grid_index), ("zip", sweep.zip)):
        path = next((p for p in axes if loc == p or loc.startswith((p + ".", p + "["))), None) or next(
            (p for p in axes if loc and p.startswith(loc + ".") and get_path(sweep.base, loc) is None), None)
        if path is not None:
            return f"{section}.{path}[{grid_index[path] if section == 'grid' else zip_index}]"
    return f"base.{loc}" if loc else "base"


def expand(sweep: SweepSpec) -> list[ExpandedRun]:
    """Expand to runs: grid × zip × seeds, de-duplicated by spec hash, order stable.

    Every run is validated; a SpecError lists each invalid value once, named by its field ('grid.optim.lr[1]',
    'zip.model.width[0]', 'base.epochs') in error_order, with a run that shows it (one with the fewest errors)."""
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
                tree = _copy_tree(sweep.base)
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
                        field = _value_field(sweep, loc, index, zi)
                        if field not in problems or len(errors) < problems[field][0]:
                            problems[field] = (len(errors), f"{msg} (run with {where or 'base values'})")
                    continue
                if problems:
                    continue  # the sweep is refused: only look for more bad values
                dumped = run.model_dump(mode="json")
                canonical = _canonical(dumped)
                h = hashlib.sha256(canonical.encode()).hexdigest()
                if h in seen:
                    continue
                seen.add(h)
                out.append(ExpandedRun(run, {p: get_path(dumped, p) for p in axes}, dumped, canonical, h))
    if problems:
        raise SpecError.of([(f, m) for f, (_, m) in sorted(problems.items(), key=lambda kv: error_order(sweep, kv[0]))])
    return out
