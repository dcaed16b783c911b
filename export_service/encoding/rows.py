"""One CSV row per source document: the encoder of the simple types, and their row functions.

A row function lives here (not next to its spec) because an encoder process unpickles it by
name, and this package is all a child imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bson
from bson.codec_options import CodecOptions

from export_service.encoding.batch import EncodedBatch
from export_service.encoding.formatting import CsvEncoder, cell, date

Doc = dict[str, Any]
RowFn = Callable[[Doc], list[str]]


@dataclass(frozen=True, slots=True)
class DocRowsEncoder:
    """A batch → one row per document, by `row` (a module-level function, so it pickles)."""

    row: RowFn
    codec_options: CodecOptions[Any]

    def __call__(self, raw: bytes, /) -> EncodedBatch:
        rows = list(map(self.row, bson.decode_all(raw, self.codec_options)))
        return EncodedBatch(CsvEncoder().encode(rows), len(rows))


def code_row(doc: Doc) -> list[str]:
    return [
        cell(doc.get("code")),
        cell(doc.get("type")),
        cell(doc.get("status")),
        cell(doc.get("marketId")),
        cell(doc.get("assignedTo")),
        date((doc.get("date") or {}).get("assigned")),
    ]


def scoring_row(doc: Doc) -> list[str]:
    return [
        cell(doc.get("userId")),
        cell(doc.get("entryId")),
        cell(doc.get("marketId")),
        cell(doc.get("score")),
        cell(doc.get("rank")),
        cell(bool(doc.get("selected"))),
    ]


def verified_entry_row(doc: Doc) -> list[str]:
    fields = doc.get("fields") or {}
    return [
        cell(doc["_id"]),
        cell(doc.get("userId")),
        cell(fields.get("email")),
        cell(fields.get("phone")),
        cell(doc.get("marketId")),
        date((doc.get("date") or {}).get("created")),
    ]
