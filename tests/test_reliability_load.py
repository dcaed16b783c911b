"""Load on the queue (contract §5): concurrent identical requests, two worker processes on one
queue, and a claim that stays an index lookup whatever the queue's length."""

from __future__ import annotations

import asyncio
import copy
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from bson import ObjectId
from pymongo import AsyncMongoClient, monitoring

from export_service.models import ExportType, utcnow
from export_service.queue.repository import ExportRepository
from export_service.runtime import Services
from tests.support.app import app_services, auth, make_settings
from tests.support.data import CAMPAIGN, add_campaign
from tests.support.faults import PUT_OBJECT, S3FaultProxy, S3Request
from tests.support.plans import plan_nodes
from tests.support.s3 import object_keys
from tests.support.workers import WorkerProcess

Client = TestClient[Any, Any]
TERMINAL = {"FINISHED", "FAILED", "EXPIRED"}


async def test_200_concurrent_identical_posts_create_one_export(client: Client) -> None:
    await add_campaign(app_services(client).db)
    url = f"/campaigns/{CAMPAIGN}/exports"
    headers = auth([CAMPAIGN])
    responses = await asyncio.gather(
        *(client.post(url, json={"exportType": "codes"}, headers=headers) for _ in range(200))
    )
    assert Counter(r.status for r in responses) == {202: 1, 200: 199}
    assert len({(await r.json())["id"] for r in responses}) == 1
    assert await app_services(client).db["exports"].count_documents({}) == 1


async def queue_scoring_exports(services: Services, n: int) -> list[str]:
    ids = []
    for i in range(n):
        export, created = await services.repository.create(
            campaign_id=CAMPAIGN,
            campaign_name="Tour",
            export_type=ExportType.SCORING,
            requester_user_id="u",
            date_key=f"k{i:04d}",  # distinct requests
            include_all_markets=None,
        )
        assert created
        ids.append(export.id)
    return ids


async def test_two_worker_processes_run_300_exports_exactly_once(
    mongo_uri: str, s3_endpoint: str, tmp_path: Path
) -> None:
    n = 300
    proxy = await S3FaultProxy.start(s3_endpoint)
    uploads: Counter[str] = Counter()

    def count_upload(request: S3Request) -> bool:
        if request.operation == PUT_OBJECT:
            uploads[request.path.rsplit("/", 1)[-1].split(".", 1)[0]] += 1
        return False  # only counts, never injects

    proxy.fail_rate(0.0, match=count_upload)
    worker_settings = make_settings(mongo_uri, proxy.url, polling_interval_millis=20)
    local = worker_settings.model_copy(update={"s3_endpoint_url": s3_endpoint})
    workers: list[WorkerProcess] = []
    async with Services.open(local, create_buckets=True) as services:
        try:
            await add_campaign(services.db)
            await services.db["scoring"].insert_one(
                {"_id": "s1", "campaignId": CAMPAIGN, "userId": "u1", "entryId": "e1",
                 "marketId": "m", "score": 1.5, "rank": 1, "selected": True}
            )  # fmt: skip
            ids = await queue_scoring_exports(services, n)
            started = time.monotonic()
            workers = [WorkerProcess(worker_settings, tmp_path, f"w{i}") for i in range(2)]
            exports = services.db["exports"]
            most_active = 0
            deadline = started + 120
            while True:
                docs = await exports.find({}, {"status": 1}).to_list()
                active = sum(1 for d in docs if d["status"] == "TRIGGERED")
                most_active = max(most_active, active)
                assert active <= 1
                if all(d["status"] in TERMINAL for d in docs):
                    break
                assert time.monotonic() < deadline, Counter(d["status"] for d in docs)
                await asyncio.sleep(0.2)  # another process's progress: a bounded poll
            elapsed = time.monotonic() - started
            for worker in workers:
                worker.stop()

            docs = await exports.find({}).to_list()
            assert Counter(d["status"] for d in docs) == {"FINISHED": n}
            assert {d["attempts"] for d in docs} == {1}
            # Each export claimed once, by one of the two, and uploaded once.
            triggered = [
                (i, e["export_id"])
                for i, worker in enumerate(workers)
                for e in worker.events()
                if e.get("event") == "export_triggered"
            ]
            assert sorted(export_id for _, export_id in triggered) == sorted(ids)
            by_worker = Counter(i for i, _ in triggered)
            assert set(by_worker) == {0, 1}, by_worker  # both took part
            assert uploads == dict.fromkeys(ids, 1)
            assert len(await object_keys(services.storage, local.bucket_scoring)) == n
            print(
                f"\n2 worker processes x {n} exports: {elapsed:.1f}s, "
                f"{dict(by_worker)} per worker, at most {most_active} TRIGGERED at a look"
            )
        finally:
            for worker in workers:
                worker.stop()
            await proxy.close()
            await services.client.drop_database(local.mongo_db)


class FindCommands(monitoring.CommandListener):
    """The `find` commands a client sends, as sent, to be explained afterwards."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.commands.append(
                {k: v for k, v in event.command.items() if not k.startswith(("$", "lsid"))}
            )

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def clones(template: dict[str, Any], n: int, status: str) -> list[dict[str, Any]]:
    """Copies of a real export document, newer than it, in `status`."""
    docs = []
    for i in range(n):
        doc = copy.deepcopy(template)
        doc.update(_id=str(ObjectId()), status=status, date={"created": utcnow()})
        if status == "PENDING":
            doc["dedupeKey"] = f"{template['dedupeKey']}-{i}"
        else:
            doc.pop("dedupeKey", None)
        docs.append(doc)
    return docs


async def median_claim_ms(repository: ExportRepository, rounds: int = 15) -> float:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        export = await repository.claim("probe")
        times.append(time.perf_counter() - began)
        assert export is not None
        await repository.requeue(export.id, "probe")  # back to the head of the queue
    return statistics.median(times) * 1000


async def test_claim_is_an_index_lookup_whatever_the_queue_length(services: Services) -> None:
    listener = FindCommands()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        services.settings.mongo_uri.get_secret_value(),  # type: ignore[union-attr]
        event_listeners=[listener],
    )
    try:
        db = client[services.settings.mongo_db]
        repository = ExportRepository(db)
        exports = db["exports"]
        first = await queue_scoring_exports(services, 10)
        short_queue = await median_claim_ms(repository)

        # Finished exports accumulate for ever: they must not slow the claim at all.
        template = await exports.find_one({"_id": first[0]})
        assert template is not None
        await exports.insert_many(clones(template, 1000, "FINISHED"))
        with_history = await median_claim_ms(repository)
        await exports.insert_many(clones(template, 990, "PENDING"))
        long_queue = await median_claim_ms(repository)  # 1,000 PENDING (and 1,000 FINISHED)

        # The plan is the guarantee: every query of a claim (and of the sweep that precedes
        # it) walks an index, never the collection; the candidate walks `claim`.
        listener.commands.clear()
        export = await repository.claim("probe")
        assert export is not None
        await repository.stale(run_timeout=_ms(1), heartbeat_timeout=_ms(1), orphans_of="probe")
        assert len(listener.commands) >= 3
        candidate_plan = None
        for command in listener.commands:
            explained = await db.command("explain", command, verbosity="queryPlanner")
            plan = plan_nodes(explained["queryPlanner"]["winningPlan"])
            assert not any(s.get("stage") == "COLLSCAN" for s in plan), (command, plan)
            assert any(s.get("stage") == "IXSCAN" for s in plan), (command, plan)
            if command.get("filter") == {"status": "PENDING"}:
                candidate_plan = plan
        assert candidate_plan is not None
        assert [s["indexName"] for s in candidate_plan if s.get("stage") == "IXSCAN"] == ["claim"]

        print(
            f"\nclaim median: {short_queue:.1f} ms with 10 queued, {with_history:.1f} ms with "
            f"10 queued + 1,000 finished, {long_queue:.1f} ms with 1,000 queued + 1,000 finished"
        )
        # Supporting timing. History costs nothing: every query is bounded by status (a
        # `slot: {$exists}` query, as the claim once had, scanned every document here).
        assert with_history < 4 * short_queue + 2, (short_queue, with_history)
        # The embedded server materialises a query's whole result before applying `limit`
        # (and adds a top-1 SORT that MongoDB's index order makes unnecessary), so there the
        # claim's time grows with the number of PENDING exports whatever the plan; MongoDB
        # reads one index key. This bound only rejects per-export work in the claim itself
        # (a round trip per queued export would be 1,000 of them).
        assert long_queue < 60 * short_queue, (short_queue, long_queue)
    finally:
        await client.close()


def _ms(n: int) -> Any:
    from datetime import timedelta

    return timedelta(milliseconds=n)
