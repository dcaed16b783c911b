"""Workers SIGKILLed mid-export (contract §5): real `export-service worker` processes.

Each kill happens while the export is provably in flight: an S3 fault proxy holds its
UploadPart/PutObject, so a multipart upload is open (or a PutObject unanswered) at the moment
the process dies. The test reads the `exports` collection of the other processes in a bounded
loop and checks the single-active invariant at every look.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from export_service.models import ExportStatus, ExportType, utcnow
from export_service.runtime import Services
from export_service.settings import Settings
from tests.support.app import JWT_SECRET, make_settings
from tests.support.data import CAMPAIGN, add_campaign, queue_exports, seed_big_entries
from tests.support.faults import PUT_OBJECT, UPLOAD_PART, S3FaultProxy, S3Request
from tests.support.gates import until
from tests.support.s3 import multipart_uploads, object_keys, object_sha256
from tests.support.workers import WorkerProcess, pid_of

KILLS = 20
WORKERS = 3
MAX_ATTEMPTS = 3
HEARTBEAT_TIMEOUT_MS = 1500
TERMINAL = {s.value for s in (ExportStatus.FINISHED, ExportStatus.FAILED, ExportStatus.EXPIRED)}

# Measured by the last run, for docs/reliability.md (printed with -s).
RECOVERY_SECONDS: list[float] = []


def _export_id(request: S3Request) -> str:
    # Keys are {campaignId}/{exportType}/{exportId}.csv
    return request.path.rsplit("/", 1)[-1].split(".", 1)[0]


async def test_sigkilled_workers_lose_no_export_and_leave_nothing_behind(
    mongo_uri: str, s3_endpoint: str, tmp_path: Path
) -> None:
    proxy = await S3FaultProxy.start(s3_endpoint)
    worker_settings = make_settings(
        mongo_uri,
        proxy.url,
        heartbeat_interval_millis=200,
        heartbeat_timeout_millis=HEARTBEAT_TIMEOUT_MS,
        polling_interval_millis=200,
        max_attempts=MAX_ATTEMPTS,
    )
    local = worker_settings.model_copy(update={"s3_endpoint_url": s3_endpoint})
    procs: dict[int, WorkerProcess] = {}
    async with Services.open(local, create_buckets=True) as services:
        try:
            await _run_kills(services, proxy, worker_settings, procs, tmp_path)
        finally:
            for proc in procs.values():
                proc.stop()
            await proxy.close()
            await services.client.drop_database(local.mongo_db)


async def _run_kills(
    services: Services,
    proxy: S3FaultProxy,
    worker_settings: Settings,
    procs: dict[int, WorkerProcess],
    tmp_path: Path,
) -> None:
    bucket = services.settings.bucket_exports
    await seed_big_entries(services)  # 60 rows of 110 kB: two 5 MiB parts, a multipart upload
    await services.db["codes"].insert_many(
        [{"_id": f"c{i}", "campaignId": CAMPAIGN, "code": f"CODE{i}", "status": "AVAILABLE"}
         for i in range(5)]
    )  # fmt: skip
    kills_left: dict[str, int] = {}
    types: dict[str, ExportType] = {}

    async def queue_export(kills: int) -> str:
        i = len(types)
        export, _ = await services.repository.create(
            campaign_id=CAMPAIGN,
            campaign_name="Tour",
            # Every third a multipart upload (entries), else a single PutObject (codes).
            export_type=ExportType.ENTRIES if i % 3 == 0 else ExportType.CODES,
            requester_user_id="u",
            date_key=f"k{i:02d}",  # distinct requests, not deduplicated
            include_all_markets=None,
        )
        kills_left[export.id] = kills
        types[export.id] = export.export_type
        return export.id

    # One export is killed on every run (a poison export); every other one is killed once:
    # 1 x 3 + 17 x 1 = 20 kills, unless a busy machine makes a live worker look dead, in
    # which case more exports are queued below until 20 kills are done.
    poison = await queue_export(MAX_ATTEMPTS)
    for _ in range(KILLS - MAX_ATTEMPTS):
        await queue_export(1)

    # export id -> upload ids of its requests being held (None: a PutObject). A killed run's
    # second part may reach the proxy just after the kill: its upload id tells it apart from
    # the requests of the run that replaces it.
    held: dict[str, set[str | None]] = {}
    arrived = asyncio.Event()

    def hold(request: S3Request) -> bool:
        if request.operation not in (UPLOAD_PART, PUT_OBJECT):
            return False
        export_id = _export_id(request)
        if kills_left.get(export_id, 0) <= 0:
            return False
        held.setdefault(export_id, set()).add(request.query.get("uploadId"))
        arrived.set()
        return True

    def in_flight(doc: dict[str, Any]) -> bool:
        """The run holding this export has a request held (and so is mid-upload)."""
        if kills_left[doc["_id"]] <= 0 or pid_of(doc["workerId"]) not in procs:
            return False  # killed already, its export not yet taken back
        current = {u.get("uploadId") for u in doc.get("uploads") or []}
        return bool(held.get(doc["_id"], set()) & current)

    proxy.stall(match=hold)  # never released: those requests die with their worker

    def spawn() -> None:
        proc = WorkerProcess(worker_settings, tmp_path, f"worker-{len(spawned)}")
        spawned.append(proc)
        procs[proc.pid] = proc

    spawned: list[WorkerProcess] = []
    # Three, so that a booted survivor remains while the replacement of a victim starts.
    for _ in range(WORKERS):
        spawn()

    collection = services.db["exports"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 150
    killed: Counter[str] = Counter()
    killed_workers: set[str] = set()
    looks = 0
    most_active = 0
    in_flight_at_kill: list[tuple[ExportType, int]] = []
    waiting: dict[str, tuple[str, float]] = {}  # export id -> (dead worker id, killed at)
    while True:
        docs = await collection.find({}, {"status": 1, "workerId": 1, "uploads": 1}).to_list()
        looks += 1
        active = [d for d in docs if d["status"] == ExportStatus.TRIGGERED.value]
        most_active = max(most_active, len(active))
        assert len(active) <= 1, f"two exports TRIGGERED at once: {active}"
        for doc in docs:
            dead = waiting.get(doc["_id"])
            if dead is not None and (doc["status"] != "TRIGGERED" or doc["workerId"] != dead[0]):
                RECOVERY_SECONDS.append(time.monotonic() - dead[1])
                del waiting[doc["_id"]]
        if all(d["status"] in TERMINAL for d in docs):
            if killed.total() >= KILLS:
                break
            await queue_export(1)
            continue
        assert loop.time() < deadline, f"queue stuck after {killed.total()} kills: {docs}"
        if active and in_flight(active[0]):
            export_id, worker_id = active[0]["_id"], active[0]["workerId"]
            victim = procs.pop(pid_of(worker_id))
            uploads = len(await multipart_uploads(services.storage, bucket))
            victim.kill()
            waiting[export_id] = (worker_id, time.monotonic())
            killed[export_id] += 1
            killed_workers.add(worker_id)
            kills_left[export_id] -= 1
            held.pop(export_id)
            in_flight_at_kill.append((types[export_id], uploads))
            spawn()
        arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), 0.1)

    # Runs taken from a worker that was alive (its heartbeat late on a loaded machine): the
    # worker sees the export is no longer its own and stops; they are counted, not hidden.
    false_dead: Counter[str] = Counter(
        e["export_id"]
        for proc in spawned
        for e in proc.events()
        if e.get("event") == "export_requeued"
        and e.get("by") == "sweep"
        and e.get("previous_worker") not in killed_workers
    )
    assert killed.total() == KILLS
    assert most_active == 1 and looks > KILLS
    # Every kill hit an export mid-upload: an open multipart upload for entries.
    assert all(n >= 1 for t, n in in_flight_at_kill if t is ExportType.ENTRIES)
    assert len(RECOVERY_SECONDS) == KILLS

    final = {d["_id"]: d for d in await collection.find({}).to_list()}
    # Killed on every run: after max_attempts it is FAILED rather than re-run forever (each
    # run would block the queue for heartbeat_timeout).
    assert final[poison]["status"] == "FAILED"
    assert final[poison]["error"]["code"] == "WorkerLost"
    assert final[poison]["attempts"] == MAX_ATTEMPTS
    # Every other export was re-run by another worker and finished, and each run is
    # accounted for: one per kill, one per false verdict, and the one that finished. (Only
    # if a loaded machine made live workers look dead often enough can one reach
    # max_attempts lost runs, and then it is FAILED like the poison export.)
    others = {i: d for i, d in final.items() if i != poison}
    finished = {i: d for i, d in others.items() if d["status"] == "FINISHED"}
    for export_id, doc in others.items():
        lost_runs = killed[export_id] + false_dead[export_id]
        if doc["status"] == "FAILED":
            assert doc["error"]["code"] == "WorkerLost" and false_dead[export_id] > 0, doc
            assert doc["attempts"] == lost_runs == MAX_ATTEMPTS, doc
        else:
            assert doc["status"] == "FINISHED" and doc["attempts"] == lost_runs + 1, doc
    assert len(finished) >= len(others) - false_dead.total()
    # Objects exist exactly for finished exports, whole (sha256 of what S3 serves); no
    # multipart upload and no object remain from the killed runs or the failed export.
    expected = sorted(f["key"] for d in finished.values() for f in d["files"])
    assert await object_keys(services.storage, bucket) == expected
    assert await multipart_uploads(services.storage, bucket) == []
    for doc in finished.values():
        (stored,) = doc["files"]
        assert await object_sha256(services.storage, bucket, stored["key"]) == (
            stored["sha256"],
            stored["bytes"],
        )
    # The dead export's dedupe key is released: the same request can be made again.
    assert "dedupeKey" not in final[poison]
    for proc in spawned:
        assert JWT_SECRET not in proc.log_path.read_text()
    print(
        f"\nSIGKILL x{killed.total()} over {len(final)} exports: recovery (kill -> taken back) "
        f"min {min(RECOVERY_SECONDS):.2f}s max {max(RECOVERY_SECONDS):.2f}s "
        f"mean {sum(RECOVERY_SECONDS) / len(RECOVERY_SECONDS):.2f}s; {looks} looks; "
        f"live workers judged dead: {false_dead.total()}"
    )


async def test_worker_loop_survives_an_unexpected_error_and_goes_on(
    services: Services,
) -> None:
    """A step that fails with anything (here a document no code can read) is logged; the
    loop goes on, so the worker picks up again once the cause is gone."""
    await add_campaign(services.db)
    stale = utcnow() - timedelta(minutes=5)
    await services.db["exports"].insert_one(
        {"_id": "unreadable", "status": "TRIGGERED", "exportType": "noSuchType", "slot": 9,
         "campaignId": CAMPAIGN, "workerId": "gone", "heartbeatAt": stale, "attempts": 1,
         "date": {"created": stale, "triggered": stale}}
    )  # fmt: skip
    worker = services.worker
    ended = worker.subscribe()
    with capture_logs() as logs:
        loop = asyncio.create_task(worker.run())
        try:
            await until(
                "a failed step", lambda: any(e["event"] == "worker_step_failed" for e in logs)
            )
            assert not loop.done()
            (export,) = await queue_exports(services, 1, ExportType.CODES)
            await services.db["exports"].delete_one({"_id": "unreadable"})
            worker.notify()
            done = await asyncio.wait_for(ended.get(), 20)
            assert done.id == export.id and done.status is ExportStatus.FINISHED
        finally:
            await worker.shutdown()
            await loop
    failure = next(e for e in logs if e["event"] == "worker_step_failed")
    assert "noSuchType" in failure["error"]
