"""Plot text is drawn as written: a '$' in an axis value is no mathtext that could fail a plot."""
from __future__ import annotations

import pytest

from nc_core.db.models import Run
from nc_core.db.session import session_scope
from test_plots import seed_sweep

pytestmark = [pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]

ODD = {"ce": r"/data/$\undefinedcmd{x}$", "mse": "/data/$x^{2}$"}


def test_dollar_signs_in_axis_values_are_drawn_literally(app_client, db_url):
    sid, runs = seed_sweep(db_url)
    with session_scope(db_url) as s:
        for rid in runs:
            run = s.get(Run, rid)
            run.grid = {**run.grid, "loss.name": ODD[run.grid["loss.name"]]}
    for path in ("heatmap.png?x=model.width&y=loss.name&key=acc&split=test",
                 "dynamics.png?group_by=loss.name",
                 r"heatmap.png?x=model.width&y=seed&key=acc&split=test&mode=diff_vs&ref=loss.name:/data/$x^{2}$"):
        resp = app_client.get(f"/sweeps/{sid}/plots/{path}")
        assert resp.status_code == 200 and resp.content[:8] == b"\x89PNG\r\n\x1a\n", (path, resp.text[:300])
    margins = app_client.get(f"/runs/{runs[0]}/plots/margins.png")
    assert margins.status_code == 200  # its own mathtext title still parses
