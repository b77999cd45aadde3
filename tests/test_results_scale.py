"""Results of large sweeps: keys=None asks only for the keys the sweep stores, the CLI table leaves out groups
with nothing measured and keys with no value (saying so), wide tables split by keys rather than into a row per
group and key; a sweep's cancel_requested counts unfinished runs only."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from sqlalchemy import event, insert

from nc_core.db import sweeps_repo
from nc_core.db.models import Metric
from nc_core.db.session import make_engine, session_scope
from nc_core.metric_keys import METRIC_KEYS, STORED_KEYS
from service import cli_results
from test_api_runs import set_status, sweep  # noqa: F401 - fixture
from test_cli import SQLITE, live, ncsweep  # noqa: F401 - fixture
from test_plots import KEYS, seed_sweep

QUEUED_BUT_FIRST = {i: "queued" for i in range(2, 8)}  # group (ce, 32) measured; (ce, 64), (mse, *) all queued


def add_nan_key(url: str, run_ids: list[int], key: str = "nc2_w_gof", split: str = "test") -> None:
    """Rows of `key` that are all NULL (NaN): stored, but with no defined value."""
    with session_scope(url) as s:
        s.execute(insert(Metric), [dict(run_id=r, epoch=e, split=split, key=key, value=None, note="no λ")
                                   for r in run_ids for e in (1, 2, 3, 4)])


@contextmanager
def statements(url: str) -> Iterator[list[tuple[str, list]]]:
    """(SQL, its parameters as a list) of every statement run on the url's engine inside the block."""
    seen: list[tuple[str, list]] = []

    def record(conn, cursor, sql, params, context, many):  # noqa: ANN001, ARG001
        values = list(params.values()) if isinstance(params, dict) else list(params or ())
        seen.append((sql, values))

    engine = make_engine(url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def per_key_queries(seen: list[tuple[str, list]]) -> list[set[str]]:
    """For each run × key query (latest_values), the metric keys it names."""
    return [{p for p in params if p in STORED_KEYS} for sql, params in seen if "ORDER BY metric.epoch DESC" in sql]


def test_results_without_keys_ask_only_for_the_keys_the_sweep_stores(app_client, db_url):  # noqa: ANN001
    sid, runs = seed_sweep(db_url, statuses={7: "queued"})
    add_nan_key(db_url, runs[:2])
    with statements(db_url) as seen:
        body = app_client.get(f"/sweeps/{sid}/results").json()
    assert body["keys"] == sorted({*KEYS, "nc2_w_gof"})  # the NaN-only key is stored: the API still lists it
    assert per_key_queries(seen) == [{*KEYS, "nc2_w_gof"}]  # not all 46 STORED_KEYS
    group = next(g for g in body["groups"] if g["values"] == {"loss.name": "ce", "model.width": 32})
    assert group["metrics"]["nc2_w_gof"] == {"mean": None, "std": None, "min": None, "max": None, "count": 0,
                                             "missing": 2}
    assert group["metrics"]["acc"]["count"] == 2
    explicit = app_client.get(f"/sweeps/{sid}/results", params={"keys": ",".join(body["keys"])}).json()
    assert explicit["groups"] == body["groups"]


def test_stored_pairs_and_latest_values_of_a_sweep(db_url):  # noqa: ANN001
    sid, runs = seed_sweep(db_url, statuses=QUEUED_BUT_FIRST)
    add_nan_key(db_url, runs[:1])
    with session_scope(db_url) as s:
        pairs = sweeps_repo.stored_pairs(s, sid)
        assert pairs == sorted({(k, sp) for k in KEYS for sp in ("train", "test")} | {("nc2_w_gof", "test")})
        assert sweeps_repo.stored_pairs(s, sid, "train") == [p for p in pairs if p[1] == "train"]
        rows = sweeps_repo.latest_values(s, "train", None, sweep_id=sid)
        assert {(r, k) for r, k, _, _ in rows} == {(r, k) for r in runs[:2] for k in KEYS}
        assert {e for *_, e in rows} == {4}
    queued, _ = seed_sweep(db_url, name="queued", statuses={i: "queued" for i in range(8)})
    with statements(db_url) as seen, session_scope(db_url) as s:
        assert sweeps_repo.stored_pairs(s, queued) == []
        assert sweeps_repo.latest_values(s, "test", None, sweep_id=queued) == []
    assert per_key_queries(seen) == []  # nothing stored: no run × key query at all


def test_cancel_requested_counts_only_unfinished_runs(app_client, sweep, db_url):  # noqa: ANN001, F811
    sid, ids = sweep
    assert app_client.post(f"/runs/{ids[0]}/cancel").json()["cancelled"] == 1  # queued: cancelled, flag kept
    set_status(db_url, ids[1], "running", lease_owner="w1")
    assert app_client.post(f"/runs/{ids[1]}/cancel").json()["cancel_requested"] == 1
    detail = app_client.get(f"/sweeps/{sid}").json()
    assert detail["counts"]["cancelled"] == 1 and detail["cancel_requested"] == 1
    set_status(db_url, ids[1], "cancelled")  # the worker stopped it
    assert app_client.get(f"/sweeps/{sid}").json()["cancel_requested"] == 0
    field = app_client.get("/openapi.json").json()["components"]["schemas"]["SweepDetail"]["properties"]
    assert "unfinished" in field["cancel_requested"]["description"]


def _group(loss: str, n: int, runs: int = 2, keys: tuple[str, ...] = ("acc", "nc2_w_gof")) -> dict:
    metrics = {k: {"mean": 90.0 if k == "acc" and n else None, "std": None, "count": n if k == "acc" else 0}
               for k in keys}
    return {"values": {"loss.name": loss}, "runs": runs, "measured_epochs": [4] if n else [],
            "unfinished_runs": [], "metrics": metrics}


def test_shown_results_leave_out_unmeasured_groups_and_valueless_keys() -> None:
    body = {"group_by": ["loss.name"], "keys": ["acc", "nc2_w_gof"], "unit": "epoch",
            "groups": [_group("ce", 2), _group("mse", 0), _group("l1", 0)]}
    shown, notes = cli_results.shown_results(body, "test", "last")
    assert [g["values"]["loss.name"] for g in shown["groups"]] == ["ce"] and shown["keys"] == ["acc", "nc2_w_gof"]
    assert notes == ["2 of 3 groups have no run with test metrics yet (not shown; --all-groups lists them)"]
    shown, notes = cli_results.shown_results(body, "test", "last", all_groups=True, all_keys=True)
    assert len(shown["groups"]) == 3 and shown["keys"] == ["acc"]
    assert notes == ["1 key(s) with no defined value in any group not shown (NaN or not measured): nc2_w_gof"]
    _, notes = cli_results.shown_results(body, "train", "5")
    assert notes == ["2 of 3 groups have no run with train metrics at epoch 5 (not shown; --all-groups lists them)"]
    nothing = {**body, "groups": [_group("mse", 0)]}  # no group measured: results_hint says why, no note
    assert cli_results.shown_results(nothing, "test", "last", all_keys=True) == ({**nothing, "groups": []}, [])


def test_many_keys_and_groups_split_into_tables_of_keys_not_rows_per_key() -> None:
    keys = list(METRIC_KEYS)
    metrics = {k: {"mean": 0.123456, "std": 0.0123, "count": 3} for k in keys}
    body = {"group_by": ["loss.name", "model.width"], "keys": keys, "unit": "epoch",
            "groups": [{"values": {"loss.name": "ce", "model.width": w}, "runs": 3, "metrics": metrics}
                       for w in range(40)]}
    console = Console(width=160, record=True)
    console.print(cli_results.results_table(body, 2, "test", width=160))
    lines = console.export_text().splitlines()
    assert len(lines) < 40 * 8  # a row per group and key: 40 × 44
    assert max(map(len, lines)) <= 160 and "┃ key" not in "\n".join(lines)
    headers = [line for line in lines if "┃ runs ┃" in line]
    assert 1 < len(headers) < 10 and all(f" {k} " in "\n".join(headers) for k in keys)
    assert sum("0.123±0.012" in line for line in lines) == 40 * len(headers)
    assert "sweep 2 results [test, last epoch]" in lines[0] and "keys 1–" in "\n".join(lines)


@SQLITE
def test_cli_results_of_a_mostly_queued_sweep(live, db_url, capsys):  # noqa: ANN001, F811
    sid, runs = seed_sweep(db_url, statuses=QUEUED_BUT_FIRST)
    add_nan_key(db_url, runs[:2])
    rc, out, err = ncsweep(capsys, "results", sid)
    assert rc == 0 and "ce" in out and "mse" not in out and "0/2" not in out
    assert "3 of 4 groups have no run with test metrics yet (not shown; --all-groups lists them)" in err
    rc, out, err = ncsweep(capsys, "results", sid, "--all-groups")
    assert rc == 0 and "mse" in out and out.count("0/2") == 3 and "groups have no run" not in err
    rc, out, err = ncsweep(capsys, "results", sid, "--keys", "all")
    assert rc == 0 and "cos_margin_min" in out and "nc2_w_gof" not in out
    assert "1 key(s) with no defined value in any group not shown (NaN or not measured): nc2_w_gof" in err
    rc, out, err = ncsweep(capsys, "results", sid, "--keys", "acc,nc2_w_gof")  # asked for by name: kept
    assert rc == 0 and "nc2_w_gof" in out and "no defined value" not in err
    queued, _ = seed_sweep(db_url, name="queued", statuses={i: "queued" for i in range(8)})
    rc, out, err = ncsweep(capsys, "results", queued)
    assert rc == 0 and "no finished results yet" in out and "groups have no run" not in err
    assert f"no run of sweep {queued} has test metrics at their last epoch yet" in err
