"""How values become CSV cells (DESIGN §6): booleans, dates, blanks and formula neutralising."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def text(value: Any) -> str:
    """A free-text cell (names, answers): prefixed with `'` when a spreadsheet would run it."""
    if value is None:
        return ""
    s: str = value if isinstance(value, str) else cell(value)
    if s.startswith(_FORMULA_STARTS):
        return "'" + s
    return s


def date(value: Any) -> str:
    if not isinstance(value, datetime):
        return "" if value is None else str(value)
    moment: datetime = value.astimezone(UTC) if value.tzinfo is not None else value
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def cell(value: Any) -> str:
    """A verbatim cell (ids, emails, phones, numbers)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return date(value)
    if isinstance(value, list | tuple):
        return ";".join(cell(v) for v in value)
    return str(value)


def flag(value: Any) -> str:
    """A boolean cell where missing means false (opt-ins, verified)."""
    return "true" if value is True else "false"


def upper(value: Any) -> str:
    return value.upper() if isinstance(value, str) else ""


class CsvEncoder:
    """RFC 4180 rows to UTF-8 bytes, a whole batch per call (csv.writerows runs in C)."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")

    def encode(self, rows: Iterable[Sequence[str]]) -> bytes:
        self._writer.writerows(rows)
        data = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate(0)
        return data.encode("utf-8")

    def header(self, columns: Sequence[str]) -> bytes:
        return self.encode([columns])
