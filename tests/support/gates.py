"""Waiting on the service without sleeps: a gate held mid-run, a bounded wait for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from export_service.models import Export


class Gate:
    """A batch hook that holds an export mid-run until released: no sleeps needed."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, export: Export, rows: int) -> None:
        self.reached.set()
        await self.release.wait()


async def until(what: str, predicate: Callable[[], Any], timeout: float = 15) -> None:
    """Bounded wait for another party (the service's own tasks, a server) to get somewhere."""
    deadline = time.monotonic() + timeout
    while not await _call(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _call(predicate: Callable[[], Any]) -> bool:
    result = predicate()
    if asyncio.iscoroutine(result):
        result = await result
    return bool(result)
