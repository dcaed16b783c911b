"""Sinks for partitioned exports: a ZIP of CSVs, or one CSV object per file (DESIGN §6).

Rows arrive as `(partition, row)` pairs, partition by partition: a ZIP member must be written in
one go, and so is an object when only one part may be held in memory. The specs read their
source partition by partition to make that true (see `reminders.py`, `promoters.py`); the sink
checks it and fails loudly rather than writing a wrong file. Each partition becomes files named
by the spec, `n` = 1, 2, … split every `max_rows_per_file` rows, each with the header.

The ZIP is built by stream-zip, whose API is synchronous and pulls member bytes: its
`async_stream_zip` runs the zipping in a thread and asks the event loop for each chunk. Rows are
pushed in through a small bounded queue, and the zipped bytes go straight to the multipart
writer, so an export of any size holds a few hundred KiB of CSV plus the S3 parts in flight.
Members are always ZIP64 (sizes are unknown when a member starts, and big exports pass 4 GiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
import zlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from stream_zip import ZIP_64, Method, async_stream_zip

from export_service.encoding.formatting import CsvEncoder
from export_service.exporters.runner import SINKS
from export_service.exporters.sinks import SinkTarget
from export_service.exporters.spec import Context, ExporterSpec, FileNameFn, Layout, Row
from export_service.models import StoredFile, utcnow
from export_service.storage import ObjectWriter

CSV_TYPE: Final = "text/csv; charset=utf-8"
ZIP_TYPE: Final = "application/zip"

# CSV chunks waiting for the zipping thread; each is one encoded batch (~100 KiB at the
# default batch size), so this bounds the rows in flight between the cursor and S3.
_QUEUE_ITEMS: Final = 4
# stream-zip hands over the archive in pieces of this size; one thread hop each.
_ZIP_CHUNK: Final = 256 * 1024
_MEMBER_MODE: Final = stat.S_IFREG | 0o644


class OutOfOrder(RuntimeError):
    """A spec sent rows of a partition after leaving it: a bug, never a data problem."""


class PartitionedSink(ABC):
    """Splits `(partition, row)` pairs into files; subclasses store the files."""

    def __init__(self, spec: ExporterSpec, ctx: Context, target: SinkTarget) -> None:
        if spec.file_name is None:
            raise TypeError(f"{spec.export_type.value}: a partitioned layout needs `file_name`")
        self._ctx = ctx
        self._target = target
        self._file_name: FileNameFn = spec.file_name
        self._cap = spec.max_rows_per_file(ctx) if spec.max_rows_per_file is not None else None
        # Partitions that get a file even without rows, and where each one is in that order.
        self._declared = list(spec.partitions(ctx)) if spec.partitions is not None else []
        self._declared_at = {p: i for i, p in enumerate(self._declared)}
        self._next_declared = 0
        self._encoder = CsvEncoder()
        self._header = self._encoder.header(target.columns)
        self._left: set[Any] = set()
        self._names: set[str] = set()
        self._partition: Any = None
        self._in_partition = False
        self._n = 0
        self._file_open = False
        self._file_rows = 0
        self._pending: list[Row] = []
        self.rows = 0

    # ---- what subclasses store ------------------------------------------------------------

    @abstractmethod
    async def _open(self, name: str) -> None: ...

    @abstractmethod
    async def _put(self, data: bytes) -> None: ...

    @abstractmethod
    async def _end(self, rows: int) -> None: ...

    @abstractmethod
    async def _finish(self) -> list[StoredFile]: ...

    @abstractmethod
    async def abort(self) -> None: ...

    # ---- the Sink protocol ----------------------------------------------------------------

    async def write(self, rows: Sequence[Any]) -> None:
        for partition, row in rows:
            if not self._in_partition or partition != self._partition:
                await self._enter(partition)
            elif self._file_rows == self._cap:
                await self._next_file()
            self._pending.append(row)
            self._file_rows += 1
        self.rows += len(rows)
        await self._flush()

    async def close(self) -> list[StoredFile]:
        await self._flush()
        await self._end_file()
        await self._empty_until(len(self._declared))
        return await self._finish()

    # ---- splitting ------------------------------------------------------------------------

    async def _enter(self, partition: Any) -> None:
        await self._flush()
        await self._end_file()
        if self._in_partition:
            self._left.add(self._partition)
        if partition in self._left:
            raise OutOfOrder(f"rows of partition {partition!r} came after it was left")
        if self._declared:
            at = self._declared_at.get(partition)
            if at is None or at < self._next_declared:
                raise OutOfOrder(f"partition {partition!r} is not declared, or out of order")
            await self._empty_until(at)
            self._next_declared = at + 1
        self._partition = partition
        self._in_partition = True
        self._n = 0
        await self._next_file()

    async def _empty_until(self, stop: int) -> None:
        """Header-only files for the declared partitions before `stop` that had no rows."""
        while self._next_declared < stop:
            partition = self._declared[self._next_declared]
            self._next_declared += 1
            self._partition = partition
            self._n = 0
            await self._next_file()
            await self._end_file()
            self._left.add(partition)
        self._in_partition = False

    async def _next_file(self) -> None:
        await self._flush()
        await self._end_file()
        self._n += 1
        name = self._file_name(self._ctx, self._partition, self._n)
        if name in self._names:
            raise OutOfOrder(f"two files would be named {name!r}")
        self._names.add(name)
        await self._open(name)
        await self._put(self._header)
        self._file_open = True
        self._file_rows = 0

    async def _end_file(self) -> None:
        if self._file_open:
            self._file_open = False
            await self._end(self._file_rows)

    async def _flush(self) -> None:
        if self._pending:
            data = self._encoder.encode(self._pending)
            self._pending.clear()
            await self._put(data)


# ---- ZIP ------------------------------------------------------------------------------------


class _Member:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Signal:
    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what


_END: Final = _Signal("end")
_ABORT: Final = _Signal("abort")
_Item = bytes | _Member | _Signal
MemberFile = tuple[str, datetime, int, Method, AsyncIterable[bytes]]


class Aborted(Exception):
    """Raised into the zipping thread so that it stops waiting for bytes that will not come."""


def _deflate() -> Any:
    # zlib's default level: level 9 costs about twice the CPU for a CSV barely 1 % smaller.
    return zlib.compressobj(level=6, wbits=-zlib.MAX_WBITS)


class ZipSink(PartitionedSink):
    """One ZIP object, `{campaignId}/{exportType}/{exportId}.zip`, streamed as it is built."""

    def __init__(self, spec: ExporterSpec, ctx: Context, target: SinkTarget) -> None:
        super().__init__(spec, ctx, target)
        self._writer = target.open_writer(f"{target.base_key}.zip", ZIP_TYPE)
        triggered = ctx.export.date.get("triggered") or utcnow()
        self._modified = triggered.replace(tzinfo=UTC)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=_QUEUE_ITEMS)
        self._pump: asyncio.Task[None] | None = None

    async def _open(self, name: str) -> None:
        await self._send(_Member(name))

    async def _put(self, data: bytes) -> None:
        await self._send(data)

    async def _end(self, rows: int) -> None:
        """A member ends where the next one (or the archive's end) is sent."""

    async def _finish(self) -> list[StoredFile]:
        await self._send(_END)
        assert self._pump is not None
        await self._pump
        written = await self._writer.close()
        return [self._target.stored(written, self.rows)]

    async def abort(self) -> None:
        # The zipping thread may be waiting for the next chunk: hand it an abort (dropping
        # what it will never use) so that it ends instead of holding an executor thread.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_ABORT)
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        await self._writer.abort()

    async def _send(self, item: _Item) -> None:
        if self._pump is None:
            self._pump = asyncio.create_task(self._zip())
        pump = self._pump
        if pump.done():
            pump.result()  # the zipping failed: raise its error here
            raise RuntimeError("the ZIP stream ended before its last member")
        if not self._queue.full():
            self._queue.put_nowait(item)
            return
        # Wait for room, unless the zipping fails meanwhile (then nobody would make room).
        put = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait({put, pump}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            pump.result()
            raise RuntimeError("the ZIP stream ended before its last member")

    async def _zip(self) -> None:
        chunks = async_stream_zip(self._members(), chunk_size=_ZIP_CHUNK, get_compressobj=_deflate)
        async for chunk in chunks:
            await self._writer.write(chunk)

    async def _members(self) -> AsyncIterator[MemberFile]:
        item = await self._queue.get()
        while isinstance(item, _Member):
            # stream-zip reads a member's bytes to their end before asking for the next
            # member, so the item that ended them is known by then.
            ended_by: list[_Item] = []
            yield (item.name, self._modified, _MEMBER_MODE, ZIP_64, self._bytes(ended_by))
            item = ended_by[0]
        if item is not _END:
            raise Aborted()

    async def _bytes(self, ended_by: list[_Item]) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if isinstance(item, bytes):
                yield item
                continue
            if item is _ABORT:
                raise Aborted()
            ended_by.append(item)
            return


# ---- several objects ------------------------------------------------------------------------


class ObjectsSink(PartitionedSink):
    """Each file its own CSV object, keyed by the spec (autoReminderEmail)."""

    def __init__(self, spec: ExporterSpec, ctx: Context, target: SinkTarget) -> None:
        super().__init__(spec, ctx, target)
        self._writers: list[ObjectWriter] = []
        self._files: list[StoredFile] = []

    async def _open(self, name: str) -> None:
        self._writers.append(self._target.open_writer(name, CSV_TYPE))

    async def _put(self, data: bytes) -> None:
        await self._writers[-1].write(data)

    async def _end(self, rows: int) -> None:
        written = await self._writers[-1].close()
        self._files.append(self._target.stored(written, rows))

    async def _finish(self) -> list[StoredFile]:
        return list(self._files)

    async def abort(self) -> None:
        """Remove every object of the run, completed ones included: a failed export has none."""
        failure: BaseException | None = None
        for writer in self._writers:
            try:
                await writer.abort()
            except Exception as exc:  # keep removing the others; report the first failure
                failure = failure or exc
        if failure is not None:
            raise failure


SINKS[Layout.ZIP] = ZipSink
SINKS[Layout.OBJECTS] = ObjectsSink
