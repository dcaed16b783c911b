"""The export document (contract §3): its statuses, types and the API view of it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any


class ExportStatus(StrEnum):
    PENDING = "PENDING"
    TRIGGERED = "TRIGGERED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"


TERMINAL_STATUSES = frozenset({ExportStatus.FINISHED, ExportStatus.FAILED, ExportStatus.EXPIRED})
ACTIVE_STATUSES = frozenset({ExportStatus.PENDING, ExportStatus.TRIGGERED})

# `error.code` of an export cancelled by a user (contract §9).
CANCELLED = "Cancelled"


class ExportType(StrEnum):
    ENTRIES = "entries"
    CODES = "codes"
    SCORING = "scoring"
    CODE_ASSIGNMENTS = "codeAssignments"
    ARTIST_OPT_IN = "artistOptIn"
    ARTIST_SMS_OPT_IN = "artistSmsOptIn"
    LIVENATION_OPT_IN = "livenationOptIn"
    VERIFIED_ENTRIES = "verifiedEntries"
    CODE_WAVES = "codeWaves"
    FANLIST = "fanlist"
    WAITLIST = "waitlist"
    REMINDER_EMAIL = "reminderEmail"
    REMINDER_EMAIL_SAMPLE = "reminderEmailSample"
    AUTO_REMINDER_EMAIL = "autoReminderEmail"
    PROMOTER_EMAIL_OPT_IN = "promoterEmailOptIn"


def utcnow() -> datetime:
    """Naive UTC with millisecond precision: what BSON stores and PyMongo returns."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"


@dataclass(frozen=True, slots=True)
class StoredFile:
    bucket: str
    key: str
    acl: str | None
    rows: int
    bytes: int
    sha256: str

    def to_doc(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "acl": self.acl,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> StoredFile:
        return cls(
            bucket=doc["bucket"],
            key=doc["key"],
            acl=doc.get("acl"),
            rows=int(doc.get("rows", 0)),
            bytes=int(doc.get("bytes", 0)),
            sha256=doc.get("sha256", ""),
        )


@dataclass(frozen=True, slots=True)
class ExportFilters:
    """Markets (a sorted set) and `[created_from, created_to)` in naive UTC milliseconds."""

    market_ids: tuple[str, ...] = ()
    created_from: datetime | None = None
    created_to: datetime | None = None

    @property
    def any(self) -> bool:
        return bool(self.market_ids) or self.created_from is not None or self.created_to is not None

    def dedupe_part(self) -> str:
        """Equal for equal filters: market ids sorted, dates as UTC epoch milliseconds."""
        return json.dumps(
            [list(self.market_ids), _epoch_ms(self.created_from), _epoch_ms(self.created_to)],
            separators=(",", ":"),
        )

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.market_ids:
            doc["marketIds"] = list(self.market_ids)
        if self.created_from is not None:
            doc["createdFrom"] = self.created_from
        if self.created_to is not None:
            doc["createdTo"] = self.created_to
        return doc

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.market_ids:
            body["marketIds"] = list(self.market_ids)
        if self.created_from is not None:
            body["createdFrom"] = iso(self.created_from)
        if self.created_to is not None:
            body["createdTo"] = iso(self.created_to)
        return body

    @classmethod
    def from_doc(cls, doc: dict[str, Any] | None) -> ExportFilters | None:
        if not doc:
            return None
        return cls(
            tuple(str(m) for m in doc.get("marketIds") or ()),
            doc.get("createdFrom"),
            doc.get("createdTo"),
        )


def _epoch_ms(value: datetime | None) -> int | None:
    if value is None:
        return None
    return (value - datetime(1970, 1, 1)) // timedelta(milliseconds=1)


@dataclass(slots=True)
class Export:
    """One export as stored in `exports`; internal queue fields stay out of the API view."""

    id: str
    campaign_id: str
    campaign_name: str
    export_type: ExportType
    status: ExportStatus
    requester_user_id: str
    date_key: str | None = None
    include_all_markets: bool | None = None
    filters: ExportFilters | None = None
    date: dict[str, datetime] = field(default_factory=dict)
    progress: dict[str, int] = field(default_factory=dict)
    count: int | None = None
    files: list[StoredFile] = field(default_factory=list)
    error: dict[str, str] | None = None
    worker_id: str | None = None
    attempts: int = 0
    trace_context: dict[str, str] | None = None
    # The X-Request-ID of the API request that created it: bound on the worker's log lines.
    request_id: str | None = None
    # contract §9: a cancel of a TRIGGERED export is a request its worker carries out.
    cancel_requested: bool = False
    cancelled_by: str | None = None
    # contract §13's shape: the export's objects are gone ({date, reason}); its files stay listed.
    purged: dict[str, Any] | None = None
    # contract §14: where an interrupted run left off (`exporters/checkpoint.py`), and the rows
    # the current or last run started from when it resumed one.
    checkpoint: dict[str, Any] | None = None
    resumed_from: int | None = None
    # contract §11: ended with webhook events still owed to the outbox (`notified: false`).
    owes_events: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Export:
        return cls(
            id=doc["_id"],
            campaign_id=doc["campaignId"],
            campaign_name=doc.get("campaignName", ""),
            export_type=ExportType(doc["exportType"]),
            status=ExportStatus(doc["status"]),
            requester_user_id=doc.get("requesterUserId", ""),
            date_key=doc.get("dateKey"),
            include_all_markets=doc.get("includeAllMarkets"),
            filters=ExportFilters.from_doc(doc.get("filters")),
            date=dict(doc.get("date") or {}),
            progress=dict(doc.get("progress") or {}),
            count=doc.get("count"),
            files=[StoredFile.from_doc(f) for f in doc.get("files") or []],
            error=doc.get("error"),
            worker_id=doc.get("workerId"),
            attempts=int(doc.get("attempts", 0)),
            trace_context=doc.get("traceContext"),
            request_id=doc.get("requestId"),
            cancel_requested=bool(doc.get("cancelRequested")),
            cancelled_by=doc.get("cancelledBy"),
            purged=doc.get("purged"),
            checkpoint=doc.get("checkpoint"),
            resumed_from=doc.get("resumedFrom"),
            owes_events=doc.get("notified") is False,
        )

    @property
    def cancelled(self) -> bool:
        return self.status is ExportStatus.FAILED and (self.error or {}).get("code") == CANCELLED
