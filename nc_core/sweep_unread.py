"""Values a sweep sets that its runs never read: refused where they would merge two runs into one."""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from nc_core.spec_rules import training_defaults, unread_fields
from nc_core.spec_tree import canonical_text, copy_tree, get_path, set_path
from nc_core.sweep_errors import error_order

if TYPE_CHECKING:
    from nc_core.sweep import ExpandedRun, SweepSpec


def unread_problems(sweep: SweepSpec, runs: list[ExpandedRun]) -> list[tuple[str, str]]:
    """(field, message), in error order, for an axis whose values some runs never read where that makes two runs
    one run (loss.gamma swept beside loss.name=ce: the CE runs differ only in a value CE ignores), and for a base
    or axis value no run reads (schedule.milestones with a constant schedule). A base value some runs read
    (loss.gamma for the focal runs of a loss axis) and a zip row's ignored value (momentum 0 beside adam) that
    repeats no run stay."""
    unread = [unread_fields(r.spec, r.tree) for r in runs]  # per run: {path: why}
    defaults, axes, first = training_defaults(), set(sweep.axes), {}
    problems: dict[str, str] = {}
    for path in sorted(set.intersection(*(set(u) for u in unread)) if unread else ()):  # read by no run at all
        if path not in axes:
            problems.setdefault(f"base.{path}", unread[0][path])
            continue
        values = ", ".join(dict.fromkeys(repr(get_path(r.tree, path)) for r in runs))  # the axis's, in order
        problems.setdefault(f"{_section(sweep, path)}.{path}", f"{_cause(unread[0][path])}, so no run reads any of "
                                                               f"its values ({values}); expected it swept only where "
                                                               "it is read, or left out")
    for i, (run, why) in enumerate(zip(runs, unread)):
        key = run.spec_hash
        if why:  # the run as it trains: each unread value at its default
            tree = copy_tree(run.tree)
            for path in why:
                set_path(tree, path, get_path(defaults, path))
            key = hashlib.sha256(canonical_text(tree).encode()).hexdigest()
        j = first.setdefault(key, i)
        other = runs[j]
        for path in sorted((set(why) | set(unread[j])) & axes) if j != i else ():
            if get_path(run.tree, path) == get_path(other.tree, path):
                continue  # not what tells these two runs apart
            cause = _cause(why.get(path) or unread[j][path])
            problems.setdefault(f"{_section(sweep, path)}.{path}",
                                f"{cause}, so the runs with {_where(other)} and with {_where(run)} would be one run; "
                                "sweep it only where it is read (a zip, or a sweep of its own)")
    return sorted(problems.items(), key=lambda p: error_order(sweep, p[0]))


def _cause(why: str) -> str:
    """'has no effect with …; it is read only with …' of an unread_fields message (its lone-spec ending dropped)."""
    return why.split(", so it would be ignored")[0]


def _section(sweep: SweepSpec, path: str) -> str:
    return "grid" if path in sweep.grid else "zip"


def _where(run: ExpandedRun) -> str:
    """A run's axis values as an error names them ('loss.name='ce', seed 0')."""
    return ", ".join(f"{k}={v!r}" for k, v in run.grid.items()) or "the base values"
