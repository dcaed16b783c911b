"""`/admin`: the admin console (contract §10), static files shipped in the package.

The page only calls the public API from the browser, so it needs nothing here but its files; the
header keeps it to its own origin: no inline script or style, nothing fetched from elsewhere.
"""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import web

admin_routes = web.RouteTableDef()

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files, and an upgrade must reach every open tab at its next load.
    "Cache-Control": "no-cache",
}
ASSETS = {
    "index.html": "text/html",
    "admin.js": "text/javascript",
    "admin.css": "text/css",
}


@functools.cache
def asset(name: str) -> bytes:
    return resources.files("export_service.app").joinpath("admin", name).read_bytes()


def _serve(name: str) -> web.Response:
    return web.Response(
        body=asset(name), content_type=ASSETS[name], charset="utf-8", headers=_HEADERS
    )


@admin_routes.get("/admin")
async def admin_page(request: web.Request) -> web.Response:
    return _serve("index.html")


@admin_routes.get("/admin/admin.js")
async def admin_script(request: web.Request) -> web.Response:
    return _serve("admin.js")


@admin_routes.get("/admin/admin.css")
async def admin_style(request: web.Request) -> web.Response:
    return _serve("admin.css")
