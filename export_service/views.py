"""How an export is shown, in one place: API answers (contract §3) and webhook event bodies.

`stored_view` is what the export document says; `signed_view` adds its files' signed URLs (the
webhook `data`); `api_view` adds what an API answer carries besides (webhook notifications, the
queue position of a PENDING export, the ETA of a running one). `app/responses.py`'s `ExportView`
documents this shape in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
from typing import Any

from export_service.models import Export, ExportStatus, iso, utcnow
from export_service.queue.estimates import QueueEstimates, progress_eta
from export_service.storage import Storage
from export_service.webhooks.outbox import Outbox, WebhookEvent


def stored_view(export: Export) -> dict[str, Any]:
    """What the export document says, in the shape of contract §3 (no URLs, no estimates)."""
    body: dict[str, Any] = {
        "id": export.id,
        "campaignId": export.campaign_id,
        "campaignName": export.campaign_name,
        "exportType": export.export_type.value,
        "status": export.status.value,
        "requesterUserId": export.requester_user_id,
        "date": {name: iso(value) for name, value in export.date.items()},
        "progress": dict(export.progress),
        "attempts": export.attempts,
    }
    if export.resumed_from is not None:
        body["resumedFrom"] = export.resumed_from
    if export.date_key is not None:
        body["dateKey"] = export.date_key
    if export.include_all_markets is not None:
        body["includeAllMarkets"] = export.include_all_markets
    if export.filters is not None:
        body["filters"] = export.filters.to_api()
    if export.count is not None:
        body["count"] = export.count
    if export.files:
        body["files"] = [f.to_doc() for f in export.files]
    if export.error is not None:
        body["error"] = dict(export.error)
    if export.cancel_requested:
        body["cancelRequested"] = True
    if export.cancelled_by is not None:
        body["cancelledBy"] = export.cancelled_by
    if export.purged is not None:
        body["purged"] = {"date": iso(export.purged.get("date")),
                          "reason": str(export.purged.get("reason"))}  # fmt: skip
    return body


async def signed_view(storage: Storage, export: Export) -> dict[str, Any]:
    """`stored_view` plus a signed `url` per file and `path` for a single file (FINISHED)."""
    body = stored_view(export)
    # A purged export's objects are gone: its files are listed without URLs.
    if export.status is ExportStatus.FINISHED and export.files and export.purged is None:
        urls = await asyncio.gather(*(storage.presign(f.bucket, f.key) for f in export.files))
        for entry, url in zip(body["files"], urls, strict=True):
            entry["url"] = url
        if len(export.files) == 1:
            body["path"] = urls[0]
    return body


async def api_view(
    export: Export,
    *,
    storage: Storage,
    outbox: Outbox,
    estimates: QueueEstimates,
    events: list[WebhookEvent] | None = None,
    queue: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The export as an API answer shows it. `events`: its webhook events when the caller
    fetched them for a whole page; `queue`: the queue views of PENDING exports by id, likewise
    (`QueueEstimates.views`)."""
    body = await signed_view(storage, export)
    if events is None and export.terminal:
        events = (await outbox.for_exports([export.id])).get(export.id)
    if events:
        body["notifications"] = [event.to_api() for event in events]
    if export.status is ExportStatus.PENDING:
        if queue is None:
            queue = await estimates.views([export])
        body["queue"] = queue.get(export.id, {"position": None, "etaSeconds": None})
    eta = progress_eta(export, utcnow())
    if eta is not None:
        body["progress"]["etaSeconds"] = eta
    return body
