"""The CLI's token goes only to a server that answers as the ncsweep API when the address is remembered
(<home>/api_url) or the default; another program on that port gets no token and the user one line."""
from __future__ import annotations

import http.server
import threading
from typing import Iterator

import pytest

from nc_core.settings import Settings
from service.client import Client, Unreachable
from test_events import serve



@pytest.fixture
def other_program() -> Iterator[tuple[str, list[str]]]:
    """A plain HTTP server (python -m http.server's kind) recording the Authorization headers it is sent."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization") or "")
            body = b"<html><head><title>Error response</title></head>\n<body><h1>Error 404</h1></body></html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def _home(tmp_path, url: str) -> Settings:  # noqa: ANN001
    (tmp_path / "api_url").write_text(url + "\n")
    (tmp_path / "token").write_text("secret-admin-token\n")
    return Settings(home=tmp_path, api_url="", token="")


def test_a_remembered_address_now_served_by_another_program_gets_no_token(tmp_path, other_program, monkeypatch):  # noqa: ANN001
    monkeypatch.delenv("NCSWEEP_TOKEN", raising=False)
    url, seen = other_program
    client = Client.from_settings(_home(tmp_path, url))
    with pytest.raises(Unreachable, match="something answers there, but not the ncsweep API"):
        client.get("/runs")
    assert all("secret-admin-token" not in h for h in seen) and seen  # before: every request carried it


def test_a_page_that_is_not_the_apis_json_is_one_line(other_program):  # noqa: ANN001
    from service.client import ApiError

    url, _ = other_program
    with pytest.raises(ApiError) as caught:
        Client(url).get("/runs")  # a URL the user named: no check, the answer is shown
    assert caught.value.lines() == ["HTTP 404: <html><head><title>Error response</title></head> <body><h1>Error 404"
                                    "</h1></body></html>"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_api_itself_is_recognised_and_gets_the_token(tmp_path, app, monkeypatch):  # noqa: ANN001
    monkeypatch.delenv("NCSWEEP_TOKEN", raising=False)
    with serve(app) as url:
        client = Client.from_settings(_home(tmp_path, url))
        answer = client.request("GET", "/runs")
    assert answer.headers["x-ncsweep-api"] == "1" and answer.status_code == 200


def test_the_token_option_wins_over_the_environment(other_program, monkeypatch, capsys):  # noqa: ANN001
    from service.cli import main

    url, seen = other_program
    monkeypatch.setenv("NCSWEEP_TOKEN", "from-env")
    assert main(["--api", url, "--token", "from-flag", "runs"]) == 1  # the other program's 404: one line
    assert main(["--api", url, "runs"]) == 1
    assert seen == ["Bearer from-flag", "Bearer from-env"]  # before: --token was ignored while NCSWEEP_TOKEN was set
    capsys.readouterr()
