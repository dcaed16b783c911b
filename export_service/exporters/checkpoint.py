"""Checkpoints of resumable runs (contract §14): where an interrupted export can go on from.

A checkpoint is stored on the export document once per uploaded part (after that part and all
before it are on S3): the multipart upload, its parts, the rows and bytes they hold, the sort key
(`_id`) of the last source document in them, and the SHA-256 state after their last byte. No
credentials, no signed URL, no row data. The next run checks the parts on S3 (ListParts), reuses
the upload, re-opens the cursor after that `_id` and restores the hash, so the object it
completes is byte-identical to an uninterrupted run's.

Resumable: the single-cursor CSV types with an encoder, sorted by `_id` alone (`entries`,
`verifiedEntries`, `codes`, `scoring`); a batch of source documents is then a contiguous range
of rows and of bytes, and a part (whole batches) ends at a known `_id`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import Binary

from export_service.exporters.spec import ExporterSpec, Layout
from export_service.storage import UploadedPart, WriterState

Doc = dict[str, Any]


def resumable(spec: ExporterSpec) -> bool:
    return (
        spec.encoder is not None
        and spec.layout is Layout.CSV
        and spec.finish is None
        and tuple(spec.source.sort) == (("_id", 1),)
    )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    bucket: str
    key: str
    upload_id: str
    parts: tuple[UploadedPart, ...]
    rows: int
    size: int
    last_id: Any
    sha256_state: bytes
    # The first run's start: the cut of the types that read entries (contract §12), which a
    # resumed run keeps so that its rows are those of one cut.
    cut: datetime | None = None
    # The first run's preliminary count of that cut: it stands for the resumed run, which then
    # does not count again (on the embedded server a count reads every document).
    total: int | None = None

    @classmethod
    def of(
        cls, bucket: str, key: str, state: WriterState, cut: datetime | None, total: int | None
    ) -> Checkpoint:
        rows, last_id = state.mark
        return cls(
            bucket, key, state.upload_id, state.parts, rows, state.size, last_id,
            state.sha256_state, cut, total,
        )  # fmt: skip

    def writer_state(self) -> WriterState:
        return WriterState(
            self.upload_id, self.parts, self.size, self.sha256_state, (self.rows, self.last_id)
        )

    def matches(self, on_s3: list[UploadedPart] | None) -> bool:
        """Every checkpointed part is on S3 as it was uploaded (parts after them may be there
        too: uploaded after the last checkpoint, they are uploaded again and replaced)."""
        if on_s3 is None:
            return False
        found = {p.number: p for p in on_s3}
        return all(found.get(p.number) == p for p in self.parts)

    def to_doc(self) -> Doc:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "uploadId": self.upload_id,
            "parts": [p.to_doc() for p in self.parts],
            "rows": self.rows,
            "bytes": self.size,
            "lastId": self.last_id,
            "sha256State": Binary(self.sha256_state),
            "cut": self.cut,
            "total": self.total,
        }

    @classmethod
    def from_doc(cls, doc: Doc) -> Checkpoint:
        return cls(
            bucket=doc["bucket"],
            key=doc["key"],
            upload_id=doc["uploadId"],
            parts=tuple(UploadedPart.from_doc(p) for p in doc.get("parts") or []),
            rows=int(doc["rows"]),
            size=int(doc["bytes"]),
            last_id=doc["lastId"],
            sha256_state=bytes(doc["sha256State"]),
            cut=doc.get("cut"),
            total=doc.get("total"),
        )
