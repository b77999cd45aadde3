"""HTTP client of the ncsweep API for the CLI (httpx; readable errors, no tracebacks)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import httpx

from nc_core.settings import Settings
from nc_core.sweep_errors import field_path


class ApiError(Exception):
    """An error answer of the API: HTTP status, message and (when the API names one) the field; ``errors``
    holds every (field, message) of a 422 that lists several (a sweep with many bad values)."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 errors: list[tuple[str | None, str]] | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.status, self.message, self.field = status, message, field
        self.errors = errors or [(field, message)]

    def lines(self) -> list[str]:
        """What the CLI prints: one line, or a count then one indented 'field: message' line per problem."""
        if len(self.errors) == 1:
            return [f"HTTP {self.status}: {self.message}" + (f" (field: {self.field})" if self.field else "")]
        return [f"HTTP {self.status}: {len(self.errors)} problems:"] + [
            f"  {field}: {msg}" if field else f"  {msg}" for field, msg in self.errors]


class Unreachable(Exception):
    """The API did not answer (connection refused, DNS, timeout)."""

    def __init__(self, url: str, reason: str = ""):
        super().__init__(f"cannot reach the ncsweep API at {url}: is `ncsweep up` running?"
                         + (f" ({reason})" if reason else ""))
        self.url = url


def resolve_token(settings: Settings) -> str | None:
    """settings.token (the CLI's --token, else NCSWEEP_TOKEN, which Settings reads), else the first line of
    <home>/token, else None."""
    token = settings.token or os.environ.get("NCSWEEP_TOKEN")
    if token:
        return token.strip()
    path = Path(settings.home).expanduser() / "token"
    if path.is_file():
        text = path.read_text().strip()
        return text.splitlines()[0].strip() if text else None
    return None


def resolve_api_url(settings: Settings) -> str:
    """NCSWEEP_API_URL (settings.api_url), else <home>/api_url written by `ncsweep up`, else host:port."""
    return _api_url(settings)[0]


def _api_url(settings: Settings) -> tuple[str, bool]:
    """(the API's URL, whether the user named it: NCSWEEP_API_URL or --api, not a remembered or default one)."""
    if settings.api_url:
        return settings.api_url, True
    path = Path(settings.home).expanduser() / "api_url"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip().splitlines()[0], False
    return settings.resolved_api_url(), False


def _error_from(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:  # not the API's JSON (a proxy's or another program's page): one line of it
        return ApiError(response.status_code, " ".join(response.text.split())[:200] or response.reason_phrase)
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list) and detail:
        items = [item if isinstance(item, dict) else {"msg": str(item)} for item in detail]
        errors = [(item.get("field") or _loc_field(item.get("loc") or []), str(item.get("msg", item)))
                  for item in items]
        more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
        return ApiError(response.status_code, errors[0][1] + more, errors[0][0], errors)
    if isinstance(detail, dict):
        return ApiError(response.status_code, str(detail.get("message") or detail.get("msg") or detail),
                        detail.get("field"))
    return ApiError(response.status_code, str(detail))


def _loc_field(loc: list) -> str | None:
    """A 422 item's field from its loc, without the request part it starts with: ['query', 'loss', 'name'] →
    'loss.name' (an API that does not send the item's "field")."""
    parts = loc[1:] if loc and loc[0] in ("body", "query", "path", "header", "cookie") else loc
    return field_path(parts) or None


def _series_rows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metric series as GET /runs/{id}/metrics and GET /sweeps/{id}/metrics give them, as flat rows [{epoch,
    split, key, value, note, metric_version}]; ``note`` says why a null value is undefined, where the metric
    suite did."""
    return [{"epoch": e, "split": s["split"], "key": s["key"], "value": v, "note": s.get("notes", {}).get(str(e)),
             "metric_version": ver}
            for s in series  # an API older than `versions` (metric version 2): None
            for e, v, ver in zip(s["epochs"], s["values"], s.get("versions") or [None] * len(s["epochs"]))]


class Client:
    """Thin wrapper over the REST endpoints; every method returns decoded JSON (or bytes for PNGs)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0, *, verify: bool = False):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"API URL {base_url!r}: expected http://HOST:PORT or https://HOST:PORT, e.g. "
                             "http://127.0.0.1:8765 (--api or NCSWEEP_API_URL)")
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self._unverified = verify and bool(token)  # a token goes only to a server that answers as ncsweep

    @classmethod
    def from_settings(cls, settings: Settings) -> "Client":
        url, named = _api_url(settings)
        return cls(url, resolve_token(settings), verify=not named)

    def _verify(self) -> None:
        """GET /healthz without the token: an answer without ncsweep's identity header is another program on a
        port a stopped stack left in <home>/api_url (or the default port), which must not get the token."""
        from service.identity import HEADER, VALUE

        try:
            answer = httpx.get(f"{self.base_url}/healthz", timeout=self.http.timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise Unreachable(self.base_url) from None
        except httpx.HTTPError as exc:
            raise Unreachable(self.base_url, f"{type(exc).__name__}: {exc}") from None
        if answer.headers.get(HEADER) != VALUE:
            raise Unreachable(self.base_url, "something answers there, but not the ncsweep API: a stack that "
                                             "stopped left its address; start it, or set NCSWEEP_API_URL")
        self._unverified = False

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._unverified:
            self._verify()
        try:
            response = self.http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise Unreachable(self.base_url) from None
        except httpx.TimeoutException as exc:
            raise Unreachable(self.base_url, f"timed out: {type(exc).__name__}") from None
        except (httpx.TransportError, httpx.InvalidURL) as exc:  # a bad host name, a protocol error, ...
            raise Unreachable(self.base_url, f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {}).json()

    # -- sweeps and runs -------------------------------------------------------------------------
    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.post("/sweeps", spec)

    def sweep(self, sweep_id: int) -> dict[str, Any]:
        return self.get(f"/sweeps/{sweep_id}")

    def sweeps(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.get("/sweeps", limit=limit)["items"]

    def iter_runs(self, sweep_id: int | None = None, status: str | None = None,
                  filters: list[tuple[str, str]] | None = None, page: int = 500) -> Iterator[dict]:
        """Every matching run, page by page; `filters` are (spec path, value) pairs, e.g. [("loss.name", "mse")],
        a repeated path meaning any of its values."""
        for body in self._run_pages(sweep_id, status, filters, page):
            yield from body["items"]

    def first_runs(self, limit: int, sweep_id: int | None = None, status: str | None = None,
                   filters: list[tuple[str, str]] | None = None, kind: str | None = None) -> tuple[list[dict], int]:
        """The first `limit` matching runs (by id) and how many match in all (the API's `total`); `kind`: only
        train, validate or ufm jobs."""
        rows: list[dict] = []
        total = 0
        for body in self._run_pages(sweep_id, status, filters, min(500, max(1, limit)), kind):
            rows += body["items"]
            total = body["total"]
            if len(rows) >= limit:
                break
        return rows[:limit], max(total, len(rows[:limit]))

    def _run_pages(self, sweep_id: int | None, status: str | None, filters: list[tuple[str, str]] | None,
                   page: int, kind: str | None = None) -> Iterator[dict]:
        """GET /runs bodies ({total, items}) page by page until every matching run came."""
        pairs = list(filters or [])
        offset = 0
        while True:
            fixed = {"sweep_id": sweep_id, "status": status, "kind": kind, "limit": page, "offset": offset}
            params = [(k, v) for k, v in fixed.items() if v is not None] + pairs
            body = self.request("GET", "/runs", params=params).json()
            yield body
            offset += len(body["items"])
            if not body["items"] or offset >= body["total"]:
                return

    def run(self, run_id: int) -> dict[str, Any]:
        return self.get(f"/runs/{run_id}")

    def cancel(self, sweep_id: int | None = None, run_id: int | None = None) -> dict[str, Any]:
        return self.post(f"/runs/{run_id}/cancel" if run_id is not None else f"/sweeps/{sweep_id}/cancel")

    def retry(self, sweep_id: int | None = None, run_id: int | None = None) -> dict[str, Any]:
        return self.post(f"/runs/{run_id}/retry" if run_id is not None else f"/sweeps/{sweep_id}/retry")

    def delete_sweep(self, sweep_id: int) -> dict[str, Any]:
        """DELETE /sweeps/{id}: the sweep, its rows and its runs' folders (what went, bytes freed); a big sweep's
        files take a while, hence the longer timeout."""
        return self.request("DELETE", f"/sweeps/{sweep_id}", timeout=600).json()

    def prune(self, sweep_id: int, keep_last: int) -> dict[str, Any]:
        """POST /sweeps/{id}/prune: keep the newest ``keep_last`` checkpoints of each finished run."""
        return self.request("POST", f"/sweeps/{sweep_id}/prune", json={"keep_last": keep_last}, timeout=600).json()

    # -- metrics, workers, plots -----------------------------------------------------------------
    def results(self, sweep_id: int, group_by: list[str] | None = None, keys: list[str] | None = None,
                split: str | None = None, epoch: str | int | None = None,
                filters: list[tuple[str, str]] | None = None) -> Any:
        """GET /sweeps/{id}/results; ``filters``: (spec path, value) pairs, e.g. [("loss.name", "mse")], as
        iter_runs takes them (a repeated path: any of its values)."""
        fixed = {"group_by": ",".join(group_by) if group_by else None, "keys": ",".join(keys) if keys else None,
                 "split": split, "epoch": None if epoch is None else str(epoch)}
        params = [(k, v) for k, v in fixed.items() if v is not None] + list(filters or [])
        return self.request("GET", f"/sweeps/{sweep_id}/results", params=params).json()

    def run_metrics(self, run_id: int, keys: list[str] | None = None) -> list[dict[str, Any]]:
        """Flat metric rows [{epoch, split, key, value, note, metric_version}] of one run (from its series; only
        ``keys`` if given); ``note`` says why a null value is undefined, where the metric suite did."""
        return _series_rows(self.get(f"/runs/{run_id}/metrics", keys=",".join(keys) if keys else None)
                            .get("series", []))

    def sweep_metrics(self, sweep_id: int, after_run: int = 0, runs: int = 500, max_rows: int | None = None,
                      keys: list[str] | None = None) -> tuple[list[tuple[int, list[dict[str, Any]]]], int | None]:
        """One page of GET /sweeps/{id}/metrics: ([(run id, its rows as run_metrics gives them)] for each run
        answered, by id: the sweep's runs after ``after_run``, at most ``runs`` (≤ 500), fewer past the API's
        row budget (``max_rows``, ≤ 100,000), and the ``after_run`` of the next page (None: no runs follow)."""
        body = self.get(f"/sweeps/{sweep_id}/metrics", after_run=after_run, runs=runs, max_rows=max_rows,
                        keys=",".join(keys) if keys else None)
        by_run: dict[int, list[dict[str, Any]]] = {rid: [] for rid in body["run_ids"]}
        for s in body["series"]:
            by_run[s["run_id"]] += _series_rows([s])
        return list(by_run.items()), body["next_after_run"]

    def workers(self, every: bool = False) -> list[dict[str, Any]]:
        return self.get("/workers", all="true") if every else self.get("/workers")

    def png(self, path: str, **params: Any) -> bytes:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).content
