"""HTTP calls to a running export-service, and downloads of finished files through signed URLs."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from export_service.errors import ExportServiceError

Export = dict[str, Any]

ACTIVE = frozenset({"PENDING", "TRIGGERED"})
API_TIMEOUT = aiohttp.ClientTimeout(total=30)
# A download may take long; only a stalled read is an error.
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
CHUNK = 1 << 16


class ApiError(ExportServiceError):
    """The service answered with an error, or could not be reached (`status` 0)."""

    code = "ApiError"

    def __init__(self, status: int, message: str, payload: dict[str, Any] | None = None) -> None:
        super().__init__(message, **(payload or {}))
        self.status = status


class DownloadFailed(ExportServiceError):
    code = "DownloadFailed"


@dataclass(frozen=True, slots=True)
class Created:
    export: Export
    created: bool  # False: an identical export was already PENDING or TRIGGERED (HTTP 200)


@dataclass(slots=True)
class ApiClient:
    base_url: str
    token: str
    session: aiohttp.ClientSession

    def _url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    async def _call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        try:
            async with self.session.request(
                method, self._url(path), headers=headers, timeout=API_TIMEOUT, **kwargs
            ) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status >= 400:
                    raise _api_error(resp.status, resp.reason, body)
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(0, f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from exc

    async def create(
        self,
        campaign_id: str,
        export_type: str,
        *,
        date_key: str | None = None,
        include_all_markets: bool | None = None,
        filters: dict[str, Any] | None = None,
    ) -> Created:
        body: dict[str, Any] = {"exportType": export_type}
        if date_key is not None:
            body["dateKey"] = date_key
        if include_all_markets is not None:
            body["includeAllMarkets"] = include_all_markets
        if filters:
            body["filters"] = filters
        status, export = await self._call("POST", f"/campaigns/{campaign_id}/exports", json=body)
        return Created(export, created=status == 202)

    async def get(self, campaign_id: str, export_id: str) -> Export:
        _, export = await self._call("GET", f"/campaigns/{campaign_id}/exports/{export_id}")
        return dict(export)

    async def cancel(self, campaign_id: str, export_id: str) -> Export:
        """200: cancelled (or already); 202: running, its worker stops it (`cancelRequested`)."""
        _, export = await self._call("POST", f"/campaigns/{campaign_id}/exports/{export_id}/cancel")
        return dict(export)

    async def page(
        self,
        campaign_id: str,
        *,
        export_type: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[Export]:
        params = {"exportType": export_type, "status": status, "limit": limit}
        query = {k: str(v) for k, v in params.items() if v is not None}
        _, body = await self._call("GET", f"/campaigns/{campaign_id}/exports", params=query)
        return list(body["exports"])

    async def wait(
        self,
        export: Export,
        *,
        interval: float,
        on_update: Callable[[Export], None],
    ) -> Export:
        """Poll until the export leaves PENDING/TRIGGERED; `on_update` sees every answer."""
        on_update(export)
        while export["status"] in ACTIVE:
            await asyncio.sleep(interval)
            export = await self.get(export["campaignId"], export["id"])
            on_update(export)
        return export


def _api_error(status: int, reason: str | None, body: Any) -> ApiError:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        payload = error.get("payload")
        return ApiError(status, str(error["message"]), payload if isinstance(payload, dict) else {})
    return ApiError(status, f"HTTP {status} {reason or ''}".strip())


async def download(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    *,
    sha256: str,
    on_bytes: Callable[[int], None],
) -> int:
    """Stream `url` into `dest`, checking the sha256 the service recorded; returns the size.

    The file appears at `dest` only once complete and verified (written to `dest.part` first).
    """
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    size = 0
    try:
        # No Authorization header: the URL is signed, and S3 must never see our bearer token.
        async with session.get(url, timeout=DOWNLOAD_TIMEOUT) as resp:
            if resp.status != 200:
                raise DownloadFailed(f"download of {dest.name} failed: HTTP {resp.status}")
            with partial.open("wb") as out:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    on_bytes(len(chunk))
    except (aiohttp.ClientError, TimeoutError) as exc:
        partial.unlink(missing_ok=True)
        raise DownloadFailed(f"download of {dest.name} failed: {type(exc).__name__}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise DownloadFailed(
            f"sha256 mismatch for {dest.name}: got {digest.hexdigest()}, expected {sha256}"
        )
    os.replace(partial, dest)
    return size
