"""Dashboard in headless Debian Chromium (playwright): pages load cleanly, the matrix updates live."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from nc_core.db import events_repo, workers_repo
from nc_core.db.models import Run
from nc_core.db.session import session_scope
from test_events import serve
from test_plots import add_validate_job, seed_sweep

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
PLOTS_LOADED = "[...document.querySelectorAll('img.plot')].every(i => i.complete && i.naturalWidth > 100)"
pytestmark = [pytest.mark.browser, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


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
    pg.select_option("#colour-by", "acc|test")
    pg.wait_for_function("document.querySelector('#cell-0-0').style.background !== ''", timeout=10_000)
    mean = sum(50 + 40 / (1 + 0.1 * seed) for seed in (0, 1, 2)) / 3  # final (epoch 4) test acc of the 3 seeds
    assert pg.locator("#cell-0-0").inner_text() == f"{mean:.3g}"
    assert errors == []
