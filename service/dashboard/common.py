"""Dashboard helpers shared by its views: status orders, a sweep's overall state, labels and error lines."""
from __future__ import annotations

from typing import Any, Mapping

from nc_core.spec_fields import value_text

# One order for status chips and runs-table rows, the CLI's (service.cli_views.WATCH_ORDER: `ncsweep watch`)
CHIP_ORDER = ("running", "failed", "queued", "succeeded", "cancelled")
ROW_ORDER = CHIP_ORDER
STATUS_ORDER = ("failed", "running", "queued", "cancelled", "succeeded")  # a matrix cell's colour: the first present
ERROR_CHARS = 120  # the runs table's error column; the full last line goes in its title


def ordered_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts per status in CHIP_ORDER (any other status after them), without zeros."""
    rank = {s: i for i, s in enumerate(CHIP_ORDER)}
    return {k: v for k, v in sorted(counts.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])) if v}


def overall_state(counts: Mapping[str, int]) -> dict[str, str]:
    """A sweep's state from its runs' counts: running while any runs, queued while any waits, else finished
    (state: the status that colours it; label: what the page writes)."""
    if not sum(counts.values()):
        return {"state": "empty", "label": "no runs"}
    if counts.get("running"):
        return {"state": "running", "label": "running"}
    if counts.get("queued"):
        return {"state": "queued", "label": "queued: waiting for a worker"}
    failed, cancelled = counts.get("failed", 0), counts.get("cancelled", 0)
    if cancelled:
        return {"state": "cancelled", "label": f"cancelled ({cancelled} run{'s' * (cancelled != 1)})"
                + (f", {failed} failed" if failed else "")}
    if failed:
        return {"state": "failed", "label": f"finished, {failed} failed"}
    return {"state": "succeeded", "label": "finished"}


def value_label(value: Any) -> str:
    """An axis value as the runs table writes it (JSON style: true/false, [1, 2]), empty for a missing axis."""
    return "" if value is None else value_text(value)


def error_line(error: str | None) -> str:
    """The last line of a run's error (its exception), whole."""
    lines = (error or "").strip().splitlines()
    return lines[-1] if lines else ""


def short_error(line: str, limit: int = ERROR_CHARS) -> str:
    """`line` cut to `limit` characters at a word boundary where one is near, with an ellipsis."""
    if len(line) <= limit:
        return line
    cut = line[:limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit * 2 // 3 else cut).rstrip() + "…"


def eta_text(seconds: float | None) -> str:
    """An ETA as the pages write it (dashboard.js eta): 4m05s, 2h03m; empty when unknown."""
    if seconds is None:
        return ""
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
