"""`ncsweep watch` on a large sweep: only the rows it shows are fetched; counts and totals come from the sweep."""
from __future__ import annotations

from rich.console import Console

from service.cli_views import watch_view
from service.cli_watch import sweep_finished, watch_rows


class FakeRuns:
    """GET /runs over a synthetic sweep: first_runs as the client has it, recording the rows each request sent."""

    def __init__(self, runs: list[dict]):
        self.runs, self.sent = runs, []

    def first_runs(self, limit, sweep_id=None, status=None, filters=None, kind=None):  # noqa: ANN001, ANN201
        match = [r for r in self.runs if r["sweep_id"] == sweep_id and (status is None or r["status"] == status)
                 and (kind is None or r["kind"] == kind)]
        self.sent.append(len(match[:limit]))
        return match[:limit], len(match)


def _sweep(n_queued: int) -> tuple[dict, list[dict]]:
    statuses = ["succeeded"] * 30 + ["running"] * 2 + ["failed"] * 3 + ["queued"] * n_queued
    runs = [{"id": i + 1, "sweep_id": 7, "kind": "train", "status": s, "grid": {}, "epoch": 0, "epochs_total": 2}
            for i, s in enumerate(statuses)]
    runs += [{"id": len(runs) + 1, "sweep_id": 7, "kind": "validate", "status": "succeeded", "grid": {},
              "parent_run_id": 1, "epoch": 1, "epochs_total": 1}]
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    detail = {"id": 7, "name": "big", "runs": len(statuses), "counts": counts, "progress": 0.01, "eta_s": None,
              "validate_jobs": {"succeeded": 1}}
    return detail, runs


def test_watch_fetches_only_the_rows_it_shows():
    detail, runs = _sweep(4000)
    client = FakeRuns(runs)
    rows = watch_rows(client, detail, 25)
    assert sum(client.sent) == 26 and len(client.sent) == 4  # not the 4,036 rows of the sweep
    shown = [r for r in rows if r["kind"] == "train"]
    assert len(shown) == 25 and [r["status"] for r in shown[:5]] == ["running"] * 2 + ["failed"] * 3
    assert [r["id"] for r in rows if r["kind"] == "validate"] == [runs[-1]["id"]]
    console = Console(width=220, record=True)
    console.print(watch_view(detail, rows, [], 25))
    text = console.export_text()
    assert "runs (25 of 4035)" in text and "validate jobs (1 of 1)" in text
    assert "queued 4000" in text and "running 2" in text and "failed 3" in text and "succeeded 30" in text


def test_sweep_finished_reads_the_counts_of_runs_and_validate_jobs():
    assert sweep_finished({"counts": {"succeeded": 3, "failed": 1}, "validate_jobs": {}})
    assert not sweep_finished({"counts": {"succeeded": 3, "queued": 1}})
    assert not sweep_finished({"counts": {"succeeded": 3}, "validate_jobs": {"running": 1}})
    assert sweep_finished({"counts": {"succeeded": 3, "running": 0}, "validate_jobs": {"cancelled": 1}})
    assert not sweep_finished({"counts": {}, "validate_jobs": {}})
