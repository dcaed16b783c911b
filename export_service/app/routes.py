"""HTTP handlers: authenticate, authorise for the campaign in the path, validate, then act."""

from __future__ import annotations

import asyncio
from typing import Any

import pymongo
import structlog
from aiohttp import web
from pydantic import ValidationError

from export_service import metrics, telemetry
from export_service.app.auth import Authenticator, Principal
from export_service.app.observability import REQUEST_ID
from export_service.app.schemas import CODE_WAVES_NEED_DATE, CreateExport, ListExports, valid_id
from export_service.ccpa.deletion import CcpaDeletion
from export_service.errors import (
    BadRequest,
    CampaignNotFound,
    CcpaIncomplete,
    ExportFinished,
    MarketNotFound,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from export_service.filters import request_filters
from export_service.models import Export, ExportType, utcnow
from export_service.runtime import Services
from export_service.sources import find_campaign, unknown_markets, wave_date_keys
from export_service.views import api_view
from export_service.webhooks.outbox import WebhookEvent

log = structlog.get_logger(__name__)

SERVICES = web.AppKey("services", Services)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)

routes = web.RouteTableDef()


def _principal(request: web.Request) -> Principal:
    headers = request.headers.getall("Authorization", [])
    if len(headers) > 1:
        # Which one counts would depend on the proxy in front: none does.
        raise Unauthorized("more than one Authorization header")
    return request.app[AUTHENTICATOR].authenticate(headers[0] if headers else None)


def _campaign_id(request: web.Request, principal: Principal) -> str:
    campaign_id = request.match_info["campaignId"]
    principal.require(campaign_id)
    if not valid_id(campaign_id):
        raise BadRequest("malformed campaignId")
    return campaign_id


async def _json_body(request: web.Request) -> bytes:
    services = request.app[SERVICES]
    limit = services.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body over {limit} bytes")
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send application/json")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"body over {limit} bytes") from exc
    if len(body) > limit:
        raise PayloadTooLarge(f"body over {limit} bytes")
    return body


async def _export_view(
    services: Services,
    export: Export,
    events: list[WebhookEvent] | None = None,
    queue: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`views.api_view` with this app's services."""
    return await api_view(
        export,
        storage=services.storage,
        outbox=services.outbox,
        estimates=services.estimates,
        events=events,
        queue=queue,
    )


@routes.post("/campaigns/{campaignId}/exports")
async def create_export(request: web.Request) -> web.Response:
    principal = _principal(request)
    campaign_id = _campaign_id(request, principal)
    body = await _json_body(request)
    try:
        command = CreateExport.model_validate_json(body, strict=True)
    except ValidationError as exc:
        if any(err["loc"] == ("exportType",) for err in exc.errors()):
            raise BadRequest(
                "unknown exportType", exportTypes=[t.value for t in ExportType]
            ) from exc
        if any(CODE_WAVES_NEED_DATE in err["msg"] for err in exc.errors()):
            # Say which dates would have rows, so the caller need not guess one.
            dates = await wave_date_keys(request.app[SERVICES].source_db, campaign_id)
            raise BadRequest(
                f"{CODE_WAVES_NEED_DATE}; this campaign's wave dates: "
                + (", ".join(dates) or "none"),
                waveDateKeys=dates,
            ) from exc
        raise
    services = request.app[SERVICES]
    campaign = await find_campaign(services.db, campaign_id, {"name": 1})
    if campaign is None:
        raise CampaignNotFound(f"campaign {campaign_id} does not exist")
    filters = None
    if command.filters is not None:
        wanted = command.filters.marketIds or []
        if wanted:
            missing = await unknown_markets(services.db, campaign_id, wanted)
            if missing:
                raise MarketNotFound(
                    f"campaign {campaign_id} has no market {missing[0]}",
                    marketIds=missing,
                )
        filters = request_filters(wanted, command.filters.created_from, command.filters.created_to)
    export, created = await services.repository.create(
        campaign_id=campaign_id,
        campaign_name=str(campaign.get("name") or ""),
        export_type=command.exportType,
        requester_user_id=principal.sub,
        date_key=command.dateKey,
        include_all_markets=command.includeAllMarkets,
        filters=filters,
        # The worker's span links to this request's, and its log lines carry this request id.
        trace_context=telemetry.current_context(),
        request_id=request.get(REQUEST_ID),
    )
    if created:
        metrics.EXPORTS_CREATED.labels(export.export_type.value).inc()
        log.info(
            "export_created",
            export_id=export.id,
            campaign_id=campaign_id,
            export_type=export.export_type.value,
        )
        services.worker.notify()
    return web.json_response(await _export_view(services, export), status=202 if created else 200)


@routes.get("/campaigns/{campaignId}/exports/{exportId}")
async def get_export(request: web.Request) -> web.Response:
    principal = _principal(request)
    campaign_id = _campaign_id(request, principal)
    export_id = request.match_info["exportId"]
    services = request.app[SERVICES]
    export = await services.repository.get(export_id) if valid_id(export_id) else None
    # Another campaign's export is indistinguishable from a missing one.
    if export is None or export.campaign_id != campaign_id:
        raise NotFound(f"export {export_id} not found")
    return web.json_response(await _export_view(services, export))


@routes.post("/campaigns/{campaignId}/exports/{exportId}/cancel")
async def cancel_export(request: web.Request) -> web.Response:
    principal = _principal(request)
    campaign_id = _campaign_id(request, principal)
    export_id = request.match_info["exportId"]
    services = request.app[SERVICES]
    result = (
        await services.repository.cancel(export_id, campaign_id, principal.sub)
        if valid_id(export_id)
        else None
    )
    if result is None:
        raise NotFound(f"export {export_id} not found")
    export = result.export
    if result.outcome == "finished":
        raise ExportFinished(
            f"export {export_id} already ended {export.status.value}",
            exportStatus=export.status.value,
        )
    if result.outcome == "cancelled":
        # A PENDING export may hold the upload of an interrupted run, kept for resuming
        # (contract §14): a cancel removes it too.
        uploads = await services.repository.uploads(export_id)
        if uploads:
            await services.worker.clean_uploads(uploads)
            await services.repository.clear_uploads(export_id)
        # Ended here, not by a worker: its webhook events go to the outbox from here too.
        await services.notifier.ended(export)
    if result.outcome == "requested":
        # The worker of this process, if it runs the export, stops now; any other learns it
        # from its next heartbeat.
        services.worker.cancel_requested(export_id)
    if result.outcome != "unchanged":
        log.info(
            "export_cancel",
            export_id=export_id,
            campaign_id=campaign_id,
            export_type=export.export_type.value,
            outcome=result.outcome,
        )
    status = 202 if result.outcome == "requested" else 200
    return web.json_response(await _export_view(services, export), status=status)


@routes.get("/campaigns/{campaignId}/exports")
async def list_exports(request: web.Request) -> web.Response:
    principal = _principal(request)
    campaign_id = _campaign_id(request, principal)
    repeated = sorted({k for k in request.query if len(request.query.getall(k)) > 1})
    if repeated:
        # `dict()` would keep only the first value; `?status=A&status=B` is no filter we have.
        raise BadRequest(f"repeated query parameter {', '.join(repeated)}")
    query = ListExports.model_validate(dict(request.query))
    services = request.app[SERVICES]
    exports = await services.repository.page(
        campaign_id,
        export_type=query.exportType,
        status=query.status,
        limit=query.limit,
        offset=query.offset,
    )
    events = await services.outbox.for_exports([e.id for e in exports if e.terminal])
    queue = await services.estimates.views(exports)
    views = await asyncio.gather(
        *(_export_view(services, e, events.get(e.id, []), queue) for e in exports)
    )
    return web.json_response({"exports": list(views), "limit": query.limit, "offset": query.offset})


@routes.delete("/ccpa/users/{userId}")
async def delete_user_exports(request: web.Request) -> web.Response:
    principal = _principal(request)
    principal.require_supreme()
    user_id = request.match_info["userId"]
    if not valid_id(user_id):
        raise BadRequest("malformed userId")
    if request.body_exists:
        # It takes no body; one that is sent is read (bounded by `client_max_size`) so that a
        # malformed request is refused before anything is deleted or recorded.
        await request.read()
    services = request.app[SERVICES]
    deletion = CcpaDeletion(services.db, services.storage, services.repository)
    result = await deletion.delete_user(user_id, requested_by=principal.sub)
    if not result.complete:
        # What is reported deleted is gone; the rest is still in place for a re-run.
        raise CcpaIncomplete(
            "some exports could not be deleted; repeat the request",
            deletedCount=result.counts(),
            remaining=len(result.failures),
            ccpaRequestId=result.request_id,
        )
    return web.json_response({"deletedCount": result.counts()})


@routes.get("/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    """Liveness: 503 when the worker loop (`api`: the MongoDB probe) has been stuck too long."""
    body, status = request.app[SERVICES].worker.liveness.report()
    return web.json_response(body | {"time": utcnow().isoformat() + "Z"}, status=status)


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    checks: dict[str, str] = {}
    try:
        # The driver's own timeout, not a cancel: see `queue.run` on cancelling driver calls.
        with pymongo.timeout(2):
            await services.client.admin.command("ping")
        checks["mongodb"] = "ok"
    except Exception as exc:
        checks["mongodb"] = f"unavailable: {type(exc).__name__}"
    try:
        async with asyncio.timeout(2):
            await services.storage.ping()
        checks["s3"] = "ok"
    except Exception as exc:
        checks["s3"] = f"unavailable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)


@routes.get("/metrics")
async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus: the API's `/metrics`, and the worker port's (`worker_http`)."""
    body = await metrics.exposition(request.app[SERVICES].gauges)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})
