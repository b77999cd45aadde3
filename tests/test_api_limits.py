"""Out-of-range ids, offsets, epochs and NUL characters are 422 naming the parameter (never 500), both databases."""
from __future__ import annotations

import pytest

BIG, HUGE = 2**31, 2**63  # just past the 32-bit id columns (PostgreSQL); past SQLite's 64-bit integers
NUL = "must not contain NUL characters"
MAX_JSON_DEPTH = 64  # service.errors.MAX_JSON_DEPTH


@pytest.fixture
def sweep_id(app_client) -> int:  # noqa: ANN001
    body = {"name": "limits", "base": {"epochs": 2, "data": {"name": "gaussian"}},
            "grid": {"loss.name": ["ce", "mse"]}, "seeds": [0]}
    resp = app_client.post("/sweeps", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()["sweep_id"]


def assert_422(resp, field: str, says: str | None = None) -> None:  # noqa: ANN001
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert field in [d["field"] for d in detail], detail
    if says is not None:
        assert any(says in d["msg"] for d in detail if d["field"] == field), detail


@pytest.mark.parametrize("n", [0, BIG, HUGE])
@pytest.mark.parametrize("method, path, field", [
    ("get", "/runs/{n}", "run_id"), ("post", "/runs/{n}/cancel", "run_id"), ("post", "/runs/{n}/retry", "run_id"),
    ("get", "/runs/{n}/metrics", "run_id"), ("get", "/runs/{n}/distributions", "run_id"),
    ("get", "/runs/{n}/plots/curves.png", "run_id"), ("get", "/runs/{n}/plots/margins.png", "run_id"),
    ("get", "/sweeps/{n}", "sweep_id"), ("post", "/sweeps/{n}/cancel", "sweep_id"),
    ("post", "/sweeps/{n}/retry", "sweep_id"), ("get", "/sweeps/{n}/results", "sweep_id"),
    ("get", "/sweeps/{n}/plots/dynamics.png", "sweep_id"),
    ("get", "/ui/runs/{n}", "run_id"), ("get", "/ui/sweeps/{n}", "sweep_id"),
    ("get", "/ui/sweeps/{n}/state.json", "sweep_id"),
])
def test_out_of_range_path_ids_are_422(app_client, method, path, field, n):
    assert_422(getattr(app_client, method)(path.format(n=n)), field)


def test_out_of_range_ids_in_bodies_and_queries_are_422(app_client, sweep_id):
    assert_422(app_client.post(f"/sweeps/{HUGE}/extend", json={"seeds": [5]}), "sweep_id")
    assert_422(app_client.post(f"/runs/{BIG}/validate", json={}), "run_id")
    assert_422(app_client.get("/runs", params={"sweep_id": BIG}), "sweep_id", "less than or equal to 2147483647")
    assert_422(app_client.get("/runs", params={"sweep_id": HUGE}), "sweep_id")
    assert_422(app_client.get("/runs/1/distributions", params={"epoch": BIG}), "epoch")
    assert_422(app_client.get("/runs/1/distributions", params={"epoch": 0}), "epoch")
    # the largest id is a plain 404
    assert app_client.get(f"/runs/{BIG - 1}").json() == {"detail": f"run {BIG - 1} not found"}
    assert app_client.get(f"/sweeps/{BIG - 1}").status_code == 404
    assert app_client.get("/runs", params={"sweep_id": BIG - 1}).json()["total"] == 0


@pytest.mark.parametrize("path", ["/runs", "/sweeps"])
def test_offset_and_limit_are_bounded(app_client, sweep_id, path):
    for offset in (BIG, HUGE, -1):
        assert_422(app_client.get(path, params={"offset": offset}), "offset")
    for limit in (0, 1001, HUGE):
        assert_422(app_client.get(path, params={"limit": limit}), "limit")
    page = app_client.get(path, params={"offset": BIG - 1, "limit": 1000}).json()
    assert page["items"] == [] and page["offset"] == BIG - 1


def test_events_cursor_and_sweep_are_bounded(app_client, sweep_id, monkeypatch):
    from service.routers import events

    async def fake_stream(request, url, cursor, sweep_id, **_):  # noqa: ANN001, ANN003, ANN202
        yield f"{cursor} {sweep_id}"
    monkeypatch.setattr(events, "event_stream", fake_stream)
    assert_422(app_client.get("/events", params={"sweep_id": BIG}), "sweep_id")
    assert_422(app_client.get("/events", params={"since": 2**64}), "since")
    assert app_client.get("/events", params={"since": 5, "sweep_id": sweep_id}).text == f"5 {sweep_id}"
    # an out-of-range Last-Event-ID is ignored like a malformed one: the stream starts at the newest event
    latest = app_client.get("/events", headers={"Last-Event-ID": "x"}).text
    assert app_client.get("/events", headers={"Last-Event-ID": str(2**64)}).text == latest
    assert app_client.get("/events", headers={"Last-Event-ID": "7"}).text == "7 None"


def test_nul_characters_are_422_naming_the_field(app_client, sweep_id, row_counts):
    before = row_counts()
    body = {"name": "a\x00b", "base": {"data": {"name": "gaussian"}}}
    assert_422(app_client.post("/sweeps", json=body), "name", NUL)
    assert_422(app_client.get("/runs", params={"loss.name": "a\x00b"}), "loss.name", NUL)
    assert_422(app_client.get("/runs", params={"model.width": "2\x00"}), "model.width", NUL)
    assert_422(app_client.get(f"/ui/sweeps/{sweep_id}/state.json", params={"key": "a\x00b"}), "key", NUL)
    assert_422(app_client.get(f"/ui/sweeps/{sweep_id}/state.json", params={"split": "te\x00st"}), "split", NUL)
    assert row_counts() == before


def test_booleans_are_not_integers_in_request_bodies(app_client, sweep_id, row_counts):
    before = row_counts()
    assert_422(app_client.post(f"/sweeps/{sweep_id}/extend", json={"seeds": [True]}), "seeds[0]", "boolean")
    assert_422(app_client.post(f"/sweeps/{sweep_id}/extend", json={"seeds": [BIG]}), "seeds[0]", f"got {BIG}")
    run_id = app_client.get("/runs", params={"sweep_id": sweep_id}).json()["items"][0]["id"]
    assert_422(app_client.post(f"/runs/{run_id}/validate", json={"epochs": [True]}), "epochs[0]", "boolean")
    assert_422(app_client.post(f"/runs/{run_id}/validate", json={"epochs": [0]}), "epochs[0]", "got 0")
    assert row_counts() == before
    assert app_client.post(f"/sweeps/{sweep_id}/extend", json={"seeds": [1]}).json()["added"] == 2


def test_a_body_not_sent_as_json_says_what_content_type_was_expected(app_client, sweep_id, row_counts):
    before = row_counts()
    body = '{"name": "x", "base": {"data": {"name": "gaussian"}}}'
    expected = "expected a JSON object body with content-type application/json, got "
    for headers, got in (({"content-type": "text/plain"}, "content-type 'text/plain'"), ({}, "no content-type header")):
        assert_422(app_client.post("/sweeps", content=body, headers=headers), "body", expected + got)
        assert_422(app_client.post(f"/sweeps/{sweep_id}/extend", content='{"seeds": [3]}', headers=headers), "body",
                   expected + got)
    json_type = {"content-type": "application/json"}
    assert_422(app_client.post("/sweeps", content="[1, 2]", headers=json_type), "body",
               "expected a JSON object, got an array: [1, 2]")
    assert_422(app_client.post("/sweeps", content="", headers=json_type), "body", expected + "an empty body")
    assert_422(app_client.post("/sweeps", content=b'{"name": "\xff"}', headers=json_type), "body",
               "expected a JSON object body in UTF-8, got a byte that is not UTF-8 at byte 10")
    assert row_counts() == before


def test_deeply_nested_json_is_422_saying_how_deep_it_may_be(app_client):
    json_type = {"content-type": "application/json"}
    for depth in (MAX_JSON_DEPTH + 1, 5000):
        resp = app_client.post("/sweeps", content="[" * depth + "]" * depth, headers=json_type)
        assert_422(resp, "body", f"expected JSON nested at most {MAX_JSON_DEPTH} levels deep, got deeper nesting "
                                 f"(level {MAX_JSON_DEPTH + 1} opens at byte {MAX_JSON_DEPTH})")
    brackets_in_a_string = '{"name": "' + "[" * 150 + '", "base": {"data": {"name": "gaussian"}}}'
    assert app_client.post("/sweeps", content=brackets_in_a_string, headers=json_type).status_code == 201
    assert_422(app_client.post("/sweeps", content="[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, headers=json_type),
               "body", "expected a JSON object, got an array")  # as deep as allowed: parsed, then validated
    deep_text = app_client.post("/sweeps", content="[" * 5000, headers={"content-type": "text/plain"})
    assert_422(deep_text, "body", "with content-type application/json, got content-type 'text/plain'")
