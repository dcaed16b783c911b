"""Request models: strict pydantic, so nothing the client sends is trusted as a query."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from export_service.filters import FILTERABLE_TYPES, MAX_MARKET_IDS
from export_service.models import ExportStatus, ExportType

# Ids travel in paths and become equality values in queries; keep them to plain tokens.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
CODE_WAVES_NEED_DATE = "dateKey is required for codeWaves"


# The exact set of real YYYYMMDD dates (years 0001-9999, leap years included), published in the
# OpenAPI document so clients and generated tests know a valid dateKey; `_real_date` enforces it.
DATE_KEY_PATTERN = (
    r"^(?:(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
    r"(?:(?:0[13578]|1[02])(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)(?:0[1-9]|[12][0-9]|30)"
    r"|02(?:0[1-9]|1[0-9]|2[0-8]))"
    r"|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)0229)$"
)

# Published as a JSON Schema conditional; the model validator below is what enforces it.
_CODE_WAVES_NEED_DATE_KEY: JsonDict = {
    "if": {"properties": {"exportType": {"const": "codeWaves"}}, "required": ["exportType"]},
    "then": {"required": ["dateKey"], "properties": {"dateKey": {"type": "string"}}},
}


def valid_id(value: str) -> bool:
    # fullmatch: `$` alone would also accept a trailing newline.
    return bool(ID_PATTERN.fullmatch(value))


def _utc_instant(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError("not an ISO 8601 date-time, e.g. 2026-11-23T10:00:00Z") from exc
    if parsed.tzinfo is None:
        raise ValueError("give a time zone (Z for UTC), e.g. 2026-11-23T10:00:00Z")
    return value


class Filters(BaseModel):
    """contract §12: which entries an export of a type that reads entries is made of."""

    model_config = ConfigDict(extra="forbid", strict=True)

    marketIds: (
        Annotated[
            list[Annotated[str, Field(json_schema_extra={"pattern": ID_PATTERN.pattern})]],
            Field(
                min_length=1,
                max_length=MAX_MARKET_IDS,
                description="Rows only for these markets of the campaign (no duplicates).",
                json_schema_extra={"uniqueItems": True},
            ),
        ]
        | None
    ) = None
    createdFrom: (
        Annotated[
            str,
            Field(
                description="Entries with date.created at or after this instant (ISO 8601).",
                json_schema_extra={"format": "date-time"},
            ),
        ]
        | None
    ) = None
    createdTo: (
        Annotated[
            str,
            Field(
                description="Entries with date.created before this instant (ISO 8601).",
                json_schema_extra={"format": "date-time"},
            ),
        ]
        | None
    ) = None

    @field_validator("marketIds")
    @classmethod
    def _market_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        bad = [m for m in value if not valid_id(m)]
        if bad:
            raise ValueError(f"malformed market id {bad[0]!r}")
        if len(set(value)) != len(value):
            # A repeated id is most likely a client's mistake (a pasted list); say so.
            raise ValueError("marketIds has duplicates")
        return value

    _dates = field_validator("createdFrom", "createdTo")(_utc_instant)

    @property
    def created_from(self) -> datetime | None:
        return datetime.fromisoformat(self.createdFrom) if self.createdFrom else None

    @property
    def created_to(self) -> datetime | None:
        return datetime.fromisoformat(self.createdTo) if self.createdTo else None

    @model_validator(mode="after")
    def _ordered(self) -> Filters:
        start, end = self.created_from, self.created_to
        if start is not None and end is not None and start >= end:
            raise ValueError("createdFrom must be before createdTo")
        return self


class CreateExport(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=_CODE_WAVES_NEED_DATE_KEY
    )

    exportType: ExportType = Field(description="One of the fifteen export types.")
    dateKey: (
        Annotated[
            str,
            Field(
                description="YYYYMMDD, a real date; required for codeWaves.",
                json_schema_extra={"pattern": DATE_KEY_PATTERN},
            ),
        ]
        | None
    ) = None
    includeAllMarkets: bool | None = Field(
        default=None, description="entries: one more row per additional market."
    )

    filters: Filters | None = Field(
        default=None,
        description="Only for types that read entries: "
        + ", ".join(sorted(t.value for t in FILTERABLE_TYPES))
        + ".",
    )

    @field_validator("dateKey")
    @classmethod
    def _real_date(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"\d{8}", value):
            raise ValueError("dateKey must be an 8-digit YYYYMMDD string")
        try:
            datetime.strptime(value, "%Y%m%d")
        except ValueError as exc:
            raise ValueError("dateKey is not a real date") from exc
        return value

    @model_validator(mode="after")
    def _date_key_needed(self) -> CreateExport:
        if self.exportType is ExportType.CODE_WAVES and self.dateKey is None:
            raise ValueError(CODE_WAVES_NEED_DATE)
        if self.filters is not None and self.exportType not in FILTERABLE_TYPES:
            raise ValueError(
                f"filters do not apply to {self.exportType.value}: it reads no entries"
            )
        return self


class ListExports(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exportType: ExportType | None = Field(default=None, description="Only this export type.")
    status: ExportStatus | None = Field(default=None, description="Only this status.")
    limit: int = Field(default=50, ge=1, le=500, description="Page size.")
    offset: int = Field(default=0, ge=0, le=1_000_000, description="Exports to skip.")
