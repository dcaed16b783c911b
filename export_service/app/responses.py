"""Response models: the JSON shapes the API answers with (contract §3, §4), for OpenAPI.

The handlers build these bodies as plain dicts; `extra="forbid"` makes the published schema strict,
so the schemathesis run fails when a handler starts sending a field the document does not describe.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from export_service.models import ExportStatus, ExportType

_STRICT = ConfigDict(extra="forbid")


class ExportFileView(BaseModel):
    model_config = _STRICT

    bucket: str = Field(description="The real bucket name.")
    key: str = Field(description="Object key, `{campaignId}/{exportType}/{exportId}.{csv|zip}`.")
    acl: str | None = Field(description="Canned ACL, or null when ACLs are turned off.")
    rows: int = Field(ge=0, description="Rows written to this file.")
    bytes: int = Field(ge=0, description="Object size.")
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex digest.")]
    url: str | None = Field(
        default=None, description="Signed download URL; present when the export is FINISHED."
    )


class ExportDates(BaseModel):
    model_config = _STRICT

    created: datetime
    triggered: datetime | None = None
    finished: datetime | None = None
    failed: datetime | None = None
    expired: datetime | None = None


class ExportProgress(BaseModel):
    model_config = _STRICT

    total: int | None = Field(default=None, ge=0, description="From the preliminary count.")
    processed: int = Field(ge=0)
    etaSeconds: float | None = Field(
        default=None,
        ge=0,
        description="`TRIGGERED` with a known `total`: seconds left at the rate so far.",
    )


class QueueView(BaseModel):
    model_config = _STRICT

    position: int | None = Field(
        ge=1,
        description="1 runs next; claim order across all campaigns (only the number is shown). "
        "Null only for an export claimed or cancelled while the answer was being made.",
    )
    etaSeconds: float | None = Field(
        ge=0,
        description="Estimated seconds until it starts, from the running exports' progress and "
        "the median duration of recent finished exports of each type ahead; null while a type "
        "ahead has no history.",
    )


class ExportErrorView(BaseModel):
    model_config = _STRICT

    code: str = Field(description="Stable error code, e.g. NoMarketsFound, StorageError, Timeout.")
    message: str


class NotificationView(BaseModel):
    """One webhook event of a terminal export (contract §11)."""

    model_config = _STRICT

    subscription: str = Field(description="The subscription's `name` in EXPORT_SERVICE_WEBHOOKS.")
    status: Literal["PENDING", "DELIVERED", "FAILED"] = Field(
        description="PENDING until a receiver answers 2xx (DELIVERED) or attempts run out (FAILED)."
    )
    attempts: int = Field(ge=0, description="Attempts made so far.")
    lastError: str | None = Field(
        default=None, description="Why the last attempt failed, e.g. `HTTP 500`, `Timeout: …`."
    )


class FiltersView(BaseModel):
    """The filters the export was requested with (contract §12); market ids sorted."""

    model_config = _STRICT

    marketIds: list[str] | None = None
    createdFrom: datetime | None = Field(default=None, description="UTC, milliseconds.")
    createdTo: datetime | None = Field(default=None, description="UTC, milliseconds.")


class ExportView(BaseModel):
    """One export as the API returns it (contract §3); timestamps are ISO 8601 UTC strings."""

    model_config = _STRICT

    id: str
    campaignId: str
    campaignName: str
    exportType: ExportType
    status: ExportStatus
    requesterUserId: str = Field(description="The requesting token's `sub`.")
    dateKey: str | None = None
    includeAllMarkets: bool | None = None
    filters: FiltersView | None = None
    date: ExportDates
    progress: ExportProgress
    attempts: int = Field(
        ge=0, description="Runs started so far (a run cut off by a lost worker runs again)."
    )
    resumedFrom: int | None = Field(
        default=None,
        ge=0,
        description="Rows the current (or last) run did not write again: it resumed an "
        "interrupted run from its last checkpoint (contract §14). Absent when it started from "
        "row 0.",
    )
    count: int | None = Field(default=None, ge=0, description="Rows written (all files).")
    files: list[ExportFileView] | None = None
    path: str | None = Field(
        default=None, description="Signed download URL of the single file, when FINISHED."
    )
    error: ExportErrorView | None = None
    queue: QueueView | None = Field(default=None, description="Present on every `PENDING` export.")
    cancelRequested: bool | None = Field(
        default=None,
        description="`true` once a cancel of the `TRIGGERED` export was asked for; its worker "
        "then stops it and it ends `FAILED` `Cancelled`.",
    )
    cancelledBy: str | None = Field(
        default=None, description="The `sub` of the token that cancelled the export."
    )
    notifications: list[NotificationView] | None = Field(
        default=None,
        description="Webhook deliveries of this terminal export, one per matching subscription.",
    )
    purged: PurgedView | None = Field(
        default=None,
        description="Set once the export's objects are gone; its files are then listed without "
        "URLs and there is no `path`.",
    )


class PurgedView(BaseModel):
    model_config = _STRICT

    date: str = Field(description="When the objects were found or made gone (ISO 8601 UTC).")
    reason: str = Field(
        description="`retention` (contract §13), or `embedded-restart`: the embedded S3 server, "
        "which keeps objects in memory, was restarted."
    )


class WebhookEventBody(BaseModel):
    """What a subscription's URL receives (contract §11), signed per Standard Webhooks."""

    model_config = _STRICT

    type: Literal["export.finished", "export.failed", "export.expired"]
    timestamp: datetime = Field(description="When the export ended (its event was recorded).")
    data: ExportView = Field(
        description="The export as GET answers it (files with signed URLs), without "
        "`notifications`."
    )


class ExportList(BaseModel):
    model_config = _STRICT

    exports: list[ExportView] = Field(description="Newest first.")
    limit: int = Field(ge=1, le=500)
    offset: int = Field(ge=0)


class DeletedCount(BaseModel):
    model_config = _STRICT

    exports: int = Field(ge=0, description="Export documents deleted.")
    files: int = Field(ge=0, description="S3 objects deleted.")


class CcpaResult(BaseModel):
    model_config = _STRICT

    deletedCount: DeletedCount


class ErrorPayload(BaseModel):
    """Machine-readable detail; validation errors add `errors: [{loc, msg, type}]`."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Stable error code, e.g. BadRequest, CampaignNotFound.")


class ErrorDetail(BaseModel):
    model_config = _STRICT

    status: int = Field(description="The HTTP status, repeated.")
    message: str
    payload: ErrorPayload


class ErrorBody(BaseModel):
    model_config = _STRICT

    error: ErrorDetail


class Heartbeat(BaseModel):
    model_config = _STRICT

    status: Literal["ok", "stalled"]
    stalledSeconds: float | None = Field(
        default=None, description="How long nothing went through, when `stalled`."
    )
    time: datetime


class Readiness(BaseModel):
    model_config = _STRICT

    ready: bool
    checks: dict[str, str] = Field(
        description="`mongodb` and `s3`: `ok`, or `unavailable: <error type>`."
    )
