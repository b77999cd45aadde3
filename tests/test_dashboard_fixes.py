"""Dashboard audit fixes: pages that keep following a run or sweep, token prompts, a bounded runs table, NaN
reasons, cell counts, sweep state and ETA, HTML 404 pages, host-wide CPU telemetry and a short run's rate."""
from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from nc_core.db import actions_repo, events_repo, sweeps_repo, workers_repo
from nc_core.db.models import Metric, Run, Sweep
from nc_core.db.session import session_scope
from nc_core.settings import Settings
from test_dashboard import browser, browser_test, page  # noqa: F401 - the browser and page fixtures
from test_dashboard_data import client  # noqa: F401 - the fixture
from test_plots import add_validate_job, seed_sweep

pytestmark = [pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]
REASON = "nc1_svd needs K-1 < d (K=10, d=4)"


# -- state.json and the pages' HTML (no browser) -----------------------------------------------------

def test_state_json_pages_the_runs_table_but_its_matrix_covers_every_run(client, db_url: str) -> None:  # noqa: ANN001, F811
    statuses = {0: "running", 5: "failed", 7: "queued", 11: "cancelled"}
    sid, runs = seed_sweep(db_url, widths=(32, 64, 128), seeds=(0, 1, 2), statuses=statuses)  # 18 runs
    state = client.get(f"/ui/sweeps/{sid}/state.json", params={"limit": 3}).json()
    assert (state["runs_total"], state["runs_matching"], len(state["runs"])) == (18, 18, 3)
    assert [r["id"] for r in state["runs"]] == sorted([runs[0], runs[5], runs[7]])  # running, failed, queued picked
    assert sum(c["n"] for line in state["matrix"] for c in line) == 18  # the matrix: every run
    assert state["counts"] == {"running": 1, "failed": 1, "queued": 1, "succeeded": 14, "cancelled": 1}
    assert list(state["counts"]) == ["running", "failed", "queued", "succeeded", "cancelled"]  # one fixed order
    failed = client.get(f"/ui/sweeps/{sid}/state.json", params={"status": "failed"}).json()
    assert [r["id"] for r in failed["runs"]] == [runs[5]] and failed["runs_matching"] == 1
    assert client.get(f"/ui/sweeps/{sid}/state.json", params={"status": "bogus"}).status_code == 422
    default = client.get(f"/ui/sweeps/{sid}/state.json").json()
    assert len(default["runs"]) == 18 and default["runs_matching"] == 18  # 200 by default: all of these
    assert default["overall"]["state"] == "running" and "eta_s" in default


def test_nan_values_say_why_and_cells_say_how_many_runs_they_average(client, db_url: str) -> None:  # noqa: ANN001, F811
    sid, runs = seed_sweep(db_url)  # ce/32: runs 0, 1; ce/64: runs 2, 3
    with session_scope(db_url) as s:
        for rid in runs[:2]:  # both NaN at their final epoch, with the suite's reason
            point = s.query(Metric).filter_by(run_id=rid, epoch=4, split="test", key="nc1").one()
            point.value, point.note = None, REASON
        s.query(Metric).filter(Metric.run_id == runs[3]).delete()  # no value at all
    state = client.get(f"/ui/sweeps/{sid}/state.json", params={"key": "nc1", "split": "test"}).json()
    nan_cell, partial = state["matrix"][0][0], state["matrix"][0][1]
    assert (nan_cell["value"], nan_cell["nan"], nan_cell["measured"], nan_cell["n"]) == (None, 2, 0, 2)
    assert nan_cell["notes"] == [REASON]
    assert (partial["measured"], partial["n"], partial["nan"]) == (1, 2, 0) and partial["value"] is not None
    rows = {r["id"]: r for r in state["runs"]}
    assert (rows[runs[0]]["value"], rows[runs[0]]["nan"], rows[runs[0]]["note"]) == (None, True, REASON)
    assert (rows[runs[3]]["nan"], rows[runs[3]]["value_epoch"]) == (False, None)  # not measured: not NaN


def test_pages_show_sweep_state_eta_and_html_errors(client, db_url: str) -> None:  # noqa: ANN001, F811
    sid, _ = seed_sweep(db_url, statuses={0: "running", 1: "queued"}, name="width-study")
    done, _ = seed_sweep(db_url, statuses={2: "cancelled"}, name="old")
    overview = {s["id"]: s for s in client.get("/ui/sweeps.json").json()}
    assert overview[sid]["overall"]["state"] == "running" and "eta_s" in overview[sid]
    assert overview[done]["overall"]["state"] == "cancelled" and overview[done]["eta_s"] is None
    index = client.get("/ui").text
    assert "ETA" in index and 'href="/openapi.json"' in index and 'href="/docs"' not in index
    assert 'aria-label="live updates' in index
    page_html = client.get(f"/ui/sweeps/{sid}").text
    assert "<title>ncsweep · width-study (sweep" in page_html and 'id="sweep-state"' in page_html
    for path in ("/ui/sweeps/999999", "/ui/runs/999999"):
        res = client.get(path)
        assert res.status_code == 404 and res.headers["content-type"].startswith("text/html"), path
        assert '<a href="/ui">' in res.text and "not found" in res.text.lower(), path
    for path, field in (("/ui/sweeps/abc", "sweep_id"), ("/ui/runs/0", "run_id")):  # not an id: as in the API
        res = client.get(path)
        assert res.status_code == 422 and res.json()["detail"][0]["field"] == field, path
    from service.cli_views import WATCH_ORDER
    from service.dashboard.common import CHIP_ORDER

    assert CHIP_ORDER == WATCH_ORDER  # the chips' order: the CLI's


def test_cpu_telemetry_is_labelled_host_wide_and_a_run_without_metrics_has_no_plots(client, db_url: str) -> None:  # noqa: ANN001, F811
    _, runs = seed_sweep(db_url, statuses={0: "running", 3: "failed"})
    with session_scope(db_url) as s:
        workers_repo.heartbeat(s, "cpu@node1", "node1", 7, "cpu", {"util_percent": 100.0, "memory_used": 5 * 2**30,
                                                                   "memory_total": 23 * 2**30}, runs[0], "busy")
        s.query(Metric).filter(Metric.run_id == runs[3]).delete()
    view = client.get(f"/ui/runs/{runs[0]}.json").json()
    assert view["telemetry"]["host_wide"] is True and "host-wide" in client.get(f"/ui/runs/{runs[0]}").text
    failed = client.get(f"/ui/runs/{runs[3]}.json").json()
    assert (failed["has_metrics"], view["has_metrics"]) == (False, True)


@contextlib.contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL statements run meanwhile (on any engine)."""
    seen: list[str] = []

    def record(conn, cursor, statement, *_):  # noqa: ANN001, ANN002
        seen.append(" ".join(statement.split()))
    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def test_eta_is_the_apis_from_rows_already_read_and_one_query_for_the_index(client, db_url: str) -> None:  # noqa: ANN001, F811
    from service.dashboard.data import sweeps_overview
    from service.dashboard.sweep_state import sweep_state

    sid, runs = seed_sweep(db_url, statuses={0: "running", 1: "queued", 5: "queued"})  # 5 succeeded: durations
    add_validate_job(db_url, runs[3])
    with session_scope(db_url) as s:
        s.get(Run, runs[0]).eta_s = 42.0
        s.add(Run(sweep_id=sid, kind="validate", parent_run_id=runs[2], spec={}, spec_hash="v", status="queued",
                  epochs_total=4))  # a queued validate job: in the API's ETA too
    with session_scope(db_url) as s:
        api = sweeps_repo.sweep_eta(s, sid)
        with statements() as seen:
            state = sweep_state(s, sid)
        eta_reads = [q for q in seen if "finished_at" in q]
    assert api is not None and state["eta_s"] == api == client.get(f"/sweeps/{sid}").json()["eta_s"]
    assert len(eta_reads) == 1 and "run.kind" in eta_reads[0]  # light_runs' read only: no sweep_eta pass of its own
    assert [j["parent_run_id"] for j in state["validate_runs"]] == [runs[2], runs[3]]  # newest first
    others = [seed_sweep(db_url, statuses={0: "running"})[0] for _ in range(3)]
    with session_scope(db_url) as s:
        with statements() as seen:
            overview = {o["id"]: o for o in sweeps_overview(s)}
        etas = {i: sweeps_repo.sweep_eta(s, i) for i in (sid, *others)}
    assert {i: overview[i]["eta_s"] for i in etas} == etas and overview[sid]["eta_s"] == api
    assert len([q for q in seen if "finished_at" in q]) == 1  # one ETA read for the 4 active sweeps
    assert client.get("/ui/sweeps.json").json()[-1]["eta_s"] == api  # the oldest: sweep sid


def test_nan_notes_are_those_of_the_final_epoch_and_gpu_telemetry_is_not_host_wide(client, db_url: str) -> None:  # noqa: ANN001, F811
    sid, runs = seed_sweep(db_url, statuses={0: "running"})
    with session_scope(db_url) as s:
        early = s.query(Metric).filter_by(run_id=runs[1], epoch=2, split="test", key="nc1").one()
        early.value, early.note = None, "an earlier epoch's reason"  # NaN then, finite at its final epoch
        last = s.query(Metric).filter_by(run_id=runs[2], epoch=4, split="test", key="nc1").one()
        last.value = None  # NaN at its final epoch, no reason stored there …
        for epoch, split in ((3, "test"), (4, "train")):
            other = s.query(Metric).filter_by(run_id=runs[2], epoch=epoch, split=split, key="nc1").one()
            other.value, other.note = None, f"epoch {epoch}'s {split} reason"
        workers_repo.heartbeat(s, "gpu0@node1", "node1", 7, "cuda:0", {"util_percent": 90.0}, runs[0], "busy")
    state = client.get(f"/ui/sweeps/{sid}/state.json", params={"key": "nc1", "split": "test"}).json()
    rows = {r["id"]: r for r in state["runs"]}
    assert (rows[runs[1]]["nan"], rows[runs[1]]["note"]) == (False, None)
    assert (rows[runs[2]]["nan"], rows[runs[2]]["note"]) == (True, None)  # … nor any other epoch's or split's
    view = client.get(f"/ui/runs/{runs[0]}.json").json()
    assert view["telemetry"]["samples"] >= 1 and view["telemetry"]["host_wide"] is False
    assert client.get(f"/ui/runs/{runs[1]}.json").json()["telemetry"]["host_wide"] is False  # no samples at all


def test_a_run_shorter_than_a_heartbeat_keeps_its_rate(db_url: str, tmp_path) -> None:  # noqa: ANN001
    from worker.telemetry import Heartbeater

    _, runs = seed_sweep(db_url, statuses={0: "queued"})  # no rate yet
    hb = Heartbeater(Settings(home=tmp_path, database_url=db_url, heartbeat_seconds=60), "cpu-worker", None)
    hb.is_alive = lambda: True  # beats as the started thread does on set_run, without its timer
    hb.set_run(runs[0])  # the first sample: no throughput known
    hb.set_throughput(480.0)  # the reporter's first progress
    hb.set_run(None)  # done before the next heartbeat
    with session_scope(db_url) as s:
        tele = workers_repo.run_telemetry(s, runs[0])
    assert tele["peak_samples_per_s"] == 480.0 and tele["samples"] >= 2


# -- live pages in the browser -----------------------------------------------------------------------

def _until(pg, predicate: str, steps: int = 40) -> bool:  # noqa: ANN001
    """Advance the page's fake clock in 400 ms steps until `predicate` (JS) holds."""
    for _ in range(steps):
        pg.clock.run_for(400)
        if pg.evaluate(predicate):
            return True
        pg.wait_for_timeout(250)
    return False


@browser_test
def test_a_finished_run_page_follows_a_retry(page, db_url: str) -> None:  # noqa: ANN001, F811
    pg, url, errors = page
    _, runs = seed_sweep(db_url, statuses={0: "cancelled"})
    rid = runs[0]
    pg.clock.install()
    pg.goto(f"{url}/ui/runs/{rid}")
    assert pg.locator("#run-status").inner_text() == "cancelled"
    with session_scope(db_url) as s:  # POST /runs/{id}/retry
        actions_repo.retry_run(s, rid, max_attempts=3)
    assert _until(pg, "document.querySelector('#run-status').textContent === 'queued'")
    assert "no more updates" not in (pg.locator("#live").get_attribute("title") or "")
    with session_scope(db_url) as s:  # a worker takes it (no event: the page polls again)
        run = s.get(Run, rid)
        run.status, run.attempt, run.epoch = "running", 1, 2
    assert _until(pg, "document.querySelector('#run-status').textContent === 'running'")
    assert pg.locator("#run-progress").inner_text().startswith("epoch 2/4")
    assert errors == []


@browser_test
def test_sweep_page_reopens_its_event_stream_after_an_http_error(page, db_url: str) -> None:  # noqa: ANN001, F811
    pg, url, errors = page
    sid, runs = seed_sweep(db_url)  # finished: only events update it
    down = lambda u: "/events?" in u  # noqa: E731
    pg.route(down, lambda route: route.fulfill(status=503, body="database unreachable"))
    pg.clock.install()
    pg.goto(f"{url}/ui/sweeps/{sid}")
    pg.wait_for_function("document.querySelector('#live').classList.contains('down')", timeout=10_000)
    pg.unroute(down)  # the server is back
    assert _until(pg, "document.querySelector('#live').classList.contains('on')")
    with session_scope(db_url) as s:  # a retry: the run is queued again
        s.get(Run, runs[0]).status = "queued"
        events_repo.append_event(s, "status", sid, runs[0], {"status": "queued"})
    assert _until(pg, "document.querySelector('#cell-0-0').dataset.status === 'partial'")
    errors[:] = [e for e in errors if "503" not in e]  # the refused streams above
    assert errors == []


@browser_test
def test_index_asks_for_a_token_once_reads_need_one(page, app, db_url: str) -> None:  # noqa: ANN001, F811
    pg, url, errors = page
    seed_sweep(db_url)
    pg.goto(f"{url}/ui")
    pg.wait_for_function("document.querySelector('#live').classList.contains('on')", timeout=10_000)
    app.state.settings.auth_reads = True  # restarted with NCSWEEP_AUTH_READS=true
    pg.wait_for_selector("form#login", timeout=15_000)  # the token form, not "server unreachable … retrying"
    errors[:] = [e for e in errors if "401" not in e]
    assert errors == []


@browser_test
def test_matrix_shows_nan_and_partial_counts(page, db_url: str) -> None:  # noqa: ANN001, F811
    pg, url, errors = page
    sid, runs = seed_sweep(db_url, statuses={3: "cancelled"})
    with session_scope(db_url) as s:
        for rid in runs[:2]:
            point = s.query(Metric).filter_by(run_id=rid, epoch=4, split="test", key="nc1").one()
            point.value, point.note = None, REASON
        s.query(Metric).filter(Metric.run_id == runs[3]).delete()
        s.get(Sweep, sid).axes = ["loss.name", "model.width"]
    pg.goto(f"{url}/ui/sweeps/{sid}")
    pg.select_option("#colour-by", "nc1|test")
    pg.wait_for_function("document.querySelector('#cell-0-0').style.background !== ''", timeout=10_000)
    nan = pg.locator("#cell-0-0")
    assert nan.inner_text() == "NaN" and REASON in nan.get_attribute("title")
    partial = pg.locator("#cell-0-1")
    assert partial.inner_text().endswith("(1/2)") and "1 of 2 runs" in partial.get_attribute("title")
    value = pg.locator(f'#runs tr[data-run="{runs[0]}"] td.value')
    assert value.inner_text() == "NaN" and REASON in value.get_attribute("title")
    assert "none" not in " ".join(pg.locator(f"#cell-{i}-{j}").get_attribute("title") for i in (0, 1) for j in (0, 1))
    assert errors == []


TRACK_STREAMS = """window.__streams = [];
window.EventSource = class extends window.EventSource {
  constructor(...args) { super(...args); window.__streams.push(this); }
};"""


@browser_test
def test_a_run_page_opens_its_event_stream_only_once_its_run_has_finished(page, db_url: str) -> None:  # noqa: ANN001, F811
    pg, url, errors = page
    sid, runs = seed_sweep(db_url, statuses={0: "running", 1: "failed"})
    rid = runs[0]
    pg.add_init_script(TRACK_STREAMS)  # every EventSource the page opens, and its readyState
    pg.clock.install()
    requests: list[str] = []
    pg.on("request", lambda r: requests.append(r.url))
    pg.goto(f"{url}/ui/runs/{rid}")
    pg.wait_for_timeout(300)
    for step in range(10):  # its progress, 600 ms apart in the page's time: 6 s, two polls of the 3 s poller
        with session_scope(db_url) as s:
            s.get(Run, rid).step = step
            events_repo.append_event(s, "progress", sid, rid, {"step": step})
        pg.clock.run_for(600)
        pg.wait_for_timeout(150)
    polls = [u for u in requests if f"/ui/runs/{rid}.json" in u]
    assert 1 <= len(polls) <= 2, polls  # no extra poll per progress event
    assert pg.evaluate("window.__streams.length") == 0 and not [u for u in requests if "/events" in u]
    with session_scope(db_url) as s:  # it succeeds
        s.get(Run, rid).status = "succeeded"
        events_repo.append_event(s, "status", sid, rid, {"status": "succeeded"})
        cursor = events_repo.latest_event_id(s)
    assert _until(pg, "window.__streams.length === 1 && window.__streams[0].readyState === EventSource.OPEN")
    assert pg.evaluate("window.__streams[0].url").endswith(f"/events?sweep_id={sid}&since={cursor}")
    requests.clear()
    with session_scope(db_url) as s:  # other runs' events, a validate job's of this run: no poll
        events_repo.append_event(s, "progress", sid, runs[2], {"step": 1})
        events_repo.append_event(s, "status", sid, runs[2], {"status": "running"})
    with session_scope(db_url) as s:
        actions_repo.create_validate_run(s, s.get(Run, rid), {}, epochs_total=4, max_attempts=3)
    for _ in range(10):
        pg.clock.run_for(1000)
        pg.wait_for_timeout(150)
    assert not [u for u in requests if ".json" in u], requests
    pg.goto(f"{url}/ui/runs/{runs[1]}")  # failed: it follows its events from the start
    assert _until(pg, "window.__streams.length === 1 && window.__streams[0].readyState === EventSource.OPEN")
    with session_scope(db_url) as s:  # the sweep's failed runs are retried: one event, naming no run
        actions_repo.retry_sweep(s, sid, max_attempts=3)
    assert _until(pg, "document.querySelector('#run-status').textContent === 'queued'")
    assert pg.evaluate("window.__streams[0].readyState === EventSource.CLOSED")  # polled again: its stream closed
    assert errors == []


@browser_test
def test_a_refused_poll_reloads_for_the_token_form_again_once_the_window_has_passed(page, db_url: str) -> None:  # noqa: ANN001, F811
    pg, url, errors = page
    seed_sweep(db_url)
    pg.route("**/ui/sweeps.json", lambda route: route.fulfill(status=401, body="a token is needed"))
    pg.clock.install()
    loads: list[str] = []
    pg.on("request", lambda r: loads.append(r.url) if r.resource_type == "document" else None)
    pg.goto(f"{url}/ui")  # the server still serves the page (as without NCSWEEP_AUTH_READS on pages)
    assert _until(pg, "true", steps=1) and len(loads) == 1
    # the first refusal reloads; those within 30 s of that reload do not. The page's clock also runs in real
    # time beside run_for (a loaded CI machine adds seconds), so this phase stays well inside the window
    for _ in range(18):
        pg.clock.run_for(1000)
        pg.wait_for_timeout(100)
    assert len(loads) == 2, loads
    assert "reload the page" in pg.locator("#live").get_attribute("title")
    for _ in range(40):  # past the window: a refused poll reloads again (was never: each refusal pushed it on)
        pg.clock.run_for(1000)
        pg.wait_for_timeout(100)
        if len(loads) == 3:
            break
    assert len(loads) == 3, loads
    errors[:] = [e for e in errors if "401" not in e]
    assert errors == []
