"""`/openapi.json` describes exactly the routes the app serves, and `/docs` renders it in a browser."""

from __future__ import annotations

import asyncio
import json
import random
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate
from pydantic import ValidationError

from export_service.app.openapi import openapi_document
from export_service.app.schemas import DATE_KEY_PATTERN, CreateExport
from export_service.filters import FILTERABLE_TYPES
from tests.support.app import app_services, auth
from tests.support.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.support.data import CAMPAIGN, add_campaign

Client = TestClient[Any, Any]
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def documented_operations() -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def example_url(path: str, operation: dict[str, Any]) -> str:
    for param in operation.get("parameters", ()):
        if param["in"] == "path":
            path = path.replace("{" + param["name"] + "}", param["example"])
    return path


def test_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    validate(document)
    schemas = document["components"]["schemas"]
    assert {"CreateExport", "ExportView", "ExportList", "CcpaResult", "ErrorBody"} <= set(schemas)
    # Every reference resolves inside the document.
    refs = set(
        re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', str(document).replace("'", '"'))
    )
    assert refs <= set(schemas)


async def test_every_served_route_is_documented_and_nothing_else(client: Client) -> None:
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None and route.method.lower() in HTTP_METHODS
    }
    assert served == documented_operations()


async def test_documented_security_matches_what_the_routes_enforce(client: Client) -> None:
    """Without a token, a route answers 401 exactly when the document says it needs bearerAuth."""
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            secured = operation["security"] == [{"bearerAuth": []}]
            assert secured or operation["security"] == []
            resp = await client.request(method, example_url(path, operation))
            assert (resp.status == 401) is secured, (method, path, resp.status)
            assert str(resp.status) in operation["responses"], (method, path, resp.status)


async def test_documented_constraints_match_the_models(client: Client) -> None:
    document = openapi_document()
    listing = document["paths"]["/campaigns/{campaignId}/exports"]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert params["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 500,
        "default": 50,
    }
    assert params["offset"]["schema"]["minimum"] == 0
    assert params["exportType"]["schema"] == {"$ref": "#/components/schemas/ExportType"}
    assert params["campaignId"]["schema"]["pattern"] == r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
    assert len(document["components"]["schemas"]["ExportType"]["enum"]) == 15
    # The published limits are the enforced ones: just inside passes, just outside is a 400.
    await add_campaign(app_services(client).db)
    for query, status in (({"limit": "500"}, 200), ({"limit": "501"}, 400), ({"limit": "1"}, 200),
                          ({"limit": "0"}, 400), ({"offset": "0"}, 200), ({"offset": "-1"}, 400)):  # fmt: skip
        resp = await client.get(
            f"/campaigns/{CAMPAIGN}/exports", params=query, headers=auth([CAMPAIGN])
        )
        assert resp.status == status, query


def test_published_date_key_pattern_is_exactly_the_validator() -> None:
    pattern = re.compile(DATE_KEY_PATTERN)
    rng = random.Random(7)
    years = [1, 4, 99, 100, 400, 1900, 2000, 2024, 2026, 2100, 9999]
    years += rng.sample(range(1, 10000), 40)
    candidates = [f"{y:04d}{m:02d}{d:02d}" for y in years for m in range(14) for d in range(33)]
    candidates += ["00000101", "00000229", "2026112", "202611230", "2026-1-23", "٢٠٢٦١١٢٣"]
    for value in candidates:
        try:
            datetime.strptime(value, "%Y%m%d")
            real = len(value) == 8 and value.isascii()
        except ValueError:
            real = False
        try:
            CreateExport.model_validate_json(
                json.dumps({"exportType": "codeWaves", "dateKey": value})
            )
            accepted = True
        except ValidationError:
            accepted = False
        assert accepted is real, value
        assert bool(pattern.fullmatch(value)) is real, value


async def test_openapi_json_is_served_without_auth(client: Client) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == openapi_document()


async def test_docs_page_is_static_html_naming_every_operation(client: Client) -> None:
    resp = await client.get("/docs")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    page = await resp.text()
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert rendered_operations(page) == documented_operations()
    # Examples name the address the page was read from.
    assert f"curl -s &#x27;{client.make_url('/heartbeat')}&#x27;" in page


def rendered_operations(page: str) -> set[tuple[str, str]]:
    return set(
        re.findall(
            r'<h2><span class="method (\w+)">\w+</span><span class="path">([^<]+)</span>', page
        )
    )


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian chromium is not installed (`apt-get install chromium`; .ci/run installs it)",
)
async def test_docs_page_renders_every_route_in_headless_chromium(
    client: Client, tmp_path: Path
) -> None:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
        str(client.make_url("/docs")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    dom = out.decode()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert rendered_operations(dom) == documented_operations(), dom[:2000]
    assert "<title>export-service" in dom
    for schema in ("CreateExport", "ExportView", "ErrorBody", "CcpaResult"):
        assert f'id="schema-{schema}"' in dom


def test_documented_filters_name_exactly_the_types_that_take_them() -> None:
    # contract §12: every type that reads entries, the joined ones included; not codes, scoring.
    described = openapi_document()["components"]["schemas"]["CreateExport"]["properties"]
    listed = described["filters"]["description"].split(":", 1)[1].strip(" .").split(", ")
    assert set(listed) == {t.value for t in FILTERABLE_TYPES}
    assert {"codeAssignments", "codeWaves", "waitlist"} <= set(listed)
    assert not {"codes", "scoring"} & set(listed)
