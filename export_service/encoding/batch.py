"""What an encoder is: a picklable callable from one raw cursor batch to CSV bytes."""

from __future__ import annotations

from typing import NamedTuple, Protocol


class EncodedBatch(NamedTuple):
    """CSV rows (UTF-8, no header) and how many rows they hold."""

    data: bytes
    rows: int


class BatchEncoder(Protocol):
    """Turns one raw cursor batch (concatenated BSON documents) into CSV rows.

    Runs in the worker or in an encoder process, so it must be picklable and hold everything it
    needs (lookups, codec options): no database handle, no context.
    """

    def __call__(self, raw: bytes, /) -> EncodedBatch: ...
