"""The heatmap's diff_vs reference value matches an axis value however YAML spells it (8 / 8.0, true / True)."""
from __future__ import annotations

import numpy as np
import pytest

from test_plots import seed_sweep, sqlite_app_client  # noqa: F401 - the fixture


@pytest.mark.parametrize("spelling", ["64", "64.0", "6.4e1"])
def test_a_reference_value_matches_in_any_spelling_of_the_same_number(sqlite_app_client, spelling: str) -> None:
    from nc_core.db.session import session_scope
    from service.plots import heatmap_grids

    sid, _ = seed_sweep(sqlite_app_client.db_url, epochs=3)
    with session_scope(sqlite_app_client.db_url) as s:
        want = heatmap_grids(s, sid, "loss.name", "seed", "acc", "test", "diff_vs", "model.width:64")
        got = heatmap_grids(s, sid, "loss.name", "seed", "acc", "test", "diff_vs", f"model.width:{spelling}")
        assert [t for t, _ in got[2]] == [t for t, _ in want[2]] == ["|acc(64) − acc(32)| [test]"]
        assert np.array_equal(got[2][0][1], want[2][0][1])
        with pytest.raises(ValueError, match="no run has model.width=48"):
            heatmap_grids(s, sid, "loss.name", "seed", "acc", "test", "diff_vs", "model.width:48.0")
