"""The export as clients see it, with its files' signed URLs: for API answers and webhook events."""

from __future__ import annotations

import asyncio
from typing import Any

from export_service.models import Export, ExportStatus
from export_service.storage import Storage


async def signed_export(storage: Storage, export: Export) -> dict[str, Any]:
    """`Export.to_api()` plus a signed `url` per file and `path` for a single file (FINISHED)."""
    body = export.to_api()
    # A purged export's objects are gone: its files are listed without URLs.
    if export.status is ExportStatus.FINISHED and export.files and export.purged is None:
        urls = await asyncio.gather(*(storage.presign(f.bucket, f.key) for f in export.files))
        for entry, url in zip(body["files"], urls, strict=True):
            entry["url"] = url
        if len(export.files) == 1:
            body["path"] = urls[0]
    return body
