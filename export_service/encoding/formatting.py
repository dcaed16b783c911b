"""How values become CSV cells (contract §6): booleans, dates, blanks and formula neutralising."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import repeat
from operator import methodcaller
from typing import Any, overload

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
    moment: datetime = value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    # isoformat runs in C and is several times faster than strftime on the hot path.
    return moment.isoformat("T", "seconds") + "Z"


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


# Column forms of the functions above, for batch transforms: the same cells, but a column of
# strings is checked and rewritten by a few C-level passes over the joined column instead of
# one Python call per cell. Other values (None, numbers, lists) are converted cell by cell.
_SEP = "\x00"
_FORMULA = frozenset(_FORMULA_STARTS)
_FORMULA_AFTER_SEP = tuple(_SEP + start for start in _FORMULA_STARTS)
# Past this many formula-like cells in a column, prefixing them one by one is the faster way.
_FEW_HITS = 32
# The usual non-string answers; `cell` and `text` write them alike.
_BOOLEANS = {True: "true", False: "false"}
# `upper` blanks everything that is not text.
_NOT_TEXT = {True: "", False: ""}
# Only None: a dict of booleans would also match 1 and 0, which are equal to them.
_BLANK_NONE: dict[Any, str] = {None: ""}


def _strings(
    values: Sequence[Any], convert: Callable[[Any], str], booleans: dict[Any, str] = _BOOLEANS
) -> Sequence[str]:
    """The column with its non-strings converted by `convert` (which must write None as ""
    and booleans as `booleans` says); the column itself when it holds strings only."""
    try:
        "".join(values)
        return values
    except TypeError:
        pass
    try:
        # Missing values (None) are the usual non-strings: blanked in one C-level pass.
        blanked: list[Any] = list(map(_BLANK_NONE.get, values, values))
        "".join(blanked)
        return blanked
    except TypeError:  # something else, or unhashable
        return [
            v if v.__class__ is str else booleans[v] if v.__class__ is bool else convert(v)
            for v in values
        ]


def cell_column(values: Sequence[Any]) -> list[str]:
    return list(_strings(values, cell))


def text_column(values: Sequence[Any]) -> list[str]:
    strings = _strings(values, text)
    if not strings:
        return []
    joined = _SEP.join(strings)
    if joined.count(_SEP) != len(strings) - 1:  # a NUL inside a cell: no shortcut
        return [text(v) for v in strings]
    # Where a cell starts with a formula character; cells `text` converted above already
    # start with `'` when needed, so they are never hits.
    hits: list[int] = []
    for marker in _FORMULA_AFTER_SEP:
        at = joined.find(marker)
        while at != -1 and len(hits) <= _FEW_HITS:
            hits.append(at)
            at = joined.find(marker, at + 1)
    if len(hits) > _FEW_HITS:
        return [("'" + s) if s[:1] in _FORMULA else s for s in strings]
    out = list(strings)
    if out[0][:1] in _FORMULA:
        out[0] = "'" + out[0]
    for at in hits:
        index = joined.count(_SEP, 0, at) + 1
        out[index] = "'" + out[index]
    return out


def upper_column(values: Sequence[Any]) -> list[str]:
    strings = _strings(values, upper, _NOT_TEXT)
    joined = _SEP.join(strings)
    if not strings or joined.count(_SEP) != len(strings) - 1:
        return [upper(v) for v in strings]
    return joined.upper().split(_SEP)


_ISO_SECONDS = methodcaller("isoformat", "T", "seconds")
# "2026-11-23T10:00:00": a naive datetime's length; an aware one's carries an offset too.
_NAIVE_ISO_LENGTH = 19


def date_column(values: Sequence[Any]) -> list[str]:
    try:
        iso = list(map(_ISO_SECONDS, values))
    except (AttributeError, TypeError):  # not all datetimes
        return [date(v) for v in values]
    if sum(map(len, iso)) != _NAIVE_ISO_LENGTH * len(iso):
        return [date(v) for v in values]
    return list(map(str.__add__, iso, repeat("Z")))


class Columns(Sequence[tuple[str, ...]]):
    """A batch of rows held column by column, as a column-wise transform builds it.

    It reads as a sequence of row tuples; `CsvEncoder` writes it straight from the columns,
    which saves turning the batch into rows and back (two passes over every cell).
    """

    __slots__ = ("columns",)

    def __init__(self, columns: Sequence[Sequence[str]]) -> None:
        if len(set(map(len, columns))) > 1:
            raise ValueError("columns of different lengths")
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        return zip(*self.columns, strict=True)

    @overload
    def __getitem__(self, index: int) -> tuple[str, ...]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[str, ...]]: ...

    def __getitem__(self, index: int | slice) -> tuple[str, ...] | list[tuple[str, ...]]:
        if isinstance(index, slice):
            return list(zip(*(column[index] for column in self.columns), strict=True))
        return tuple(column[index] for column in self.columns)


class CsvEncoder:
    """RFC 4180 rows to UTF-8 bytes, a whole batch per call.

    The output is exactly `csv.writer`'s (minimal quoting, CRLF), built column by column: one
    C-level scan per column finds whether any of its cells needs quoting, and only such columns
    are quoted cell by cell. That is about twice as fast as `csv.writerows`, which decides per
    cell. Batches the column path cannot take (ragged rows, non-string cells, one column) go
    through `csv.writer` itself.
    """

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")

    def encode(self, rows: Iterable[Sequence[str]]) -> bytes:
        batch = rows if isinstance(rows, Columns | list | tuple) else list(rows)
        if not batch:
            return b""
        text = _encode_columns(batch.columns) if isinstance(batch, Columns) else _encode_rows(batch)
        if text is None:
            text = self._encode_with_writer(batch)
        return text.encode("utf-8")

    def header(self, columns: Sequence[str]) -> bytes:
        return self.encode([columns])

    def _encode_with_writer(self, rows: Sequence[Sequence[Any]]) -> str:
        self._writer.writerows(rows)
        data = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate(0)
        return data


# What makes csv.writer (QUOTE_MINIMAL) quote a cell.
_NEEDS_QUOTES = (",", '"', "\r", "\n")


def _quote_minimal(value: str) -> str:
    if '"' in value:
        return '"' + value.replace('"', '""') + '"'
    if "," in value or "\n" in value or "\r" in value:
        return '"' + value + '"'
    return value


def _encode_rows(rows: Sequence[Sequence[Any]]) -> str | None:
    """The CSV text of equally long rows (two or more cells), else None."""
    widths = set(map(len, rows))
    if len(widths) != 1 or widths.pop() < 2:
        return None
    return _encode_columns(list(zip(*rows, strict=True)))


def _encode_columns(columns: Sequence[Sequence[Any]]) -> str | None:
    """The CSV text of two or more columns of strings, else None."""
    if len(columns) < 2:
        return None
    quoted: list[Sequence[str]] = list(columns)
    for i, column in enumerate(columns):
        try:
            joined = "\x00".join(column)
        except TypeError:  # a cell that is not a string: csv.writer's conversions apply
            return None
        if any(special in joined for special in _NEEDS_QUOTES):
            distinct = set(column)
            if len(distinct) * 2 <= len(column):
                # Repeated values (market names): quote each once.
                once = {value: _quote_minimal(value) for value in distinct}
                quoted[i] = list(map(once.__getitem__, column))
            else:
                quoted[i] = list(map(_quote_minimal, column))
    lines = list(map(",".join, zip(*quoted, strict=True)))
    lines.append("")
    return "\r\n".join(lines)
