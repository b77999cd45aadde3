"""/docs and /redoc render in a browser that can reach nothing but the API (no CDN)."""
from __future__ import annotations

import pytest

from test_dashboard import browser, browser_test, page  # noqa: F401 - the browser and page fixtures
from test_dashboard_data import client  # noqa: F401 - the fixture

pytestmark = [pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def test_the_docs_pages_name_only_this_server(client) -> None:  # noqa: ANN001, F811
    for path in ("/docs", "/redoc"):
        html = client.get(path).text
        assert "cdn" not in html.lower() and "https://" not in html, html
    js = client.get("/static-offline-docs/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 500_000


@browser_test
def test_swagger_ui_renders_every_endpoint_offline(page) -> None:  # noqa: ANN001, F811
    pg, url, errors = page
    outside: list[str] = []

    def only_local(route) -> None:  # noqa: ANN001 - playwright's Route
        if route.request.url.startswith(url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    pg.route("**/*", only_local)
    pg.goto(f"{url}/docs")
    pg.wait_for_selector(".opblock", timeout=30_000)
    assert pg.locator(".opblock-summary-path", has_text="/sweeps/{sweep_id}/results").count() >= 1
    assert pg.locator(".opblock").count() >= 20 and outside == [] and errors == []
