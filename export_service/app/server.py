"""The HTTP server of every listener of the service (the API, the worker's `/metrics` port, tests).

aiohttp's parser refuses some requests before any handler or middleware runs (a request target
or a header field over its limit, malformed framing, a bad method), and answers them with a
`text/plain` 400 of its own. aiohttp 3.14 has no supported hook for that answer (aio-libs/aiohttp
#3287; #12925 routes parser errors through the middleware, in aiohttp 4): the connection handler's
public `handle_error` is overridden here instead, so such a request gets the API's error shape
like any other. `tests/test_bad_input.py` drives it over raw sockets, so an aiohttp upgrade that
changes this path fails there, not in production.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong

from export_service.app.errors import coded_error

log = structlog.get_logger(__name__)

# aiohttp's own limit for the request target (it counts the target, not the whole line) → 414.
MAX_REQUEST_TARGET_BYTES = 8190
# A header field, name and value → 431. It differs from the target's limit on purpose: aiohttp's
# `LineTooLong` carries only the limit it hit, and that is how the two are told apart.
MAX_HEADER_FIELD_BYTES = 8192
MAX_HEADERS = 128

_CODES = {400: "BadRequest", 414: "URITooLong", 431: "RequestHeaderFieldsTooLarge"}


def refused_status(exc: BaseException | None, status: int, max_target: int) -> int:
    """The status of a request aiohttp's parser refused: 414, 431 or what aiohttp said."""
    if isinstance(exc, LineTooLong):
        return 414 if exc.args[1] == max_target else 431
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        return 431
    return status


class JsonErrorsHandler(web.RequestHandler):
    """aiohttp's connection handler, answering what it refuses in the API's error shape."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        status = refused_status(exc, status, self.max_line_size)
        if status >= 500:
            log.error("request_failed", path=request.path, exc_info=exc)
        elif isinstance(exc, BadHttpMethod):
            # Non-HTTP traffic (a TLS hello, a port scan) on the port: noise, not news.
            log.debug("request_refused", status=status, error=type(exc).__name__)
        else:
            log.info("request_refused", status=status, error=type(exc).__name__)
        if request.writer.output_size > 0:
            # Part of another answer went out already: nothing can be said on this connection.
            raise ConnectionError("a response was sent already; no error answer is possible")
        code = _CODES.get(status, HTTPStatus(status).phrase.replace(" ", ""))
        # aiohttp's own message quotes the refused bytes (a header value may be a token): only
        # which limit was passed is said.
        detail = {
            414: f"the request target is over {self.max_line_size} bytes",
            431: f"a header field is over {self.max_field_size} bytes, or there are over "
            f"{self.max_headers} of them",
            400: "the request is not well-formed HTTP/1.1",
        }.get(status, HTTPStatus(status).description)
        response = coded_error(status, code, detail)
        response.force_close()
        return response


class _JsonErrorsServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        handler = super().__call__()
        # The same class with one method more (no slot added): aiohttp built it, with every
        # argument it was given.
        handler.__class__ = JsonErrorsHandler
        return handler


class ServiceRunner(web.AppRunner):
    """`web.AppRunner` with the service's parser limits and `JsonErrorsHandler` connections."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("max_line_size", MAX_REQUEST_TARGET_BYTES)
        kwargs.setdefault("max_field_size", MAX_HEADER_FIELD_BYTES)
        kwargs.setdefault("max_headers", MAX_HEADERS)
        kwargs.setdefault("access_log", None)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorsServer
        return server


@asynccontextmanager
async def listening(app: web.Application, host: str, port: int) -> AsyncIterator[int]:
    """Serve `app` while the block runs; yields the bound port (0 = any free one)."""
    runner = ServiceRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def serve(app: web.Application, host: str, port: int) -> None:
    """Serve `app` until SIGTERM or SIGINT, then clean it up (its `cleanup_ctx` included)."""

    async def main() -> None:
        async with listening(app, host, port):
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()

    asyncio.run(main())
