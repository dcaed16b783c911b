"""Where rows go: one CSV object, a ZIP of CSVs, or several CSV objects.

A sink owns the S3 writers of one export run. `close()` completes them and describes the files;
`abort()` removes everything it started, so a failed run leaves no object behind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from export_service.encoding.batch import EncodedBatch
from export_service.encoding.formatting import CsvEncoder
from export_service.models import StoredFile
from export_service.storage import ObjectWriter, WriterState, WrittenObject

# Opens a writer for (key, content type); the runner wires upload tracking and the bucket/ACL.
OpenWriter = Callable[[str, str], ObjectWriter]


class Sink(Protocol):
    async def write(self, rows: Sequence[Any]) -> None: ...

    async def close(self) -> list[StoredFile]: ...

    async def abort(self) -> None: ...


@dataclass(slots=True)
class SinkTarget:
    bucket: str
    acl: str | None
    base_key: str  # {campaignId}/{exportType}/{exportId}, without extension
    columns: Sequence[str]
    open_writer: OpenWriter

    def stored(self, written: WrittenObject, rows: int) -> StoredFile:
        """How a completed object is recorded in the export's `files`."""
        return StoredFile(
            bucket=written.bucket,
            key=written.key,
            acl=self.acl,
            rows=rows,
            bytes=written.bytes,
            sha256=written.sha256,
        )


class CsvSink:
    """All rows into one CSV object."""

    def __init__(self, target: SinkTarget) -> None:
        self._target = target
        self._encoder = CsvEncoder()
        self._writer = target.open_writer(self.key, "text/csv; charset=utf-8")
        self._rows = 0
        self._header_written = False

    @property
    def key(self) -> str:
        return f"{self._target.base_key}.csv"

    @property
    def writer(self) -> ObjectWriter:
        return self._writer

    def resume(self, state: WriterState, rows: int) -> None:
        """Go on after `rows` rows (header included in the parts) of a checked checkpoint."""
        self._writer.resume(state)
        self._rows = rows
        self._header_written = True

    async def write(self, rows: Sequence[Any]) -> None:
        await self._write_header()
        if rows:
            self._rows += len(rows)
            await self._writer.write(self._encoder.encode(rows))

    async def write_encoded(self, batch: EncodedBatch, mark: Any = None) -> None:
        """Rows an encoder has CSV-encoded already; `mark` says where the input stands after
        them (see `ObjectWriter`)."""
        await self._write_header()
        if batch.rows:
            self._rows += batch.rows
            await self._writer.write(batch.data, mark)

    async def _write_header(self) -> None:
        if not self._header_written:
            await self._writer.write(self._encoder.header(self._target.columns))
            self._header_written = True

    async def close(self) -> list[StoredFile]:
        await self.write(())
        written = await self._writer.close()
        return [self._target.stored(written, self._rows)]

    async def abort(self, *, keep_recorded: bool = False) -> None:
        await self._writer.abort(keep_recorded=keep_recorded)
