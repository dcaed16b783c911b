"""Interrupted runs resume from their last checkpoint, byte-identical (contract §14)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import bson
import pytest
from pymongo import monitoring

from export_service.db import connect
from export_service.models import Export, ExportStatus, ExportType
from export_service.queue.worker import Worker
from export_service.runtime import Services
from tests.support.app import make_settings
from tests.support.data import queue_exports, seed_big_entries
from tests.support.gates import until
from tests.support.s3 import multipart_uploads, object_sha256
from tests.support.workers import WorkerProcess

# 50 rows (one test batch) of ~110 kB each: every batch ships one part of ~5.5 MB.
ROWS = 250


class Documents(monitoring.CommandListener):
    """Counts the source documents the cursor replies carry (command monitoring)."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self.read = 0
        self.filters: list[Any] = []
        self._ours: set[int] = set()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        if event.command_name == "find" and command.get("find") == self.collection:
            self._ours.add(event.request_id)
            self.filters.append(command.get("filter"))
        elif event.command_name == "getMore" and command.get("collection") == self.collection:
            self._ours.add(event.request_id)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.request_id in self._ours:
            cursor = event.reply.get("cursor") or {}
            for item in cursor.get("firstBatch") or cursor.get("nextBatch") or []:
                # A raw-batch cursor's reply holds its documents as one BSON blob.
                self.read += len(bson.decode_all(item)) if isinstance(item, bytes) else 1

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._ours.discard(event.request_id)


class StopAfterParts:
    """A batch hook that holds the run once its checkpoint covers `parts` uploaded parts."""

    def __init__(self, services: Services, parts: int) -> None:
        self.services = services
        self.parts = parts
        self.reached = asyncio.Event()

    async def __call__(self, export: Export, rows: int) -> None:
        doc = await self.services.db["exports"].find_one({"_id": export.id})
        checkpoint = (doc or {}).get("checkpoint") or {}
        if len(checkpoint.get("parts") or []) >= self.parts:
            self.reached.set()
            await asyncio.Event().wait()


async def reference(services: Services, export_type: ExportType) -> Export:
    """An uninterrupted export of the same data (dedupe is released once the first ended)."""
    (export,) = await queue_exports(services, 1, export_type)
    worker = Worker(services.repository, services.db, services.storage, services.settings)
    (done,) = await worker.drain()
    assert done.id == export.id and done.status is ExportStatus.FINISHED
    assert done.resumed_from is None
    return done


async def interrupt_by_shutdown(services: Services, parts: int) -> Export:
    """Run an entries export, stop it past a zero grace once `parts` parts are checkpointed."""
    await seed_big_entries(services, n=ROWS)
    await queue_exports(services, 1, ExportType.ENTRIES)
    hook = StopAfterParts(services, parts)
    services.worker.batch_hook = hook
    running = asyncio.create_task(services.worker.process())
    await hook.reached.wait()
    await services.worker.shutdown(grace=0)
    requeued = await running
    assert requeued is not None and requeued.status is ExportStatus.PENDING
    assert requeued.checkpoint is not None and len(requeued.checkpoint["parts"]) >= parts
    return requeued


async def test_shutdown_past_grace_resumes_byte_identical(services: Services) -> None:
    requeued = await interrupt_by_shutdown(services, parts=2)
    checkpoint = requeued.checkpoint
    assert checkpoint is not None
    (upload,) = await multipart_uploads(services.storage, services.settings.bucket_exports)
    assert upload["UploadId"] == checkpoint["uploadId"]
    assert "sha256State" in checkpoint and "lastId" in checkpoint

    listener = Documents("entries")
    client = connect(services.settings.mongo_uri.get_secret_value(), services.settings,  # type: ignore[union-attr]
                     listeners=[listener])  # fmt: skip
    try:
        db = client[services.settings.mongo_db]
        worker = Worker(services.repository, db, services.storage, services.settings)
        (done,) = await worker.drain()
    finally:
        await client.close()
    assert done.id == requeued.id and done.status is ExportStatus.FINISHED
    assert done.attempts == 2
    assert done.resumed_from == checkpoint["rows"] >= 100
    assert done.to_api()["resumedFrom"] == checkpoint["rows"]
    assert done.progress["total"] == ROWS
    # The re-run read only the rows after the checkpoint, by an `_id` range.
    assert listener.read == ROWS - checkpoint["rows"]
    assert any("_id" in str(f) and "$gt" in str(f) for f in listener.filters)
    assert await multipart_uploads(services.storage, services.settings.bucket_exports) == []

    (file,) = done.files
    expected = (await reference(services, ExportType.ENTRIES)).files[0]
    assert (file.sha256, file.bytes, file.rows) == (expected.sha256, expected.bytes, ROWS)
    assert await object_sha256(services.storage, file.bucket, file.key) == (
        expected.sha256,
        expected.bytes,
    )


async def test_vanished_upload_restarts_from_row_zero(services: Services) -> None:
    requeued = await interrupt_by_shutdown(services, parts=1)
    checkpoint = requeued.checkpoint
    assert checkpoint is not None
    # What a lifecycle rule does to an upload left too long.
    await services.storage.client.abort_multipart_upload(
        Bucket=checkpoint["bucket"], Key=checkpoint["key"], UploadId=checkpoint["uploadId"]
    )
    worker = Worker(services.repository, services.db, services.storage, services.settings)
    (done,) = await worker.drain()
    assert done.status is ExportStatus.FINISHED and done.resumed_from is None
    (file,) = done.files
    expected = (await reference(services, ExportType.ENTRIES)).files[0]
    assert (file.sha256, file.bytes, file.rows) == (expected.sha256, expected.bytes, ROWS)
    assert await multipart_uploads(services.storage, services.settings.bucket_exports) == []


async def test_cancel_of_requeued_export_aborts_the_kept_upload(services: Services) -> None:
    requeued = await interrupt_by_shutdown(services, parts=1)
    result = await services.repository.cancel(requeued.id, requeued.campaign_id, "admin")
    assert result is not None and result.outcome == "cancelled"
    # What the cancel route does after the transition.
    await services.worker.clean_uploads(await services.repository.uploads(requeued.id))
    await services.repository.clear_uploads(requeued.id)
    assert await multipart_uploads(services.storage, services.settings.bucket_exports) == []
    doc = await services.db["exports"].find_one({"_id": requeued.id})
    assert doc is not None and "checkpoint" not in doc and "uploads" not in doc


@pytest.mark.parametrize("parts", [1, 2])
async def test_sigkilled_worker_resumes_byte_identical(
    mongo_uri: str, s3_endpoint: str, tmp_path: Path, parts: int
) -> None:
    settings = make_settings(
        mongo_uri, s3_endpoint, heartbeat_interval_millis=100, heartbeat_timeout_millis=600
    )
    async with Services.open(settings, create_buckets=True) as services:
        proc: WorkerProcess | None = None
        try:
            await seed_big_entries(services, n=ROWS)
            (export,) = await queue_exports(services, 1, ExportType.ENTRIES)
            proc = WorkerProcess(settings, tmp_path, "worker")

            async def checkpointed() -> bool:
                doc = await services.db["exports"].find_one({"_id": export.id})
                return len(((doc or {}).get("checkpoint") or {}).get("parts") or []) >= parts

            await until(f"{parts} checkpointed parts", checkpointed, timeout=60)
            proc.kill()  # SIGKILL: nothing of the worker runs after this
            killed = await services.repository.get(export.id)
            assert killed is not None and killed.status is ExportStatus.TRIGGERED
            assert killed.checkpoint is not None
            rows_at_kill = killed.checkpoint["rows"]

            async def stale() -> bool:
                return bool(await services.worker.sweep())

            await until("the dead worker's export re-queued", stale)
            (done,) = await services.worker.drain()
            assert done.id == export.id and done.status is ExportStatus.FINISHED
            assert done.attempts == 2 and done.resumed_from is not None
            assert done.resumed_from >= rows_at_kill >= 50 * parts
            (file,) = done.files
            expected = (await reference(services, ExportType.ENTRIES)).files[0]
            assert (file.sha256, file.bytes, file.rows) == (expected.sha256, expected.bytes, ROWS)
            assert await object_sha256(services.storage, file.bucket, file.key) == (
                expected.sha256,
                expected.bytes,
            )
            assert await multipart_uploads(services.storage, settings.bucket_exports) == []
        finally:
            if proc is not None:
                proc.stop()
            await services.client.drop_database(settings.mongo_db)
