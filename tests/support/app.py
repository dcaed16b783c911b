"""Settings on the test servers, tokens signed with the test secret, the app's services."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from export_service.app.auth import mint
from export_service.app.factory import create_app
from export_service.app.routes import SERVICES
from export_service.app.server import ServiceRunner
from export_service.runtime import Services
from export_service.settings import Settings

JWT_SECRET = "test-secret-which-is-long-enough-for-hs256"


def make_settings(mongo_uri: str, s3_endpoint: str, **overrides: Any) -> Settings:
    """Settings on the given servers with a database and buckets of their own."""
    tag = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "mongo_uri": mongo_uri,
        "mongo_db": f"t_{tag}",
        "s3_endpoint_url": s3_endpoint,
        "s3_addressing_style": "path",
        "s3_access_key_id": "test",
        "s3_secret_access_key": "test",
        "s3_call_timeout_seconds": 10,
        "bucket_exports": f"exports-{tag}",
        "bucket_scoring": f"scoring-{tag}",
        "bucket_vf_scoring": f"vf-scoring-{tag}",
        "bucket_sfmc": f"sfmc-{tag}",
        "jwt_secret": JWT_SECRET,
        "polling_interval_millis": 50,
        "batch_size": 50,
        "s3_part_size_bytes": 5 * 1024 * 1024,
        "shutdown_grace_seconds": 5,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """The services over the real servers, their database dropped afterwards."""
    async with Services.open(settings, create_buckets=True) as services:
        try:
            yield services
        finally:
            await services.client.drop_database(settings.mongo_db)


def app_services(client: TestClient[Any, Any]) -> Services:
    services: Services = client.app[SERVICES]
    return services


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The app on its own settings (e.g. S3 behind a fault proxy), worker idle; its database
    is dropped at the end."""
    app = create_app(settings, run_worker=False, create_buckets=True)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        try:
            yield client
        finally:
            await app_services(client).client.drop_database(settings.mongo_db)


def token(
    campaigns: list[str] | None = None, *, sub: str = "admin-1", supreme: bool = False, **kw: Any
) -> str:
    return mint(JWT_SECRET, sub=sub, campaigns=campaigns or [], supreme=supreme, **kw)


def auth(campaigns: list[str] | None = None, **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(campaigns, **kw)}"}


class ServiceTestServer(TestServer):
    """aiohttp's `TestServer` on the service's own runner (its parser limits, its JSON answer to
    a request the parser refuses), as `serve` and `api` run it."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return ServiceRunner(self.app, **kwargs)
