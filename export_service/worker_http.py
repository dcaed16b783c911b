"""The `worker` command's small HTTP listener: `/metrics` for Prometheus, `/heartbeat` for liveness.

A worker process serves no API, so without this its counters (exports ended, durations, rows,
S3 bytes) would be invisible. Off unless `EXPORT_SERVICE_WORKER_METRICS_PORT` is set; `serve`
does not need it (the API's own `/metrics` shows the same registry).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from aiohttp import web

from export_service.app.observability import observe_request
from export_service.app.routes import SERVICES, metrics_endpoint
from export_service.app.server import listening
from export_service.runtime import Services

log = structlog.get_logger(__name__)


async def heartbeat(request: web.Request) -> web.Response:
    """503 once the loop has made no progress for a bound (see `liveness`): restart me."""
    worker = request.app[SERVICES].worker
    body, status = worker.liveness.report()
    body |= {"workerId": worker.worker_id, "busy": worker.busy, "stopping": worker.stopping}
    return web.json_response(body, status=status)


def create_worker_app(services: Services) -> web.Application:
    # The API's request middleware: its probes and scrapes count in the HTTP histograms (they are
    # neither traced nor logged there either).
    app = web.Application(middlewares=[observe_request])
    # The API's key and `/metrics` handler: one scrape, whichever port serves it.
    app[SERVICES] = services
    app.router.add_get("/heartbeat", heartbeat)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


@asynccontextmanager
async def worker_listener(services: Services, host: str, port: int) -> AsyncIterator[int]:
    """Serve the worker's endpoints while the block runs; yields the bound port (0 = any free)."""
    # The API's server: a request its parser refuses is answered in the same JSON shape.
    async with listening(create_worker_app(services), host, port) as bound:
        log.info("worker_metrics_listening", host=host, port=bound)
        yield bound
