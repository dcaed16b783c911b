"""The aiohttp application factory: clients live in `cleanup_ctx`, typed `AppKey`s hold them."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

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
    settings: Settings, *, run_worker: bool = True, create_buckets: bool | None = None
) -> web.Application:
    """`run_worker=False` keeps the worker idle (API-only processes, and tests that drain)."""
    app = web.Application(
        middlewares=[request_context, observe_request, error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    secret = (
        dev_jwt_secret(settings)
        if settings.jwt_public_key is None
        else (settings.jwt_secret.get_secret_value() if settings.jwt_secret else None)
    )
    app[AUTHENTICATOR] = Authenticator(secret=secret, public_key=settings.jwt_public_key)

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        async with Services.open(settings, create_buckets=create_buckets) as services:
            app[SERVICES] = services
            if run_worker:
                app[WORKER_TASK] = asyncio.create_task(services.worker.run())
                app[DISPATCHER_TASK] = asyncio.create_task(services.dispatcher.run())
            yield
            if run_worker:
                services.dispatcher.shutdown()
                await services.worker.shutdown()
                task = app[WORKER_TASK]
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await app[DISPATCHER_TASK]

    app.cleanup_ctx.append(services_ctx)
    app.add_routes(routes)
    app.add_routes(docs_routes)
    app.add_routes(admin_routes)
    return app
