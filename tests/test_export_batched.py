"""GET /sweeps/{id}/metrics (many runs' series a request) and `ncsweep export` fetching runs in pages through it."""
from __future__ import annotations

import functools
import tracemalloc
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import insert
from starlette.testclient import TestClient

from nc_core.db.models import Metric, Run, Sweep
from nc_core.db.session import session_scope
from service.client import ApiError, Client
from service.export import CsvSink, ParquetSink, export_columns, export_sweep, run_rows
from tests.test_export_streaming import _last_environment
from test_events import serve
from test_export_streaming import EPOCHS, KEYS, FakeClient, write_rows

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
BIG = 2**31
M_KEYS, SPLITS = ("acc", "loss", "nc1"), ("train", "test")


def seed(url: str, runs: int, epochs: int = 3) -> tuple[int, list[int]]:
    """A sweep of ``runs`` runs (run 1 a validate job of run 0, the last queued with no metrics; NaN values with
    notes, two metric versions), their ids interleaved with another sweep's runs; returns (sweep id, its run ids)."""
    with session_scope(url) as s:
        sweeps = [Sweep(name=n, spec={"name": n}, axes=["loss.name", "model.width"]) for n in ("a", "other")]
        s.add_all(sweeps)
        s.flush()
        ids: list[int] = []
        for i in range(2 * runs):
            mine = i % 2 == 0
            grid = {"loss.name": ["ce", "mse"][i % 3 % 2], "model.width": 16 * (1 + i % 4)}
            run = Run(sweep_id=sweeps[0 if mine else 1].id, kind="validate" if i == 2 else "train",
                      parent_run_id=ids[0] if i == 2 else None, spec={"seed": i}, spec_hash=f"h{i}", grid=grid,
                      seed=i % 3, status="queued" if i == 2 * runs - 2 else "succeeded")
            s.add(run)
            s.flush()
            if not mine:
                s.execute(insert(Metric), [{"run_id": run.id, "epoch": 1, "split": "test", "key": "acc", "value": 1.0}])
                continue
            ids.append(run.id)
            if run.status == "queued":
                continue
            s.execute(insert(Metric), [
                {"run_id": run.id, "epoch": e, "split": sp, "key": k,
                 "value": None if (e + i) % 5 == 0 else e / (i + 3) + len(k),
                 "note": f"undefined at {e}" if (e + i) % 5 == 0 else None, "metric_version": 1 + 2 * (e % 2)}
                for e in range(1, epochs + 1) for sp in SPLITS for k in M_KEYS])
        return sweeps[0].id, ids


def pages(client: TestClient, sweep_id: int, **params: Any) -> list[dict]:
    """Every page of the sweep's runs, following next_after_run."""
    out, after = [], 0
    while after is not None:
        resp = client.get(f"/sweeps/{sweep_id}/metrics", params={"after_run": after, **params})
        assert resp.status_code == 200, resp.text
        out.append(resp.json())
        after = out[-1]["next_after_run"]
        assert len(out) < 100
    return out


def per_run(client: TestClient, run_id: int, **params: Any) -> list[dict]:
    resp = client.get(f"/runs/{run_id}/metrics", params=params)
    assert resp.status_code == 200, resp.text
    return [{"run_id": run_id, **s} for s in resp.json()["series"]]


def test_a_page_holds_each_runs_series_as_the_per_run_endpoint_gives_them(app_client, db_url):
    sid, ids = seed(db_url, 9)
    expected = [s for rid in ids for s in per_run(app_client, rid)]
    whole = pages(app_client, sid, runs=500)
    assert len(whole) == 1 and whole[0]["run_ids"] == ids and whole[0]["series"] == expected  # run, split, key
    assert whole[0]["sweep_id"] == sid and whole[0]["next_after_run"] is None
    assert any(s["notes"] for s in expected) and {v for s in expected for v in s["versions"]} == {1, 3}
    small = pages(app_client, sid, runs=4)
    assert [p["run_ids"] for p in small] == [ids[:4], ids[4:8], ids[8:]]
    assert [p["next_after_run"] for p in small] == [ids[3], ids[7], None]
    assert [s for p in small for s in p["series"]] == expected
    only = pages(app_client, sid, runs=500, split="test", keys="acc,nc1")[0]
    assert only["series"] == [s for rid in ids for s in per_run(app_client, rid, split="test", keys="acc,nc1")]
    past = app_client.get(f"/sweeps/{sid}/metrics", params={"after_run": ids[-1]}).json()
    assert (past["run_ids"], past["series"], past["next_after_run"]) == ([], [], None)
    # a cursor need not be a run of the sweep: the sweep's runs after it follow
    assert app_client.get(f"/sweeps/{sid}/metrics", params={"after_run": ids[2] + 1}).json()["run_ids"] == ids[3:]


def test_the_row_budget_ends_a_page_before_the_run_past_it_but_never_before_the_first(app_client, db_url):
    sid, ids = seed(db_url, 5)
    per = len(per_run(app_client, ids[0])) * 3  # 18 rows a run (epochs × splits × keys)
    got = pages(app_client, sid, runs=500, max_rows=2 * per + 1)
    assert [p["run_ids"] for p in got] == [ids[:2], ids[2:]]  # the queued last run's 0 rows fit
    assert [s for p in got for s in p["series"]] == [s for rid in ids for s in per_run(app_client, rid)]
    alone = pages(app_client, sid, runs=3, max_rows=5)  # each run is past the budget: one a page, whole
    assert [p["run_ids"] for p in alone] == [[rid] for rid in ids]
    assert [s for p in alone for s in p["series"]] == [s for rid in ids for s in per_run(app_client, rid)]


def assert_422(resp, field: str) -> None:  # noqa: ANN001
    assert resp.status_code == 422, resp.text
    assert field in [d["field"] for d in resp.json()["detail"]], resp.json()


def test_bounds_are_422_naming_the_parameter_and_an_unknown_sweep_404(app_client, db_url):
    sid, _ = seed(db_url, 2)
    path = f"/sweeps/{sid}/metrics"
    for field, values in (("runs", (0, 501, BIG)), ("max_rows", (0, 100_001)), ("after_run", (-1, BIG)),
                          ("split", ("val",)), ("keys", ("", "not_a_key"))):
        for value in values:
            assert_422(app_client.get(path, params={field: value}), field)
    assert_422(app_client.get(path, params={"runs": [1, 2]}), "runs")  # given twice
    for n in (0, BIG):
        assert_422(app_client.get(f"/sweeps/{n}/metrics"), "sweep_id")
    assert app_client.get(path, params={"runs": 500, "max_rows": 100_000}).status_code == 200
    resp = app_client.get(f"/sweeps/{BIG - 1}/metrics")
    assert resp.status_code == 404 and resp.json() == {"detail": f"sweep {BIG - 1} not found"}


@SQLITE
def test_it_reads_like_the_per_run_endpoint(settings, enqueuer, read_token, write_token, db_url, anon_client):
    from service.app import create_app

    sid, ids = seed(db_url, 2)
    paths = (f"/sweeps/{sid}/metrics", f"/runs/{ids[0]}/metrics")
    for path in paths:  # reads open by default
        assert anon_client.get(path).status_code == 200, path
    settings.auth_reads = True
    with TestClient(create_app(settings, enqueuer=enqueuer, broker_check=lambda: None),
                    raise_server_exceptions=False) as guarded:
        for path in paths:
            assert guarded.get(path).status_code == 401, path
            assert guarded.get(path, headers={"Authorization": "Bearer ncs_wrong"}).status_code == 401, path
            for token in (read_token, write_token):
                assert guarded.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200, path


@SQLITE
def test_openapi_documents_it_with_its_bounds(app_client):
    doc = app_client.get("/openapi.json").json()
    op = doc["paths"]["/sweeps/{sweep_id}/metrics"]["get"]
    assert op["summary"] and "GET /runs/{run_id}/metrics" in op["description"]
    params = {p["name"]: p for p in op["parameters"]}
    assert set(params) == {"sweep_id", "after_run", "runs", "max_rows", "split", "keys"}
    assert all(p.get("description") for name, p in params.items() if name != "sweep_id"), params
    bounds = {name: (params[name]["schema"].get("minimum"), params[name]["schema"].get("maximum"))
              for name in ("sweep_id", "after_run", "runs", "max_rows")}
    assert bounds == {"sweep_id": (1, BIG - 1), "after_run": (0, BIG - 1), "runs": (1, 500), "max_rows": (1, 100_000)}
    assert {"404", "422", "503"} <= set(op["responses"])
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SweepMetricsPage"}
    assert "run_id" in doc["components"]["schemas"]["RunSeries"]["required"]


# ---- `ncsweep export` through the API ---------------------------------------------------------------------------

@pytest.fixture
def api(app, db_url: str, write_token: str) -> Iterator[tuple[str, str]]:  # noqa: ANN001
    """The API served on a free port: (its URL, a token)."""
    with serve(app) as url:
        yield url, write_token


def counted(url: str, token: str) -> tuple[Client, list[str]]:
    """A real client and the paths of the requests it sends (an httpx event hook)."""
    client, sent = Client(url, token), []
    client.http.event_hooks["request"].append(lambda request: sent.append(request.url.path))
    return client, sent


def per_run_export(client: Client, sweep_id: int, fmt: str, path: Path) -> int:
    """The file as export wrote it before GET /sweeps/{id}/metrics: one GET /runs/{id}/metrics a run, each run's
    rows written as they came (the same sinks)."""
    axes = client.sweep(sweep_id).get("axes") or []
    runs = list(client.iter_runs(sweep_id=sweep_id))
    sink = CsvSink(path, export_columns(axes)) if fmt == "csv" else ParquetSink(path, export_columns(axes), runs)
    written = 0
    for run in runs:
        rows = list(run_rows(run, axes, client.run_metrics(run["id"]), sweep_id))
        sink.write(rows)
        written += len(rows)
    sink.close()
    return written


def reference(client: Client, sweep_id: int, path: Path) -> None:
    """The file as the in-memory export wrote it from GET /runs/{id}/metrics (test_export_streaming.write_rows)."""
    axes = client.sweep(sweep_id)["axes"]
    columns = ["sweep_id", "run_id", "kind", "parent_run_id", "status", "seed", "env_device", "env_threads", "env_torch",
               *axes, "epoch", "split", "key", "value", "note", "metric_version"]
    rows = [{"sweep_id": sweep_id, "run_id": r["id"], "kind": r["kind"], "parent_run_id": r["parent_run_id"], "status": r["status"],
             "seed": r["seed"], **_last_environment(r), **{a: r["grid"].get(a) for a in axes}, **m}
            for r in client.iter_runs(sweep_id=sweep_id) for m in client.run_metrics(r["id"])]
    write_rows(rows, columns, path.suffix[1:], path)


@SQLITE
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_writes_the_per_run_file_in_a_few_requests(api, db_url, tmp_path: Path, fmt: str) -> None:
    import pyarrow.parquet as pq

    sid, ids = seed(db_url, 40)
    client, _ = counted(*api)
    reference(client, sid, tmp_path / f"expected.{fmt}")
    old, old_sent = counted(*api)
    old_rows = per_run_export(old, sid, fmt, tmp_path / f"per_run.{fmt}")  # as before
    got: dict[str, int] = {}
    for label, batch, max_rows in (("one", 500, None), ("pages", 7, None), ("budget", 500, 50)):
        new, sent = counted(*api)
        if max_rows:
            new.sweep_metrics = functools.partial(new.sweep_metrics, max_rows=max_rows)
        seen: list[tuple[int, int]] = []
        assert export_sweep(new, sid, fmt, tmp_path / f"{label}.{fmt}", progress=lambda *a: seen.append(a),
                            batch_runs=batch) == old_rows == (len(ids) - 1) * 3 * len(SPLITS) * len(M_KEYS)
        assert seen == [(i, len(ids)) for i in range(1, len(ids) + 1)]
        assert (tmp_path / f"{label}.{fmt}").read_bytes() == (tmp_path / f"per_run.{fmt}").read_bytes(), label
        assert not any("/runs/" in p for p in sent), sent
        got[label] = len(sent)
    assert len(old_sent) == 2 + len(ids)  # the sweep, one page of /runs, then a request a run
    assert got == {"one": 3, "pages": 2 + 6, "budget": 2 + 20}  # 40 runs, 7 a page; two runs of 18 rows a page
    if fmt == "csv":
        assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "expected.csv").read_bytes()
    else:
        assert pq.read_table(tmp_path / "one.parquet").to_pylist() == pq.read_table(
            tmp_path / "expected.parquet").to_pylist()


def _peak(tmp_path: Path, runs: int, suffix: str) -> int:
    tracemalloc.start()
    try:
        export_sweep(FakeClient(runs, page_runs=500), 1, suffix[1:], tmp_path / f"m{runs}{suffix}", batch_runs=5)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_holds_one_pages_rows_at_a_time(tmp_path: Path, suffix: str) -> None:
    _peak(tmp_path, 10, suffix)  # imports and first-use caches outside the measurement
    one, many = _peak(tmp_path, 5, suffix), _peak(tmp_path, 60, suffix)
    assert many < 2.5 * one, f"peak {many / 1e6:.1f} MB for 12 pages vs {one / 1e6:.1f} MB for 1"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_failed_page_leaves_no_partial_file_and_the_page_size_changes_no_byte(tmp_path: Path, suffix: str) -> None:
    target = tmp_path / f"m{suffix}"
    with pytest.raises(ApiError, match="the API went away"):
        export_sweep(FakeClient(20, fail_at=2, page_runs=500), 1, suffix[1:], target, batch_runs=5)
    assert list(tmp_path.iterdir()) == []
    whole = FakeClient(7, page_runs=500)
    assert export_sweep(whole, 1, suffix[1:], target) == 7 * EPOCHS * 2 * len(KEYS)
    assert whole.pages == 1
    export_sweep(FakeClient(7, page_runs=500), 1, suffix[1:], tmp_path / f"paged{suffix}", batch_runs=3)
    assert target.read_bytes() == (tmp_path / f"paged{suffix}").read_bytes()
