"""The wedge after a MongoDB crash, and the liveness that catches a wedged process.

On Python < 3.13 a task cancelled while pymongo waits inside `asyncio.wait_for` can leave the
driver's own lock held for good (`RuntimeError: Lock is not acquired`, then every later call
waits forever). The worker must therefore never cancel a task that is inside a driver call. A
command listener sees what a cancel does to a call in flight: the command starts and never
ends, neither succeeded nor failed. These tests hold driver calls on a stalled server (the TCP
proxy forwards nothing) while the worker stops the run, and check that every call that was in
flight ends once the server answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pymongo import monitoring

from export_service.app.factory import WORKER_TASK, create_app
from export_service.app.routes import SERVICES
from export_service.models import ExportStatus, ExportType, utcnow
from export_service.runtime import Services
from tests.support.app import auth, make_settings
from tests.support.data import CAMPAIGN, add_campaign, entry, queue_exports, seed_big_entries
from tests.support.faults import FAST, TcpProxy
from tests.support.gates import Gate, until
from tests.support.s3 import multipart_uploads, object_keys
from tests.support.servers import ForkedMongo, port_of

Client = TestClient[Any, Any]


def _frames(task: asyncio.Task[Any]) -> list[str]:
    """The files of the coroutines `task` is suspended in, outermost first."""
    files: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        files.append(frame.f_code.co_filename)
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return files


def service_tasks_in_the_driver() -> list[str]:
    """The service's tasks (not the run's heartbeat) suspended inside a driver call: sending
    a command, or still selecting the server or waiting for a connection to it, which no
    command event shows."""
    found = []
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        files = _frames(task)
        if not files or f"{os.sep}export_service{os.sep}" not in files[0]:
            continue  # the driver's own monitor tasks, the test's tasks
        if coro.__qualname__.endswith("._heartbeat"):
            continue
        if any(f"{os.sep}pymongo{os.sep}" in f for f in files):
            found.append(coro.__qualname__)
    return found


class DriverCalls(monitoring.CommandListener):
    """Every command the client sent, and whether it ended (succeeded or failed)."""

    def __init__(self) -> None:
        self.in_flight: dict[int, str] = {}
        self.on_start: list[Any] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.in_flight[event.request_id] = (
            "heartbeat" if _is_heartbeat(event) else event.command_name
        )
        for hook in self.on_start:
            hook(event)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.in_flight.pop(event.request_id, None)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.in_flight.pop(event.request_id, None)

    def of_the_run(self) -> list[str]:
        """Calls held other than heartbeats: the run's (a read, an upload recorded), as
        commands in flight or as service tasks suspended in the driver before their command."""
        commands = [command for command in self.in_flight.values() if command != "heartbeat"]
        return commands + service_tasks_in_the_driver()


async def test_run_stopped_while_its_call_is_held_lets_the_call_end(
    mongo_uri: str, s3_endpoint: str
) -> None:
    """The export's deadline passes while the run waits on a server that does not answer (its
    next batch, the record of its upload). The run is stopped without cancelling that call: once
    the server answers, it (and every other call in flight) ends, the export is EXPIRED with nothing left in S3,
    and the worker goes on to run the next export."""
    calls = DriverCalls()
    timeout_millis = 3000
    async with await TcpProxy.start("127.0.0.1", port_of(mongo_uri)) as proxy:
        # The driver's monitor would notice the stall after connectTimeoutMS (mongo_timeout_ms)
        # and interrupt the calls itself: keep that longer than the stall.
        settings = make_settings(
            proxy.mongo_uri,
            s3_endpoint,
            **(FAST | {"timeout_millis": timeout_millis, "mongo_timeout_ms": 10_000}),
        )
        async with Services.open(settings, create_buckets=True, listeners=[calls]) as services:
            worker = services.worker
            loop = asyncio.create_task(worker.run())
            try:
                await seed_big_entries(services)
                gate = Gate()
                worker.batch_hook = gate
                claimed, ended = worker.watch_claims(), worker.subscribe()
                await queue_exports(services, 1, ExportType.ENTRIES)
                worker.notify()
                export = await asyncio.wait_for(claimed.get(), 20)
                await asyncio.wait_for(gate.reached.wait(), 20)
                proxy.stall(True)
                gate.release.set()
                # Bounded generously: on a loaded machine the run's next read can wait on
                # the encoders and the part upload for a while.
                await until("a call of the run to be held", calls.of_the_run, timeout=45)
                deadline = export.date["triggered"] + timedelta(milliseconds=timeout_millis)
                await until("the deadline to pass", lambda: utcnow() > deadline)
                held = set(calls.in_flight)
                proxy.stall(False)
                done = await asyncio.wait_for(ended.get(), 30)
                assert done.id == export.id and done.status is ExportStatus.EXPIRED
                # A call cancelled in flight never ends: none may be among those held.
                await until(
                    "every held call to end", lambda: not held & set(calls.in_flight), timeout=10
                )
                bucket = settings.bucket_exports
                assert await object_keys(services.storage, bucket) == []
                assert await multipart_uploads(services.storage, bucket) == []
                worker.batch_hook = None
                (second,) = await queue_exports(services, 1, ExportType.VERIFIED_ENTRIES)
                worker.notify()
                after = await asyncio.wait_for(ended.get(), 20)
                assert after.id == second.id and after.status is ExportStatus.FINISHED
                assert worker.liveness.stalled_for() is None
            finally:
                await worker.shutdown()
                await loop
                await services.client.drop_database(settings.mongo_db)


@asynccontextmanager
async def app_over(
    proxy: TcpProxy, s3_endpoint: str, *, run_worker: bool, **overrides: Any
) -> AsyncIterator[tuple[Client, Services]]:
    settings = make_settings(proxy.mongo_uri, s3_endpoint, **(FAST | overrides))
    app = create_app(settings, run_worker=run_worker, create_buckets=True)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        services = app[SERVICES]
        try:
            yield client, services
        finally:
            if run_worker:
                assert not app[WORKER_TASK].done(), "the worker loop ended"
            await services.client.drop_database(settings.mongo_db)


async def heartbeat_status(client: Client) -> int:
    return (await client.get("/heartbeat")).status


@pytest.mark.parametrize(
    ("run_worker", "overrides"),
    [
        # serve: the loop's sweep waits on the stalled server (the driver's own bounds are
        # longer than the liveness bound here).
        (True, {}),
        # api: the probe's ping waits, bounded by mongo_timeout_ms, longer than the bound.
        (False, {"mongo_timeout_ms": 20_000}),
    ],
    ids=["serve", "api"],
)
async def test_heartbeat_fails_while_nothing_gets_through_and_recovers(
    mongo_uri: str, s3_endpoint: str, run_worker: bool, overrides: dict[str, Any]
) -> None:
    port = port_of(mongo_uri)
    async with (
        await TcpProxy.start("127.0.0.1", port) as proxy,
        app_over(
            proxy, s3_endpoint, run_worker=run_worker, liveness_timeout_millis=500, **overrides
        ) as (client, _services),
    ):
        assert await heartbeat_status(client) == 200
        proxy.stall(True)
        await until("/heartbeat to answer 503", lambda: _heartbeat_is(client, 503))
        body = await (await client.get("/heartbeat")).json()
        assert body["status"] == "stalled" and body["stalledSeconds"] >= 0.5
        proxy.stall(False)
        await until("/heartbeat to answer 200", lambda: _heartbeat_is(client, 200))


async def _heartbeat_is(client: Client, status: int) -> bool:
    return await heartbeat_status(client) == status


# --------------------------------------------------------------------------------------------
# MongoDB SIGKILLed and restarted, again and again, under a running service
# --------------------------------------------------------------------------------------------


@pytest.fixture
def forked_mongo(tmp_path: Path) -> Iterator[ForkedMongo]:
    server = ForkedMongo(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.close()


KILLS = 50


class KillSwitch:
    """SIGKILLs MongoDB from inside the driver, the instant a chosen command is sent."""

    def __init__(self, mongo: ForkedMongo) -> None:
        self.mongo = mongo
        self.fired = asyncio.Event()
        self._countdown: int | None = None
        self._on_beat = False

    def arm(self, *, on_beat: bool = False, after_commands: int = 0) -> None:
        self.fired.clear()
        self._on_beat = on_beat
        self._countdown = None if on_beat else after_commands

    def disarm(self) -> None:
        self._countdown, self._on_beat = None, False

    def fire(self) -> None:
        self._countdown, self._on_beat = None, False
        self.mongo.kill()
        self.fired.set()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self._on_beat and _is_heartbeat(event):
            self.fire()  # the beat is on its way: its answer never comes
        elif self._countdown is not None:
            self._countdown -= 1
            if self._countdown <= 0:
                self.fire()


def _is_heartbeat(event: monitoring.CommandStartedEvent) -> bool:
    if event.command_name != "update" or event.command.get("update") != "exports":
        return False
    updates = event.command.get("updates") or []
    return bool(updates) and "heartbeatAt" in str(updates[0].get("u", ""))


async def test_mongodb_killed_and_restarted_50_times_the_service_recovers_every_time(
    forked_mongo: ForkedMongo, s3_endpoint: str
) -> None:
    """Each round requests an export and SIGKILLs MongoDB at a random moment: every other
    round the instant a heartbeat is sent, else on a random one of the next 25 commands (a
    claim, a count, a batch, a beat, a finish, a sweep...). MongoDB is started again at once,
    and the round requires the export FINISHED, `/ready` and `/heartbeat` 200: from the same
    service process, never restarted."""
    rng = random.Random(12)
    calls = DriverCalls()
    kill = KillSwitch(forked_mongo)
    calls.on_start.append(kill.started)
    settings = make_settings(
        forked_mongo.uri,
        s3_endpoint,
        **(FAST | {"batch_size": 10, "heartbeat_interval_millis": 20, "max_attempts": 10}),
    )
    app = create_app(settings, run_worker=True, create_buckets=True, listeners=[calls])
    recoveries: list[float] = []
    mid_beat = 0
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        services = app[SERVICES]
        await add_campaign(services.db)
        await services.db["entries"].insert_many(
            [entry(f"e{i:03d}", f"u{i:03d}") for i in range(40)]
        )
        try:
            for round_ in range(KILLS):
                on_beat = round_ % 2 == 1
                kill.arm(on_beat=on_beat, after_commands=rng.randint(1, 25))
                export_id = await request_entries(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(kill.fired.wait(), 5)
                if not kill.fired.is_set():
                    kill.fire()  # the export ended before any beat: kill it idle
                else:
                    mid_beat += on_beat
                killed = time.monotonic()
                await asyncio.to_thread(forked_mongo.start)
                if export_id is None:
                    # Killed while the request was served: it answered 503, and the client
                    # asks again (answered 200 if its first try was written after all).
                    await until("MongoDB to be back", lambda: _is_ready(client))
                    export_id = await request_entries(client)
                    assert export_id is not None
                finished = functools.partial(_finished, client, export_id)
                await until(f"round {round_}: the export to finish", finished, timeout=30)
                recoveries.append(time.monotonic() - killed)
                assert (await client.get("/ready")).status == 200
                assert await heartbeat_status(client) == 200
            assert not app[WORKER_TASK].done(), "the worker loop ended"
        finally:
            kill.disarm()
            await services.client.drop_database(settings.mongo_db)
    recoveries.sort()
    print(
        f"\n{KILLS} MongoDB SIGKILLs ({mid_beat} mid-heartbeat): recovered every time; "
        f"kill -> export FINISHED p50 {recoveries[len(recoveries) // 2]:.2f}s, "
        f"max {recoveries[-1]:.2f}s"
    )


async def request_entries(client: Client) -> str | None:
    """The new export's id; `None` when the request met MongoDB down (503)."""
    resp = await client.post(
        f"/campaigns/{CAMPAIGN}/exports", json={"exportType": "entries"}, headers=auth([CAMPAIGN])
    )
    if resp.status == 503:
        return None
    assert resp.status in (200, 202), await resp.text()
    export_id: str = (await resp.json())["id"]
    return export_id


async def _is_ready(client: Client) -> bool:
    return (await client.get("/ready")).status == 200


async def _finished(client: Client, export_id: str) -> bool:
    resp = await client.get(f"/campaigns/{CAMPAIGN}/exports/{export_id}", headers=auth([CAMPAIGN]))
    if resp.status != 200:
        return False  # MongoDB not back yet: 503
    status = (await resp.json())["status"]
    assert status not in ("FAILED", "EXPIRED"), f"export {export_id} ended {status}"
    return bool(status == "FINISHED")
