"""Completion webhooks (contract §11) against a real aiohttp receiver on the loopback.

Delivery is driven step by step (`Dispatcher.deliver_due(now=…)`) with a clock of the test's
own, so backoff is checked without waiting for it; only the attempt time limit is real time
(half a second here).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import ValidationError
from pymongo import monitoring
from standardwebhooks import Webhook

from export_service.app.responses import WebhookEventBody
from export_service.models import ExportStatus, ExportType, utcnow
from export_service.runtime import Services
from export_service.settings import Settings
from export_service.webhooks.delivery import Dispatcher, backoff
from export_service.webhooks.outbox import DeliveryStatus, WebhookEvent
from tests.support.app import app_services, auth, make_settings
from tests.support.commands import ExportWrites
from tests.support.data import CAMPAIGN, add_campaign, entry, run_export
from tests.support.gates import until
from tests.support.servers import free_port
from tests.support.workers import WorkerProcess

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: str


class Receiver:
    """Records every POST; answers from `plan` (status codes, or "hang" until `release`)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.plan: list[int | str] = []
        self.arrived: asyncio.Queue[Received] = asyncio.Queue()
        self.release = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        received = Received(request.path, dict(request.headers), await request.text())
        self.requests.append(received)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.arrived.put_nowait(received)
        try:
            answer = self.plan.pop(0) if self.plan else 200
            if answer == "hang":
                await self.release.wait()
                return web.Response(status=200)
            if answer == 302:
                return web.Response(status=302, headers={"Location": "/elsewhere"})
            return web.Response(status=int(answer))
        finally:
            self.in_flight -= 1

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    recv.url = f"http://127.0.0.1:{port}"
    try:
        yield recv
    finally:
        recv.release.set()
        await runner.cleanup()


def hook(name: str, url: str, secret: str = SECRET, **filters: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "secret": secret, **filters}


def webhook_settings(
    mongo_uri: str, s3_endpoint: str, hooks: list[dict[str, Any]], **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "webhooks": hooks,
        "webhook_allow_private": True,
        "webhook_timeout_seconds": 0.5,
        "webhook_backoff_seconds": [5, 30, 120],
        "encoder_processes": 0,
    }
    values.update(overrides)
    return make_settings(mongo_uri, s3_endpoint, **values)


@pytest.fixture
def settings(mongo_uri: str, s3_endpoint: str, receiver: Receiver) -> Settings:
    return webhook_settings(mongo_uri, s3_endpoint, [hook("crm", f"{receiver.url}/crm")])


@asynccontextmanager
async def opened(
    settings: Settings, listeners: Sequence[monitoring.CommandListener] = ()
) -> AsyncIterator[Services]:
    async with Services.open(settings, create_buckets=True, listeners=listeners) as services:
        try:
            yield services
        finally:
            await services.client.drop_database(settings.mongo_db)


async def seed(services: Services, campaign_id: str = CAMPAIGN) -> None:
    await add_campaign(services.db, campaign_id)
    await services.db["entries"].insert_many(
        [entry(f"{campaign_id}-e{i}", f"u{i}", campaign_id=campaign_id) for i in range(3)]
    )


async def events_of(services: Services, export_id: str) -> list[WebhookEvent]:
    return (await services.outbox.for_exports([export_id])).get(export_id, [])


def verified(received: Received, secret: str = SECRET) -> dict[str, Any]:
    """The payload, after the Standard Webhooks library checked its signature."""
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return payload


async def test_finished_export_is_posted_signed_with_its_files_and_shows_delivered(
    client: TestClient[Any, Any], receiver: Receiver
) -> None:
    services = app_services(client)
    await seed(services)
    export = await run_export(services, ExportType.ENTRIES)
    assert export.status is ExportStatus.FINISHED
    # In the outbox as soon as the worker reports the export's end.
    (event,) = await events_of(services, export.id)
    assert (event.subscription, event.type, event.status) == ("crm", "export.finished", "PENDING")
    assert "notified" not in (await services.db["exports"].find_one({"_id": export.id}) or {})

    with structlog.testing.capture_logs() as logs:
        (settled,) = await services.dispatcher.deliver_due()
    assert settled.status is DeliveryStatus.DELIVERED and settled.attempts == 1

    (received,) = receiver.at("/crm")
    payload = verified(received)
    with pytest.raises(Exception, match="signature"):
        Webhook(OTHER_SECRET).verify(received.body, received.headers)
    assert received.headers["webhook-id"] == event.id
    assert received.headers["Content-Type"] == "application/json"
    assert payload["type"] == "export.finished"
    WebhookEventBody.model_validate(payload)  # the body the OpenAPI document publishes (strict)
    data = payload["data"]
    assert (data["id"], data["status"], data["count"]) == (export.id, "FINISHED", 3)
    (file,) = data["files"]
    assert file["sha256"] == export.files[0].sha256 and file["rows"] == 3
    assert file["url"].startswith("http") and data["path"] == file["url"]

    answer = await client.get(
        f"/campaigns/{CAMPAIGN}/exports/{export.id}", headers=auth([CAMPAIGN])
    )
    body = await answer.json()
    assert body["notifications"] == [{"subscription": "crm", "status": "DELIVERED", "attempts": 1}]
    listing = await (
        await client.get(f"/campaigns/{CAMPAIGN}/exports", headers=auth([CAMPAIGN]))
    ).json()
    assert listing["exports"][0]["notifications"] == body["notifications"]

    metrics = await (await client.get("/metrics")).text()
    assert 'export_service_webhooks_delivered_total{subscription="crm"}' in metrics
    assert "export_service_webhooks_pending 0.0" in metrics

    # Logged by subscription name: never the secret, the receiver URL or a signed URL.
    assert any(line["event"] == "webhook_delivered" for line in logs)
    text = json.dumps(logs, default=str)
    for secret in (SECRET, receiver.url, file["url"], "X-Amz-Signature"):
        assert secret not in text


async def test_retries_after_500_timeout_and_3xx_keep_one_id_with_backoff(
    services: Services, receiver: Receiver
) -> None:
    await seed(services)
    export = await run_export(services, ExportType.ENTRIES)
    receiver.plan = [500, "hang", 302, 200]
    now = utcnow()

    (first,) = await services.dispatcher.deliver_due(now)
    assert (first.status, first.attempts, first.last_error) == ("PENDING", 1, "HTTP 500")
    assert timedelta(seconds=4) <= first.next_attempt_at - now <= timedelta(seconds=6)
    assert await services.dispatcher.deliver_due(now + timedelta(seconds=3)) == []  # not due

    now += timedelta(seconds=7)
    (second,) = await services.dispatcher.deliver_due(now)
    assert second.attempts == 2 and (second.last_error or "").startswith("Timeout")
    assert timedelta(seconds=24) <= second.next_attempt_at - now <= timedelta(seconds=36)

    now += timedelta(seconds=40)
    (third,) = await services.dispatcher.deliver_due(now)
    assert (third.attempts, third.last_error) == (3, "HTTP 302")
    assert receiver.at("/elsewhere") == []  # the redirect was not followed

    now += timedelta(minutes=3)
    (fourth,) = await services.dispatcher.deliver_due(now)
    assert (fourth.status, fourth.attempts) == (DeliveryStatus.DELIVERED, 4)
    assert fourth.last_error is None

    ids = {r.headers["webhook-id"] for r in receiver.at("/crm")}
    assert len(receiver.at("/crm")) == 4 and ids == {first.id}
    for received in receiver.at("/crm"):
        assert verified(received)["data"]["id"] == export.id


async def test_backoff_schedule_repeats_its_last_delay_with_bounded_jitter() -> None:
    import random

    rng = random.Random(7)
    schedule = [5.0, 30.0, 120.0, 600.0, 3600.0]
    for attempts, base in [(1, 5), (2, 30), (5, 3600), (9, 3600)]:
        delays = {backoff(attempts, schedule, rng).total_seconds() for _ in range(20)}
        assert all(base * 0.8 <= d <= base * 1.2 for d in delays)
        assert len(delays) > 1  # jittered: receivers are not hit in lockstep


async def test_attempts_run_out_to_failed_and_refused_connections_retry(
    mongo_uri: str, s3_endpoint: str, receiver: Receiver
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/nobody"  # nothing listens there
    settings = webhook_settings(
        mongo_uri,
        s3_endpoint,
        [hook("crm", f"{receiver.url}/crm"), hook("dead", dead)],
        webhook_max_attempts=2,
    )
    async with opened(settings) as services:
        await seed(services)
        export = await run_export(services, ExportType.ENTRIES)
        receiver.plan = [500, 503]
        now = utcnow()
        first = {e.subscription: e for e in await services.dispatcher.deliver_due(now)}
        assert first["dead"].status is DeliveryStatus.PENDING
        assert (first["dead"].last_error or "").startswith("ConnectionFailed")
        assert first["crm"].last_error == "HTTP 500"
        later = {
            e.subscription: e
            for e in await services.dispatcher.deliver_due(now + timedelta(seconds=10))
        }
        assert {e.status for e in later.values()} == {DeliveryStatus.FAILED}
        assert later["crm"].attempts == 2 and later["crm"].last_error == "HTTP 503"
        assert await services.dispatcher.deliver_due(now + timedelta(days=1)) == []
        assert len(receiver.at("/crm")) == 2
        assert len(await events_of(services, export.id)) == 2


async def test_filters_pick_subscriptions_by_export_type_and_campaign(
    mongo_uri: str, s3_endpoint: str, receiver: Receiver
) -> None:
    settings = webhook_settings(
        mongo_uri,
        s3_endpoint,
        [
            hook("all", f"{receiver.url}/all"),
            hook("scoring", f"{receiver.url}/scoring", exportTypes=["scoring"]),
            hook("camp-2", f"{receiver.url}/camp-2", campaignIds=["camp-2"]),
        ],
    )
    async with opened(settings) as services:
        await seed(services)
        await seed(services, "camp-2")
        entries = await run_export(services, ExportType.ENTRIES)
        scoring = await run_export(services, ExportType.SCORING)
        other = await run_export(services, ExportType.ENTRIES, campaign_id="camp-2")
        subs = {
            e.id: sorted(x.subscription for x in await events_of(services, e.id))
            for e in (entries, scoring, other)
        }
        assert subs == {
            entries.id: ["all"],
            scoring.id: ["all", "scoring"],
            other.id: ["all", "camp-2"],
        }
        await services.dispatcher.deliver_due()
        assert {verified(r)["data"]["id"] for r in receiver.at("/scoring")} == {scoring.id}
        assert {verified(r)["data"]["id"] for r in receiver.at("/camp-2")} == {other.id}
        assert len(receiver.at("/all")) == 3


async def test_an_export_no_subscription_wants_ends_in_one_write_without_the_flag(
    mongo_uri: str, s3_endpoint: str, receiver: Receiver
) -> None:
    """Only an export some subscription wants owes events: the others end in the one write that
    makes them terminal, with no `notified` flag and no second write to clear it."""
    settings = webhook_settings(
        mongo_uri, s3_endpoint, [hook("camp-2", f"{receiver.url}/camp-2", campaignIds=["camp-2"])]
    )
    writes = ExportWrites()
    async with opened(settings, [writes]) as services:
        await seed(services)
        await seed(services, "camp-2")
        unwanted = await run_export(services, ExportType.ENTRIES)
        wanted = await run_export(services, ExportType.ENTRIES, campaign_id="camp-2")
        for export, flagged in ((unwanted, False), (wanted, True)):
            assert export.status is ExportStatus.FINISHED
            ending = [u for q, u in writes.updates if q.get("_id") == export.id
                      and u.get("$set", {}).get("status") == "FINISHED"]  # fmt: skip
            clearing = [u for q, u in writes.updates if q.get("_id") == export.id
                        and "notified" in u.get("$unset", {})]  # fmt: skip
            assert len(ending) == 1
            assert ("notified" in ending[0]["$set"]) is flagged
            assert len(clearing) == int(flagged)
            doc = await services.db["exports"].find_one({"_id": export.id})
            assert doc is not None and "notified" not in doc
        assert await events_of(services, unwanted.id) == []
        assert [e.subscription for e in await events_of(services, wanted.id)] == ["camp-2"]
        assert await services.notifier.recover() == 0


async def test_failed_and_expired_exports_notify_too(
    services: Services, receiver: Receiver
) -> None:
    # No markets: every type that reads entries fails with NoMarketsFound.
    await add_campaign(services.db, markets=[])
    failed = await run_export(services, ExportType.ENTRIES)
    assert failed.status is ExportStatus.FAILED

    # A run that another (dead) worker held past timeoutMillis: the sweep expires it.
    stuck, _ = await services.repository.create(
        campaign_id=CAMPAIGN, campaign_name="Tour", export_type=ExportType.CODES,
        requester_user_id="u", date_key=None, include_all_markets=None,
    )  # fmt: skip
    assert await services.repository.claim("dead-worker:1:x") is not None
    long_ago = utcnow() - timedelta(milliseconds=services.settings.timeout_millis + 1000)
    await services.db["exports"].update_one(
        {"_id": stuck.id}, {"$set": {"date.triggered": long_ago}}
    )
    assert await services.worker.sweep() == 1

    await services.dispatcher.deliver_due()
    by_export = {verified(r)["data"]["id"]: verified(r) for r in receiver.at("/crm")}
    assert by_export[failed.id]["type"] == "export.failed"
    assert by_export[failed.id]["data"]["error"]["code"] == "NoMarketsFound"
    assert by_export[stuck.id]["type"] == "export.expired"
    assert by_export[stuck.id]["data"]["status"] == "EXPIRED"


async def test_a_hanging_receiver_never_gets_the_event_twice_at_once(
    mongo_uri: str, s3_endpoint: str, receiver: Receiver
) -> None:
    settings = webhook_settings(
        mongo_uri, s3_endpoint, [hook("crm", f"{receiver.url}/crm")], webhook_timeout_seconds=5
    )
    async with opened(settings) as services:
        await seed(services)
        await run_export(services, ExportType.ENTRIES)
        receiver.plan = ["hang"]
        other = Dispatcher(services.notifier, services.storage, settings, owner="other-worker")
        try:
            first = asyncio.create_task(services.dispatcher.deliver_due())
            await asyncio.wait_for(receiver.arrived.get(), 5)
            # Both this worker and another one look while the attempt hangs: it is leased.
            assert await services.dispatcher.deliver_due() == []
            assert await other.deliver_due() == []
            receiver.release.set()
            (done,) = await first
        finally:
            await other.close()
        assert done.status is DeliveryStatus.DELIVERED
        assert receiver.max_in_flight == 1 and len(receiver.requests) == 1


async def test_an_event_leased_by_a_worker_that_died_goes_out_after_its_lease(
    services: Services, receiver: Receiver
) -> None:
    await seed(services)
    await run_export(services, ExportType.ENTRIES)
    now = utcnow()
    # A worker claims the event and dies before its attempt ends (nothing is written back).
    (taken,) = await services.outbox.claim_due(now, 8, services.dispatcher.lease, "dead:1:x")
    other = Dispatcher(services.notifier, services.storage, services.settings, owner="live")
    try:
        assert await other.deliver_due(now + services.dispatcher.lease / 2) == []
        (event,) = await other.deliver_due(now + services.dispatcher.lease)
    finally:
        await other.close()
    assert (event.id, event.status, event.attempts) == (taken.id, DeliveryStatus.DELIVERED, 2)
    (received,) = receiver.requests
    assert received.headers["webhook-id"] == taken.id
    # The dead worker's lease is gone: were it to come back, its outcome would not be written.
    assert not await services.outbox.retry_at(taken, now, "late")
    assert (await services.outbox.get(taken.id)).status is DeliveryStatus.DELIVERED  # type: ignore[union-attr]


async def test_a_dead_receiver_does_not_slow_the_next_export(
    mongo_uri: str, s3_endpoint: str, receiver: Receiver
) -> None:
    settings = webhook_settings(
        mongo_uri, s3_endpoint, [hook("crm", f"{receiver.url}/crm")], webhook_timeout_seconds=30
    )
    async with opened(settings) as services:
        await seed(services)
        receiver.plan = ["hang"]
        loop = asyncio.create_task(services.dispatcher.run())
        try:
            await run_export(services, ExportType.ENTRIES)
            ended = time.perf_counter()
            await asyncio.wait_for(receiver.arrived.get(), 10)  # the loop is stuck on it
            handoff = time.perf_counter() - ended
            # The next export is claimed and finished while that attempt still hangs.
            started = time.perf_counter()
            second = await run_export(services, ExportType.CODES)
            print(
                f"\nwebhook: export end -> receiver {handoff * 1000:.1f} ms; next export "
                f"{(time.perf_counter() - started) * 1000:.1f} ms while the receiver hangs"
            )
            assert second.status is ExportStatus.FINISHED
            assert receiver.in_flight == 1
            assert len(await events_of(services, second.id)) == 1
            receiver.release.set()
            # ... and the loop, free again, delivers the second export's event as well.
            await until("both delivered", lambda: len(receiver.requests) == 2)
        finally:
            services.dispatcher.shutdown()
            await loop
        assert {verified(r)["data"]["exportType"] for r in receiver.requests} == {
            "entries",
            "codes",
        }


async def test_receiver_on_a_private_address_is_refused(
    mongo_uri: str, s3_endpoint: str, receiver: Receiver
) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    settings = webhook_settings(
        mongo_uri,
        s3_endpoint,
        [hook("local", f"http://localhost:{port}/local")],
        webhook_allow_private=False,
    )
    async with opened(settings) as services:
        await seed(services)
        export = await run_export(services, ExportType.ENTRIES)
        (event,) = await services.dispatcher.deliver_due()
        assert event.status is DeliveryStatus.FAILED and event.attempts == 1
        assert (event.last_error or "").startswith("PrivateAddressRefused")
        assert receiver.requests == []
        assert (await events_of(services, export.id))[0].status is DeliveryStatus.FAILED


async def test_sigkill_between_finished_and_the_outbox_loses_no_event(
    mongo_uri: str, s3_endpoint: str, receiver: Receiver, tmp_path: Path
) -> None:
    settings = webhook_settings(mongo_uri, s3_endpoint, [hook("crm", f"{receiver.url}/crm")])
    async with opened(settings) as services:
        await seed(services)
        worker = WorkerProcess(settings, tmp_path, "paused", module="tests.paused_outbox_worker")
        try:
            export, _ = await services.repository.create(
                campaign_id=CAMPAIGN, campaign_name="Tour", export_type=ExportType.ENTRIES,
                requester_user_id="u", date_key=None, include_all_markets=None,
            )  # fmt: skip
            await until(
                "the worker paused after FINISHED",
                lambda: any(e.get("event") == "paused_before_outbox" for e in worker.events()),
                timeout=60,
            )
            worker.kill()
        finally:
            worker.stop()
        doc = await services.db["exports"].find_one({"_id": export.id})
        assert doc is not None and doc["status"] == "FINISHED" and doc["notified"] is False
        assert await events_of(services, export.id) == []

        # Any worker's delivery step recovers the event, once, and delivers it.
        (event,) = await services.dispatcher.deliver_due()
        assert event.status is DeliveryStatus.DELIVERED and event.type == "export.finished"
        assert await services.notifier.recover() == 0
        assert len(await events_of(services, export.id)) == 1
        (received,) = receiver.requests
        assert verified(received)["data"]["id"] == export.id
        doc = await services.db["exports"].find_one({"_id": export.id})
        assert doc is not None and "notified" not in doc


@pytest.mark.parametrize(
    ("hook_fields", "message"),
    [
        ({"url": "ftp://example.com/x"}, "http:// or https://"),
        ({"url": "not a url"}, "http:// or https://"),
        ({"secret": "abc"}, "'whsec_' followed by base64"),
        ({"secret": "whsec_!!!not-base64!!!"}, "not valid base64"),
        ({"secret": "whsec_" + base64.b64encode(b"short").decode()}, "24..64 bytes"),
        ({"exportTypes": ["entries", "nope"]}, "exportTypes"),
        ({"url": "http://10.0.0.5/hook"}, "not a public address"),
        ({"url": "http://[::1]:9000/hook"}, "not a public address"),
    ],
)
def test_bad_subscriptions_are_refused_at_start(hook_fields: dict[str, Any], message: str) -> None:
    subscription = {**hook("crm", "https://hooks.example.com/x"), **hook_fields}
    with pytest.raises(
        ValidationError, match=message.replace("(", r"\(").replace("[", r"\[")
    ) as err:
        Settings(webhooks=[subscription])
    # The error names the field and the reason, never the value (a secret, for one).
    assert subscription["secret"] not in str(err.value)


def test_subscriptions_come_from_the_environment_and_names_are_unique(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hooks = [hook("crm", "https://hooks.example.com/a", exportTypes=["scoring"])]
    monkeypatch.setenv("EXPORT_SERVICE_WEBHOOKS", json.dumps(hooks))
    (parsed,) = Settings().webhooks
    assert parsed.name == "crm" and parsed.exportTypes == frozenset({ExportType.SCORING})
    assert SECRET not in repr(parsed)  # the secret stays out of reprs and logs
    monkeypatch.setenv("EXPORT_SERVICE_WEBHOOKS", json.dumps(hooks * 2))
    with pytest.raises(ValidationError, match="two webhook subscriptions are named 'crm'"):
        Settings()
    # Loopback receivers are for tests and development only, and need saying so.
    local = [hook("dev", "http://127.0.0.1:9000/hook")]
    monkeypatch.setenv("EXPORT_SERVICE_WEBHOOKS", json.dumps(local))
    with pytest.raises(ValidationError, match="EXPORT_SERVICE_WEBHOOK_ALLOW_PRIVATE"):
        Settings()
    monkeypatch.setenv("EXPORT_SERVICE_WEBHOOK_ALLOW_PRIVATE", "true")
    assert Settings().webhooks[0].name == "dev"


async def test_cancelled_exports_notify_from_the_api_and_from_the_worker(
    client: TestClient[Any, Any], receiver: Receiver
) -> None:
    services = app_services(client)
    await seed(services)
    headers = auth([CAMPAIGN])
    created = await client.post(
        f"/campaigns/{CAMPAIGN}/exports", json={"exportType": "entries"}, headers=headers
    )
    pending_id = (await created.json())["id"]
    answer = await client.post(
        f"/campaigns/{CAMPAIGN}/exports/{pending_id}/cancel", headers=headers
    )
    assert answer.status == 200
    # Ended by the API process, which has no delivery loop running: the event is in the outbox.
    (event,) = await events_of(services, pending_id)
    assert event.type == "export.failed"

    # A running export cancelled: its worker ends it, and notifies.
    created = await client.post(
        f"/campaigns/{CAMPAIGN}/exports", json={"exportType": "codes"}, headers=headers
    )
    running_id = (await created.json())["id"]
    gate_reached, release = asyncio.Event(), asyncio.Event()

    async def hold(export: Any, rows: int) -> None:
        gate_reached.set()
        await release.wait()

    await services.db["codes"].insert_one(
        {"_id": "c1", "campaignId": CAMPAIGN, "code": "A", "marketId": f"{CAMPAIGN}-m1",
         "type": "presale", "status": "AVAILABLE", "assignedTo": None, "waveDateKey": None}
    )  # fmt: skip
    services.worker.batch_hook = hold
    run = asyncio.create_task(services.worker.process())
    await asyncio.wait_for(gate_reached.wait(), 10)
    answer = await client.post(
        f"/campaigns/{CAMPAIGN}/exports/{running_id}/cancel", headers=headers
    )
    assert answer.status == 202
    release.set()
    ended = await run
    assert ended is not None and ended.status is ExportStatus.FAILED

    await services.dispatcher.deliver_due()
    payloads = {verified(r)["data"]["id"]: verified(r) for r in receiver.at("/crm")}
    for export_id in (pending_id, running_id):
        assert payloads[export_id]["type"] == "export.failed"
        assert payloads[export_id]["data"]["error"]["code"] == "Cancelled"
    assert payloads[pending_id]["data"]["cancelledBy"] == "admin-1"
