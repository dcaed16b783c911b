"""Retention (contract §13) over the real MongoDB and S3 servers: the sweep, its `purges` record,
answers without URLs, S3 failures, one sweeper at a time, idempotence and resumption.

Time is the sweep's `now` argument (the clock of every cutoff, lease and date), never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from rich.console import Console
from structlog.testing import capture_logs

from export_service import metrics
from export_service.app.factory import create_app
from export_service.client import render, terminal
from export_service.client.api import DownloadFailed
from export_service.models import ExportStatus, ExportType, utcnow
from export_service.retention import LEASE, RETENTION, Retention, SweepResult
from export_service.runtime import Services
from export_service.settings import Settings
from tests.support.app import app_services, auth, make_settings, open_services
from tests.support.data import CAMPAIGN, add_campaign, entry, stored_export
from tests.support.faults import DELETE_OBJECTS, S3Request
from tests.support.gates import until
from tests.support.proxied import Proxied, proxied
from tests.support.s3 import object_keys
from tests.support.workers import WorkerProcess, pid_of

Doc = dict[str, Any]

# The default of 30 days, scoring files kept 7 days, codes kept forever.
RETENTION_SETTINGS: dict[str, Any] = {
    "retention_days": 30,
    "retention_days_by_type": {"scoring": 7, "codes": 0},
    "retention_sweep_interval_millis": 3_600_000,
}
INTERVAL = timedelta(hours=1)


@pytest.fixture
async def services(mongo_uri: str, s3_endpoint: str) -> AsyncIterator[Services]:
    async with open_services(
        make_settings(mongo_uri, s3_endpoint, **RETENTION_SETTINGS)
    ) as services:
        yield services


@pytest.fixture
async def faulty(mongo_uri: str, s3_endpoint: str) -> AsyncIterator[Proxied]:
    async with proxied(mongo_uri, s3_endpoint, **RETENTION_SETTINGS) as setup:
        yield setup


async def old(
    services: Services, export_type: ExportType, days: float, *keys: str, bucket: str = ""
) -> str:
    """A FINISHED export of `export_type` that finished `days` ago, its objects in S3."""
    where = bucket or services.settings.bucket_exports
    return await stored_export(
        services,
        CAMPAIGN,
        export_type,
        [(where, key) for key in keys],
        finished=utcnow() - timedelta(days=days),
    )


async def purged(services: Services) -> dict[str, Doc]:
    """`purged` of every purged export, by id."""
    cursor = services.db["exports"].find({"purged": {"$ne": None}})
    return {doc["_id"]: doc["purged"] async for doc in cursor}


async def purge_records(services: Services) -> dict[str, Doc]:
    return {doc["_id"]: doc async for doc in services.db["purges"].find({})}


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def is_delete(req: S3Request) -> bool:
    return req.operation == DELETE_OBJECTS


# ---- which exports go -------------------------------------------------------------------


async def test_exports_past_their_retention_are_purged_and_newer_ones_kept(
    services: Services,
) -> None:
    bucket = services.settings.bucket_exports
    gone = await old(services, ExportType.ENTRIES, 31, "a/1.csv", "a/2.csv")
    kept = await old(services, ExportType.ENTRIES, 29, "b.csv")
    failed = await stored_export(
        services, CAMPAIGN, ExportType.ENTRIES, [], status=ExportStatus.FAILED
    )
    await services.db["exports"].update_one(
        {"_id": failed}, {"$set": {"date.failed": utcnow() - timedelta(days=90)}}
    )

    result = await services.retention.sweep()

    assert result is not None
    assert result.purged == [gone] and result.kept == [] and result.candidates == 1
    assert result.objects == 2 and result.bytes == 10
    assert await object_keys(services.storage, bucket) == ["b.csv"]
    assert set(await purged(services)) == {gone}
    after = await services.repository.get(gone)
    assert after is not None and after.status is ExportStatus.FINISHED
    assert after.purged == {"date": result.started, "reason": RETENTION}
    assert [f.key for f in after.files] == ["a/1.csv", "a/2.csv"]  # still listed
    still = await services.repository.get(kept)
    assert still is not None and still.purged is None


async def test_retention_by_type_overrides_the_default(services: Services) -> None:
    scoring_bucket = services.settings.bucket_scoring
    scoring_old = await old(services, ExportType.SCORING, 8, "s8.csv", bucket=scoring_bucket)
    scoring_new = await old(services, ExportType.SCORING, 6, "s6.csv", bucket=scoring_bucket)
    codes_ancient = await old(services, ExportType.CODES, 3650, "codes.csv")
    fanlist = await old(services, ExportType.FANLIST, 20, "fanlist.csv")

    result = await services.retention.sweep()

    assert result is not None and result.purged == [scoring_old]
    assert set(await purged(services)) == {scoring_old}
    assert await object_keys(services.storage, scoring_bucket) == ["s6.csv"]
    assert await object_keys(services.storage, services.settings.bucket_exports) == [
        "codes.csv",
        "fanlist.csv",
    ]
    # A later clock: fanlist's 30 days and the newer scoring file's 7 pass; codes stay forever.
    later = await services.retention.sweep(utcnow() + timedelta(days=11))
    assert later is not None and set(later.purged) == {scoring_new, fanlist}
    assert set(await purged(services)) == {scoring_old, scoring_new, fanlist}
    assert await object_keys(services.storage, services.settings.bucket_exports) == ["codes.csv"]
    assert codes_ancient not in await purged(services)


async def test_no_retention_configured_means_no_sweep(mongo_uri: str, s3_endpoint: str) -> None:
    async with open_services(make_settings(mongo_uri, s3_endpoint)) as services:
        ancient = await old(services, ExportType.ENTRIES, 3650, "e.csv")
        assert await services.retention.sweep() is None
        await services.retention.run()  # returns at once: nothing to keep track of
        assert await purged(services) == {}
        assert await object_keys(services.storage, services.settings.bucket_exports) == ["e.csv"]
        assert await services.repository.get(ancient) is not None


# ---- what is recorded and answered ----------------------------------------------------------


async def test_purges_record_names_the_export_its_objects_bytes_and_when(
    services: Services,
) -> None:
    exports, scoring = services.settings.bucket_exports, services.settings.bucket_scoring
    finished = utcnow() - timedelta(days=40)
    export_id = await stored_export(
        services, CAMPAIGN, ExportType.ENTRIES, [(exports, "x/1.csv"), (scoring, "x/2.csv")],
        finished=finished, body=b"id,email\r\n1,a\r\n",
    )  # fmt: skip

    result = await services.retention.sweep()

    assert result is not None and result.purged == [export_id]
    (record,) = (await purge_records(services)).values()
    assert record == {
        "_id": export_id,
        "exportId": export_id,
        "campaignId": CAMPAIGN,
        "exportType": "entries",
        "reason": "retention",
        "date": result.started,
        "finished": finished,
        "retentionDays": 30,
        "keys": [
            {"bucket": exports, "key": "x/1.csv", "bytes": 15},
            {"bucket": scoring, "key": "x/2.csv", "bytes": 15},
        ],
        "objects": 2,
        "bytes": 30,
        "sweptBy": services.worker.worker_id,
    }


async def test_sweep_metrics_and_logs(services: Services) -> None:
    before = {
        name: sample(f"export_service_retention_purged_{name}_total", export_type="fanlist")
        for name in ("exports", "objects", "bytes")
    }
    await old(services, ExportType.FANLIST, 31, "f1.csv", "f2.csv")
    with capture_logs() as logs:
        result = await services.retention.sweep()

    assert result is not None and len(result.purged) == 1
    after = {
        name: sample(f"export_service_retention_purged_{name}_total", export_type="fanlist")
        for name in ("exports", "objects", "bytes")
    }
    assert {k: after[k] - before[k] for k in after} == {"exports": 1, "objects": 2, "bytes": 10}
    assert sample("export_service_retention_last_sweep_timestamp_seconds") > 0
    events = [e["event"] for e in logs]
    assert events == [
        "retention_sweep_started",
        "retention_export_purged",
        "retention_sweep_finished",
    ]
    purged_line = logs[1]
    assert purged_line["export_id"] == result.purged[0] and purged_line["objects"] == 2
    assert logs[2]["purged"] == 1 and logs[2]["bytes"] == 10


async def test_purged_export_answers_get_and_list_without_urls(
    mongo_uri: str, s3_endpoint: str
) -> None:
    # fanlist files are kept 40 days here: only the entries export is past its retention.
    by_type = {**RETENTION_SETTINGS["retention_days_by_type"], "fanlist": 40}
    settings = make_settings(
        mongo_uri, s3_endpoint, **{**RETENTION_SETTINGS, "retention_days_by_type": by_type}
    )
    app = create_app(settings, run_worker=False, create_buckets=True)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        services = app_services(client)
        try:
            await add_campaign(services.db)
            await services.db["entries"].insert_one(entry("e1", "u1"))
            headers = auth([CAMPAIGN])
            ids = []
            for export_type in ("entries", "fanlist"):
                resp = await client.post(
                    f"/campaigns/{CAMPAIGN}/exports",
                    json={"exportType": export_type},
                    headers=headers,
                )
                assert resp.status == 202, await resp.text()
                ids.append((await resp.json())["id"])
            done = await services.worker.drain()
            assert {e.status for e in done} == {ExportStatus.FINISHED}
            entries_id, fanlist_id = ids
            result = await services.retention.sweep(utcnow() + timedelta(days=31))
            assert result is not None and result.purged == [entries_id]

            resp = await client.get(f"/campaigns/{CAMPAIGN}/exports/{entries_id}", headers=headers)
            assert resp.status == 200
            body = await resp.json()
            assert body["status"] == "FINISHED"
            assert body["purged"]["reason"] == "retention"
            assert body["purged"]["date"].endswith("Z")
            assert "path" not in body
            assert body["files"] and all("url" not in f for f in body["files"])
            assert body["files"][0]["sha256"] and body["files"][0]["key"]

            resp = await client.get(f"/campaigns/{CAMPAIGN}/exports", headers=headers)
            listed = {e["id"]: e for e in (await resp.json())["exports"]}
            assert "url" not in listed[entries_id]["files"][0]
            assert "path" not in listed[entries_id]
            # The export still inside its retention keeps its links.
            assert "purged" not in listed[fanlist_id]
            assert listed[fanlist_id]["path"] and listed[fanlist_id]["files"][0]["url"]
        finally:
            await services.client.drop_database(settings.mongo_db)


# ---- failures, concurrency, repeats -----------------------------------------------------------


async def test_s3_failure_leaves_the_export_unpurged_and_the_next_sweep_purges_it(
    faulty: Proxied,
) -> None:
    services = faulty.services
    exports, scoring = services.settings.bucket_exports, services.settings.bucket_scoring
    split = await stored_export(
        services, CAMPAIGN, ExportType.ENTRIES, [(exports, "s/1.csv"), (scoring, "s/2.csv")],
        finished=utcnow() - timedelta(days=31),
    )  # fmt: skip
    whole = await old(services, ExportType.FANLIST, 31, "w.csv")

    def delete_in_scoring(req: S3Request) -> bool:
        return is_delete(req) and req.path == f"/{scoring}"

    fault = faulty.proxy.fail_always(403, "AccessDenied", match=delete_in_scoring)
    failures = sample("export_service_retention_sweep_failures_total", stage="s3")
    now = utcnow()

    first = await services.retention.sweep(now)

    assert first is not None and first.purged == [whole] and first.kept == [split]
    assert fault.injected >= 1
    assert sample("export_service_retention_sweep_failures_total", stage="s3") == failures + 1
    # The half that S3 refused is still there, so the export is not purged and has no record.
    assert await object_keys(faulty.direct, scoring) == ["s/2.csv"]
    assert await object_keys(faulty.direct, exports) == []
    assert set(await purged(services)) == {whole}
    assert set(await purge_records(services)) == {whole}

    fault.remove()
    # Not due again within the interval; the next sweep retries and purges it.
    assert await services.retention.sweep(now + INTERVAL - timedelta(seconds=1)) is None
    second = await services.retention.sweep(now + INTERVAL)

    assert second is not None and second.purged == [split] and second.kept == []
    assert await object_keys(faulty.direct, scoring) == []
    assert set(await purged(services)) == {whole, split}
    assert set(await purge_records(services)) == {whole, split}


@pytest.mark.parametrize(
    "result",
    [
        # S3 reports the key as not deleted.
        "<Error><Key>{key}</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
        # S3 answers 200 but does not list the key as deleted: not a confirmation either.
        "",
    ],
    ids=["key_error", "key_not_listed"],
)
async def test_an_object_s3_does_not_confirm_deleted_keeps_its_export_unpurged(
    faulty: Proxied, result: str
) -> None:
    services = faulty.services
    bucket = services.settings.bucket_exports
    export_id = await old(services, ExportType.ENTRIES, 31, "u/1.csv")
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"{result.format(key='u/1.csv')}</DeleteResult>"
    )
    fault = faulty.proxy.answer(body.encode(), match=DELETE_OBJECTS)
    now = utcnow()

    first = await services.retention.sweep(now)

    assert fault.injected == 1
    assert first is not None and first.purged == [] and first.kept == [export_id]
    assert await object_keys(faulty.direct, bucket) == ["u/1.csv"]
    assert await purged(services) == {} and await purge_records(services) == {}
    fault.remove()
    second = await services.retention.sweep(now + INTERVAL)
    assert second is not None and second.purged == [export_id]
    assert await object_keys(faulty.direct, bucket) == []


async def test_two_concurrent_sweeps_do_the_work_once(faulty: Proxied) -> None:
    services = faulty.services
    ids = {await old(services, ExportType.ENTRIES, 31 + i, f"c{i}.csv") for i in range(5)}
    other = Retention(services.repository, services.storage, services.settings, owner="other")
    faulty.proxy.reset_counters()
    now = utcnow()

    results = await asyncio.gather(services.retention.sweep(now), other.sweep(now))

    done = [r for r in results if r is not None]
    assert len(done) == 1, results
    assert set(done[0].purged) == ids
    # One DeleteObjects call for the one bucket, one record per export.
    assert faulty.proxy.requests[DELETE_OBJECTS] == 1
    assert set(await purge_records(services)) == ids
    assert await object_keys(faulty.direct, services.settings.bucket_exports) == []


async def test_a_second_sweep_does_nothing(faulty: Proxied) -> None:
    services = faulty.services
    export_id = await old(services, ExportType.ENTRIES, 31, "i.csv")
    now = utcnow()
    first = await services.retention.sweep(now)
    assert first is not None and first.purged == [export_id]
    record = (await purge_records(services))[export_id]
    mark = (await purged(services))[export_id]
    faulty.proxy.reset_counters()

    again = await services.retention.sweep(now + INTERVAL)

    assert again == SweepResult(started=now + INTERVAL)
    assert faulty.proxy.requests[DELETE_OBJECTS] == 0
    assert (await purge_records(services))[export_id] == record
    assert (await purged(services))[export_id] == mark


async def test_sweep_cut_off_between_record_and_mark_is_finished_with_one_record(
    services: Services,
) -> None:
    export_id = await old(services, ExportType.ENTRIES, 31, "m.csv")
    now = utcnow()
    first = await services.retention.sweep(now)
    assert first is not None and first.purged == [export_id]
    record = (await purge_records(services))[export_id]
    # As if that sweep had died after its record, before its mark: the object is gone, the
    # record written, the export not yet purged.
    await services.db["exports"].update_one({"_id": export_id}, {"$unset": {"purged": ""}})

    later = now + INTERVAL
    again = await services.retention.sweep(later)

    assert again is not None and again.purged == [export_id]
    assert (await purged(services))[export_id] == {"date": later, "reason": RETENTION}
    assert await purge_records(services) == {export_id: record}  # the first record, once


async def test_sweep_purges_a_bounded_batch_oldest_first(mongo_uri: str, s3_endpoint: str) -> None:
    settings = make_settings(mongo_uri, s3_endpoint, **RETENTION_SETTINGS, retention_batch_size=2)
    async with open_services(settings) as services:
        by_age = [await old(services, ExportType.ENTRIES, 40 - i, f"b{i}.csv") for i in range(5)]
        now = utcnow()
        batches = []
        for n in range(4):
            result = await services.retention.sweep(now + n * INTERVAL)
            assert result is not None
            batches.append(result.purged)
        assert batches == [by_age[0:2], by_age[2:4], by_age[4:5], []]
        assert set(await purged(services)) == set(by_age)


async def test_sweep_cut_off_mid_batch_is_resumed_by_another_worker_once_its_lease_ends(
    faulty: Proxied,
) -> None:
    services = faulty.services
    exports, scoring = services.settings.bucket_exports, services.settings.bucket_scoring
    first = await old(services, ExportType.ENTRIES, 35, "r1.csv")
    second = await old(services, ExportType.SCORING, 31, "r2.csv", bucket=scoring)
    release = asyncio.Event()

    def delete_in_scoring(req: S3Request) -> bool:
        return is_delete(req) and req.path == f"/{scoring}"

    # The sweep deletes the objects of one bucket, then is held in the second call and dies
    # there (cancelled: an S3 call may be, unlike a driver call), its lease still held.
    stall = faulty.proxy.stall(match=delete_in_scoring, until=release)
    now = utcnow()
    dying = asyncio.create_task(services.retention.sweep(now))
    await until("the second DeleteObjects is held", lambda: stall.injected == 1)
    dying.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await dying
    stall.remove()
    assert await object_keys(faulty.direct, exports) == []
    assert await purged(services) == {}

    other = Retention(services.repository, services.storage, services.settings, owner="other")
    # The dead sweeper's lease holds until it runs out, then the next sweep takes the batch.
    assert await other.sweep(now + LEASE - timedelta(seconds=1)) is None
    resumed = await other.sweep(now + LEASE)

    assert resumed is not None and resumed.purged == [first, second]
    assert await object_keys(faulty.direct, scoring) == []
    assert set(await purge_records(services)) == {first, second}
    assert {p["reason"] for p in (await purged(services)).values()} == {RETENTION}


async def test_worker_process_sigkilled_mid_sweep_is_resumed_once_its_lease_ends(
    faulty: Proxied, tmp_path: Path
) -> None:
    services = faulty.services
    exports, scoring = services.settings.bucket_exports, services.settings.bucket_scoring
    first = await old(services, ExportType.ENTRIES, 35, "k1.csv")
    second = await old(services, ExportType.SCORING, 31, "k2.csv", bucket=scoring)

    def delete_in_scoring(req: S3Request) -> bool:
        return is_delete(req) and req.path == f"/{scoring}"

    # A real `export-service worker` sweeps at its start; it is SIGKILLed while S3 holds its
    # second DeleteObjects, after the first bucket's objects went and before any mark.
    stall = faulty.proxy.stall(match=delete_in_scoring)
    proc = WorkerProcess(services.settings, tmp_path, "worker")
    try:
        await until("the worker's second DeleteObjects", lambda: stall.injected == 1, timeout=60)
        proc.kill()
    finally:
        proc.stop()
    stall.remove()
    assert "retention_sweep_started" in [e["event"] for e in proc.events()]
    assert await object_keys(faulty.direct, exports) == []
    assert await object_keys(faulty.direct, scoring) == ["k2.csv"]
    assert await purged(services) == {} and await purge_records(services) == {}
    lease = await services.db["leases"].find_one({"_id": "retention"})
    assert lease is not None and pid_of(lease["owner"]) == proc.pid

    now = utcnow()
    assert await services.retention.sweep(now) is None  # the dead worker's lease still holds
    resumed = await services.retention.sweep(now + LEASE)

    assert resumed is not None and resumed.purged == [first, second]
    assert await object_keys(faulty.direct, scoring) == []
    assert set(await purge_records(services)) == {first, second}


async def test_worker_process_sweeps_on_its_own_at_the_interval(
    mongo_uri: str, s3_endpoint: str
) -> None:
    settings = make_settings(
        mongo_uri, s3_endpoint, **{**RETENTION_SETTINGS, "retention_sweep_interval_millis": 50}
    )
    async with open_services(settings) as services:
        export_id = await old(services, ExportType.ENTRIES, 31, "loop.csv")
        loop = asyncio.create_task(services.retention.run())
        try:

            async def completed() -> Doc | None:
                # Handed back with `last` once the sweep is over (after its marks).
                return await services.db["leases"].find_one(
                    {"_id": "retention", "last": {"$exists": True}}
                )

            await until("the loop's sweep", completed)
            lease = await completed()
            assert lease is not None and lease["last"]["owner"] == services.worker.worker_id
        finally:
            services.retention.shutdown()
            await loop
        assert set(await purged(services)) == {export_id}


# ---- settings -----------------------------------------------------------------------------


def test_retention_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_SERVICE_RETENTION_DAYS", "30")
    monkeypatch.setenv("EXPORT_SERVICE_RETENTION_DAYS_BY_TYPE", '{"scoring": 7, "codes": 0}')
    monkeypatch.setenv("EXPORT_SERVICE_RETENTION_SWEEP_INTERVAL_MILLIS", "60000")
    settings = Settings()
    assert settings.retention_days_for(ExportType.SCORING) == 7
    assert settings.retention_days_for(ExportType.CODES) == 0
    assert settings.retention_days_for(ExportType.ENTRIES) == 30
    assert settings.retention_sweep_interval_millis == 60_000
    assert settings.retention_enabled
    for name in ("DAYS", "DAYS_BY_TYPE", "SWEEP_INTERVAL_MILLIS"):
        monkeypatch.delenv(f"EXPORT_SERVICE_RETENTION_{name}")
    defaults = Settings()
    assert defaults.retention_days == 0 and defaults.retention_days_by_type == {}
    assert defaults.retention_sweep_interval_millis == 3_600_000
    assert not defaults.retention_enabled
    assert Settings(retention_days_by_type={ExportType.ENTRIES: 1}).retention_enabled


@pytest.mark.parametrize("value", ['{"nope": 7}', '{"scoring": -1}', "[7]"])
def test_bad_retention_by_type_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("EXPORT_SERVICE_RETENTION_DAYS_BY_TYPE", value)
    with pytest.raises(ValueError, match="retention_days_by_type"):
        Settings()


async def test_cli_shows_a_purged_export_and_refuses_to_download_it(tmp_path: Path) -> None:
    export: Doc = {
        "id": "e1", "status": "FINISHED", "exportType": "entries", "campaignId": CAMPAIGN,
        "date": {"created": "2026-11-01T00:00:00.000Z"}, "count": 1,
        "files": [{"bucket": "b", "key": "k.csv", "rows": 1, "bytes": 5, "acl": "private",
                   "sha256": "0" * 64}],
        "purged": {"date": "2026-12-01T00:00:00.000Z", "reason": "retention"},
    }  # fmt: skip
    text = io.StringIO()
    console = Console(file=text, width=200)
    render.show_export(console, export)
    assert "purged    2026-12-01T00:00:00.000Z (retention)" in text.getvalue()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(DownloadFailed, match="purged"):
            await terminal._download_all(session, export, str(tmp_path), console)
    assert list(tmp_path.iterdir()) == []
