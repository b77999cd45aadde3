"""The dashboard says which matrix values include unfinished runs (as /results' unfinished_runs) and which epoch a
run's value is from: state.json's per-cell ``unfinished_runs`` and per-run ``value_epoch``, the page's * and titles."""
from __future__ import annotations

import pytest

from nc_core.db.models import Metric, Run
from nc_core.db.session import session_scope
from test_dashboard import browser, browser_test, page  # noqa: F401 - the fixtures
from test_dashboard_data import client  # noqa: F401 - the fixture
from test_plots import seed_sweep

pytestmark = [pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def seed_cancelled(url: str) -> tuple[int, list[int]]:
    """seed_sweep's 8 runs (4 epochs); run 0 (ce, width 32, seed 0) cancelled after epoch 2, run 3 (ce, width 64,
    seed 1) failed without any metric."""
    sid, runs = seed_sweep(url, statuses={0: "cancelled", 3: "failed"})
    with session_scope(url) as s:
        s.query(Metric).filter(Metric.run_id == runs[0], Metric.epoch > 2).delete()
        s.query(Metric).filter(Metric.run_id == runs[3]).delete()
        s.get(Run, runs[0]).epoch = 2
    return sid, runs


def test_state_json_says_which_values_are_unfinished_and_their_epoch(client, db_url: str) -> None:  # noqa: ANN001, F811
    sid, runs = seed_cancelled(db_url)
    state = client.get(f"/ui/sweeps/{sid}/state.json", params={"key": "acc", "split": "test"}).json()
    results = client.get(f"/sweeps/{sid}/results", params={"keys": "acc", "split": "test"}).json()["groups"]
    by_config = {(g["values"]["loss.name"], g["values"]["model.width"]): g for g in results}
    for i, loss in enumerate(state["rows"]):
        for j, width in enumerate(state["cols"]):
            cell, group = state["matrix"][i][j], by_config[(loss, int(width))]
            assert cell["unfinished_runs"] == group["unfinished_runs"], (loss, width)  # one definition
            assert cell["value"] == pytest.approx(group["metrics"]["acc"]["mean"])
    assert state["matrix"][0][0]["unfinished_runs"] == [runs[0]]
    assert state["matrix"][0][1]["unfinished_runs"] == []  # the failed run has no value: nothing mixed in
    rows = {r["id"]: r for r in state["runs"]}
    assert (rows[runs[0]]["value_epoch"], rows[runs[0]]["epoch"], rows[runs[0]]["epochs_total"]) == (2, 2, 4)
    assert rows[runs[1]]["value_epoch"] == 4 and rows[runs[3]]["value_epoch"] is None
    assert set(rows[runs[0]]) >= {"id", "status", "value", "epoch", "epochs_total", "progress"}  # as before
    by_status = client.get(f"/ui/sweeps/{sid}/state.json").json()  # no metric chosen: no values, no epochs
    assert all(c["unfinished_runs"] == [] for line in by_status["matrix"] for c in line)
    assert all(r["value_epoch"] is None for r in by_status["runs"])


@browser_test
def test_page_marks_unfinished_values_with_their_epoch(page, db_url: str) -> None:  # noqa: ANN001, F811
    pg, url, errors = page
    sid, runs = seed_cancelled(db_url)
    pg.goto(f"{url}/ui/sweeps/{sid}")
    pg.wait_for_selector("#matrix td.cell")
    assert "*" not in pg.locator("#matrix").inner_text()  # coloured by status: counts, no values
    pg.select_option("#colour-by", "acc|test")
    pg.wait_for_function("document.querySelector('#cell-0-0').style.background !== ''", timeout=10_000)
    cell = pg.locator("#cell-0-0")
    assert cell.inner_text().endswith("*") and cell.get_attribute("data-unfinished") == str(runs[0])
    assert f"run {runs[0]} epoch 2 of 4, cancelled" in cell.get_attribute("title")
    assert "includes unfinished runs" in cell.get_attribute("title")
    others = [pg.locator(f"#cell-{i}-{j}").inner_text() for i, j in ((0, 1), (1, 0), (1, 1))]
    assert not any(t.endswith("*") for t in others), others
    assert "includes unfinished runs" in pg.locator("#unfinished-note").inner_text()
    value = pg.locator(f'#runs tr[data-run="{runs[0]}"] td.value')
    assert value.inner_text().endswith("*") and value.get_attribute("title") == "epoch 2 of 4, cancelled"
    done = pg.locator(f'#runs tr[data-run="{runs[1]}"] td.value')
    assert "*" not in done.inner_text() and "." in done.inner_text() and done.get_attribute("title") is None
    assert pg.locator("#value-head").inner_text() == "acc [test]"
    assert errors == []
