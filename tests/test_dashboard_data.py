"""The dashboard's data views through the test client (no browser): state.json labels, errors, metric keys and
validate jobs, a UFM sweep's split, the run view and page."""
from __future__ import annotations

import html
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from nc_core.db.models import Run, Sweep, WorkerSample
from nc_core.db.session import session_scope
from test_plots import add_validate_job, seed_sweep, seed_ufm_sweep

pytestmark = [pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


LONG_ERROR = ("Traceback (most recent call last):\n  File \"train.py\", line 9\nRuntimeError: "
              + "loss diverged again " * 8 + "for good")


@pytest.fixture
def client(app):  # noqa: ANN001, ANN201 - a TestClient on the app
    from starlette.testclient import TestClient

    with TestClient(app) as c:
        yield c


def test_sweep_state_json_labels_errors_metric_keys_and_validate_jobs(client, db_url: str) -> None:  # noqa: ANN001
    sid, runs = seed_sweep(db_url, statuses={**{i: "queued" for i in range(8)}, 3: "failed"})
    job = add_validate_job(db_url, runs[3])
    with session_scope(db_url) as s:  # one boolean axis: no column axis
        s.get(Sweep, sid).axes = ["data.shuffle"]
        for i, rid in enumerate(runs):
            s.get(Run, rid).grid = {"data.shuffle": i % 2 == 0}
        s.get(Run, runs[3]).error = LONG_ERROR
    state = client.get(f"/ui/sweeps/{sid}/state.json").json()
    assert (state["rows"], state["cols"]) == (["false", "true"], [""])  # JSON style, nothing for a missing axis
    assert state["runs"][0]["grid"] == {"data.shuffle": "true"}  # as the matrix writes it
    failed = state["runs"][3]
    assert failed["error_full"] == LONG_ERROR.splitlines()[-1]
    assert failed["error"].endswith("…") and len(failed["error"]) <= 120
    assert failed["error_full"].startswith(failed["error"][:-1]) and failed["error"][-2] != " "
    assert {"key": "acc", "split": "test"} in state["keys"]  # the dropdown's options, refreshed from here
    assert state["validate_runs"] == [{"id": job, "status": "succeeded", "parent_run_id": runs[3]}]
    assert (state["split"], state["heatmap"]) == ("test", {"key": "acc", "split": "test"})
    with session_scope(db_url) as s:
        s.get(Sweep, sid).axes = []  # seeds only
    state = client.get(f"/ui/sweeps/{sid}/state.json").json()
    assert (state["rows"], state["cols"]) == ([""], [""])


def test_a_ufm_sweep_page_uses_its_train_split(client, db_url: str) -> None:  # noqa: ANN001
    sid, _ = seed_ufm_sweep(db_url)
    with session_scope(db_url) as s:
        s.get(Sweep, sid).axes = ["ufm.lambda_w", "seed"]  # two axes: the page draws a heatmap
    state = client.get(f"/ui/sweeps/{sid}/state.json").json()
    assert (state["split"], state["heatmap"]) == ("train", {"key": "nc1", "split": "train"})
    assert client.get(f"/ui/sweeps/{sid}/state.json", params={"key": "nc1"}).json()["matrix"][0][0]["value"] == 1e-3
    page = client.get(f"/ui/sweeps/{sid}").text
    assert "key=nc1&split=train" in page and "split=test" not in page


def test_run_json_and_page_show_kind_parent_and_missing_telemetry(client, db_url: str) -> None:  # noqa: ANN001
    sid, runs = seed_sweep(db_url, statuses={1: "queued"})
    job = add_validate_job(db_url, runs[0])
    view = client.get(f"/ui/runs/{job}.json").json()
    assert (view["kind"], view["parent_run_id"], view["status"]) == ("validate", runs[0], "succeeded")
    assert view["finished"] is True
    assert view["unit"] == ["checkpoint", "ckpt/s"] and view["epoch"] == view["epochs_total"] == 4
    queued = client.get(f"/ui/runs/{runs[1]}.json").json()
    assert (queued["finished"], queued["attempt"], queued["max_attempts"], queued["worker"]) == (False, 0, 3, None)
    assert client.get("/ui/runs/999999.json").status_code == 404
    page = client.get(f"/ui/runs/{job}").text
    assert "validate job" in page and f'<a href="/ui/runs/{runs[0]}">run {runs[0]}</a>' in page
    assert "train run" in client.get(f"/ui/runs/{runs[0]}").text
    with session_scope(db_url) as s:  # telemetry without throughput: —, not 0
        s.add(WorkerSample(worker_name="gpu0@node1", run_id=runs[0], util_percent=50.0, memory_used=2**30))
    page = client.get(f"/ui/runs/{runs[0]}").text
    assert "mean — / peak — samples/s" in page and '<meta name="viewport"' in page


def test_run_page_shows_its_times_and_whole_spec(client, db_url: str) -> None:  # noqa: ANN001
    sid, runs = seed_sweep(db_url, statuses={0: "succeeded", 1: "running", 2: "queued"})
    t0 = datetime(2026, 11, 29, 10, 0, 0, tzinfo=timezone.utc)
    with session_scope(db_url) as s:
        done, running, queued = (s.get(Run, r) for r in runs[:3])
        done.created_at, done.started_at, done.finished_at = t0, t0 + timedelta(seconds=5), t0 + timedelta(seconds=130)
        started = datetime.now(timezone.utc) - timedelta(hours=1)
        running.created_at, running.started_at, running.finished_at = t0, started, None
        queued.created_at, queued.started_at, queued.finished_at = t0, None, None
        spec = dict(done.spec)
    view = client.get(f"/ui/runs/{runs[0]}.json").json()
    assert view["times"] == {"created_at": "2026-11-29 10:00:00", "started_at": "2026-11-29 10:00:05",
                             "finished_at": "2026-11-29 10:02:10", "elapsed_s": 125.0}
    page = client.get(f"/ui/runs/{runs[0]}").text
    assert "submitted 2026-11-29 10:00:00 UTC · started 2026-11-29 10:00:05 · finished 2026-11-29 10:02:10" in page
    assert "took 2m05s" in page
    shown = page.split('<details id="run-spec">', 1)[1].split("<pre>", 1)[1].split("</pre>", 1)[0]
    assert yaml.safe_load(html.unescape(shown)) == spec  # the whole spec, as stored
    asked = datetime.now(timezone.utc)
    live = client.get(f"/ui/runs/{runs[1]}.json").json()["times"]
    answered = datetime.now(timezone.utc)
    # running: from its start to the time of the request (was: any value in [0, 60), 0 included)
    assert live["finished_at"] is None and round((asked - started).total_seconds(), 1) <= live["elapsed_s"] \
        <= round((answered - started).total_seconds(), 1), (live, asked - started, answered - started)
    assert "running for" in client.get(f"/ui/runs/{runs[1]}").text
    assert client.get(f"/ui/runs/{runs[2]}.json").json()["times"] == {
        "created_at": "2026-11-29 10:00:00", "started_at": None, "finished_at": None, "elapsed_s": None}


def test_run_page_says_what_each_attempt_ran_with(client, db_url: str) -> None:  # noqa: ANN001
    sid, runs = seed_sweep(db_url, statuses={0: "succeeded", 1: "queued"})
    envs = [{"attempt": 1, "device": "cuda:0", "device_name": "NVIDIA H200", "threads": 8, "torch": "2.14.1", "host": "g"},
            {"attempt": 2, "device": "cpu", "device_name": "Xeon", "threads": 2, "torch": "2.14.1", "host": "c"}]
    with session_scope(db_url) as s:
        s.get(Run, runs[0]).environments = envs
    assert client.get(f"/ui/runs/{runs[0]}.json").json()["ran_with"] == (
        "attempt 1: cuda:0 (NVIDIA H200), 8 CPU threads, torch 2.14.1 on g\n"
        "attempt 2: cpu (Xeon), 2 CPU threads, torch 2.14.1 on c")
    assert 'id="run-environment"' in client.get(f"/ui/runs/{runs[0]}").text
    assert 'id="run-environment"' not in client.get(f"/ui/runs/{runs[1]}").text  # never started: nothing to say
