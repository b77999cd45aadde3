"""The sweep page in headless Chromium: a stream of events refetches state.json at most once per 2.5 s of the
page's (fake) clock, the last of a burst included."""
from __future__ import annotations

import pytest

from nc_core.db import events_repo
from nc_core.db.session import session_scope
from test_dashboard import browser, browser_test, open_live_sweep_page, page  # noqa: F401 - the browser and page fixtures
from test_plots import seed_sweep

pytestmark = [pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]
# records the page time of each event delivered and of each state.json request (the page's code is unchanged)
RECORD = """window.__events = []; window.__fetches = [];
const addListener = EventSource.prototype.addEventListener;
EventSource.prototype.addEventListener = function (type, fn, opts) {
  return addListener.call(this, type, (e) => { window.__events.push(Date.now()); fn(e); }, opts);
};
const fetchReal = window.fetch;
window.fetch = function (url, opts) {
  if (String(url).includes("state.json")) window.__fetches.push(Date.now());
  return fetchReal.call(this, url, opts);
};"""


@browser_test
def test_a_running_sweeps_events_refetch_its_state_at_most_every_few_seconds(page, db_url: str) -> None:  # noqa: ANN001, F811
    pg, url, errors = page
    sid, runs = seed_sweep(db_url, statuses={0: "running"})
    pg.add_init_script(RECORD)
    pg.clock.install()
    open_live_sweep_page(pg, url, sid)
    pg.clock.pause_at(pg.evaluate("Date.now()") / 1000 + 1)  # (seconds) from here the page time moves only when told
    pg.evaluate("window.__fetches.length = 0")
    for step in range(30):  # a progress event every 300 ms of page time for 9 s
        with session_scope(db_url) as s:
            events_repo.append_event(s, "progress", sid, runs[0], {"step": step})
        pg.wait_for_function(f"window.__events.length >= {step + 1}", timeout=20_000)  # delivered
        pg.clock.run_for(300)
    last_event = pg.evaluate("window.__events[window.__events.length - 1]")
    pg.clock.run_for(3000)  # the last throttled fetch is due
    fetches = pg.evaluate("window.__fetches")
    gaps = [b - a for a, b in zip(fetches, fetches[1:])]
    # one per 2.5 s (was one per delivery, a 300 ms debounce: ~30), and one after the last event of the burst
    assert len(fetches) >= 4 and all(gap >= 2500 for gap in gaps), fetches
    assert fetches[-1] >= last_event, (fetches, last_event)
    assert errors == []
