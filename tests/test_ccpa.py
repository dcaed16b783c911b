"""CCPA deletion (contract §7) over the real API, MongoDB and S3 servers."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient
from pymongo import AsyncMongoClient, monitoring

from export_service import db as dbmod
from export_service.ccpa.deletion import CCPA_TYPES, CcpaDeletion
from export_service.exporters import EXPORTERS
from export_service.models import ExportStatus, ExportType, utcnow
from export_service.queue.repository import CCPA_OWNER, ExportRepository, PendingUpload
from export_service.runtime import Services
from tests.support.app import app_client, app_services, auth, make_settings
from tests.support.data import BIG, T0, add_campaign, entry, stored_export
from tests.support.faults import PUT_OBJECT, S3FaultProxy, S3Request
from tests.support.gates import Gate
from tests.support.s3 import multipart_uploads, object_keys

Client = TestClient[Any, Any]
Doc = dict[str, Any]

USER = "fan-42"
OFFICER = "privacy-officer"
SUPREME = auth(supreme=True, sub=OFFICER)
ZERO = {"deletedCount": {"exports": 0, "files": 0}}
ASSOCIATIONS = ("entries", "scoring", "codes", "sms_waves")


# ---- helpers ------------------------------------------------------------------------------


async def seed_campaign(db: Any, campaign_id: str, *, via: str | None = None) -> None:
    """A campaign with another fan's data, and the user associated through `via` (if any)."""
    await add_campaign(db, campaign_id)
    other = f"{campaign_id}-fan"
    await db["entries"].insert_one(entry(f"{campaign_id}-e0", other, campaign_id=campaign_id))
    code: Doc = {"campaignId": campaign_id, "type": "presale", "marketId": f"{campaign_id}-m1"}
    await db["codes"].insert_one(
        {
            **code,
            "_id": f"{campaign_id}-c0",
            "code": "C0",
            "status": "AVAILABLE",
            "assignedTo": None,
        }
    )
    scoring: Doc = {"campaignId": campaign_id, "marketId": f"{campaign_id}-m1", "score": 1.0,
                    "rank": 1, "selected": True}  # fmt: skip
    await db["scoring"].insert_one({**scoring, "_id": f"{campaign_id}-s0", "userId": other,
                                    "entryId": f"{campaign_id}-e0"})  # fmt: skip
    wave: Doc = {"campaignId": campaign_id, "status": "SENT", "date": {"scheduled": T0}}
    await db["sms_waves"].insert_one({**wave, "_id": f"{campaign_id}-w0", "memberIds": [other]})
    if via == "entries":
        await db["entries"].insert_one(
            entry(f"{campaign_id}-e1", USER, campaign_id=campaign_id, verified=True)
        )
    elif via == "scoring":
        await db["scoring"].insert_one(
            {**scoring, "_id": f"{campaign_id}-s1", "userId": USER, "entryId": "x"}
        )
    elif via == "codes":
        await db["codes"].insert_one(
            {**code, "_id": f"{campaign_id}-c1", "code": "C1", "status": "ASSIGNED",
             "assignedTo": USER, "date": {"assigned": T0}}
        )  # fmt: skip
    elif via == "sms_waves":
        await db["sms_waves"].insert_one(
            {**wave, "_id": f"{campaign_id}-w1", "memberIds": [other, USER]}
        )


async def request_exports(client: Client, campaign_id: str, *types: str) -> list[str]:
    ids = []
    for export_type in types:
        resp = await client.post(
            f"/campaigns/{campaign_id}/exports",
            json={"exportType": export_type},
            headers=auth([campaign_id]),
        )
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["id"])
    return ids


async def run_exports(client: Client, campaign_id: str, *types: str) -> list[str]:
    ids = await request_exports(client, campaign_id, *types)
    done = await app_services(client).worker.drain()
    assert {e.status for e in done} == {ExportStatus.FINISHED}
    return ids


async def keys(services: Services, bucket: str) -> set[str]:
    return set(await object_keys(services.storage, bucket))


async def all_keys(services: Services) -> set[tuple[str, str]]:
    found = set()
    for bucket in services.settings.buckets.values():
        found |= {(bucket, k) for k in await keys(services, bucket)}
    return found


async def all_uploads(services: Services) -> list[Doc]:
    uploads: list[Doc] = []
    for bucket in services.settings.buckets.values():
        uploads += await multipart_uploads(services.storage, bucket)
    return uploads


async def export_ids(services: Services) -> set[str]:
    return {d["_id"] async for d in services.db["exports"].find({}, {"_id": 1})}


async def delete_user(client: Client, user_id: str = USER) -> tuple[int, Doc]:
    resp = await client.delete(f"/ccpa/users/{user_id}", headers=SUPREME)
    body: Doc = await resp.json()
    return resp.status, body


# ---- access -------------------------------------------------------------------------------


async def test_ccpa_needs_a_supreme_token_and_a_well_formed_user_id(client: Client) -> None:
    services = app_services(client)
    await seed_campaign(services.db, "camp-a", via="entries")
    assert (await client.delete(f"/ccpa/users/{USER}")).status == 401
    bad = {"Authorization": "Bearer not.a.token"}
    assert (await client.delete(f"/ccpa/users/{USER}", headers=bad)).status == 401
    resp = await client.delete(f"/ccpa/users/{USER}", headers=auth(["camp-a"]))
    assert resp.status == 403
    assert (await resp.json())["error"]["payload"]["code"] == "Forbidden"
    for malformed in ("a%20b", "%24where", "-x", "x" * 200):
        resp = await client.delete(f"/ccpa/users/{malformed}", headers=SUPREME)
        assert resp.status == 400, malformed
    # A refused request writes nothing, not even an audit record.
    assert await services.db["ccpa_requests"].count_documents({}) == 0


def contract_ccpa_column() -> dict[str, str]:
    """exportType → "deleted" or "kept", as the table of contract §6 says."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "contract.md").read_text()
    section = text.split("## 6. Export types", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|.*\| (deleted|kept) \|$", section, re.MULTILINE)
    return dict(rows)


def test_ccpa_types_are_the_specs_flagged_and_those_the_contract_deletes() -> None:
    # Every type has a spec, so a type cannot drop out of the set by having none.
    assert set(EXPORTERS) == set(ExportType)
    assert {t for t, spec in EXPORTERS.items() if spec.ccpa} == CCPA_TYPES
    column = contract_ccpa_column()
    assert set(column) == {t.value for t in ExportType}
    deleted = {t for t in ExportType if column[t.value] == "deleted"}
    assert deleted == CCPA_TYPES


# ---- what is deleted ----------------------------------------------------------------------


@pytest.mark.parametrize("via", ASSOCIATIONS)
async def test_deletes_ccpa_exports_of_campaigns_associated_through(
    client: Client, via: str
) -> None:
    services = app_services(client)
    await seed_campaign(services.db, "camp-a", via=via)
    await seed_campaign(services.db, "camp-b")  # the user is not in it
    deleted = set(await run_exports(client, "camp-a", "entries", "codes"))
    kept = set(await run_exports(client, "camp-b", "entries", "codes"))
    bucket = services.settings.bucket_exports
    assert len(await keys(services, bucket)) == 4

    status, body = await delete_user(client)

    assert (status, body) == (200, {"deletedCount": {"exports": 2, "files": 2}})
    assert await export_ids(services) == kept
    assert {k.split("/")[0] for k in await keys(services, bucket)} == {"camp-b"}
    assert deleted.isdisjoint(await export_ids(services))


async def test_skipped_types_and_their_objects_are_left_untouched(client: Client) -> None:
    services = app_services(client)
    settings = services.settings
    await seed_campaign(services.db, "camp-a", via="entries")
    ccpa = set(await run_exports(client, "camp-a", "entries", "codes"))
    skipped = set(await run_exports(client, "camp-a", "scoring", "verifiedEntries"))
    sfmc = [(settings.bucket_sfmc, f"NA/camp-a_en-us_{n}.csv") for n in (1, 2)]
    skipped.add(await stored_export(services, "camp-a", ExportType.AUTO_REMINDER_EMAIL, sfmc))
    before = await all_keys(services)

    status, body = await delete_user(client)

    assert (status, body) == (200, {"deletedCount": {"exports": 2, "files": 2}})
    assert await export_ids(services) == skipped
    remaining = await all_keys(services)
    assert {b for b, _ in before - remaining} == {settings.bucket_exports}
    assert len(before - remaining) == 2
    assert set(sfmc) <= remaining
    assert await keys(services, settings.bucket_scoring)
    assert await keys(services, settings.bucket_vf_scoring)
    assert ccpa.isdisjoint(await export_ids(services))


async def test_multi_file_and_unfinished_exports_are_deleted_once(client: Client) -> None:
    services = app_services(client)
    settings = services.settings
    await seed_campaign(services.db, "camp-a", via="codes")
    exp, vf = settings.bucket_exports, settings.bucket_vf_scoring
    await stored_export(
        services,
        "camp-a",
        ExportType.REMINDER_EMAIL,
        [(exp, f"camp-a/r/{n}.csv") for n in range(3)],
    )
    await stored_export(services, "camp-a", ExportType.CODE_WAVES, [(vf, "camp-a/w.csv")])
    for status in (ExportStatus.FAILED, ExportStatus.EXPIRED, ExportStatus.PENDING):
        await stored_export(services, "camp-a", ExportType.FANLIST, [], status=status)

    assert await delete_user(client) == (200, {"deletedCount": {"exports": 5, "files": 4}})
    assert await export_ids(services) == set()
    assert await all_keys(services) == set()
    # Idempotent: nothing left to delete, nothing reported.
    assert await delete_user(client) == (200, ZERO)
    assert await services.db["ccpa_requests"].count_documents({}) == 2


async def test_user_in_no_campaign_deletes_nothing(client: Client) -> None:
    services = app_services(client)
    await seed_campaign(services.db, "camp-a")
    await run_exports(client, "camp-a", "entries")
    assert await delete_user(client, "nobody") == (200, ZERO)
    assert len(await export_ids(services)) == 1


async def test_audit_record_names_who_what_and_when_but_no_personal_data(
    client: Client,
) -> None:
    services = app_services(client)
    await seed_campaign(services.db, "camp-a", via="entries")
    await seed_campaign(services.db, "camp-b", via="sms_waves")
    await seed_campaign(services.db, "camp-c")
    ids = await run_exports(client, "camp-a", "entries", "codes")
    ids += await run_exports(client, "camp-b", "entries")
    await run_exports(client, "camp-c", "entries")
    files = {e["_id"]: e["files"] async for e in services.db["exports"].find({"_id": {"$in": ids}})}
    started = utcnow()

    with structlog.testing.capture_logs() as logs:
        assert await delete_user(client) == (200, {"deletedCount": {"exports": 3, "files": 3}})

    (audit,) = await services.db["ccpa_requests"].find({}).to_list()
    assert audit["userId"] == USER
    assert audit["requestedBy"] == OFFICER
    assert audit["status"] == "COMPLETE"
    assert started <= audit["date"]["requested"] <= audit["date"]["completed"] <= utcnow()
    assert audit["campaignIds"] == ["camp-a", "camp-b"]
    assert audit["deletedCount"] == {"exports": 3, "files": 3}
    assert audit["failures"] == []
    assert {e["exportId"] for e in audit["exports"]} == set(ids)
    for record in audit["exports"]:
        expected = [{"bucket": f["bucket"], "key": f["key"]} for f in files[record["exportId"]]]
        assert record["objects"] == expected
        assert record["status"] == "FINISHED"
    # Identifiers only: nothing from the user's entry (email, names, phone, postal code).
    text = repr(audit)
    for personal in (f"{USER}@example.com", "Ann", "Lee", "+15550001", "60601"):
        assert personal not in text
    (event,) = [e for e in logs if e["event"] == "ccpa_deleted"]
    assert event["exports"] == 3 and event["files"] == 3 and event["campaigns"] == 2
    assert event["ccpa_request_id"] == audit["_id"]
    assert USER not in repr(event)


# ---- partial failure ----------------------------------------------------------------------


async def test_s3_failure_half_way_keeps_what_is_left_for_a_rerun(
    mongo_uri: str, s3_endpoint: str
) -> None:
    async with await S3FaultProxy.start(s3_endpoint) as proxy:
        settings = make_settings(mongo_uri, proxy.url)
        async with app_client(settings) as client:
            services = app_services(client)
            exp, vf = settings.bucket_exports, settings.bucket_vf_scoring
            await seed_campaign(services.db, "camp-a", via="scoring")
            await run_exports(client, "camp-a", "entries", "codes")
            waves = await stored_export(
                services, "camp-a", ExportType.CODE_WAVES, [(vf, "camp-a/w1.csv"), (vf, "w2.csv")]
            )
            # Half its objects in the bucket that works: they go, the document must stay.
            split = await stored_export(
                services, "camp-a", ExportType.FANLIST, [(exp, "camp-a/f.csv"), (vf, "f.csv")]
            )

            def delete_in_vf(req: S3Request) -> bool:
                return req.method == "POST" and "delete" in req.query and req.path == f"/{vf}"

            fault = proxy.fail_always(403, "AccessDenied", match=delete_in_vf)

            status, body = await delete_user(client)

            assert status == 503
            payload = body["error"]["payload"]
            assert payload["code"] == "CcpaIncomplete"
            assert payload["deletedCount"] == {"exports": 2, "files": 2}
            assert payload["remaining"] == 2
            assert fault.injected >= 1
            # Everything not reported deleted is still there, findable by a re-run.
            assert await export_ids(services) == {waves, split}
            assert await keys(services, vf) == {"camp-a/w1.csv", "w2.csv", "f.csv"}
            assert await keys(services, exp) == set()  # entries, codes, and split's first half
            audit = await services.db["ccpa_requests"].find_one({})
            assert audit is not None and audit["status"] == "INCOMPLETE"
            assert {f["exportId"] for f in audit["failures"]} == {waves, split}
            assert all("AccessDenied" in f["error"] for f in audit["failures"])

            fault.remove()
            assert await delete_user(client) == (200, {"deletedCount": {"exports": 2, "files": 4}})
            assert await export_ids(services) == set()
            assert await all_keys(services) == set()
            assert await delete_user(client) == (200, ZERO)


# ---- exports running while the request runs ----------------------------------------------


async def test_running_and_pending_exports_are_deleted_and_leave_nothing(
    mongo_uri: str, s3_endpoint: str
) -> None:
    # A short heartbeat: how soon the worker notices. (moto answers an UploadPart to an aborted
    # upload with a 500 that botocore retries with backoff; AWS answers 404 NoSuchUpload.)
    settings = make_settings(mongo_uri, s3_endpoint, heartbeat_interval_millis=100)
    async with app_client(settings) as client:
        services = app_services(client)
        worker = services.worker
        await add_campaign(services.db, "camp-a", preferences=[{"id": "note", "label": "Note"}])
        docs = [
            entry(f"e{i:03d}", f"u{i:03d}" if i else USER, campaign_id="camp-a") for i in range(60)
        ]
        for doc in docs:
            doc["fields"]["note"] = BIG
        await services.db["entries"].insert_many(docs)
        await seed_campaign(services.db, "camp-b")
        running_id, _pending = await request_exports(client, "camp-a", "entries", "codes")
        gate = Gate()
        worker.batch_hook = gate
        running = asyncio.create_task(worker.process())
        await gate.reached.wait()
        held = await services.db["exports"].find_one({"_id": running_id})
        assert held is not None and held["status"] == "TRIGGERED"
        assert len(held["uploads"]) == 1 and held["uploads"][0]["uploadId"]  # multipart
        assert len(await all_uploads(services)) == 1

        with structlog.testing.capture_logs() as logs:
            status, body = await delete_user(client)
            gate.release.set()
            ended = await asyncio.wait_for(running, 30)
        # The worker may notice before the document is gone: then it last saw it taken.
        assert ended is None or ended.worker_id == CCPA_OWNER

        # The running export's upload is aborted by the request itself (its worker may be dead).
        assert (status, body) == (200, {"deletedCount": {"exports": 2, "files": 0}})
        assert await export_ids(services) == set()
        assert await all_uploads(services) == []
        audit = await services.db["ccpa_requests"].find_one({})
        assert audit is not None
        (aborted,) = [e for e in audit["exports"] if e["exportId"] == running_id]
        upload = held["uploads"][0]
        assert aborted["abortedUploads"] == [{"bucket": upload["bucket"], "key": upload["key"]}]

        events = {e["event"] for e in logs}
        assert "export_lost" in events and "export_failed" not in events
        assert await all_keys(services) == set()
        assert await all_uploads(services) == []
        assert await export_ids(services) == set()
        # The slot is free again and the deleted PENDING export never runs.
        worker.batch_hook = None
        (other,) = await request_exports(client, "camp-b", "entries")
        (done,) = await worker.drain()
        assert done.id == other and done.status is ExportStatus.FINISHED


async def test_export_completing_during_the_request_is_removed_by_its_worker(
    mongo_uri: str, s3_endpoint: str
) -> None:
    # The request lands between the object's upload and `finish`: `finish` then matches
    # nothing and the worker deletes the object it just wrote.
    async with await S3FaultProxy.start(s3_endpoint) as proxy:
        settings = make_settings(mongo_uri, proxy.url)
        async with app_client(settings) as client:
            services = app_services(client)
            await seed_campaign(services.db, "camp-a", via="entries")
            (export_id,) = await request_exports(client, "camp-a", "entries")
            putting, release = asyncio.Event(), asyncio.Event()

            def put_of_camp_a(req: S3Request) -> bool:
                if req.operation == PUT_OBJECT and "/camp-a/" in req.path:
                    putting.set()
                    return True
                return False

            proxy.stall(match=put_of_camp_a, until=release)
            running = asyncio.create_task(services.worker.process())
            await asyncio.wait_for(putting.wait(), 30)

            # Captured from the request on: on a loaded machine the run's heartbeat may learn
            # of the take-over during the request, before `finish` does; either way the run
            # reports the export lost and removes what it wrote.
            with structlog.testing.capture_logs() as logs:
                deleted = await delete_user(client)
                release.set()
                assert await asyncio.wait_for(running, 30) is None
            assert deleted == (200, {"deletedCount": {"exports": 1, "files": 0}})
            assert [log for log in logs if log["event"] == "export_lost"], logs
            assert await all_keys(services) == set()
            assert export_id not in await export_ids(services)


async def test_upload_of_a_dead_workers_export_is_aborted_by_the_request(client: Client) -> None:
    services = app_services(client)
    await seed_campaign(services.db, "camp-a", via="codes")
    (export_id,) = await request_exports(client, "camp-a", "codes")
    bucket = services.settings.bucket_exports
    assert await services.repository.claim("dead-worker") is not None
    started = await services.storage.client.create_multipart_upload(Bucket=bucket, Key="k.csv")
    upload = PendingUpload(bucket, "k.csv", started["UploadId"])
    assert await services.repository.add_upload(export_id, "dead-worker", upload)

    assert await delete_user(client) == (200, {"deletedCount": {"exports": 1, "files": 0}})

    assert await all_uploads(services) == []
    assert await export_ids(services) == set()


async def test_sweep_never_requeues_an_export_a_ccpa_request_took(client: Client) -> None:
    # A request that dies after taking a running export: the sweep ends it as FAILED (and
    # cleans its upload) rather than running the user's rows again; a re-run deletes it.
    services = app_services(client)
    await seed_campaign(services.db, "camp-a", via="entries")
    (export_id,) = await request_exports(client, "camp-a", "codes")
    bucket = services.settings.bucket_exports
    assert await services.repository.claim("worker-x") is not None
    started = await services.storage.client.create_multipart_upload(Bucket=bucket, Key="k.csv")
    upload = PendingUpload(bucket, "k.csv", started["UploadId"])
    assert await services.repository.add_upload(export_id, "worker-x", upload)
    assert await services.repository.take_over([export_id], CCPA_OWNER) == 1
    await services.db["exports"].update_one(
        {"_id": export_id}, {"$set": {"heartbeatAt": utcnow() - timedelta(hours=1)}}
    )
    assert await services.worker.sweep() == 1
    swept = await services.repository.get(export_id)
    assert swept is not None and swept.status is ExportStatus.FAILED
    assert swept.error is not None and swept.error["code"] == "CcpaDeleted"
    assert await all_uploads(services) == []
    assert await services.worker.drain() == []
    assert await delete_user(client) == (200, {"deletedCount": {"exports": 1, "files": 0}})


class ClaimedMeanwhile(ExportRepository):
    """A worker claims the export between the request's read and its delete."""

    async def delete_pending(self, export_ids: Sequence[str]) -> int:
        assert await self.claim("worker-w") is not None
        return await super().delete_pending(export_ids)


async def test_export_claimed_between_read_and_delete_is_still_deleted(
    services: Services,
) -> None:
    await seed_campaign(services.db, "camp-a", via="entries")
    export, _ = await services.repository.create(
        campaign_id="camp-a", campaign_name="Tour", export_type=ExportType.CODES,
        requester_user_id="admin", date_key=None, include_all_markets=None,
    )  # fmt: skip
    racing = ClaimedMeanwhile(services.db)
    deletion = CcpaDeletion(services.db, services.storage, racing)

    result = await deletion.delete_user(USER, requested_by=OFFICER)

    assert result.complete and result.counts() == {"exports": 1, "files": 0}
    assert [d.export.id for d in result.deleted] == [export.id]
    assert result.deleted[0].export.status is ExportStatus.TRIGGERED  # deleted once taken
    assert await export_ids(services) == set()


async def test_repository_deletes_only_what_is_still_in_the_state_acted_on(
    services: Services,
) -> None:
    repo = services.repository
    export, _ = await repo.create(
        campaign_id="camp-a", campaign_name="Tour", export_type=ExportType.CODES,
        requester_user_id="admin", date_key=None, include_all_markets=None,
    )  # fmt: skip
    assert await repo.claim("worker-w") is not None
    assert await repo.delete_pending([export.id]) == 0  # claimed: no longer PENDING
    assert await repo.delete_settled([export.id], [], CCPA_OWNER) == 0  # not terminal
    assert await repo.delete_settled([], [export.id], CCPA_OWNER) == 0  # not taken
    assert await repo.take_over([export.id], CCPA_OWNER) == 1
    assert not await repo.heartbeat(export.id, "worker-w")  # its worker lost it
    assert await repo.delete_settled([], [export.id], CCPA_OWNER) == 1
    assert await export_ids(services) == set()


# ---- scale --------------------------------------------------------------------------------


class CommandCounter(monitoring.CommandListener):
    def __init__(self, database: str) -> None:
        self.database = database
        self.recording = False
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.recording and event.database_name == self.database:
            self.commands.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_many_campaigns_and_exports_take_a_bounded_number_of_calls(
    mongo_uri: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await S3FaultProxy.start(s3_endpoint) as proxy:
        settings = make_settings(mongo_uri, proxy.url)
        counter = CommandCounter(settings.mongo_db)
        listening = functools.partial(AsyncMongoClient, event_listeners=[counter])
        monkeypatch.setattr(dbmod, "AsyncMongoClient", listening)
        async with app_client(settings) as client:
            services = app_services(client)
            exp = settings.bucket_exports
            campaigns = [f"camp-{n}" for n in range(5)]
            types = sorted(CCPA_TYPES)
            for n, campaign_id in enumerate(campaigns):
                await seed_campaign(services.db, campaign_id, via=ASSOCIATIONS[n % 4])
                for i in range(20):
                    export_type = types[i % len(types)]
                    key = f"{campaign_id}/{export_type.value}/{i}.csv"
                    await stored_export(services, campaign_id, export_type, [(exp, key)])
            await seed_campaign(services.db, "camp-other")
            kept = await stored_export(
                services, "camp-other", ExportType.ENTRIES, [(exp, "camp-other/e.csv")]
            )
            proxy.reset_counters()
            counter.recording = True

            status, body = await delete_user(client)

            counter.recording = False
            s3_calls = sum(proxy.requests.values())
            assert (status, body) == (200, {"deletedCount": {"exports": 100, "files": 100}})
            assert await export_ids(services) == {kept}
            assert await keys(services, exp) == {"camp-other/e.csv"}
            # audit insert, 4 distinct, 1 find, 1 delete_many, audit update: no per-export call.
            assert sorted(counter.commands) == sorted(
                ["insert", "distinct", "distinct", "distinct", "distinct", "find", "delete",
                 "update"]
            )  # fmt: skip
            # One DeleteObjects for the 100 keys of the one bucket, and nothing else.
            assert s3_calls == 1
