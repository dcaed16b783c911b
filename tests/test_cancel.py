"""Cancel (contract §9) over the real servers: the API answers, the running worker stopping in this
process and in another one, the race with the export's own end, and bad requests changing nothing."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from export_service.models import ExportStatus, ExportType, utcnow
from export_service.runtime import Services
from export_service.settings import Settings
from tests.support.app import app_client, app_services, auth, make_settings
from tests.support.commands import ExportWrites
from tests.support.data import CAMPAIGN, add_campaign, queue_exports, seed_big_entries
from tests.support.faults import UPLOAD_PART, S3FaultProxy, operations
from tests.support.gates import Gate, until
from tests.support.s3 import leftovers, multipart_uploads, object_keys
from tests.support.workers import WorkerProcess

Client = TestClient[Any, Any]
URL = f"/campaigns/{CAMPAIGN}/exports"
CANCEL_WITHIN = 5.0


def cancel_url(export_id: str, campaign: str = CAMPAIGN) -> str:
    return f"/campaigns/{campaign}/exports/{export_id}/cancel"


async def docs(services: Services) -> list[dict[str, Any]]:
    return await services.db["exports"].find({}).sort("_id").to_list()


async def test_cancel_pending_fails_it_and_a_repeat_changes_nothing(client: Client) -> None:
    services = app_services(client)
    await add_campaign(services.db)
    created = await (
        await client.post(URL, json={"exportType": "codes"}, headers=auth([CAMPAIGN]))
    ).json()
    resp = await client.post(cancel_url(created["id"]), headers=auth([CAMPAIGN], sub="admin-7"))
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "FAILED"
    assert body["error"] == {"code": "Cancelled", "message": "cancelled on request"}
    assert body["cancelledBy"] == "admin-7"
    assert body["date"]["failed"].endswith("Z")
    assert "cancelRequested" not in body and "queue" not in body
    before = await docs(services)
    again = await client.post(cancel_url(created["id"]), headers=auth([CAMPAIGN], sub="other"))
    assert again.status == 200
    assert await again.json() == body
    assert await docs(services) == before
    # A cancelled export no longer holds its dedupe slot, and the worker never runs it.
    fresh = await client.post(URL, json={"exportType": "codes"}, headers=auth([CAMPAIGN]))
    assert fresh.status == 202
    ran = await services.worker.drain()
    assert [e.id for e in ran] == [(await fresh.json())["id"]]


async def test_bad_cancels_answer_their_status_and_change_nothing(client: Client) -> None:
    services = app_services(client)
    await add_campaign(services.db)
    await add_campaign(services.db, "camp-2")
    headers = auth([CAMPAIGN, "camp-2"])

    async def post(campaign: str, export_type: str) -> dict[str, Any]:
        url = f"/campaigns/{campaign}/exports"
        resp = await client.post(url, json={"exportType": export_type}, headers=headers)
        return dict(await resp.json())

    finished = await post(CAMPAIGN, "scoring")
    done = await services.worker.process()
    assert done is not None and done.id == finished["id"] and done.status is ExportStatus.FINISHED
    pending, other = await post(CAMPAIGN, "codes"), await post("camp-2", "codes")
    before = await docs(services)
    cases = [
        (cancel_url("no-such-export"), headers, 404, "NotFound"),
        (cancel_url("bad%20id!"), headers, 404, "NotFound"),
        (cancel_url(other["id"]), headers, 404, "NotFound"),  # camp-2's, asked through camp-1
        (cancel_url(pending["id"]), {}, 401, "Unauthorized"),
        (cancel_url(pending["id"]), {"Authorization": "Bearer nope"}, 401, "Unauthorized"),
        (cancel_url(pending["id"]), auth(["camp-2"]), 403, "Forbidden"),
        (cancel_url(pending["id"]), auth([CAMPAIGN], ttl_seconds=-10), 401, "Unauthorized"),
        (cancel_url(pending["id"]), auth([CAMPAIGN], actions=("READ",)), 403, "Forbidden"),
        (cancel_url(finished["id"]), headers, 409, "ExportFinished"),
    ]
    for url, hdrs, status, code in cases:
        resp = await client.post(url, headers=hdrs)
        assert resp.status == status, (url, await resp.text())
        error = (await resp.json())["error"]
        assert error["status"] == status and error["payload"]["code"] == code, (url, error)
        assert error["message"]
    assert await docs(services) == before


async def test_cancel_of_a_running_export_stops_it_and_the_next_starts_at_once(
    mongo_uri: str, s3_endpoint: str
) -> None:
    # Encoder processes on, so the run is stopped with batches in the encoder processes and a
    # multipart upload open (60 rows of 110 kB: the first batch ships a 5 MiB part).
    settings = make_settings(
        mongo_uri, s3_endpoint, encoder_processes=1, cancel_check_interval_millis=1000
    )
    async with app_client(settings) as client:
        services = app_services(client)
        await seed_big_entries(services)
        running, following = await queue_exports(services, 2, ExportType.ENTRIES)
        gate = Gate()
        services.worker.batch_hook = gate
        claims = services.worker.watch_claims()
        loop = asyncio.create_task(services.worker.run())
        try:
            assert (await asyncio.wait_for(claims.get(), 10)).id == running.id
            await asyncio.wait_for(gate.reached.wait(), 30)
            bucket = settings.bucket_exports
            assert await multipart_uploads(services.storage, bucket)  # mid-upload
            gate.reached.clear()
            asked = time.monotonic()
            resp = await client.post(cancel_url(running.id), headers=auth([CAMPAIGN], sub="a9"))
            assert resp.status == 202
            body = await resp.json()
            assert body["status"] == "TRIGGERED" and body["cancelRequested"] is True
            assert body["cancelledBy"] == "a9"
            # Same process: woken at once, not at the next check. The next export starts now.
            assert (await asyncio.wait_for(claims.get(), CANCEL_WITHIN)).id == following.id
            took = time.monotonic() - asked
            print(f"same process: cancel to next claim {took:.3f} s")  # README, with -s
            assert took < CANCEL_WITHIN
            ended = await services.repository.get(running.id)
            assert ended is not None and ended.status is ExportStatus.FAILED
            assert ended.error == {"code": "Cancelled", "message": "cancelled on request"}
            assert ended.cancelled_by == "a9" and ended.count is None and not ended.files
            assert await multipart_uploads(services.storage, bucket) == []
            assert await object_keys(services.storage, bucket) == []
            # A repeat of the cancel is the same answer and changes nothing.
            again = await client.post(cancel_url(running.id), headers=auth([CAMPAIGN]))
            assert again.status == 200
            assert (await again.json())["cancelledBy"] == "a9"
        finally:
            gate.release.set()
            await services.worker.shutdown(grace=10)
            await loop


@pytest.mark.parametrize(
    "export_type", [ExportType.REMINDER_EMAIL, ExportType.AUTO_REMINDER_EMAIL, ExportType.CODES]
)
async def test_cancel_read_from_mongodb_stops_zip_objects_and_csv_runs(
    services: Services, export_type: ExportType
) -> None:
    """No wake-up in this process: the run learns the cancel from its heartbeat alone."""
    await seed_big_entries(services, n=8)
    await services.db["codes"].insert_many(
        [{"_id": f"c{i}", "campaignId": CAMPAIGN, "code": f"C{i}", "status": "AVAILABLE"}
         for i in range(120)]
    )  # fmt: skip
    (export,) = await queue_exports(services, 1, export_type)
    gate = Gate()
    services.worker.batch_hook = gate
    run = asyncio.create_task(services.worker.process())
    await asyncio.wait_for(gate.reached.wait(), 30)
    result = await services.repository.cancel(export.id, CAMPAIGN, "someone")
    assert result is not None and result.outcome == "requested"
    asked = time.monotonic()
    ended = await asyncio.wait_for(run, CANCEL_WITHIN)
    assert time.monotonic() - asked < CANCEL_WITHIN
    assert ended is not None and ended.status is ExportStatus.FAILED
    assert ended.error is not None and ended.error["code"] == "Cancelled"
    assert await leftovers(services) == []
    doc = await services.db["exports"].find_one({"_id": export.id})
    assert doc is not None and "slot" not in doc and "uploads" not in doc


async def test_cancel_racing_the_end_settles_on_one_status_with_nothing_half_written(
    services: Services,
) -> None:
    """Cancels fired at every point of small runs: each export ends either FINISHED with its
    file (the cancel answered 409) or FAILED Cancelled with no object at all."""
    await add_campaign(services.db)
    await services.db["codes"].insert_many(
        [{"_id": f"c{i}", "campaignId": CAMPAIGN, "code": f"C{i}", "status": "AVAILABLE"}
         for i in range(120)]
    )  # fmt: skip
    exports = await queue_exports(services, 12, ExportType.CODES)
    outcomes: dict[str, str] = {}

    async def canceller(export_id: str, turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)  # a different point of the run for each export
        result = await services.repository.cancel(export_id, CAMPAIGN, "racer")
        assert result is not None
        outcomes[export_id] = result.outcome

    for i, export in enumerate(exports):
        await asyncio.gather(services.worker.process(), canceller(export.id, i * 7))
    bucket = services.settings.bucket_exports
    keys = set(await object_keys(services.storage, bucket))
    assert await multipart_uploads(services.storage, bucket) == []
    seen = set()
    for export in exports:
        ended = await services.repository.get(export.id)
        assert ended is not None
        key = f"{CAMPAIGN}/codes/{export.id}.csv"
        if ended.status is ExportStatus.FINISHED:
            assert outcomes[export.id] == "finished"
            assert key in keys and ended.files[0].rows == 120
        else:
            assert ended.status is ExportStatus.FAILED and ended.cancelled, ended
            assert outcomes[export.id] in ("cancelled", "requested")
            assert key not in keys and not ended.files
        seen.add(ended.status)
    assert seen == {ExportStatus.FINISHED, ExportStatus.FAILED}  # both sides of the race ran


async def test_a_single_put_is_recorded_and_fenced_in_one_write_and_not_at_all_once_cancelled(
    settings: Settings,
) -> None:
    """A small file goes up in one PutObject: right before it, one write records the object and
    checks the run still holds the export and nobody cancelled it. A run cancelled by then
    (in MongoDB alone: no wake-up) matches no such write and writes no object."""
    writes = ExportWrites()
    async with Services.open(settings, create_buckets=True, listeners=[writes]) as services:
        try:
            await add_campaign(services.db)
            await services.db["codes"].insert_many(
                [{"_id": f"c{i}", "campaignId": CAMPAIGN, "code": f"C{i}", "status": "AVAILABLE"}
                 for i in range(120)]
            )  # fmt: skip
            finished, cancelled = await queue_exports(services, 2, ExportType.CODES)
            done = await services.worker.process()
            assert done is not None and done.id == finished.id
            assert done.status is ExportStatus.FINISHED
            ((query, update),) = writes.pushes(finished.id)
            assert query["cancelRequested"] == {"$ne": True} and query["workerId"]
            assert [u["key"] for u in update["$push"].values()] == [done.files[0].key]
            assert "heartbeatAt" in update["$set"]

            gate = Gate()
            services.worker.batch_hook = gate
            run = asyncio.create_task(services.worker.process())
            await asyncio.wait_for(gate.reached.wait(), 30)
            result = await services.repository.cancel(cancelled.id, CAMPAIGN, "someone")
            assert result is not None and result.outcome == "requested"
            gate.release.set()
            ended = await asyncio.wait_for(run, 30)
            assert ended is not None and ended.cancelled
            # Its one attempt to record the object matched nothing: it excludes cancelled runs.
            ((query, _),) = writes.pushes(cancelled.id)
            assert query["cancelRequested"] == {"$ne": True}
            assert await object_keys(services.storage, settings.bucket_exports) == [
                done.files[0].key
            ]
        finally:
            await services.client.drop_database(settings.mongo_db)


async def test_a_cancelled_run_is_never_requeued_and_a_dead_workers_is_ended(
    services: Services,
) -> None:
    await add_campaign(services.db)
    (export,) = await queue_exports(services, 1, ExportType.CODES)
    repo = services.repository
    claimed = await repo.claim("gone-worker")
    assert claimed is not None and claimed.id == export.id
    assert (await repo.cancel(export.id, CAMPAIGN, "x")).outcome == "requested"  # type: ignore[union-attr]
    assert not await repo.requeue(export.id, "gone-worker")  # shutdown cannot bring it back
    assert not await repo.finish(export.id, "gone-worker", [], 0)  # nor finish it
    # Its worker died: the sweep, once the heartbeat is stale, carries the cancel out.
    await services.db["exports"].update_one(
        {"_id": export.id}, {"$set": {"heartbeatAt": utcnow() - timedelta(hours=1)}}
    )
    assert await services.worker.sweep() == 1
    ended = await repo.get(export.id)
    assert ended is not None and ended.cancelled and ended.cancelled_by == "x"


async def test_cancel_reaches_a_worker_in_another_process_mid_upload(
    mongo_uri: str, s3_endpoint: str, tmp_path: Path
) -> None:
    """The API here, the worker in its own process, its UploadPart held unanswered by a proxy:
    the worker reads the cancel from MongoDB, stops, aborts the upload and ends the export."""
    proxy = await S3FaultProxy.start(s3_endpoint)
    worker_settings = make_settings(
        mongo_uri, proxy.url, cancel_check_interval_millis=500, polling_interval_millis=100
    )
    local = worker_settings.model_copy(update={"s3_endpoint_url": s3_endpoint})
    proc: WorkerProcess | None = None
    held = asyncio.Event()

    def hold(request: Any) -> bool:
        if operations(UPLOAD_PART)(request):
            held.set()
            return True
        return False

    proxy.stall(match=hold)
    async with app_client(local) as client:
        services = app_services(client)
        try:
            await seed_big_entries(services)
            running, following = await queue_exports(services, 2, ExportType.ENTRIES)
            proc = WorkerProcess(worker_settings, tmp_path, "worker")
            await asyncio.wait_for(held.wait(), 60)
            resp = await client.post(cancel_url(running.id), headers=auth([CAMPAIGN]))
            assert resp.status == 202
            asked = time.monotonic()

            async def cancelled() -> bool:
                ended = await services.repository.get(running.id)
                return ended is not None and ended.cancelled

            await until("the other process to cancel", cancelled, timeout=CANCEL_WITHIN)
            took = time.monotonic() - asked
            print(f"other process: cancel to FAILED Cancelled {took:.3f} s")  # README, with -s
            assert took < CANCEL_WITHIN
            bucket = local.bucket_exports
            assert await multipart_uploads(services.storage, bucket) == []
            assert await object_keys(services.storage, bucket) == []

            async def next_started() -> bool:
                nxt = await services.repository.get(following.id)
                return nxt is not None and nxt.status is ExportStatus.TRIGGERED

            # The next export starts at once (its own UploadPart is held in turn).
            await until("the next export to start", next_started, timeout=CANCEL_WITHIN)
            assert any(e.get("event") == "export_cancelled" for e in proc.events())
        finally:
            if proc is not None:
                proc.stop()
            await proxy.close()
