"""Dashboard in headless Debian Chromium (playwright): pages load cleanly, the matrix updates live; its JSON views
and server-rendered pages (TestClient)."""
from __future__ import annotations

import os
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest

from nc_core.db import events_repo, workers_repo
from nc_core.db.models import Metric, Run, Sweep, utcnow
from nc_core.db.session import session_scope
from test_dashboard_data import LONG_ERROR
from test_events import serve
from test_plots import add_validate_job, seed_sweep

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
PLOTS_LOADED = "[...document.querySelectorAll('img.plot')].every(i => i.complete && i.naturalWidth > 100)"
pytestmark = [pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]
browser_test = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{CHROMIUM} is required under CI=true")
        pytest.skip(f"{CHROMIUM} not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM),
                              args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


@pytest.fixture
def page(browser, app) -> Iterator[tuple[object, str, list[str]]]:  # noqa: ANN001
    """A fresh page on a live server; yields (page, base url, console errors)."""
    with serve(app) as url:
        ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
        pg = ctx.new_page()
        errors: list[str] = []
        pg.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
        pg.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        yield pg, url, errors
        ctx.close()


def shot(pg, name: str) -> Path:  # noqa: ANN001
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    pg.screenshot(path=str(path), full_page=True)
    return path


@browser_test
def test_sweep_page_matrix_updates_when_a_run_finishes(page, db_url: str) -> None:  # noqa: ANN001
    pg, url, errors = page
    sid, runs = seed_sweep(db_url, statuses={0: "running", 2: "queued", 3: "failed"})
    pg.goto(f"{url}/ui/sweeps/{sid}")
    pg.wait_for_selector("#matrix td.cell")
    assert pg.locator("#matrix td.cell").count() == 4  # loss.name × model.width; seeds folded
    cell = pg.locator("#cell-0-0")  # ce, width 32: runs 0 (running) and 1 (succeeded)
    assert cell.get_attribute("data-status") == "running" and cell.inner_text() == "1/2"
    assert pg.locator("#cell-0-1").get_attribute("data-status") == "failed"
    assert pg.locator("#runs tbody tr").count() == 8
    pg.wait_for_function("document.querySelector('#live').classList.contains('on')", timeout=10_000)
    pg.wait_for_function(PLOTS_LOADED, timeout=30_000)
    running = shot(pg, "sweep-running.png")
    docs = ROOT / "docs" / "screenshots" / "sweep.png"  # the README's picture: a sweep mid-way
    if os.environ.get("NCSWEEP_UPDATE_SCREENSHOTS") == "1" or not docs.exists():  # keep the tree clean otherwise
        docs.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(running, docs)
    with session_scope(db_url) as s:  # the worker finishes the run: status row + change-feed event
        s.get(Run, runs[0]).status = "succeeded"
        events_repo.append_event(s, "status", sid, runs[0], {"status": "succeeded"})
    pg.wait_for_selector('#cell-0-0[data-status="succeeded"]', timeout=10_000)
    assert pg.locator("#cell-0-0").inner_text() == "2/2"
    assert pg.locator(f'#runs tr[data-run="{runs[0]}"]').get_attribute("data-status") == "succeeded"
    shot(pg, "sweep-finished.png")
    pg.select_option("#colour-by", "acc|test")  # colour by a metric instead of the status
    pg.wait_for_function("document.querySelector('#cell-0-0').style.background !== ''", timeout=10_000)
    assert "." in pg.locator("#cell-0-0").inner_text()  # a final-epoch accuracy, not a count
    shot(pg, "sweep-metric.png")
    assert errors == []


@browser_test
def test_index_workers_and_run_pages(page, db_url: str) -> None:  # noqa: ANN001
    pg, url, errors = page
    sid, runs = seed_sweep(db_url, statuses={0: "running", 3: "failed"})
    with session_scope(db_url) as s:
        workers_repo.heartbeat(s, "gpu0@node1", "node1", 7, "cuda:0",
                               {"gpu_name": "NVIDIA H100", "util_percent": 91.0, "memory_used": 40 * 2**30,
                                "memory_total": 80 * 2**30, "temperature_c": 64.0}, runs[0], "busy")
    pg.goto(f"{url}/")
    pg.wait_for_selector(f'#sweeps tr[data-sweep="{sid}"]')
    assert "demo" in pg.locator(f'#sweeps tr[data-sweep="{sid}"]').inner_text()
    shot(pg, "index.png")
    pg.goto(f"{url}/ui/workers")
    row = pg.locator('#workers tr[data-worker="gpu0@node1"]')
    row.wait_for()
    assert row.get_attribute("data-status") == "busy" and "91%" in row.inner_text() and "NVIDIA H100" in row.inner_text()
    shot(pg, "workers.png")
    pg.goto(f"{url}/ui/runs/{runs[3]}")
    assert "diverged" in pg.locator("#error").inner_text()
    pg.wait_for_function(PLOTS_LOADED, timeout=30_000)
    shot(pg, "run.png")
    assert pg.goto(f"{url}/ui/sweeps/999999").status == 404
    errors[:] = [e for e in errors if "404" not in e]  # the deliberate 404 above
    assert errors == []


@browser_test
def test_validate_jobs_stay_out_of_the_run_counts_and_cell_means(page, db_url: str) -> None:  # noqa: ANN001
    pg, url, errors = page
    sid, runs = seed_sweep(db_url, widths=(32, 64, 128), seeds=(0, 1, 2))  # 18 runs
    add_validate_job(db_url, runs[0])  # a re-evaluation of run 0: its metrics once more
    pg.goto(f"{url}/ui")
    row = pg.locator(f'#sweeps tr[data-sweep="{sid}"]')
    for rendered in ("server", "poll"):  # the template, then dashboard.js's poll (every 3 s) re-renders the row
        row.wait_for()
        assert row.locator("td").nth(3).inner_text() == "18", rendered
        assert "succeeded 18" in row.inner_text() and "validate jobs 1" in row.inner_text(), rendered
        pg.wait_for_timeout(3500)
    pg.goto(f"{url}/ui/sweeps/{sid}")
    pg.wait_for_selector("#matrix td.cell")
    assert pg.locator("#cell-0-0").inner_text() == "3/3"  # ce, width 32: seeds 0, 1, 2
    assert pg.locator("#sweep-counts").inner_text() == "succeeded 18" and pg.locator("#runs tbody tr").count() == 18
    assert "validate jobs 1" in pg.locator("#sweep-validate-jobs").inner_text()
    assert pg.locator("#sweep-validate-jobs a").get_attribute("href") == "#validate"  # to the list of jobs
    assert pg.locator(f'#validate-runs a[href="/ui/runs/{runs[0]}"]').count() == 1  # each names its run
    pg.select_option("#colour-by", "acc|test")
    pg.wait_for_function("document.querySelector('#cell-0-0').style.background !== ''", timeout=10_000)
    mean = sum(50 + 40 / (1 + 0.1 * seed) for seed in (0, 1, 2)) / 3  # final (epoch 4) test acc of the 3 seeds
    assert pg.locator("#cell-0-0").inner_text() == f"{mean:.3g}"
    assert errors == []


# -- JSON views and server-rendered pages (no browser) ----------------------------------------------

# -- live pages in the browser ---------------------------------------------------------------------

def _texts(pg) -> dict[str, str]:  # noqa: ANN001
    return pg.evaluate("Object.fromEntries(['#run-status', '#run-attempt', '#run-worker', '#run-progress']"
                       ".map(s => [s, document.querySelector(s).textContent.trim()]))")


@browser_test
def test_run_page_follows_its_run_until_it_finishes(page, db_url: str) -> None:  # noqa: ANN001
    pg, url, errors = page
    _, runs = seed_sweep(db_url, statuses={0: "queued"})
    rid = runs[0]
    pg.clock.install()  # the page's timers run when the test says
    requests: list[str] = []
    pg.on("request", lambda r: requests.append(r.url))
    pg.goto(f"{url}/ui/runs/{rid}")
    assert _texts(pg) == {"#run-status": "queued", "#run-attempt": "0/3", "#run-worker": "—",
                          "#run-progress": "epoch 0/4 · step 0/10"}
    with session_scope(db_url) as s:  # a worker takes it
        run = s.get(Run, rid)
        run.status, run.attempt, run.worker_name = "running", 1, "gpu0@node1"
        run.epoch, run.step, run.eta_s = 1, 5, 90.0
        run.samples_per_s, run.started_at = 1234.0, utcnow()
    pg.clock.run_for(3100)
    pg.wait_for_function("document.querySelector('#run-status').textContent === 'running'", timeout=10_000)
    assert _texts(pg) == {"#run-status": "running", "#run-attempt": "1/3", "#run-worker": "gpu0@node1",
                          "#run-progress": "epoch 1/4 · step 5/10 · 1234 samples/s · ETA 1m30s"}
    assert pg.locator("#run-status.st-running").count() == 1 and pg.locator("#live.on").count() == 1
    assert "· started " in pg.locator("#run-times").inner_text() and "running for 0m" in pg.locator("#run-times").inner_text()
    with session_scope(db_url) as s:  # it fails for good
        run = s.get(Run, rid)
        run.status, run.attempt, run.eta_s = "failed", 3, None
        run.error = "Traceback\nRuntimeError: diverged at epoch 2"
        run.finished_at = run.started_at + timedelta(seconds=75)
    pg.clock.run_for(3100)
    pg.wait_for_selector("#error", timeout=10_000)
    assert pg.locator("#run-times").inner_text().endswith(" · took 1m15s")
    assert pg.locator("#no-plots").is_visible() and not pg.locator("img.plot").first.is_visible()  # no empty plots
    assert "diverged at epoch 2" in pg.locator("#error").inner_text() and _texts(pg)["#run-attempt"] == "3/3"
    shot(pg, "run-failed-live.png")
    live = pg.locator("#live")
    assert "on" not in live.get_attribute("class") and "no more updates" in live.get_attribute("title")
    requests.clear()
    pg.clock.run_for(120_000)  # finished: no more polls, no more plots
    pg.wait_for_timeout(500)
    assert [u for u in requests if ".json" in u or ".png" in u] == []
    assert errors == []


def open_live_sweep_page(pg, url: str, sid: int) -> list[str]:  # noqa: ANN001
    """Open sweep ``sid``'s page, wait for its event stream and plots, then record every URL it requests."""
    requests: list[str] = []
    pg.on("request", lambda r: requests.append(r.url))
    pg.goto(f"{url}/ui/sweeps/{sid}")
    pg.wait_for_function("document.querySelector('#live').classList.contains('on')", timeout=10_000)  # the stream
    pg.wait_for_function(PLOTS_LOADED, timeout=30_000)
    requests.clear()
    return requests


@browser_test
def test_a_finished_sweep_settles_until_an_event_arrives(page, db_url: str) -> None:  # noqa: ANN001
    pg, url, errors = page
    sid, runs = seed_sweep(db_url)  # all succeeded
    pg.clock.install()
    requests = open_live_sweep_page(pg, url, sid)
    pg.clock.run_for(120_000)
    pg.wait_for_timeout(500)
    assert [u for u in requests if "state.json" in u or ".png" in u] == []
    with session_scope(db_url) as s:  # a retry: the run is queued again
        s.get(Run, runs[0]).status = "queued"
        events_repo.append_event(s, "status", sid, runs[0], {"status": "queued"})
    for _ in range(40):  # the event arrives, then the page's (fake-timed) debounce fires
        pg.clock.run_for(400)
        if pg.locator('#cell-0-0[data-status="partial"]').count():
            break
        pg.wait_for_timeout(250)
    assert pg.locator("#cell-0-0").get_attribute("data-status") == "partial"
    assert any("dynamics.png" in u for u in requests) and any("heatmap.png" in u for u in requests)
    requests.clear()
    pg.clock.run_for(10_100)  # unfinished again: polled again
    pg.wait_for_timeout(500)
    assert any("state.json" in u for u in requests)
    assert errors == []


@browser_test
def test_matrix_coloured_by_a_metric_stays_readable(page, db_url: str) -> None:  # noqa: ANN001
    pg, url, errors = page
    sid, runs = seed_sweep(db_url, scale=1e-6, statuses={2: "failed", 3: "failed"})  # tiny values
    with session_scope(db_url) as s:  # ce, width 64 failed without a value
        s.query(Metric).filter(Metric.run_id.in_(runs[2:4])).delete()
    pg.goto(f"{url}/ui/sweeps/{sid}")
    pg.select_option("#colour-by", "acc|test")
    pg.wait_for_function("document.querySelector('#cell-0-0').style.background !== ''", timeout=10_000)
    cells = pg.evaluate("Object.fromEntries([...document.querySelectorAll('#matrix td.cell')].map(td => [td.id, "
                        "{text: td.textContent.trim(), status: td.dataset.status, color: getComputedStyle(td).color,"
                        " shadow: getComputedStyle(td).boxShadow}]))")
    failed = cells.pop("cell-0-1")
    assert (failed["text"], failed["status"]) == ("–", "failed")
    assert "220, 38, 38" in failed["shadow"] and failed["color"] != "rgb(255, 255, 255)"  # red outline, dark text
    assert all(re.fullmatch(r"\d\.\d\de-\d+", c["text"]) for c in cells.values()), cells  # 8.65e-5, not 0.0000865
    assert cells["cell-0-0"]["color"] == "rgb(17, 24, 39)"  # the highest value: yellow, dark text
    assert cells["cell-1-1"]["color"] == "rgb(255, 255, 255)"  # the lowest: dark purple, white text
    assert pg.locator("#legend .chip").count() == 0  # no status legend under metric colours: a min–max scale
    assert pg.locator("#scale-min").inner_text() == cells["cell-1-1"]["text"]
    assert pg.locator("#scale-max").inner_text() == cells["cell-0-0"]["text"]
    shot(pg, "sweep-metric-tiny.png")
    pg.select_option("#colour-by", "")
    pg.wait_for_selector("#legend .chip")
    assert pg.locator("#cell-0-1").inner_text() == "0/2"
    later, later_runs = seed_sweep(db_url, statuses={i: "queued" for i in range(8)}, name="later")
    pg.goto(f"{url}/ui/sweeps/{later}")
    assert pg.locator("#colour-by option").count() == 1  # nothing stored yet: status only
    with session_scope(db_url) as s:  # the first run reports its metrics
        s.get(Run, later_runs[0]).status = "running"
        s.add(Metric(run_id=later_runs[0], epoch=1, split="test", key="acc", value=0.5))
        events_repo.append_event(s, "metric", later, later_runs[0], {"epoch": 1})
    pg.wait_for_selector('#colour-by option[value="acc|test"]', state="attached", timeout=10_000)
    assert errors == []


@browser_test
def test_narrow_pages_do_not_scroll_sideways(page, db_url: str) -> None:  # noqa: ANN001
    pg, url, errors = page
    sid, runs = seed_sweep(db_url, name="n" * 150, statuses={0: "running", 3: "failed"})
    seeds_only, _ = seed_sweep(db_url, name="seeds-only")
    with session_scope(db_url) as s:
        s.get(Run, runs[3]).error = LONG_ERROR
        s.get(Sweep, seeds_only).axes = []
        workers_repo.heartbeat(s, "gpu0@node1", "node1", 7, "cuda:0", {"gpu_name": "NVIDIA H100"}, runs[0], "busy")
    pg.set_viewport_size({"width": 400, "height": 900})
    one_line_chips = "[...document.querySelectorAll('.chip')].every(c => c.getClientRects().length === 1)"
    for path in ("/ui", f"/ui/sweeps/{sid}", f"/ui/runs/{runs[3]}", "/ui/workers", f"/ui/sweeps/{seeds_only}"):
        pg.goto(url + path)
        pg.wait_for_selector("main table, main pre#error")
        assert pg.evaluate("document.documentElement.scrollWidth") <= 400, path
        assert pg.evaluate(one_line_chips), path
        shot(pg, f"narrow-{path.strip('/').replace('/', '-')}.png")
    assert "None" not in pg.locator("#matrix").inner_text()  # the seeds-only sweep: no axis, no "None"
    pg.goto(f"{url}/ui/sweeps/{sid}")
    error = pg.locator(f'#runs tr[data-run="{runs[3]}"] td.error')
    assert error.get_attribute("title") == LONG_ERROR.splitlines()[-1] and error.inner_text().endswith("…")
    assert errors == []


@browser_test
def test_live_indicator_follows_each_pages_polls(page, db_url: str) -> None:  # noqa: ANN001
    pg, url, errors = page
    seed_sweep(db_url)
    for path in ("/ui", "/ui/workers"):
        pg.goto(url + path)
        pg.wait_for_function("document.querySelector('#live').classList.contains('on')", timeout=10_000)
    pg.route("**/ui/workers.json", lambda route: route.abort())  # the server goes away
    pg.wait_for_function("document.querySelector('#live').classList.contains('down')", timeout=10_000)
    assert "unreachable" in pg.locator("#live").get_attribute("title")
    pg.unroute("**/ui/workers.json")
    pg.wait_for_function("document.querySelector('#live').classList.contains('on')", timeout=10_000)
    errors[:] = [e for e in errors if "ERR_FAILED" not in e]  # the aborted polls above
    assert errors == []
