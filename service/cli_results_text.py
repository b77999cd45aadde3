"""The words and numbers of `ncsweep results` (service.cli_results draws the table).

A cell's mean ± std at its own precision, what the title says was pooled, the header of an empty table and the
run statuses behind the notes.
"""
from __future__ import annotations

import math

from nc_core.db.states import STATUSES
from nc_core.spec_fields import value_text
from nc_core.sweep import short_names

SCI_LOW, SCI_HIGH = 1e-3, 1e4  # a |mean| outside [SCI_LOW, SCI_HIGH) is written in compact scientific form
MAX_DIGITS = 6  # significant digits of a mean at most, however small its std
FEWER_NOTE = "(n=k): the mean of k runs only; the row's other runs have NaN or no value of that key"


def _exponent(x: float) -> int:
    return math.floor(math.log10(abs(x)))


def _sci(x: float, decimals: int) -> str:
    """Compact scientific form: 1.5234e4, 3.0e-9 (no '+', no leading zeros in the exponent)."""
    mantissa, exp = f"{x:.{decimals}e}".split("e")
    return f"{mantissa}e{int(exp)}"


def cell_text(m: dict | None) -> str:
    """One aggregate (mean, std of /sweeps/{id}/results) at its own precision: the std to 2 significant digits and
    the mean to the same decimal place (0.1009±0.0057, 1523±40, 98.24±0.57); a |mean| of 1e4 or more or under
    1e-3 in compact scientific form (1.5234e4±3.1e1); a single run's mean (no std) to 4 significant digits;
    NaN when the runs' values are all NaN, empty when none was measured."""
    mean, std = (m or {}).get("mean"), (m or {}).get("std")
    if mean is None:
        return "NaN" if (m or {}).get("missing") else ""
    sci = mean != 0 and not SCI_LOW <= abs(mean) < SCI_HIGH
    if std is None or not math.isfinite(std) or std == 0:
        text = _sci(mean, 3) if sci else f"{mean:.{max(0, 3 - _exponent(mean)) if mean else 0}f}"
        return text + ("±0" if std == 0 else "")
    if sci:
        return f"{_sci(mean, min(MAX_DIGITS - 1, max(1, _exponent(mean) - _exponent(std) + 1)))}±{_sci(std, 1)}"
    decimals = max(0, 1 - _exponent(std))
    most = max(0, MAX_DIGITS - 1 - _exponent(mean)) if mean else MAX_DIGITS
    if decimals > most:  # a std far below the mean's last shown digit: written in scientific form
        return f"{mean:.{most}f}±{_sci(std, 1)}"
    return f"{mean:.{decimals}f}±{std:.{decimals}f}"


def spread_note(body: dict) -> str:
    """What a cell's ± is over, for the title: 'mean ± std over seeds; sample std, ddof 1' when the groups are
    the sweep's axes, else the axes pooled into each group ('mean ± std; width, seeds pooled; …', as the dynamics
    plot's figure_note says them, by the short names of the table's columns; not an axis a filter holds at one
    value), and the filters that kept the runs."""
    group_by, axes = body.get("group_by") or [], body.get("axes")
    if axes is None:  # an API that does not say the sweep's axes
        note = "mean ± std over each group's runs"
    else:
        names = dict(zip(axes, short_names(axes)))  # as the table's columns name them: width for model.width
        one = {p for p, vs in (body.get("filters") or {}).items() if len(vs) == 1}  # a filter left one value
        pooled = [names[a] for a in axes if a not in group_by and a not in one and a != "seed"] + \
            ([] if "seed" in group_by or "seed" in one else ["seeds"])
        note = ("mean ± std over seeds" if pooled == ["seeds"] else
                f"mean ± std; {', '.join(pooled)} pooled" if pooled else "mean ± std over each group's runs")
    note += "; sample std, ddof 1"
    filters = body.get("filters") or {}
    if filters:
        note += "; only " + ", ".join(f"{p}={'|'.join(map(value_text, vs))}" for p, vs in filters.items())
    return note


def body_counts(body: dict) -> dict[str, int] | None:
    """The runs behind the results by status (their groups' `statuses`, summed), None from an API without them."""
    groups = body.get("groups") or []
    if any("statuses" not in g for g in groups):
        return None
    counts: dict[str, int] = {}
    for g in groups:
        for status, n in g["statuses"].items():
            counts[status] = counts.get(status, 0) + n
    return counts


def pending(counts: dict[str, int]) -> int:
    """Runs still to measure anything: queued or running."""
    return counts.get("queued", 0) + counts.get("running", 0)


def status_text(counts: dict[str, int]) -> str:
    """'2 failed, 1 cancelled': the counts in the order of the run states."""
    return ", ".join(f"{counts[s]} {s}" for s in (*STATUSES, *sorted(set(counts) - set(STATUSES))) if counts.get(s))


def empty_header(body: dict, split: str, epoch: str, counts: dict[str, int] | None) -> str:
    """The one column of a results table with nothing to show, true of the runs' states (``counts``, None when
    unknown): values still to come, none at that epoch, or none coming."""
    if body.get("filters") and not body.get("groups"):
        return "no run of the sweep matches the filters"
    waiting = counts is None or pending(counts) > 0
    if epoch != "last":
        return f"no {split} metrics at {body.get('unit', 'epoch')} {epoch}" + (" yet" if counts and waiting else "")
    return "no finished results yet" if waiting else "no results, and no run is queued or running"


def epochs_text(epochs: list[int]) -> str:
    """'4, 8, 12' (at most 12 of them: the first 10, …, the last)."""
    shown = epochs if len(epochs) <= 12 else [*epochs[:10], "…", epochs[-1]]
    return ", ".join(map(str, shown))
