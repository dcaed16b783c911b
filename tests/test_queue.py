"""Queue rules (contract §5) with real workers on the real servers, driven in drain mode."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from export_service.errors import ExportFailed
from export_service.models import Export, ExportStatus, ExportType, utcnow
from export_service.queue.repository import PendingUpload
from export_service.queue.worker import Worker
from export_service.runtime import Services
from export_service.settings import Settings
from tests.support.app import make_settings
from tests.support.data import CAMPAIGN, add_campaign, queue_exports, seed_big_entries
from tests.support.gates import Gate
from tests.support.s3 import multipart_uploads, object_keys


def second_worker(services: Services, settings: Settings | None = None) -> Worker:
    return Worker(services.repository, services.db, services.storage, settings or services.settings)


async def test_claim_runs_each_export_exactly_once_with_two_workers(services: Services) -> None:
    await add_campaign(services.db)
    await services.db["scoring"].insert_one(
        {"_id": "s1", "campaignId": CAMPAIGN, "userId": "u1", "entryId": "e1", "marketId": "m",
         "score": 1.5, "rank": 1, "selected": True}
    )  # fmt: skip
    # codeWaves dedupes on dateKey, so 200 distinct requests make 200 exports.
    exports = await queue_exports(services, 150, ExportType.SCORING)
    assert len({e.id for e in exports}) == 150
    a, b = services.worker, second_worker(services)
    active_seen: list[int] = []

    async def observe(export: Export, rows: int) -> None:
        active_seen.append(await services.db["exports"].count_documents({"status": "TRIGGERED"}))

    a.batch_hook = b.batch_hook = observe

    ended = {a: a.subscribe(), b: b.subscribe()}

    async def work(worker: Worker, other: Worker) -> list[Export]:
        # Unlike drain(), keep going while the other worker holds the slot: wait for it to
        # end an export, then try again.
        ran: list[Export] = []
        while await services.db["exports"].count_documents({"status": "PENDING"}):
            if (export := await worker.process()) is not None:
                ran.append(export)
            elif other.busy:
                await asyncio.wait_for(ended[other].get(), timeout=30)
        return ran

    ran_a, ran_b = await asyncio.gather(work(a, b), work(b, a))
    ran = [e.id for e in ran_a + ran_b]
    assert sorted(ran) == sorted(e.id for e in exports)  # each once, none twice
    assert ran_a and ran_b  # both workers took part
    assert set(active_seen) == {1}
    docs = await services.db["exports"].find({}).to_list()
    assert {d["status"] for d in docs} == {"FINISHED"}
    assert {d["attempts"] for d in docs} == {1}


async def test_second_worker_waits_while_one_export_is_triggered(services: Services) -> None:
    await seed_big_entries(services, n=3)
    _first, second = await queue_exports(services, 2, ExportType.ENTRIES)
    gate = Gate()
    services.worker.batch_hook = gate
    running = asyncio.create_task(services.worker.process())
    await gate.reached.wait()
    other = second_worker(services)
    assert await other.process() is None  # single active export, enforced by the index
    assert (await services.repository.get(second.id)).status is ExportStatus.PENDING  # type: ignore[union-attr]
    gate.release.set()
    assert (await running).status is ExportStatus.FINISHED  # type: ignore[union-attr]
    done = await other.process()
    assert done is not None and done.id == second.id and done.status is ExportStatus.FINISHED


async def test_max_concurrent_exports_allows_more(mongo_uri: str, s3_endpoint: str) -> None:
    settings = make_settings(mongo_uri, s3_endpoint, max_concurrent_exports=2)
    async with Services.open(settings, create_buckets=True) as services:
        try:
            await seed_big_entries(services, n=3)
            await queue_exports(services, 3, ExportType.ENTRIES)
            gate_a, gate_b = Gate(), Gate()
            a, b, c = services.worker, second_worker(services), second_worker(services)
            a.batch_hook, b.batch_hook = gate_a, gate_b
            run_a = asyncio.create_task(a.process())
            await gate_a.reached.wait()
            run_b = asyncio.create_task(b.process())
            await gate_b.reached.wait()
            assert await c.process() is None
            gate_a.release.set()
            gate_b.release.set()
            await asyncio.gather(run_a, run_b)
        finally:
            await services.client.drop_database(settings.mongo_db)


async def test_timeout_expires_export_and_leaves_no_object(
    mongo_uri: str, s3_endpoint: str
) -> None:
    # Long enough for the first batch (encoder processes start with it) and the hook's S3 look
    # on a loaded machine: the deadline must fall while the hook waits, not during its look.
    settings = make_settings(mongo_uri, s3_endpoint, timeout_millis=4000)
    async with Services.open(settings, create_buckets=True) as services:
        try:
            await seed_big_entries(services)
            (export,) = await queue_exports(services, 1, ExportType.ENTRIES)
            uploads_seen: list[int] = []

            async def hold(exp: Export, rows: int) -> None:
                uploads_seen.append(
                    len(await multipart_uploads(services.storage, settings.bucket_exports))
                )
                await asyncio.Event().wait()  # never released: only the timeout ends this

            services.worker.batch_hook = hold
            result = await services.worker.process()
            assert result is not None
            assert result.status is ExportStatus.EXPIRED
            assert "expired" in result.date
            assert uploads_seen == [1]  # a multipart upload was really under way
            assert await multipart_uploads(services.storage, settings.bucket_exports) == []
            assert await object_keys(services.storage, settings.bucket_exports) == []
            doc = await services.db["exports"].find_one({"_id": export.id})
            assert doc is not None and "slot" not in doc and "dedupeKey" not in doc
        finally:
            await services.client.drop_database(settings.mongo_db)


async def test_shutdown_past_grace_requeues_and_cleans_up(services: Services) -> None:
    await seed_big_entries(services)
    (export,) = await queue_exports(services, 1, ExportType.ENTRIES)
    gate = Gate()
    services.worker.batch_hook = gate
    running = asyncio.create_task(services.worker.process())
    await gate.reached.wait()
    await services.worker.shutdown(grace=0)
    requeued = await running
    assert requeued is not None and requeued.status is ExportStatus.PENDING
    # entries resume (contract §14): at most its own upload stays, for the next run.
    assert len(await multipart_uploads(services.storage, services.settings.bucket_exports)) <= 1
    assert await object_keys(services.storage, services.settings.bucket_exports) == []
    assert await services.worker.process() is None  # a stopping worker claims nothing
    other = second_worker(services)
    (done,) = await other.drain()
    assert done.id == export.id and done.status is ExportStatus.FINISHED
    assert done.attempts == 2
    assert done.files[0].rows == 60
    assert await multipart_uploads(services.storage, services.settings.bucket_exports) == []


async def test_shutdown_lets_running_export_finish_within_grace(services: Services) -> None:
    await seed_big_entries(services, n=3)
    await queue_exports(services, 1, ExportType.ENTRIES)
    gate = Gate()
    services.worker.batch_hook = gate
    running = asyncio.create_task(services.worker.process())
    await gate.reached.wait()
    stopping = asyncio.create_task(services.worker.shutdown(grace=30))
    gate.release.set()
    await stopping
    finished = await running
    assert finished is not None and finished.status is ExportStatus.FINISHED


async def test_sweep_requeues_dead_workers_export_and_aborts_its_upload(
    services: Services,
) -> None:
    await add_campaign(services.db)
    (export,) = await queue_exports(services, 1, ExportType.CODES)
    bucket = services.settings.bucket_exports
    dead = await services.repository.claim("dead-worker")
    assert dead is not None and dead.id == export.id
    started = await services.storage.client.create_multipart_upload(Bucket=bucket, Key="k.csv")
    await services.repository.add_upload(
        export.id, "dead-worker", PendingUpload(bucket, "k.csv", started["UploadId"])
    )
    await services.db["exports"].update_one(
        {"_id": export.id}, {"$set": {"heartbeatAt": utcnow() - timedelta(minutes=5)}}
    )
    assert await services.worker.sweep() == 1
    assert (await services.repository.get(export.id)).status is ExportStatus.PENDING  # type: ignore[union-attr]
    # codes resume (contract §14): the upload stays until the next run finds no checkpoint
    # for it and aborts it before writing.
    (done,) = await services.worker.drain()
    assert done.status is ExportStatus.FINISHED
    assert await multipart_uploads(services.storage, bucket) == []


async def test_sweep_expires_export_past_timeout(services: Services) -> None:
    await add_campaign(services.db)
    (export,) = await queue_exports(services, 1, ExportType.CODES)
    await services.repository.claim("slow-worker")
    await services.db["exports"].update_one(
        {"_id": export.id}, {"$set": {"date.triggered": utcnow() - timedelta(hours=1)}}
    )
    assert await services.worker.sweep() == 1
    expired = await services.repository.get(export.id)
    assert expired is not None and expired.status is ExportStatus.EXPIRED
    assert "expired" in expired.date


async def test_terminal_status_is_never_overwritten(services: Services) -> None:
    await add_campaign(services.db)
    (export,) = await queue_exports(services, 1, ExportType.CODES)
    await services.worker.drain()
    repo = services.repository
    assert not await repo.expire(export.id, None)
    assert not await repo.fail(export.id, None, ExportFailed("y"))
    assert not await repo.requeue(export.id, None)
    assert not await repo.finish(export.id, services.worker.worker_id, [], 0)
    assert (await repo.get(export.id)).status is ExportStatus.FINISHED  # type: ignore[union-attr]


async def test_dedupe_key_is_released_when_export_ends(services: Services) -> None:
    await add_campaign(services.db)
    (first,) = await queue_exports(services, 1, ExportType.CODES)
    await services.worker.drain()
    (second,) = await queue_exports(services, 1, ExportType.CODES)
    assert second.id != first.id


@pytest.mark.parametrize("export_type", [ExportType.ENTRIES])
async def test_missing_campaign_fails_cleanly(services: Services, export_type: ExportType) -> None:
    await queue_exports(services, 1, export_type)
    (done,) = await services.worker.drain()
    assert done.status is ExportStatus.FAILED
    assert done.error == {"code": "CampaignNotFound", "message": done.error["message"]}  # type: ignore[index]
