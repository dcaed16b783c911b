"""Liveness: has this process got anywhere lately? What `/heartbeat` answers, in every mode.

A process whose MongoDB client is wedged (a driver lock left held, a task that never returns)
still answers HTTP, so "the event loop runs" proves nothing. What proves it alive is a step that
went through the driver and came back, successfully or not, within the driver's own bounds:

* `serve` and `worker`: every turn of the worker loop, and every beat of a running export;
* `api`: a probe that pings MongoDB every polling interval (`probe()`).

A failed call is progress (MongoDB being down is a readiness matter, `/ready`); only silence for
longer than `liveness_timeout_millis` is not, and then `/heartbeat` answers 503 so that the
orchestrator restarts the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pymongo
import structlog
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

log = structlog.get_logger(__name__)


class Liveness:
    def __init__(self, timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds
        # Monotonic time of the last step that came back.
        self.last = time.monotonic()

    def tick(self) -> None:
        self.last = time.monotonic()

    def stalled_for(self) -> float | None:
        """Seconds without progress, or `None` while the process is healthy."""
        quiet = time.monotonic() - self.last
        return quiet if quiet > self.timeout_seconds else None

    def report(self) -> tuple[dict[str, Any], int]:
        """The `/heartbeat` body and status."""
        stalled = self.stalled_for()
        if stalled is None:
            return {"status": "ok"}, 200
        return {"status": "stalled", "stalledSeconds": round(stalled, 1)}, 503

    async def probe(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        *,
        interval: float,
        ping_timeout: float,
        stop: asyncio.Event,
    ) -> None:
        """Ping MongoDB every `interval` until `stop` is set, ticking after each answer.

        Stopped by the event, never cancelled: a task cancelled inside a driver call can leave
        the driver's own locks held on Python 3.11 (see `queue.run`), which is the wedge this
        probe exists to detect. The ping is bounded by the driver's timeout (`ping_timeout`).
        """
        while not stop.is_set():
            try:
                with pymongo.timeout(ping_timeout):
                    await client.admin.command("ping")
            except PyMongoError as exc:
                log.debug("liveness_probe_failed", error=f"{type(exc).__name__}: {exc}")
            self.tick()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()
