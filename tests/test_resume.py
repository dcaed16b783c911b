"""Interrupted runs resume from their last checkpoint, byte-identical (contract §14)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from typing import Any

import bson
import pytest
from pydantic import SecretStr
from pymongo import monitoring
from pymongo.errors import ConnectionFailure

from export_service.db import connect
from export_service.errors import EncoderLost
from export_service.exporters import spec_for
from export_service.exporters.checkpoint import resumable
from export_service.models import Export, ExportStatus, ExportType, utcnow
from export_service.queue.worker import Worker
from export_service.runtime import Services
from export_service.views import stored_view
from tests.support.app import make_settings
from tests.support.data import entry, queue_exports, seed_big_entries
from tests.support.encoders import kill_children_holding_batches, stop_children
from tests.support.faults import COMPLETE_MPU, UPLOAD_PART, S3Request, TcpProxy
from tests.support.gates import until
from tests.support.proxied import proxied
from tests.support.s3 import download, multipart_uploads, object_sha256
from tests.support.servers import answers, port_of
from tests.support.workers import WorkerProcess

# 50 rows (one test batch) of ~110 kB each: every batch ships one part of ~5.5 MB.
ROWS = 250


class Documents(monitoring.CommandListener):
    """Counts the source documents the cursor replies carry (command monitoring)."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self.read = 0
        self.filters: list[Any] = []
        self.counts = 0
        self._ours: set[int] = set()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        # `count_documents` is an aggregate over the collection.
        if event.command_name == "aggregate" and command.get("aggregate") == self.collection:
            self.counts += 1
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
    """A batch hook that holds the run once its checkpoint covers `parts` uploaded parts, until
    `release` (once released, it lets every later batch through)."""

    def __init__(self, services: Services, parts: int) -> None:
        self.services = services
        self.parts = parts
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, export: Export, rows: int) -> None:
        if self.reached.is_set():
            await self.release.wait()
            return
        doc = await self.services.db["exports"].find_one({"_id": export.id})
        checkpoint = (doc or {}).get("checkpoint") or {}
        if len(checkpoint.get("parts") or []) >= self.parts:
            self.reached.set()
            await self.release.wait()


async def reference(services: Services, export_type: ExportType) -> Export:
    """An uninterrupted export of the same data (dedupe is released once the first ended)."""
    (export,) = await queue_exports(services, 1, export_type)
    worker = Worker(services.repository, services.db, services.storage, services.settings)
    (done,) = await worker.drain()
    assert done.id == export.id and done.status is ExportStatus.FINISHED
    assert done.resumed_from is None
    return done


async def assert_as_uninterrupted(services: Services, done: Export, rows: int = ROWS) -> None:
    """The export's file is the file of an uninterrupted export of the same data, as recorded
    and as S3 serves it, and no multipart upload is left."""
    (file,) = done.files
    expected = (await reference(services, ExportType.ENTRIES)).files[0]
    assert (file.sha256, file.bytes, file.rows) == (expected.sha256, expected.bytes, rows)
    assert await object_sha256(services.storage, file.bucket, file.key) == (
        expected.sha256,
        expected.bytes,
    )
    assert await multipart_uploads(services.storage, services.settings.bucket_exports) == []


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


def test_readme_says_for_every_type_whether_it_resumes_as_the_code_decides() -> None:
    """The README's table (Interrupted runs resume) names each type once, and says "resumes"
    exactly for the types `checkpoint.resumable` accepts."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### Interrupted runs resume") :]
    table = section[section.index("| type | interrupted run | why |") :].split("\n\n", 1)[0]
    said: dict[str, bool] = {}
    for line in table.splitlines()[2:]:
        types, verdict, _why = (cell.strip() for cell in line.strip("|").split("|"))
        for name in re.findall(r"`(\w+)`", types):
            assert name not in said, f"{name} twice in the README's table"
            said[name] = verdict.startswith("resumes")
    decided = {}
    for export_type in ExportType:
        spec = spec_for(export_type)
        assert spec is not None
        decided[export_type.value] = resumable(spec)
    assert said == decided
    assert sorted(t for t, resumes in said.items() if resumes) == [
        "codes", "entries", "scoring", "verifiedEntries",
    ]  # fmt: skip


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
    assert stored_view(done)["resumedFrom"] == checkpoint["rows"]
    assert done.progress["total"] == checkpoint["total"] == ROWS
    # The first run's count stands for the re-run (same cut): it does not count again.
    assert listener.counts == 0
    # The re-run read only the rows after the checkpoint, by an `_id` range.
    assert listener.read == ROWS - checkpoint["rows"]
    assert any("_id" in str(f) and "$gt" in str(f) for f in listener.filters)
    await assert_as_uninterrupted(services, done)


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
    await assert_as_uninterrupted(services, done)


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
            await assert_as_uninterrupted(services, done)
        finally:
            if proc is not None:
                proc.stop()
            await services.client.drop_database(settings.mongo_db)


async def test_dropped_mongodb_connection_resumes_byte_identical(
    mongo_uri: str, s3_endpoint: str
) -> None:
    async with await TcpProxy.start("127.0.0.1", port_of(mongo_uri)) as proxy:
        settings = make_settings(
            proxy.mongo_uri,
            s3_endpoint,
            mongo_timeout_ms=300,
            # A beat in flight when the connection dies is given half the heartbeat timeout.
            heartbeat_interval_millis=100,
            heartbeat_timeout_millis=1000,
        )
        async with Services.open(settings, create_buckets=True) as services:
            try:
                await seed_big_entries(services, n=ROWS)
                (export,) = await queue_exports(services, 1, ExportType.ENTRIES)
                hook = StopAfterParts(services, parts=2)
                services.worker.batch_hook = hook
                first = asyncio.create_task(services.worker.drain())
                await hook.reached.wait()
                proxy.refuse(True)
                assert proxy.drop_all() > 0
                hook.release.set()
                # Its next read or write meets the dead connection: interrupted, not failed.
                with pytest.raises(ConnectionFailure):
                    await first
                proxy.refuse(False)
                # The driver has marked the server unknown: read only once it is found again.
                await until("MongoDB to answer again", lambda: answers(services.db))
                cut = await services.repository.get(export.id)
                assert cut is not None and cut.status is ExportStatus.TRIGGERED
                assert cut.checkpoint is not None and len(cut.checkpoint["parts"]) >= 2
                (done,) = await services.worker.drain()
                assert done.id == export.id and done.status is ExportStatus.FINISHED
                assert done.attempts == 2
                assert done.resumed_from == cut.checkpoint["rows"] >= 100
                await assert_as_uninterrupted(services, done)
            finally:
                proxy.refuse(False)
                await services.client.drop_database(settings.mongo_db)


async def test_killed_encoder_process_resumes_byte_identical(
    mongo_uri: str, s3_endpoint: str
) -> None:
    settings = make_settings(mongo_uri, s3_endpoint, encoder_processes=2)
    async with Services.open(settings, create_buckets=True) as services:
        try:
            encoders = services.encoders
            assert encoders is not None
            await seed_big_entries(services, n=ROWS)
            (export,) = await queue_exports(services, 1, ExportType.ENTRIES)
            hook = StopAfterParts(services, parts=1)
            services.worker.batch_hook = hook
            first = asyncio.create_task(services.worker.drain())
            await hook.reached.wait()
            children = stop_children(encoders)
            hook.release.set()
            await kill_children_holding_batches(encoders, children)
            with pytest.raises(EncoderLost):
                await first
            cut = await services.repository.get(export.id)
            assert cut is not None and cut.checkpoint is not None
            (done,) = await services.worker.drain()
            assert done.id == export.id and done.status is ExportStatus.FINISHED
            assert done.attempts == 2
            assert done.resumed_from == cut.checkpoint["rows"] >= 50
            assert not set(encoders.pids) & set(children)  # the re-run had fresh children
            await assert_as_uninterrupted(services, done)
        finally:
            await services.client.drop_database(settings.mongo_db)


async def test_sigterm_past_a_1s_grace_to_a_worker_process_resumes_byte_identical(
    mongo_uri: str, s3_endpoint: str, tmp_path: Path
) -> None:
    async with proxied(mongo_uri, s3_endpoint, shutdown_grace_seconds=1) as setup:
        services = setup.services
        await seed_big_entries(services, n=ROWS)
        (export,) = await setup.queue(ExportType.ENTRIES)
        # Parts 3 on are held unanswered while holding is on: the worker is still exporting
        # when its grace ends, whatever the machine's speed.
        holding = True

        def later_parts(request: S3Request) -> bool:
            return (
                holding
                and request.operation == UPLOAD_PART
                and int(request.query.get("partNumber", "0")) >= 3
            )

        setup.proxy.stall(match=later_parts)
        proc = WorkerProcess(services.settings, tmp_path, "worker")
        try:

            async def part_3_held() -> bool:
                return setup.proxy.faults[UPLOAD_PART] > 0

            await until("part 3 held", part_3_held, timeout=60)

            async def parts_1_2_checkpointed() -> bool:
                # Part 3 goes out while part 2's checkpoint is being written (uploads overlap).
                export_now = await services.repository.get(export.id)
                checkpoint = export_now.checkpoint if export_now is not None else None
                return checkpoint is not None and len(checkpoint["parts"]) == 2

            await until("parts 1 and 2 checkpointed", parts_1_2_checkpointed, timeout=60)
            held = await services.repository.get(export.id)
            assert held is not None and held.checkpoint is not None
            assert len(held.checkpoint["parts"]) == 2
            signalled = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            assert proc.proc.wait(30) == 0  # a clean exit, past the grace
            assert time.monotonic() - signalled >= 1
        finally:
            proc.stop()
        holding = False  # the dead worker's held request stays held until the proxy closes
        requeued = [e for e in proc.events() if e.get("event") == "export_requeued"]
        assert [e.get("reason") for e in requeued] == ["shutdown"]
        pending = await services.repository.get(export.id)
        assert pending is not None and pending.status is ExportStatus.PENDING
        assert pending.checkpoint == held.checkpoint  # kept, with its upload
        (done,) = await services.worker.drain()
        assert done.id == export.id and done.status is ExportStatus.FINISHED
        assert done.attempts == 2 and done.resumed_from == held.checkpoint["rows"] == 100
        await assert_as_uninterrupted(services, done)


async def test_resumed_run_keeps_the_first_runs_cut(services: Services) -> None:
    requeued = await interrupt_by_shutdown(services, parts=1)
    assert requeued.checkpoint is not None
    first_cut = requeued.checkpoint["cut"]
    # Created after the first run started (its cut), before the re-run starts, and after the
    # checkpoint's last `_id`: a re-run with a cut of its own would export them.
    late = [entry(f"z{i:03d}", f"late{i:03d}", created=utcnow()) for i in range(30)]
    await services.db["entries"].insert_many(late)
    assert all(doc["date"]["created"] > first_cut for doc in late)
    (done,) = await Worker(
        services.repository, services.db, services.storage, services.settings
    ).drain()
    assert done.status is ExportStatus.FINISHED and done.resumed_from is not None
    assert done.date["triggered"] > late[-1]["date"]["created"]  # the re-run's own start
    assert done.count == done.progress["total"] == ROWS
    (file,) = done.files
    body = await download(services.storage, file.bucket, file.key)
    assert b"late0" not in body
    # The same file as an uninterrupted export whose cut excludes them too.
    await services.db["entries"].delete_many({"_id": {"$in": [d["_id"] for d in late]}})
    await assert_as_uninterrupted(services, done)


async def test_part_of_a_fenced_run_landing_after_the_resume_restarts_cleanly(
    mongo_uri: str, s3_endpoint: str
) -> None:
    """A run judged dead but alive (cut off from MongoDB) may still upload a part into the
    upload the next run resumed: its part 2, of rows since changed, lands over the new run's
    part 2 just before the new run completes. S3 refuses the part list (InvalidPart); the new
    run aborts that upload and starts over from row 0 with one the fenced run does not know."""
    slow = {"s3_call_timeout_seconds": 60, "heartbeat_interval_millis": 100}
    async with (
        await TcpProxy.start("127.0.0.1", port_of(mongo_uri)) as cut_off,
        proxied(
            f"mongodb://{cut_off.address}/?directConnection=true",
            s3_endpoint,
            heartbeat_timeout_millis=600,
            mongo_timeout_ms=300,
            **slow,
        ) as setup,
    ):
        zombie = setup.services  # its MongoDB goes through `cut_off`, its S3 through the proxy
        settings = zombie.settings.model_copy(update={"mongo_uri": SecretStr(mongo_uri)})
        async with Services.open(settings) as services:
            await seed_big_entries(services, n=ROWS)
            (export,) = await queue_exports(services, 1, ExportType.ENTRIES)
            parts_2: list[S3Request] = []

            def first_part_2(request: S3Request) -> bool:
                if request.operation != UPLOAD_PART or request.query.get("partNumber") != "2":
                    return False
                parts_2.append(request)
                return len(parts_2) == 1

            completing = asyncio.Event()

            def complete(request: S3Request) -> bool:
                if request.operation == COMPLETE_MPU:
                    completing.set()
                    return True
                return False

            held_part = setup.proxy.stall(match=first_part_2)
            held_complete = setup.proxy.stall(match=complete)
            fenced = asyncio.create_task(zombie.worker.process())

            async def part_1_checkpointed() -> bool:
                current = await services.repository.get(export.id)
                return current is not None and len((current.checkpoint or {}).get("parts", [])) == 1

            await until("part 1 checkpointed, part 2 held", part_1_checkpointed, timeout=60)
            assert len(parts_2) == 1
            cut_off.stall(True)  # its beats stop landing: judged dead
            try:

                async def swept() -> bool:
                    return bool(await services.worker.sweep())

                await until("the fenced run's export re-queued", swept)
                # Rows of part 2 change before the new run reads them: its part 2 differs.
                changed = await services.db["entries"].update_one(
                    {"_id": "e060"}, {"$set": {"fields.first_name": "Changed"}}
                )
                assert changed.modified_count == 1
                rerun = asyncio.create_task(services.worker.process())
                await asyncio.wait_for(completing.wait(), 60)
                resumed = await services.repository.get(export.id)
                assert resumed is not None and resumed.resumed_from == 50
                checkpoint = resumed.checkpoint
                assert checkpoint is not None
                (new_part_2,) = [p for p in checkpoint["parts"] if p["PartNumber"] == 2]
                held_part.remove()  # the fenced run's part 2 goes on to S3, over the new one

                async def overwritten() -> bool:
                    parts = await setup.direct.uploaded_parts(
                        checkpoint["bucket"], checkpoint["key"], checkpoint["uploadId"]
                    )
                    return any(p.number == 2 and p.etag != new_part_2["ETag"] for p in parts or [])

                await until("the fenced run's part 2 on S3", overwritten, timeout=60)
                held_complete.remove()
                done = await asyncio.wait_for(rerun, 120)
                assert done is not None and done.id == export.id
                assert done.status is ExportStatus.FINISHED, done.error
                assert done.resumed_from is None  # started over
                cut_off.stall(False)
                await asyncio.wait_for(fenced, 60)  # it learns it lost the export, and stops
                await assert_as_uninterrupted(services, done)  # of the changed data
                assert await multipart_uploads(setup.direct, setup.bucket) == []
            finally:
                cut_off.stall(False)
