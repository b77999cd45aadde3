"""The OpenAPI document: bounds as JSON Schema keywords, the media types of the PNG and SSE routes, and the error
responses each route can give."""
from __future__ import annotations

from typing import Any, Iterator

import pytest
from pydantic import ValidationError

from nc_core.spec import RunSpec
from nc_core.sweep import SweepSpec

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the document does not depend on the database
PNG_ROUTES = ("/sweeps/{sweep_id}/plots/dynamics.png", "/sweeps/{sweep_id}/plots/heatmap.png",
              "/runs/{run_id}/plots/curves.png", "/runs/{run_id}/plots/margins.png")


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}/{i}")


@SQLITE
def test_bounds_are_json_schema_keywords(app_client):
    doc = app_client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    bad = [path for path, node in walk(schemas) if node.get("type") in ("integer", "number")
           and {"ge", "le", "gt", "lt"} & set(node)]
    assert not bad, bad  # pydantic's names, not JSON Schema's
    int32 = {"type": "integer", "minimum": -2**31, "maximum": 2**31 - 1}
    assert schemas["SweepSpec"]["properties"]["seeds"]["items"] == int32
    assert schemas["ExtendRequest"]["properties"]["seeds"]["items"] == int32
    max_runs = schemas["SweepSpec"]["properties"]["max_runs"]
    assert (max_runs["minimum"], max_runs["maximum"], max_runs["default"]) == (1, 2**31 - 1, 1000)
    epochs = schemas["ValidateRequest"]["properties"]["epochs"]["anyOf"][0]["items"]
    assert epochs == {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
    optim = RunSpec.model_json_schema()["$defs"]["OptimSpec"]["properties"]  # a run spec's bounds alike
    assert (optim["momentum"]["minimum"], optim["momentum"]["exclusiveMaximum"]) == (0, 1)
    assert optim["lr"]["exclusiveMinimum"] == 0 and not [p for p, n in walk(RunSpec.model_json_schema())
                                                         if {"ge", "le", "gt", "lt"} & set(n)]


def test_the_bounds_validate_as_before():
    def messages(**fields: Any) -> list[tuple[str, str]]:
        with pytest.raises(ValidationError) as info:
            SweepSpec.model_validate({"name": "s", **fields})
        return [(".".join(map(str, e["loc"])), e["msg"]) for e in info.value.errors()]

    assert messages(max_runs=0) == [("max_runs", "Input should be greater than or equal to 1")]
    assert messages(max_runs=2**31) == [("max_runs", "Input should be less than or equal to 2147483647")]
    assert messages(seeds=[True]) == [("seeds.0", "Value error, expected a number, got the boolean true")]
    assert messages(seeds=[-2**31 - 1]) == [("seeds.0", "Input should be greater than or equal to -2147483648")]
    assert SweepSpec.model_validate({"name": "s", "seeds": ["3"], "max_runs": "7"}).max_runs == 7


@SQLITE
def test_routes_declare_their_media_types_and_errors(app_client):
    paths = app_client.get("/openapi.json").json()["paths"]
    events = paths["/events"]["get"]["responses"]
    assert list(events["200"]["content"]) == ["text/event-stream"]
    assert {"404", "422", "503"} <= set(events)
    for route in PNG_ROUTES:
        responses = paths[route]["get"]["responses"]
        assert list(responses["200"]["content"]) == ["image/png"], route
        assert {"404", "422", "503"} <= set(responses), route
    expected = {("/sweeps", "post"): {"401", "403", "422", "503"},
                ("/sweeps/{sweep_id}", "get"): {"404", "422", "503"},
                ("/sweeps/{sweep_id}/retry", "post"): {"401", "403", "404", "409", "422", "503"},
                ("/runs/{run_id}/cancel", "post"): {"404", "409"},
                ("/runs/{run_id}/validate", "post"): {"404", "409", "422"},
                ("/sweeps/{sweep_id}/results", "get"): {"404", "422", "503"}}
    for (route, method), codes in expected.items():
        assert codes <= set(paths[route][method]["responses"]), (route, method)
    item = app_client.get("/openapi.json").json()["components"]["schemas"]["ErrorItem"]
    assert set(item["required"]) == {"loc", "msg", "type", "field"}


@SQLITE
def test_the_docs_offer_sweep_bodies_that_submit_as_pasted(app_client):
    # without examples, /docs' "Try it out" pre-filled {"grid": {"additionalProp1": [null]}, …}: four 422 items
    body = app_client.get("/openapi.json").json()["paths"]["/sweeps"]["post"]["requestBody"]
    examples = body["content"]["application/json"]["examples"]
    assert len(examples) >= 2 and all(e["summary"] for e in examples.values())
    for name, example in examples.items():
        resp = app_client.post("/sweeps", json=example["value"])
        assert resp.status_code == 201 and resp.json()["runs"] > 0, (name, resp.text)
    fields = app_client.get("/openapi.json").json()["components"]["schemas"]["SweepSpec"]["properties"]
    assert all(fields[f].get("description") for f in ("base", "grid", "zip", "seeds", "max_runs")), fields


@SQLITE
def test_the_document_lists_what_each_route_can_answer_and_says_what_it_does(app_client):
    doc = app_client.get("/openapi.json").json()
    paths = doc["paths"]
    for route in ("/runs", "/sweeps/{sweep_id}/results", "/events", *PNG_ROUTES):  # reads: 401 under AUTH_READS
        assert "401" in paths[route]["get"]["responses"], route
    assert "503" in paths["/readyz"]["get"]["responses"]  # not ready, naming the failed checks
    assert "NCSWEEP_MAX_EVENT_STREAMS" in paths["/events"]["get"]["responses"]["503"]["description"]
    for route in ("/sweeps", "/sweeps/{sweep_id}/extend", "/sweeps/{sweep_id}/prune", "/runs/{run_id}/validate"):
        assert "413" in paths[route]["post"]["responses"], route  # a body above NCSWEEP_MAX_BODY_BYTES
    assert all(paths[route]["get"].get("description") for route in PNG_ROUTES)  # were empty
    seeds = doc["components"]["schemas"]["SweepSpec"]["properties"]["seeds"]
    assert "default [0]" in seeds["description"]  # a default_factory's value is not in the schema
