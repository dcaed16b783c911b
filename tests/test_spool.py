"""The spool of the partitioned types (contract §15) on real servers: removed on every outcome of
a run, leftovers of a SIGKILLed worker removed by the next worker's start, a full spool fails
the export with SpoolDiskFull and leaves nothing behind."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from export_service.exporters.spool import Spool, remove_leftover_spools
from export_service.models import Export, ExportStatus, ExportType
from export_service.queue.repository import CCPA_OWNER
from export_service.runtime import Services
from export_service.settings import Settings
from tests.support.app import make_settings
from tests.support.data import add_campaign, entry, queue_exports
from tests.support.faults import CREATE_MPU, PUT_OBJECT, S3FaultProxy, operations
from tests.support.gates import until
from tests.support.s3 import leftovers
from tests.support.workers import WorkerProcess

PARTITIONED = (
    ExportType.REMINDER_EMAIL,
    ExportType.REMINDER_EMAIL_SAMPLE,
    ExportType.AUTO_REMINDER_EMAIL,
    ExportType.PROMOTER_EMAIL_OPT_IN,
)


@pytest.fixture
def settings(mongo_uri: str, s3_endpoint: str, tmp_path: Path) -> Settings:
    # One row per batch, so that a hook sees the run between batches with its spool open.
    return make_settings(mongo_uri, s3_endpoint, batch_size=1, spool_dir=tmp_path / "spool")


@pytest.fixture
async def seeded(services: Services) -> AsyncIterator[Services]:
    await add_promoted_campaign(services)
    yield services


async def add_promoted_campaign(services: Services) -> None:
    await add_campaign(services.db)
    await services.db["promoters"].insert_one({"_id": "p1", "name": "P"})
    await services.db["markets"].update_many({}, {"$set": {"promoterIds": ["p1"]}})
    await services.db["entries"].insert_many(
        [entry(f"e{i}", f"u{i}", optIns={"allowPromoter": True}) for i in range(6)]
    )


def spools(settings: Settings) -> list[Path]:
    root = settings.spool_dir
    return sorted(root.iterdir()) if root.exists() else []


def is_locked(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Held:
    """A batch hook that notes the spools of the run at its first batch, then holds it."""

    def __init__(self, settings: Settings, *, fail: bool = False) -> None:
        self._settings = settings
        self._fail = fail
        self.seen: list[Path] = []
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, export: Export, rows: int) -> None:
        if not self.reached.is_set():
            self.seen = spools(self._settings)
            assert all(is_locked(p) for p in self.seen)  # a live run's spool is locked
            self.reached.set()
        if self._fail:
            raise RuntimeError("boom")
        await self.release.wait()


Outcome = Callable[[Services, Export, Held], Awaitable[None]]


async def finish(services: Services, export: Export, held: Held) -> None:
    held.release.set()


async def cancel(services: Services, export: Export, held: Held) -> None:
    assert await services.repository.cancel(export.id, export.campaign_id, "u") is not None
    services.worker.cancel_requested(export.id)


async def shutdown(services: Services, export: Export, held: Held) -> None:
    await services.worker.shutdown(grace=0)


async def ccpa_take_over(services: Services, export: Export, held: Held) -> None:
    assert await services.repository.take_over([export.id], CCPA_OWNER) == 1
    held.release.set()


OUTCOMES: dict[str, tuple[Outcome, ExportStatus | None]] = {
    "finish": (finish, ExportStatus.FINISHED),
    "cancel": (cancel, ExportStatus.FAILED),  # contract §9: FAILED, Cancelled
    "shutdown": (shutdown, ExportStatus.PENDING),  # past its grace: requeued
    "ccpa": (ccpa_take_over, None),  # the worker gives the export up
}


@pytest.mark.parametrize("export_type", PARTITIONED)
@pytest.mark.parametrize("outcome", sorted(OUTCOMES))
async def test_spool_is_removed_on_every_outcome(
    seeded: Services, export_type: ExportType, outcome: str
) -> None:
    services = seeded
    act, status = OUTCOMES[outcome]
    (export,) = await queue_exports(services, 1, export_type)
    held = Held(services.settings)
    services.worker.batch_hook = held
    running = asyncio.create_task(services.worker.process())
    await held.reached.wait()
    assert len(held.seen) == 1  # the run spools under one directory
    await act(services, export, held)
    ended = await running
    if status is not None:
        assert ended is not None and ended.status is status
    assert spools(services.settings) == []
    if status is not ExportStatus.FINISHED:
        assert await leftovers(services) == []


async def test_spool_is_removed_when_the_export_fails(seeded: Services) -> None:
    services = seeded
    held = Held(services.settings, fail=True)
    services.worker.batch_hook = held
    await queue_exports(services, 1, ExportType.REMINDER_EMAIL)
    (done,) = await services.worker.drain()
    assert done.status is ExportStatus.FAILED
    assert len(held.seen) == 1
    assert spools(services.settings) == []
    assert await leftovers(services) == []


async def test_spool_is_removed_when_the_export_expires(
    mongo_uri: str, s3_endpoint: str, tmp_path: Path
) -> None:
    settings = make_settings(
        mongo_uri, s3_endpoint, batch_size=1, spool_dir=tmp_path, timeout_millis=1500
    )
    async with Services.open(settings, create_buckets=True) as services:
        try:
            await add_campaign(services.db)
            await services.db["entries"].insert_many([entry(f"e{i}", f"u{i}") for i in range(3)])
            held = Held(settings)  # never released: only the timeout ends the run
            services.worker.batch_hook = held
            await queue_exports(services, 1, ExportType.AUTO_REMINDER_EMAIL)
            done = await services.worker.process()
            assert done is not None and done.status is ExportStatus.EXPIRED
            assert len(held.seen) == 1
            assert spools(settings) == []
            assert await leftovers(services) == []
        finally:
            await services.client.drop_database(settings.mongo_db)


@pytest.mark.parametrize("export_type", PARTITIONED)
async def test_a_full_spool_fails_the_export_with_spool_disk_full(
    mongo_uri: str, s3_endpoint: str, tmp_path: Path, export_type: ExportType
) -> None:
    # SPOOL_MAX_BYTES raises what a full disk (ENOSPC) raises.
    settings = make_settings(mongo_uri, s3_endpoint, spool_dir=tmp_path, spool_max_bytes=16)
    async with Services.open(settings, create_buckets=True) as services:
        try:
            await add_promoted_campaign(services)
            await queue_exports(services, 1, export_type)
            (done,) = await services.worker.drain()
            assert done.status is ExportStatus.FAILED
            assert done.error is not None and done.error["code"] == "SpoolDiskFull"
            assert "SPOOL_MAX_BYTES" in done.error["message"]
            assert list(tmp_path.iterdir()) == []
            assert await leftovers(services) == []
        finally:
            await services.client.drop_database(settings.mongo_db)


def test_leftover_spools_of_dead_runs_go_and_live_ones_stay(tmp_path: Path) -> None:
    live = Spool(tmp_path, "live")
    live.append(("a", 1), b"x,y\r\n")
    dead = tmp_path / "dead-0123"  # what a SIGKILLed run leaves: a directory nobody locks
    dead.mkdir()
    (dead / "rows.spool").write_bytes(b"rows")
    assert remove_leftover_spools(tmp_path) == 1
    assert sorted(tmp_path.iterdir()) == [live.path]
    assert b"".join(live.read(("a", 1))) == b"x,y\r\n"
    live.remove()
    assert list(tmp_path.iterdir()) == []
    assert remove_leftover_spools(tmp_path / "missing") == 0


async def test_next_worker_start_removes_the_spool_of_a_sigkilled_worker(
    mongo_uri: str, s3_endpoint: str, tmp_path: Path
) -> None:
    proxy = await S3FaultProxy.start(s3_endpoint)
    spool_dir = tmp_path / "spool"
    worker_settings = make_settings(mongo_uri, proxy.url, spool_dir=spool_dir)
    local = worker_settings.model_copy(update={"s3_endpoint_url": s3_endpoint})
    procs: list[WorkerProcess] = []
    async with Services.open(local, create_buckets=True) as services:
        try:
            await add_campaign(services.db)
            await services.db["entries"].insert_many([entry(f"e{i}", f"u{i}") for i in range(5)])
            # The run spools every row, then waits on S3 for ever: killed with its spool on disk.
            proxy.stall(match=operations(PUT_OBJECT, CREATE_MPU))
            (export,) = await queue_exports(services, 1, ExportType.REMINDER_EMAIL)
            first = WorkerProcess(worker_settings, tmp_path, "first")
            procs.append(first)

            def spooled() -> list[Path]:
                return [p for p in spools(local) if (p / "rows.spool").exists()]

            await until("the first worker's spool", lambda: any(
                (p / "rows.spool").stat().st_size > 0 for p in spooled()
            ), timeout=60)  # fmt: skip
            (left,) = spooled()
            first.kill()
            assert left.exists() and not is_locked(left)  # the kill left it behind

            second = WorkerProcess(worker_settings, tmp_path, "second")
            procs.append(second)
            await until(
                "the second worker's clean-up",
                lambda: any(
                    e.get("event") == "spool_leftovers_removed" and e.get("spools") == 1
                    for e in second.events()
                ),
                timeout=60,
            )
            assert not left.exists()
            doc = await services.db["exports"].find_one({"_id": export.id})
            assert doc is not None and doc["status"] == "TRIGGERED"  # still the dead worker's
        finally:
            for proc in procs:
                proc.stop()
            await proxy.close()
            await services.client.drop_database(local.mongo_db)
