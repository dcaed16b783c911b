"""Request models: strict pydantic, so nothing the client sends is trusted as a query."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from export_service.models import ExportStatus, ExportType

# Ids travel in paths and become equality values in queries; keep them to plain tokens.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")


def valid_id(value: str) -> bool:
    return bool(ID_PATTERN.match(value))


class CreateExport(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    exportType: ExportType = Field(description="One of the fifteen export types.")
    dateKey: Annotated[str, Field(description="YYYYMMDD; required for codeWaves.")] | None = None
    includeAllMarkets: bool | None = Field(
        default=None, description="entries: one more row per additional market."
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
            raise ValueError("dateKey is required for codeWaves")
        return self


class ListExports(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exportType: ExportType | None = None
    status: ExportStatus | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000)
