"""NCSWEEP_AUTH_READS: reads need a token of any scope (header, or the dashboard's cookie); probes stay open."""
from __future__ import annotations

import pytest
from starlette.testclient import TestClient

READS = ("/sweeps", "/runs", "/workers", "/metrics", "/ui/sweeps.json", "/ui/workers.json")


@pytest.fixture
def guarded(settings, enqueuer):  # noqa: ANN001, ANN201
    from service.app import create_app

    settings.auth_reads = True
    with TestClient(create_app(settings, enqueuer=enqueuer, broker_check=lambda: None),
                    raise_server_exceptions=False) as client:
        yield client


def test_reads_need_a_token_of_any_scope_when_asked(guarded, read_token, write_token):
    for path in READS:
        assert guarded.get(path).status_code == 401, path
        for token in (read_token, write_token):
            assert guarded.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200, path
        assert guarded.get(path, headers={"Authorization": "Bearer ncs_wrong"}).status_code == 401, path
    for path in ("/healthz", "/readyz", "/docs", "/ui/static/style.css"):  # probes, API docs, static files
        assert guarded.get(path).status_code == 200, path


def test_the_dashboard_asks_for_a_token_and_keeps_it_in_a_cookie_for_reads_only(guarded, read_token, write_token,
                                                                                row_counts):
    page = guarded.get("/ui")
    assert page.status_code == 401 and "A token is needed" in page.text and 'type="password"' in page.text
    guarded.cookies.set("ncsweep_token", read_token)
    assert guarded.get("/ui").status_code == 200 and "A token is needed" not in guarded.get("/ui").text
    assert guarded.get("/ui/sweeps.json").status_code == 200 and guarded.get("/sweeps").status_code == 200
    guarded.cookies.set("ncsweep_token", write_token)
    before = row_counts()
    body = {"name": "s", "base": {"epochs": 1, "data": {"name": "gaussian"}}}
    assert guarded.post("/sweeps", json=body).status_code == 401  # a write never takes the cookie (no CSRF)
    assert row_counts() == before


def test_reads_are_open_by_default(anon_client):
    for path in READS:
        assert anon_client.get(path).status_code == 200, path
