"""Awaiting work that a stop request may cut short (a run being cancelled, timed out, shut down).

Only for work that is safe to cancel (S3 calls, test hooks): a driver call is never raced
against a halt, because cancelling a task inside pymongo can wedge the process (see `queue.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from export_service.errors import Halted

T = TypeVar("T")


async def unless_halted(halt: asyncio.Event, work: Awaitable[T]) -> T:
    """The result of `work`, or `Halted` if `halt` is set first (the work is then cancelled
    and awaited)."""
    task = asyncio.ensure_future(work)
    halted = asyncio.create_task(halt.wait())
    try:
        await asyncio.wait({task, halted}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        halted.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        raise Halted()
    return task.result()
