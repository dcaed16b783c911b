"""Fixtures: real servers for the whole session (SecantusDB and moto's S3, over sockets), a fresh
database and bucket set per test. The helpers live in `tests/support`.

A test that needs none of the server fixtures is marked `unit` here, so `pytest -m unit` runs the
server-free tests alone (the session servers start lazily, on the first test that asks).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from moto.server import ThreadedMotoServer

from export_service.app.factory import create_app
from export_service.app.routes import SERVICES
from export_service.runtime import Services
from export_service.settings import Settings
from tests.support.app import ServiceTestServer, make_settings, open_services
from tests.support.servers import SecantusServer, free_port

SERVER_FIXTURES = frozenset({"mongo_uri", "s3_endpoint"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="secantus-") as storage:
        server = SecantusServer(Path(storage))
        server.start()
        try:
            yield server.uri
        finally:
            server.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def settings(mongo_uri: str, s3_endpoint: str) -> Settings:
    return make_settings(mongo_uri, s3_endpoint)


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    async with open_services(settings) as opened:
        yield opened


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The real app on a real socket, worker idle: tests drive it with `worker.drain()`."""
    app = create_app(settings, run_worker=False, create_buckets=True)
    async with TestClient(ServiceTestServer(app, host="127.0.0.1")) as test_client:
        try:
            yield test_client
        finally:
            services = app[SERVICES]
            await services.client.drop_database(settings.mongo_db)


# moto's server logs every request; keep test output to what matters.
logging.getLogger("werkzeug").setLevel(logging.WARNING)
