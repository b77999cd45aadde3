"""`ncsweep export`: a sweep's metric rows, fetched in pages of runs, streamed into CSV or Parquet (temp, rename)."""
from __future__ import annotations

import csv
import json
import os
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator

import typer

from service.client import Client

FIXED_HEAD = ["sweep_id", "run_id", "kind", "parent_run_id", "status", "seed"]  # sweep_id: files of two sweeps concatenate
# what the run's last attempt ran with (its environments; empty before ncsweep recorded them): another device or
# CPU thread count is another run, as another seed would be. Not spec paths, so no axis takes these names.
ENV_COLUMNS = {"env_device": "device", "env_threads": "threads", "env_torch": "torch"}
FIXED_TAIL = ["epoch", "split", "key", "value", "note", "metric_version"]
ROW_GROUP_ROWS = 131_072  # Parquet: runs' rows gather (as Arrow columns) into row groups of about this many
BATCH_RUNS = 500  # runs asked for per GET /sweeps/{id}/metrics (its bound); its row budget may answer fewer


def export_columns(axes: list[str]) -> list[str]:
    """The file's columns, in order: the run's fields and environment, its sweep axes, then the metric point's."""
    return [*FIXED_HEAD, *ENV_COLUMNS, *axes, *FIXED_TAIL]


def run_rows(run: dict[str, Any], axes: list[str], metrics: list[dict[str, Any]],
             sweep_id: int | None = None) -> Iterator[list[Any]]:
    """One run's metric points as rows in ``export_columns(axes)`` order (``sweep_id``: the run's by default)."""
    grid = run.get("grid") or {}
    env = (run.get("environments") or [{}])[-1]
    head = [run.get("sweep_id") if sweep_id is None else sweep_id, run["id"], run.get("kind", "train"), run.get("parent_run_id"), run["status"], run["seed"],
            *(env.get(field) for field in ENV_COLUMNS.values()), *(grid.get(a) for a in axes)]
    for m in metrics:
        yield [*head, m["epoch"], m["split"], m["key"], m["value"], m.get("note"), m["metric_version"]]


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temp path next to ``path`` to write; renamed onto ``path`` on success, removed on any error, so a failed
    export leaves neither a partial file nor the temp file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class CsvSink:
    """CSV rows written as each run's arrive (csv.writer: None → empty, as csv.DictWriter wrote them)."""

    def __init__(self, path: Path, columns: list[str]):
        self._fh = path.open("w", newline="")
        self._writer = csv.writer(self._fh)
        self._writer.writerow(columns)

    def write(self, rows: list[list[Any]]) -> None:
        """Append one run's rows."""
        self._writer.writerows(rows)

    def close(self) -> None:
        """Flush and close the file."""
        self._fh.close()


def _cell(value: Any) -> Any:
    """A Parquet cell: dicts and lists as JSON text (as the in-memory export stored them)."""
    return json.dumps(value) if isinstance(value, (dict, list)) else value


class ParquetSink:
    """Parquet written in row groups: each run's rows become Arrow columns at once, written every ROW_GROUP_ROWS."""

    def __init__(self, path: Path, columns: list[str], runs: list[dict[str, Any]]):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise typer.BadParameter("parquet export needs pyarrow (pip install 'ncsweep[parquet]')") from None
        self._pa, self._columns = pa, columns
        self.schema = parquet_schema(pa, columns, runs)
        self._writer = pq.ParquetWriter(path, self.schema)
        self._pending: list[Any] = []
        self._pending_rows = 0

    def write(self, rows: list[list[Any]]) -> None:
        """Convert one run's rows to Arrow columns; write a row group once enough have gathered."""
        if not rows:
            return
        cols = zip(*rows)
        self._pending.append(self._pa.table({c: [_cell(v) for v in col] for c, col in zip(self._columns, cols)},
                                            schema=self.schema))
        self._pending_rows += len(rows)
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Write the gathered runs as one row group."""
        if self._pending:
            self._writer.write_table(self._pa.concat_tables(self._pending), row_group_size=self._pending_rows)
        self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        """Write what is left and the file's footer."""
        self._flush()
        self._writer.close()


def parquet_schema(pa: Any, columns: list[str], runs: list[dict[str, Any]]) -> Any:
    """The Arrow schema, fixed before any metric row arrives: the run and metric fields by their API types, each
    axis column as Arrow infers it from the runs' grid values (as it did from the whole in-memory table)."""
    known = {"sweep_id": pa.int64(), "run_id": pa.int64(), "kind": pa.string(), "parent_run_id": pa.int64(),
             "status": pa.string(), "seed": pa.int64(), "env_device": pa.string(), "env_threads": pa.int64(),
             "env_torch": pa.string(), "epoch": pa.int64(), "split": pa.string(), "key": pa.string(),
             "value": pa.float64(), "note": pa.string(), "metric_version": pa.int64()}
    fields = []
    for c in columns:
        if c in known:
            fields.append(pa.field(c, known[c]))
            continue
        try:
            fields.append(pa.field(c, pa.array([_cell((r.get("grid") or {}).get(c)) for r in runs]).type))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise typer.BadParameter(f"axis {c!r}: expected values of one type across the runs for Parquet, got "
                                     f"{sorted({type((r.get('grid') or {}).get(c)).__name__ for r in runs})} "
                                     f"({exc}); export as CSV instead") from None
    return pa.schema(fields)


def runs_with_metrics(client: Client, sweep_id: int, runs: list[dict[str, Any]],
                      batch_runs: int = BATCH_RUNS) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(run, its metric rows) of each of ``runs`` (the sweep's, as GET /runs lists them: by id), in order, from
    pages of GET /sweeps/{id}/metrics of up to ``batch_runs`` runs, one page held at a time; a run added to the
    sweep after the listing is left out."""
    listed, after = {r["id"]: r for r in runs}, 0
    while after is not None:
        page, after = client.sweep_metrics(sweep_id, after_run=after, runs=batch_runs)
        for rid, rows in page:
            if rid in listed:
                yield listed[rid], rows
        page = rows = None  # this page's rows go before the next page comes


def export_sweep(client: Client, sweep_id: int, fmt: str, out_path: Path,
                 progress: Callable[[int, int], None] | None = None, batch_runs: int = BATCH_RUNS) -> int:
    """Write every metric row of sweep ``sweep_id`` (with its run's axes and seed) to ``out_path`` as ``fmt`` (csv
    or parquet), fetching ``batch_runs`` runs a request and holding one page of runs' rows at a time;
    ``progress(runs done, runs in all)`` follows each run. Returns the number of rows written."""
    axes = client.sweep(sweep_id).get("axes") or []
    runs = list(client.iter_runs(sweep_id=sweep_id))
    columns = export_columns(axes)
    written = 0
    with replacing(out_path) as tmp:
        sink = CsvSink(tmp, columns) if fmt == "csv" else ParquetSink(tmp, columns, runs)
        try:
            for done, (run, metrics) in enumerate(runs_with_metrics(client, sweep_id, runs, batch_runs), 1):
                rows = list(run_rows(run, axes, metrics, sweep_id))
                sink.write(rows)
                written += len(rows)
                del rows, metrics  # before the next run's are built
                if progress is not None:
                    progress(done, len(runs))
        except BaseException:
            with suppress(Exception):  # the temp file goes anyway; keep the first error
                sink.close()
            raise
        sink.close()
    return written
