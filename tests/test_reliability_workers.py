"""Workers SIGKILLed mid-export (contract §5, §14): real `export-service worker` processes.

Each kill happens while the export is provably in flight: an S3 fault proxy holds its
UploadPart/PutObject, so a multipart upload is open (or a PutObject unanswered) at the moment
the process dies. Which request is held is drawn at random per kill: the PutObject of a `codes`
export, or the first or second part of an `entries` export (the second once the first one is
checkpointed, so that the re-run resumes). The test reads the `exports` collection of the other
processes in a bounded loop and checks the single-active invariant at every look.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
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

# The moments a kill lands at: the PutObject of a codes export (a restart: nothing to resume);
# the first part of an entries export (60 rows of 110 kB: parts of 50 and 10 rows), before any
# checkpoint (a restart from row 0); or its second part once the first one is checkpointed (the
# re-run resumes from row 50).
PUT, PART_1, PART_2 = "PutObject", "part 1", "part 2"
FIRST_HELD_PART = {PART_1: 1, PART_2: 2}
# The 17 exports killed once, in an order drawn per run: about half the kills land after the
# first checkpoint. The poison export (killed on each of its 3 runs) is an entries export.
SINGLE_KILLS = [PUT] * 6 + [PART_1] * 4 + [PART_2] * 7
ROWS_IN_PART_1 = 50

# Measured by the last run, for docs/reliability.md (printed with -s).
RECOVERY_SECONDS: list[float] = []


def _checkpointed(doc: dict[str, Any]) -> bool:
    return bool((doc.get("checkpoint") or {}).get("parts"))


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
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    # export id -> the moment of each of its kills, in order (none: never killed)
    plans: dict[str, list[str]] = {}
    types: dict[str, ExportType] = {}
    killed: Counter[str] = Counter()

    async def queue_export(plan: list[str], export_type: ExportType | None = None) -> str:
        i = len(types)
        export, _ = await services.repository.create(
            campaign_id=CAMPAIGN,
            campaign_name="Tour",
            # A multipart upload (entries, two parts) or a single PutObject (codes).
            export_type=export_type
            or (ExportType.CODES if plan[:1] == [PUT] else ExportType.ENTRIES),
            requester_user_id="u",
            date_key=f"k{i:02d}",  # distinct requests, not deduplicated
            include_all_markets=None,
        )
        plans[export.id] = plan
        types[export.id] = export.export_type
        return export.id

    def moment(export_id: str) -> str | None:
        """When the run of this export now under way is to be killed (None: not)."""
        plan = plans.get(export_id, [])
        return plan[killed[export_id]] if killed[export_id] < len(plan) else None

    # What an uninterrupted export of each type writes: the bytes every other must end with.
    references = {await queue_export([], t): t for t in (ExportType.ENTRIES, ExportType.CODES)}
    # One export is killed on every run (a poison export); every other one is killed once:
    # 1 x 3 + 17 x 1 = 20 kills, unless a busy machine makes a live worker look dead, in
    # which case more exports are queued below until 20 kills are done.
    poison = await queue_export([rng.choice([PART_1, PART_2]), PART_2, PART_2])
    for single in rng.sample(SINGLE_KILLS, len(SINGLE_KILLS)):
        await queue_export([single])

    # export id -> upload ids of its requests being held (None: a PutObject). A killed run's
    # second part may reach the proxy just after the kill: its upload id tells it apart from
    # the requests of the run that replaces it (unless that run resumes the same upload, which
    # only a run killed after its first checkpoint leaves, and then no part of it was on its way).
    held: dict[str, set[str | None]] = {}
    arrived = asyncio.Event()

    def hold(request: S3Request) -> bool:
        export_id = _export_id(request)
        when = moment(export_id)
        if when is None:
            return False
        if when == PUT:
            if request.operation != PUT_OBJECT:
                return False
        elif request.operation != UPLOAD_PART or (
            int(request.query.get("partNumber", "0")) < FIRST_HELD_PART[when]
        ):
            return False
        held.setdefault(export_id, set()).add(request.query.get("uploadId"))
        arrived.set()
        return True

    def in_flight(doc: dict[str, Any]) -> bool:
        """The run holding this export has a request held (and so is mid-upload), and has
        checkpointed its first part if it is to be killed after that."""
        when = moment(doc["_id"])
        if when is None or pid_of(doc["workerId"]) not in procs:
            return False  # killed already, its export not yet taken back
        if when == PART_2 and not _checkpointed(doc):
            return False
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
    deadline = loop.time() + 240
    killed_workers: set[str] = set()
    # export id -> whether each of its kills landed after its first checkpoint
    after_checkpoint: dict[str, list[bool]] = {}
    looks = 0
    most_active = 0
    in_flight_at_kill: list[tuple[ExportType, int]] = []
    waiting: dict[str, tuple[str, float]] = {}  # export id -> (dead worker id, killed at)
    while True:
        docs = await collection.find(
            {}, {"status": 1, "workerId": 1, "uploads": 1, "checkpoint.parts": 1}
        ).to_list()
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
            await queue_export([rng.choice(SINGLE_KILLS)])
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
            after_checkpoint.setdefault(export_id, []).append(_checkpointed(active[0]))
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
    # Resumed or restarted, every finished export holds the bytes of an uninterrupted one.
    expected_files = {t: final[i]["files"][0] for i, t in references.items()}
    for doc in finished.values():
        (stored,) = doc["files"]
        reference = expected_files[types[doc["_id"]]]
        assert (stored["sha256"], stored["bytes"], stored["rows"]) == (
            reference["sha256"],
            reference["bytes"],
            reference["rows"],
        ), doc
    # A run killed after its first checkpoint is resumed by the next (from row 50, the end of
    # part 1), one killed before it restarts from row 0 (runs that a loaded machine took from
    # a live worker are left out: they may have checkpointed more, or less).
    resumed: list[str] = []
    restarted: list[str] = []
    for export_id, doc in finished.items():
        if export_id in references or false_dead[export_id]:
            continue
        (resumes,) = after_checkpoint[export_id]
        (resumed if resumes else restarted).append(export_id)
        if resumes:
            assert doc.get("resumedFrom") == ROWS_IN_PART_1, doc
        else:
            assert doc.get("resumedFrom") is None, doc
    kills_after_checkpoint = sum(map(sum, after_checkpoint.values()))
    assert kills_after_checkpoint >= 5 and len(resumed) >= 3
    # The poison export's later runs resumed its upload too, before it was failed.
    assert after_checkpoint[poison][1:] == [True, True]
    # The dead export's dedupe key is released: the same request can be made again.
    assert "dedupeKey" not in final[poison]
    for proc in spawned:
        assert JWT_SECRET not in proc.log_path.read_text()
    resumed_runs = sum(
        1 for proc in spawned for e in proc.events() if e.get("event") == "export_resumed"
    )
    print(
        f"\nSIGKILL x{killed.total()} over {len(final)} exports (seed {seed}): recovery "
        f"(kill -> taken back) min {min(RECOVERY_SECONDS):.2f}s max {max(RECOVERY_SECONDS):.2f}s "
        f"mean {sum(RECOVERY_SECONDS) / len(RECOVERY_SECONDS):.2f}s; {looks} looks; "
        f"live workers judged dead: {false_dead.total()}; kills after the first checkpoint: "
        f"{kills_after_checkpoint}, runs that resumed: {resumed_runs}; exports killed once: "
        f"{len(resumed)} resumed, {len(restarted)} restarted from row 0"
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
