"""`/openapi.json` and `/docs`: public, read-only, served from memory."""

from __future__ import annotations

import functools
import json

from aiohttp import web

from export_service.app.docs_page import render_docs
from export_service.app.openapi import openapi_document

docs_routes = web.RouteTableDef()

# The page loads nothing: a browser that honours this header proves it (and so does the test).
_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


@functools.cache
def _document_json() -> bytes:
    return json.dumps(openapi_document(), indent=2).encode()


@docs_routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_document_json(), content_type="application/json")


@docs_routes.get("/docs")
async def docs(request: web.Request) -> web.Response:
    # Examples name the address the reader used, so they paste as they are.
    base_url = f"{request.scheme}://{request.host}"
    return web.Response(
        text=render_docs(openapi_document(), base_url),
        content_type="text/html",
        headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"},
    )
