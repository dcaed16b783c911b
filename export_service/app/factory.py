"""The aiohttp application factory: clients live in `cleanup_ctx`, typed `AppKey`s hold them."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Sequence

import structlog
from aiohttp import web
from pymongo.monitoring import CommandListener

from export_service.app.admin_routes import admin_routes
from export_service.app.auth import Authenticator
from export_service.app.docs_routes import docs_routes
from export_service.app.errors import Handler, error_middleware
from export_service.app.observability import REQUEST_ID, observe_request
from export_service.app.routes import AUTHENTICATOR, SERVICES, routes
from export_service.runtime import Services, dev_jwt_secret
from export_service.settings import Settings

log = structlog.get_logger(__name__)

WORKER_TASK = web.AppKey("worker_task", asyncio.Task[None])
DISPATCHER_TASK = web.AppKey("dispatcher_task", asyncio.Task[None])
RETENTION_TASK = web.AppKey("retention_task", asyncio.Task[None])
PROBE_TASK = web.AppKey("probe_task", asyncio.Task[None])
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        response = await handler(request)
        response.headers["X-Request-ID"] = request_id
        return response


def create_app(
    settings: Settings,
    *,
    run_worker: bool = True,
    create_buckets: bool | None = None,
    listeners: Sequence[CommandListener] = (),
) -> web.Application:
    """`run_worker=False` keeps the worker idle (API-only processes, and tests that drain);
    `listeners` observe the MongoDB commands sent (tests)."""
    app = web.Application(
        middlewares=[request_context, observe_request, error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    secret = (
        dev_jwt_secret(settings)
        if settings.jwt_public_key is None
        else (settings.jwt_secret.get_secret_value() if settings.jwt_secret else None)
    )
    app[AUTHENTICATOR] = Authenticator(
        secret=secret,
        public_key=settings.jwt_public_key,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        cache_size=settings.auth_cache_size,
    )

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        async with Services.open(
            settings, create_buckets=create_buckets, listeners=listeners
        ) as services:
            app[SERVICES] = services
            # The loops are ended by their events and awaited, never cancelled: any may be
            # inside a driver call (see `queue.run`).
            probe_end = asyncio.Event()
            if run_worker:
                app[WORKER_TASK] = asyncio.create_task(services.worker.run())
                app[DISPATCHER_TASK] = asyncio.create_task(services.dispatcher.run())
                app[RETENTION_TASK] = asyncio.create_task(services.retention.run())
            else:
                # No worker loop here to prove the process alive: a probe does (`liveness`).
                app[PROBE_TASK] = asyncio.create_task(
                    services.worker.liveness.probe(
                        services.client,
                        interval=settings.polling_interval_millis / 1000,
                        ping_timeout=settings.mongo_timeout_ms / 1000,
                        stop=probe_end,
                    )
                )
            yield
            if run_worker:
                services.dispatcher.shutdown()
                services.retention.shutdown()
                await services.worker.shutdown()
                await app[WORKER_TASK]
                await app[DISPATCHER_TASK]
                await app[RETENTION_TASK]
            else:
                probe_end.set()
                await app[PROBE_TASK]

    app.cleanup_ctx.append(services_ctx)
    app.add_routes(routes)
    app.add_routes(docs_routes)
    app.add_routes(admin_routes)
    return app
