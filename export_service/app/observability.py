"""Per-request telemetry: a server span, the latency histogram and one log line per request.

A small middleware of our own rather than `opentelemetry-instrumentation-aiohttp-server`: its
latest release (0.66b1) pins `opentelemetry-semantic-conventions==0.66b1`, which conflicts with
the SDK 1.45.2 we use (it needs 0.66b2).
"""

from __future__ import annotations

import contextlib
import time

import structlog
from aiohttp import web
from opentelemetry import propagate
from opentelemetry.semconv.attributes import (
    client_attributes,
    error_attributes,
    http_attributes,
    url_attributes,
    user_agent_attributes,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from export_service import metrics, telemetry
from export_service.app.errors import Handler

log = structlog.get_logger(__name__)

REQUEST_ID = web.RequestKey("request_id", str)

# Probes and scrapes: counted in the histogram, but neither traced nor logged (every few seconds
# per pod, they would drown the traces and logs that matter).
UNTRACED_PATHS = frozenset({"/heartbeat", "/ready", "/metrics"})


# The semantic conventions' known methods; any other is `_OTHER` (bounded label values).
KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)


def semconv_method(method: str) -> str:
    return method if method in KNOWN_METHODS else "_OTHER"


def route_of(request: web.Request) -> str:
    """The route template (`/campaigns/{campaignId}/exports`): bounded cardinality for labels."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = route_of(request)
    traced = request.path not in UNTRACED_PATHS
    started = time.perf_counter()
    status = 500
    with contextlib.ExitStack() as stack:
        span = (
            stack.enter_context(
                telemetry.tracer.start_as_current_span(
                    f"{request.method} {route}",
                    context=propagate.extract(request.headers),
                    kind=SpanKind.SERVER,
                    attributes={
                        http_attributes.HTTP_REQUEST_METHOD: request.method,
                        http_attributes.HTTP_ROUTE: route,
                        url_attributes.URL_PATH: request.path,
                        url_attributes.URL_SCHEME: request.scheme,
                        user_agent_attributes.USER_AGENT_ORIGINAL: request.headers.get(
                            "User-Agent", ""
                        ),
                        client_attributes.CLIENT_ADDRESS: request.remote or "",
                        "http.request_id": request.get(REQUEST_ID, ""),
                    },
                )
            )
            if traced
            else None
        )
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.HTTP_REQUESTS.labels(request.method, route, str(status)).observe(elapsed)
            metrics.HTTP_SERVER_REQUEST_DURATION.labels(
                semconv_method(request.method), route, str(status), request.scheme
            ).observe(elapsed)
            if span is not None:
                span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, status)
                if status >= 500:
                    span.set_attribute(error_attributes.ERROR_TYPE, str(status))
                    span.set_status(Status(StatusCode.ERROR))
            if traced:
                # Successful reads at debug: a client polling an export would fill the log.
                emit = log.debug if request.method == "GET" and status < 400 else log.info
                emit(
                    "request_handled",
                    method=request.method,
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 1),
                )
