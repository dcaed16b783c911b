"""MongoDB faults: unreachable for a while (a TCP proxy refusing and dropping connections) or
restarted (a SecantusDB process of its own, stopped and started on the same port and data).

The service runs as in production: the real app with its worker loop (`run()`), not driven
step by step. While the database is away the test waits on what the service logs (the worker
reporting the failure), never on a fixed delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from pymongo.errors import ConnectionFailure
from structlog.testing import capture_logs

from export_service.app.factory import WORKER_TASK, create_app
from export_service.app.routes import SERVICES
from export_service.models import Export, ExportStatus, ExportType
from export_service.runtime import Services
from tests.support.app import auth, make_settings
from tests.support.data import CAMPAIGN, queue_exports, seed_big_entries
from tests.support.faults import FAST, TcpProxy
from tests.support.gates import Gate, until
from tests.support.s3 import multipart_uploads, object_keys, object_sha256
from tests.support.servers import SecantusServer, port_of

Client = TestClient[Any, Any]
URL = f"/campaigns/{CAMPAIGN}/exports"


def logged(logs: list[MutableMapping[str, Any]], event: str) -> int:
    return sum(1 for entry in logs if entry.get("event") == event)


async def ready_status(client: Client) -> int:
    return (await client.get("/ready")).status


@asynccontextmanager
async def running_service(
    mongo_uri: str, s3_endpoint: str, **overrides: Any
) -> AsyncIterator[tuple[Client, Services]]:
    """The real app, API and worker loop in one process, as `export-service serve` runs it."""
    settings = make_settings(mongo_uri, s3_endpoint, **(FAST | overrides))
    app = create_app(settings, run_worker=True, create_buckets=True)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        services = app[SERVICES]
        try:
            yield client, services
        finally:
            assert not app[WORKER_TASK].done(), "the worker loop ended"
            await services.client.drop_database(settings.mongo_db)


async def request_export(client: Client, export_type: str = "entries") -> str:
    resp = await client.post(URL, json={"exportType": export_type}, headers=auth([CAMPAIGN]))
    assert resp.status == 202, await resp.text()
    export_id: str = (await resp.json())["id"]
    return export_id


async def assert_whole_object(services: Services, export: Export) -> None:
    (stored,) = export.files
    bucket = services.settings.bucket_exports
    assert await object_sha256(services.storage, bucket, stored.key) == (
        stored.sha256,
        stored.bytes,
    )
    assert await object_keys(services.storage, bucket) == [stored.key]
    assert await multipart_uploads(services.storage, bucket) == []


async def test_database_unreachable_while_idle(mongo_uri: str, s3_endpoint: str) -> None:
    async with (
        await TcpProxy.start("127.0.0.1", port_of(mongo_uri)) as proxy,
        running_service(proxy.mongo_uri, s3_endpoint) as (
            client,
            services,
        ),
    ):
        await seed_big_entries(services, n=3)
        assert await ready_status(client) == 200
        with capture_logs() as logs:
            proxy.refuse(True)
            proxy.drop_all()
            resp = await client.get("/ready")
            assert resp.status == 503
            checks = (await resp.json())["checks"]
            assert checks["mongodb"].startswith("unavailable") and checks["s3"] == "ok"
            refused = await client.post(
                URL, json={"exportType": "entries"}, headers=auth([CAMPAIGN])
            )
            assert refused.status == 503
            assert (await refused.json())["error"]["payload"]["code"] == "ServiceUnavailable"
            # The worker loop meets the outage on its polls and keeps going.
            await until("failed worker steps", lambda: logged(logs, "worker_step_failed") >= 3)
            proxy.refuse(False)
            back = time.monotonic()
            await until("/ready to answer 200", lambda: _is_ready(client))
            ready_after = time.monotonic() - back
        ended = services.worker.subscribe()
        export_id = await request_export(client)
        done = await asyncio.wait_for(ended.get(), 20)
        assert done.id == export_id and done.status is ExportStatus.FINISHED
        assert done.attempts == 1
        print(f"\nMongoDB back -> /ready 200 in {ready_after:.2f}s")


async def _is_ready(client: Client) -> bool:
    return await ready_status(client) == 200


async def test_database_unreachable_mid_export_is_retried(mongo_uri: str, s3_endpoint: str) -> None:
    async with (
        await TcpProxy.start("127.0.0.1", port_of(mongo_uri)) as proxy,
        running_service(proxy.mongo_uri, s3_endpoint) as (
            client,
            services,
        ),
    ):
        await seed_big_entries(services)
        gate = Gate()
        services.worker.batch_hook = gate
        ended = services.worker.subscribe()
        export_id = await request_export(client)
        await asyncio.wait_for(gate.reached.wait(), 20)
        with capture_logs() as logs:
            proxy.refuse(True)
            proxy.drop_all()
            assert await ready_status(client) == 503
            # The export goes on without its database: reading its third batch fails (the
            # second one is already read ahead) while its multipart upload is open.
            gate.release.set()
            await until("the export to be interrupted", lambda: logged(logs, "export_interrupted"))
            await until("a failed worker step", lambda: logged(logs, "worker_step_failed"))
            proxy.refuse(False)
            back = time.monotonic()
            done = await asyncio.wait_for(ended.get(), 20)
            rerun_after = time.monotonic() - back
        assert done.id == export_id
        assert done.status is ExportStatus.FINISHED
        assert done.attempts == 2  # interrupted once, run again: not failed, not lost
        assert done.files[0].rows == 60
        await assert_whole_object(services, done)
        assert await ready_status(client) == 200
        print(f"\nMongoDB back -> interrupted export re-run and FINISHED in {rerun_after:.2f}s")


async def test_database_away_past_the_timeout_expires_the_export(
    mongo_uri: str, s3_endpoint: str
) -> None:
    async with (
        await TcpProxy.start("127.0.0.1", port_of(mongo_uri)) as proxy,
        running_service(proxy.mongo_uri, s3_endpoint, timeout_millis=1500) as (client, services),
    ):
        await seed_big_entries(services)
        gate = Gate()  # never released: only the timeout ends this run
        services.worker.batch_hook = gate
        export_id = await request_export(client)
        await asyncio.wait_for(gate.reached.wait(), 20)
        with capture_logs() as logs:
            proxy.refuse(True)
            proxy.drop_all()
            # The run's own deadline passes while the database is away: the worker cannot
            # record EXPIRED and says so.
            await until("the deadline to pass", lambda: logged(logs, "worker_step_failed"))
            proxy.refuse(False)
        exports = services.db["exports"]

        async def expired() -> bool:
            try:
                doc = await exports.find_one({"_id": export_id})
            except ConnectionFailure:
                return False  # this test's client too needs a moment to find the server
            return doc is not None and doc["status"] == ExportStatus.EXPIRED.value

        await until("the export to be EXPIRED", expired)
        doc = await exports.find_one({"_id": export_id})
        assert doc is not None and doc["error"]["code"] == "Timeout" and "expired" in doc["date"]
        assert "slot" not in doc and "uploads" not in doc
        bucket = services.settings.bucket_exports
        assert await object_keys(services.storage, bucket) == []
        assert await multipart_uploads(services.storage, bucket) == []


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[SecantusServer]:
    server = SecantusServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_database_restarted_mid_export_and_then_idle(
    own_mongo: SecantusServer, s3_endpoint: str
) -> None:
    async with running_service(own_mongo.uri, s3_endpoint) as (client, services):
        await seed_big_entries(services)
        await services.db["codes"].insert_one(
            {"_id": "c1", "campaignId": CAMPAIGN, "code": "C1", "status": "AVAILABLE"}
        )
        gate = Gate()
        services.worker.batch_hook = gate
        ended = services.worker.subscribe()
        export_id = await request_export(client)
        await asyncio.wait_for(gate.reached.wait(), 20)
        with capture_logs() as logs:
            await asyncio.to_thread(own_mongo.stop)
            assert await ready_status(client) == 503
            gate.release.set()
            await until("the export to be interrupted", lambda: logged(logs, "export_interrupted"))
            await until("a failed worker step", lambda: logged(logs, "worker_step_failed"))
            restart = time.monotonic()
            await asyncio.to_thread(own_mongo.start)
            done = await asyncio.wait_for(ended.get(), 20)
            rerun_after = time.monotonic() - restart
        assert done.id == export_id
        assert done.status is ExportStatus.FINISHED and done.attempts == 2
        await assert_whole_object(services, done)
        await until("/ready to answer 200", lambda: _is_ready(client))
        # Idle after the restart: a new request is served and run without restarting anything.
        services.worker.batch_hook = None
        codes_id = await request_export(client, "codes")
        codes = await asyncio.wait_for(ended.get(), 20)
        assert codes.id == codes_id and codes.status is ExportStatus.FINISHED
        print(
            f"\nMongoDB restarted -> interrupted export re-run and FINISHED in {rerun_after:.2f}s"
        )


async def test_worker_cut_off_from_the_database_does_not_undo_the_rerun(
    mongo_uri: str, s3_endpoint: str
) -> None:
    """Worker A loses the database mid-export; worker B (still connected) takes the export
    over and finishes it. When A gets the database back, its own run must stop without
    touching what B wrote: both runs write the same key."""
    async with await TcpProxy.start("127.0.0.1", port_of(mongo_uri)) as proxy:
        settings_a = make_settings(proxy.mongo_uri, s3_endpoint, **FAST)
        settings_b = settings_a.model_copy(update={"mongo_uri": SecretStr(mongo_uri)})
        async with (
            Services.open(settings_a, create_buckets=True) as a,
            Services.open(settings_b) as b,
        ):
            try:
                await seed_big_entries(b)
                (export,) = await queue_exports(b, 1, ExportType.ENTRIES)
                gate = Gate()

                async def hold_with_upload_open(export: Export, rows: int) -> None:
                    if rows >= 50:  # a 5 MiB part is out: A's multipart upload is open
                        await gate(export, rows)

                a.worker.batch_hook = hold_with_upload_open
                run_a = asyncio.create_task(a.worker.process())
                await asyncio.wait_for(gate.reached.wait(), 20)
                proxy.refuse(True)
                proxy.drop_all()

                async def taken_over() -> bool:
                    return await b.worker.sweep() == 1

                # A's heartbeat goes stale: B re-queues the export, runs it and finishes it.
                await until("B to take the export over", taken_over)
                done = await b.worker.process()
                assert done is not None and done.id == export.id
                assert done.status is ExportStatus.FINISHED and done.attempts == 2

                proxy.refuse(False)
                gate.release.set()
                # A's run ends on its own: reading on a connection that died, or learning from
                # its heartbeat that the export is no longer its own.
                with contextlib.suppress(ConnectionFailure):
                    await asyncio.wait_for(run_a, 30)
                final = await b.repository.get(export.id)
                assert final is not None and final.files == done.files
                await assert_whole_object(b, final)
            finally:
                await b.client.drop_database(settings_b.mongo_db)
