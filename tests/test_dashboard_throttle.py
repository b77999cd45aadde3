"""The sweep page in headless Chromium: a stream of events refetches state.json at most about once per 2.5 s."""
from __future__ import annotations

import pytest

from nc_core.db import events_repo
from nc_core.db.session import session_scope
from test_dashboard import browser, browser_test, open_live_sweep_page, page  # noqa: F401 - the browser and page fixtures
from test_plots import seed_sweep

pytestmark = [pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


@browser_test
def test_a_running_sweeps_events_refetch_its_state_at_most_every_few_seconds(page, db_url: str) -> None:  # noqa: ANN001, F811
    pg, url, errors = page
    sid, runs = seed_sweep(db_url, statuses={0: "running"})
    requests = open_live_sweep_page(pg, url, sid)
    began = pg.evaluate("Date.now()")
    for step in range(30):  # a progress event every 300 ms for 9 s (the stream delivers them every 0.5 s)
        with session_scope(db_url) as s:
            events_repo.append_event(s, "progress", sid, runs[0], {"step": step})
        pg.wait_for_timeout(300)
    pg.wait_for_timeout(3000)  # the last throttled fetch is due
    elapsed_ms = pg.evaluate("Date.now()") - began
    fetches = [u for u in requests if "state.json" in u]
    # one per 2.5 s, and one of the 10 s fallback poll; was one per delivery (a 300 ms debounce): ~20
    assert 2 <= len(fetches) <= elapsed_ms // 2500 + 2, (len(fetches), elapsed_ms)
    assert errors == []
