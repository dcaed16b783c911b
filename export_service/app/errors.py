"""Domain errors → HTTP, in one place.

Every error body is `{"error": {"status", "message", "payload"}}`; a coded error's message is
`Code: what happened` and its payload carries `code`, both added here (`coded_error`), so no
message repeats its code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError
from pymongo.errors import ConnectionFailure

from export_service.errors import ExportServiceError

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, payload: Any = None) -> web.Response:
    return web.json_response(
        {"error": {"status": status, "message": message, "payload": payload or {}}},
        status=status,
    )


def coded_error(
    status: int, code: str, detail: str | None = None, payload: dict[str, Any] | None = None
) -> web.Response:
    """The error answer of `code`: its message `code: detail`, `code` first in its payload."""
    message = f"{code}: {detail}" if detail and detail != code else code
    return error_response(status, message, {"code": code, **(payload or {})})


def validation_payload(exc: ValidationError) -> dict[str, Any]:
    return {
        "code": "BadRequest",
        "errors": [
            {"loc": [str(p) for p in err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ],
    }


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ExportServiceError as exc:
        return coded_error(exc.status, exc.code, exc.message, exc.payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return coded_error(400, "BadRequest", f"{where}: {first['msg']}", validation_payload(exc))
    except web.RequestPayloadError as exc:
        # The body's bytes are not what its framing or Content-Encoding says (a plain body sent
        # as gzip): the client's fault, and the request was refused before anything was written.
        response = coded_error(400, "BadRequest", f"the request body cannot be read: {exc}")
        # The rest of the stream cannot be framed: close the connection after this answer, and
        # end the body here so that aiohttp does not drain it again after the response (which
        # logs the same error as an unhandled traceback).
        response.force_close()
        request.content.feed_eof()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, exc.reason, {"code": exc.reason.replace(" ", "")})
        # A 405 must say which methods the resource takes (RFC 9110 §15.5.6).
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except ConnectionFailure as exc:
        # The database is away (restart, failover, network): the request may be retried.
        log.warning("request_unavailable", path=request.path, error=f"{type(exc).__name__}: {exc}")
        return coded_error(503, "ServiceUnavailable", "the database is not reachable")
    except Exception:
        log.exception("request_failed", path=request.path)
        return error_response(500, "Internal Server Error", {"code": "InternalError"})
