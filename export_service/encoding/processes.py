"""Encoder processes: an export's CSV encoding spread over the machine's cores.

Decoding BSON, building cells and CSV-encoding them is pure-Python CPU work that holds the GIL:
one process encodes about 150 k `entries` rows/s, whatever the database can deliver. The worker
therefore hands each raw cursor batch (bytes, as the driver received them) to one of N
long-lived child processes (`child.py`) and writes the CSV bytes they answer, in batch order,
while it reads the next batches and uploads parts. The children import `bson` and the standard
library only (~16 MB each) and are started on first use, so an API-only process has none.

A child that dies fails the batches it held with `EncoderLost` (the worker re-queues the
export) and is replaced on the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import pickle
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

import export_service
from export_service.encoding.batch import BatchEncoder, EncodedBatch
from export_service.encoding.child import HEADER, READY
from export_service.errors import EncoderLost, EncoderStartFailed

log = structlog.get_logger(__name__)

CHILD_COMMAND = (sys.executable, "-m", "export_service.encoding.child")
# How long a child gets to import its modules and say it is ready.
START_TIMEOUT_S = 30.0
# How long a child gets to finish its batch and exit after its stdin closes.
CLOSE_TIMEOUT_S = 5.0
# Where this package is imported from, first on the children's path: they import the same code
# whatever the worker's working directory or installation.
_SOURCE_ROOT = str(Path(export_service.__file__).resolve().parent.parent)


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container's
    CPU limit, which the affinity does not show: a 1-CPU pod sees every core of its node)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 limit to read
        pass
    return cpus


# Past this many children the worker's own share (reading the cursor, hashing, uploading:
# ~1.5 us per row) is the limit, at ~600 k rows/s, and each idle child still holds ~16 MB.
MAX_DEFAULT_PROCESSES = 4


def default_processes() -> int:
    """One child per usable CPU, at most MAX_DEFAULT_PROCESSES; none on a single CPU, where
    they would only add copying."""
    cpus = usable_cpus()
    return min(cpus, MAX_DEFAULT_PROCESSES) if cpus > 1 else 0


@dataclass(eq=False)
class _Child:
    process: asyncio.subprocess.Process
    # Answers arrive in request order: one future per request sent and not yet answered.
    waiting: deque[asyncio.Future[EncodedBatch]] = field(default_factory=deque)
    reader: asyncio.Task[None] | None = None
    alive: bool = True


class EncoderProcesses:
    """N encoder child processes; `encode()` runs one batch in the least busy one."""

    def __init__(self, processes: int, command: Sequence[str] = CHILD_COMMAND) -> None:
        if processes < 1:
            raise ValueError("at least one encoder process")
        self.processes = processes
        self._command = tuple(command)
        self._children: list[_Child] = []
        self._starting = asyncio.Lock()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The running children (for monitoring and the benchmarks' memory figures)."""
        return [c.process.pid for c in self._children if c.alive]

    async def start(self) -> None:
        """Start every child now rather than with the first batch."""
        await self._child()

    async def encode(self, encoder: BatchEncoder, raw: bytes) -> EncodedBatch:
        payload = pickle.dumps((encoder, raw), protocol=pickle.HIGHEST_PROTOCOL)
        child = await self._child()
        answer: asyncio.Future[EncodedBatch] = asyncio.get_running_loop().create_future()
        stdin = child.process.stdin
        assert stdin is not None
        # One synchronous write per frame, queued with its future: concurrent callers can
        # neither interleave frames nor mix up answers.
        stdin.writelines((len(payload).to_bytes(HEADER, "big"), payload))
        child.waiting.append(answer)
        if not child.alive:  # died since it was picked: its reader is done answering
            self._lost(child, f"encoder process {child.process.pid} is gone")
        try:
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._lost(child, f"encoder process {child.process.pid} is gone ({exc})")
        return await answer

    async def close(self) -> None:
        self._closed = True
        children, self._children = self._children, []
        await asyncio.gather(*(self._stop(child) for child in children))

    async def _child(self) -> _Child:
        if self._closed:
            raise RuntimeError("encoder processes are closed")
        self._children = [c for c in self._children if c.alive]
        if len(self._children) < self.processes:
            async with self._starting:
                while len(self._children) < self.processes:
                    self._children.append(await self._start())
        return min(self._children, key=lambda c: len(c.waiting))

    async def _start(self) -> _Child:
        path = os.pathsep.join(filter(None, (_SOURCE_ROOT, os.environ.get("PYTHONPATH"))))
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": path},
                # Its own session: a terminal's Ctrl-C or a process-group kill meant for the
                # worker reaches the worker, which then closes the child's stdin.
                start_new_session=True,
            )
        except OSError as exc:
            raise EncoderStartFailed(
                f"encoder process could not be started: {' '.join(self._command)}: {exc}"
            ) from exc
        stdout = process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                ready = await stdout.readexactly(HEADER + len(READY))
        except (asyncio.IncompleteReadError, TimeoutError) as exc:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            code = await process.wait()
            why = "did not start in time" if isinstance(exc, TimeoutError) else "exited"
            raise EncoderStartFailed(
                f"encoder process {process.pid} {why} (code {code}) before it was ready: "
                f"{' '.join(self._command)}; its error is on the worker's stderr"
            ) from None
        if ready[HEADER:] != READY:
            process.kill()
            await process.wait()
            raise EncoderStartFailed(f"encoder process {process.pid} answered {ready!r}")
        child = _Child(process)
        child.reader = asyncio.create_task(self._read(child))
        log.info("encoder_started", pid=process.pid)
        return child

    async def _read(self, child: _Child) -> None:
        stdout = child.process.stdout
        assert stdout is not None
        try:
            while True:
                header = await stdout.readexactly(HEADER)
                body = await stdout.readexactly(int.from_bytes(header, "big"))
                # From our own child over its stdout pipe, never from the network.
                status, value = pickle.loads(body)  # noqa: S301
                answer = child.waiting.popleft()
                if answer.done():  # its export was cancelled meanwhile
                    continue
                if status == "ok":
                    answer.set_result(value)
                else:
                    answer.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await child.process.wait()
            self._lost(child, f"encoder process {child.process.pid} exited with code {code}")
        except Exception as exc:  # a garbled answer: the stream cannot be trusted any more
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            self._lost(child, f"encoder process {child.process.pid} answered badly: {exc!r}")

    def _lost(self, child: _Child, message: str) -> None:
        if child.alive and not self._closed:
            log.warning("encoder_lost", pid=child.process.pid, error=message)
        child.alive = False
        while child.waiting:
            answer = child.waiting.popleft()
            if not answer.done():
                answer.set_exception(EncoderLost(message))

    async def _stop(self, child: _Child) -> None:
        child.alive = False
        if child.process.stdin is not None:
            child.process.stdin.close()
        try:
            await asyncio.wait_for(child.process.wait(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()
        if child.reader is not None:
            child.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await child.reader
