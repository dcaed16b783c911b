"""Real servers for the whole session (SecantusDB and moto's S3, over sockets); a fresh database
and bucket set per test."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from moto.server import ThreadedMotoServer

from export_service.app.auth import mint
from export_service.app.factory import create_app
from export_service.app.routes import SERVICES
from export_service.embedded import stop_process, wait_for_port
from export_service.runtime import Services
from export_service.settings import Settings

JWT_SECRET = "test-secret-which-is-long-enough-for-hs256"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="secantus-") as storage:
        log = Path(storage) / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(port),
                 "--storage-path", str(Path(storage) / "data"), "--log-level", "WARNING"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for_port(port, proc, "SecantusDB", 60)
            yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
        finally:
            stop_process(proc)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def make_settings(mongo_uri: str, s3_endpoint: str, **overrides: Any) -> Settings:
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


@pytest.fixture
def settings(mongo_uri: str, s3_endpoint: str) -> Settings:
    return make_settings(mongo_uri, s3_endpoint)


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    async with Services.open(settings, create_buckets=True) as opened:
        try:
            yield opened
        finally:
            await opened.client.drop_database(settings.mongo_db)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The real app on a real socket, worker idle: tests drive it with `worker.drain()`."""
    app = create_app(settings, run_worker=False, create_buckets=True)
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        try:
            yield test_client
        finally:
            services = app[SERVICES]
            await services.client.drop_database(settings.mongo_db)


def app_services(client: TestClient[Any, Any]) -> Services:
    return client.app[SERVICES]  # type: ignore[index]


def token(
    campaigns: list[str] | None = None, *, sub: str = "admin-1", supreme: bool = False, **kw: Any
) -> str:
    return mint(JWT_SECRET, sub=sub, campaigns=campaigns or [], supreme=supreme, **kw)


def auth(campaigns: list[str] | None = None, **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(campaigns, **kw)}"}


# moto's server logs every request; keep test output to what matters.
logging.getLogger("werkzeug").setLevel(logging.WARNING)
