"""`ncsweep export` streams page by page (here a run a page): one page's rows in memory, the in-memory export's
file content, no partial file."""
from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path
from typing import Any, Iterator

import pytest

from service import cli
from service.client import ApiError, Client

EPOCHS, KEYS = 60, ("nc1", "nc2_w", "nc3", "wh_b", "acc")  # 600 metric rows per run


class FakeClient:
    """The API calls export makes, answered from generated data (rows built on request, as the API sends them).
    A page of GET /sweeps/{id}/metrics answers at most ``page_runs`` runs (as the API's row budget ends a page
    early: by default one run's 600 rows a page); ``fail_at``: the page that fails."""

    def __init__(self, runs: int, fail_at: int | None = None, page_runs: int = 1):
        self.runs, self.fail_at, self.page_runs, self.pages = runs, fail_at, page_runs, 0

    def sweep(self, sweep_id: int) -> dict[str, Any]:
        return {"id": sweep_id, "axes": ["loss.name", "model.width", "opt"]}

    def iter_runs(self, sweep_id: int) -> Iterator[dict[str, Any]]:
        for i in range(self.runs):
            grid = {"loss.name": ["ce", "mse"][i % 2], "model.width": 32 * (1 + i % 3), "opt": {"lr": 0.1}}
            envs = [{"attempt": a, "device": "cpu", "threads": a, "torch": "2.14.1"} for a in range(1, 1 + i % 3)]
            yield {"id": 100 + i, "kind": "validate" if i == 1 else "train", "parent_run_id": 100 if i == 1 else None,
                   "status": "succeeded", "seed": i % 4, "grid": grid if i != 2 else {}, "environments": envs}

    def sweep_metrics(self, sweep_id: int, after_run: int = 0, runs: int = 500) -> tuple[list, int | None]:
        self.pages += 1
        if self.fail_at is not None and self.pages == self.fail_at:
            raise ApiError(503, "the API went away")
        ids = [r["id"] for r in self.iter_runs(sweep_id) if r["id"] > after_run]
        page = [(rid, self.metric_rows(rid)) for rid in ids[:min(runs, self.page_runs)]]
        return page, page[-1][0] if len(ids) > len(page) else None

    @staticmethod
    def metric_rows(run_id: int) -> list[dict[str, Any]]:
        """A run's rows as Client.run_metrics gives them."""
        return [{"epoch": e, "split": sp, "key": k, "value": None if (e + run_id) % 17 == 0 else e / (run_id + 1),
                 "note": "undefined" if (e + run_id) % 17 == 0 else None, "metric_version": 2}
                for e in range(1, EPOCHS + 1) for sp in ("train", "test") for k in KEYS]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Point the CLI at a FakeClient; returns a setter for its run count and failure."""
    monkeypatch.setenv("NCSWEEP_TOKEN", "t")

    def use(runs: int, fail_at: int | None = None) -> FakeClient:
        client = FakeClient(runs, fail_at)
        monkeypatch.setattr(Client, "from_settings", classmethod(lambda cls, settings: client))
        return client

    return use


def _export_peak(fake, tmp_path: Path, runs: int, suffix: str) -> int:  # noqa: ANN001
    """Python heap peak (tracemalloc) of exporting ``runs`` runs to a file ending in ``suffix``."""
    fake(runs)
    tracemalloc.start()
    try:
        assert cli.main(["export", "1", "--out", str(tmp_path / f"m{runs}{suffix}")]) == 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_holds_one_runs_rows_at_a_time(fake, tmp_path: Path, suffix: str, capsys) -> None:  # noqa: ANN001
    _export_peak(fake, tmp_path, 2, suffix)  # imports and first-use caches outside the measurement
    one, many = _export_peak(fake, tmp_path, 1, suffix), _export_peak(fake, tmp_path, 40, suffix)
    # in memory, 40 runs' 24,000 rows would take ~40× one run's; streamed, the peak stays about one run's
    assert many < 2.5 * one, f"peak {many / 1e6:.1f} MB for 40 runs vs {one / 1e6:.1f} MB for 1"
    assert f"wrote {40 * EPOCHS * 2 * len(KEYS)} rows" in capsys.readouterr().out


def _in_memory_rows(client: FakeClient, axes: list[str]) -> list[dict[str, Any]]:
    """The rows as the in-memory export built them (one dict per metric point)."""
    return [{"sweep_id": 1, "run_id": run["id"], "kind": run.get("kind", "train"), "parent_run_id": run.get("parent_run_id"),
             "status": run["status"], "seed": run["seed"], **_last_environment(run),
             **{a: (run.get("grid") or {}).get(a) for a in axes},
             "epoch": m["epoch"], "split": m["split"], "key": m["key"], "value": m["value"], "note": m.get("note"),
             "metric_version": m["metric_version"]}
            for run in client.iter_runs(1) for m in client.metric_rows(run["id"])]


def _last_environment(run: dict[str, Any]) -> dict[str, Any]:
    """The env_* columns: device, threads and torch of the run's last attempt (None without any)."""
    env = (run.get("environments") or [{}])[-1]
    return {"env_device": env.get("device"), "env_threads": env.get("threads"), "env_torch": env.get("torch")}


def write_rows(rows: list[dict], columns: list[str], fmt: str, path: Path) -> None:
    """The in-memory export's writer (before streaming): the reference the streamed files must equal."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt == "csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return
    table = pa.table({c: [r.get(c) if not isinstance(r.get(c), (dict, list)) else json.dumps(r.get(c))
                          for r in rows] for c in columns})
    pq.write_table(table, path)


def test_streamed_files_hold_what_the_in_memory_export_wrote(fake, tmp_path: Path) -> None:  # noqa: ANN001
    import pyarrow.parquet as pq

    axes = ["loss.name", "model.width", "opt"]
    columns = ["sweep_id", "run_id", "kind", "parent_run_id", "status", "seed", "env_device", "env_threads", "env_torch",
               *axes, "epoch", "split", "key", "value", "note", "metric_version"]
    rows = _in_memory_rows(FakeClient(7), axes)
    for fmt in ("csv", "parquet"):
        write_rows(rows, columns, fmt, tmp_path / f"expected.{fmt}")
        fake(7)
        assert cli.main(["export", "1", "--out", str(tmp_path / f"got.{fmt}")]) == 0
    assert (tmp_path / "got.csv").read_bytes() == (tmp_path / "expected.csv").read_bytes()
    expected, got = pq.read_table(tmp_path / "expected.parquet"), pq.read_table(tmp_path / "got.parquet")
    assert got.column_names == expected.column_names == columns
    assert got.to_pylist() == expected.to_pylist()
    assert got.schema.field("model.width").type == expected.schema.field("model.width").type  # axes: as inferred
    assert {(r["run_id"], r["env_threads"]) for r in got.to_pylist()} >= {(100, None), (101, 1), (102, 2)}  # the last
    with (tmp_path / "got.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 7 * EPOCHS * 2 * len(KEYS)


def test_parquet_gathers_runs_into_row_groups(fake, tmp_path: Path) -> None:  # noqa: ANN001
    import pyarrow.parquet as pq

    fake(40)
    assert cli.main(["export", "1", "--out", str(tmp_path / "m.parquet")]) == 0
    meta = pq.ParquetFile(tmp_path / "m.parquet").metadata
    assert meta.num_rows == 40 * EPOCHS * 2 * len(KEYS) and meta.num_row_groups < 40  # not one tiny group per run


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_failed_export_leaves_no_partial_file(fake, tmp_path: Path, suffix: str, capsys) -> None:  # noqa: ANN001
    target = tmp_path / f"m{suffix}"
    fake(10, fail_at=6)  # five runs (a page each) already written when the sixth fails
    assert cli.main(["export", "1", "--out", str(target)]) == 1
    assert "the API went away" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp file
    target.write_text("an earlier export")
    fake(10, fail_at=3)
    assert cli.main(["export", "1", "--out", str(target)]) == 1
    assert target.read_text() == "an earlier export" and list(tmp_path.iterdir()) == [target]
