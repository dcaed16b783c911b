"""The `entries` rows (contract §6) from the entries projection, a whole batch at a time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any

import bson
from bson.codec_options import CodecOptions

from export_service.encoding.batch import EncodedBatch
from export_service.encoding.formatting import (
    Columns,
    CsvEncoder,
    cell,
    cell_column,
    date_column,
    text_column,
    upper_column,
)

ENTRY_COLUMNS = (
    "entry_id",
    "user_id",
    "email",
    "first_name",
    "last_name",
    "phone",
    "postal_code",
    "country_code",
    "locale",
    "market_id",
    "market_name",
    "created_at",
)

# Where each column sits in an entries row (the market columns repeat per additional market).
_MARKET_ID = ENTRY_COLUMNS.index("market_id")
_MARKET_NAME = ENTRY_COLUMNS.index("market_name")

# The projection returns each entry as one array of its cells' values under this key, in
# column order (see exporters/entries.py for why).
VALUES = "v"
ADDITIONAL_MARKETS = "additionalMarkets"
_values = itemgetter(VALUES)


def _among(market_id: Any, markets: frozenset[str]) -> bool:
    # Ids are strings; anything else (a list, a number) is no listed market and unhashable.
    return isinstance(market_id, str) and market_id in markets


@dataclass(frozen=True, slots=True)
class EntryEncoder:
    """One batch of projected entries → CSV rows.

    `market_names` maps each market id of the campaign to its (formula-safe) name; with
    `include_all_markets` each entry gets one more row per additional market, and with
    `markets` too only the rows of those markets are written (an entry's own row included).
    """

    market_names: Mapping[Any, str]
    include_all_markets: bool
    codec_options: CodecOptions[Any]
    markets: frozenset[str] | None = None

    def __call__(self, raw: bytes, /) -> EncodedBatch:
        rows = self.rows(bson.decode_all(raw, self.codec_options))
        return EncodedBatch(CsvEncoder().encode(rows), len(rows))

    def rows(self, docs: list[dict[str, Any]]) -> Sequence[tuple[str, ...]]:
        """The batch's rows, built column by column (see formatting's column helpers)."""
        if not docs:
            return []
        # Documents → columns in two C-level passes.
        (
            ids,
            users,
            emails,
            first,
            last,
            phones,
            postal,
            country,
            locale,
            markets,
            created,
            *answers,
        ) = zip(*map(_values, docs), strict=True)
        columns = [
            cell_column(ids),
            cell_column(users),
            cell_column(emails),
            text_column(first),
            text_column(last),
            cell_column(phones),
            text_column(postal),
            upper_column(country),
            text_column(locale),
            cell_column(markets),
            self._names(markets),
            date_column(created),
            *map(text_column, answers),
        ]
        if not self.include_all_markets:
            return Columns(columns)
        # One more row per additional market, right after the entry's own.
        listed = self.markets
        out: list[tuple[str, ...]] = []
        for doc, row in zip(docs, zip(*columns, strict=True), strict=True):
            if listed is None or _among(doc[VALUES][_MARKET_ID], listed):
                out.append(row)
            for market_id in doc.get(ADDITIONAL_MARKETS) or ():
                if listed is not None and not _among(market_id, listed):
                    continue
                out.append(
                    (
                        *row[:_MARKET_ID],
                        cell(market_id),
                        self._name(market_id),
                        *row[_MARKET_NAME + 1 :],
                    )
                )
        return out

    def _name(self, market_id: Any) -> str:
        return self.market_names.get(market_id, "") if isinstance(market_id, str) else ""

    def _names(self, market_ids: Sequence[Any]) -> list[str]:
        try:
            return list(map(self.market_names.get, market_ids, repeat("")))
        except TypeError:  # an unhashable market id
            return [self._name(m) for m in market_ids]
