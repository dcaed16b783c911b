"""The OpenAPI 3.1 document of the API.

Schemas come from the pydantic models (`schemas` for requests, `responses` for answers) through
`models_json_schema`; this module only says which operation takes and answers which model.
`tests/test_openapi.py` checks that every registered route is described here and nothing else.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from export_service import __version__
from export_service.app.responses import (
    CcpaResult,
    ErrorBody,
    ExportList,
    ExportView,
    Heartbeat,
    Readiness,
    WebhookEventBody,
)
from export_service.app.schemas import ID_PATTERN, CreateExport, ListExports

REF_TEMPLATE = "#/components/schemas/{model}"
SECURITY_SCHEME = "bearerAuth"
JSON = "application/json"

Document = dict[str, Any]

_ID_SCHEMA: dict[str, Any] = TypeAdapter(
    Annotated[str, Field(pattern=ID_PATTERN.pattern)]
).json_schema()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    description: str
    model: type[BaseModel] | None = None
    media_type: str = JSON


@dataclass(frozen=True, slots=True)
class PathParam:
    name: str
    description: str
    example: str


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    operation_id: str
    tag: str
    summary: str
    description: str
    answers: tuple[Answer, ...]
    secured: bool = True
    path_params: tuple[PathParam, ...] = ()
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_example: dict[str, Any] | None = None


def _error(status: int, description: str) -> Answer:
    return Answer(status, description, ErrorBody)


_BAD_ID = "Malformed id in the path, or bad query parameters."
_UNAUTHORIZED = _error(401, "Missing, malformed, invalid or expired bearer token.")
_NO_REPORT = _error(403, "The token has no `REPORT` permission on this campaign.")
_DB_DOWN = _error(503, "MongoDB is not reachable (`ServiceUnavailable`); retry later.")

CAMPAIGN_ID = PathParam("campaignId", "Campaign id.", "demo-campaign")
EXPORT_ID = PathParam("exportId", "Export id, as returned when it was requested.", "6b03c2e1f0")
USER_ID = PathParam("userId", "The fan's user id.", "fan-123")

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        "/campaigns/{campaignId}/exports",
        "createExport",
        "exports",
        "Request an export",
        "Writes a new `PENDING` export for the worker. An identical request (same campaign, "
        "exportType, dateKey, includeAllMarkets and filters, market ids as a set and dates as "
        "UTC instants) that is still `PENDING` or `TRIGGERED` is answered with that export and "
        "`200` instead. `filters` narrow a type that reads entries to some markets and a "
        "`date.created` range `[createdFrom, createdTo)` (`codeAssignments`, `codeWaves` and "
        "`waitlist`: a code or scoring record of a listed market whose user has such an entry); "
        "every such export is also cut at its start (no entry created after `date.triggered`). "
        "`codes` and `scoring` read no entries and take no filters. A rejected request writes "
        "nothing.",
        (
            Answer(202, "Created: the new `PENDING` export.", ExportView),
            Answer(200, "The identical export already `PENDING` or `TRIGGERED`.", ExportView),
            _error(
                400,
                "Bad body: not a JSON object, unknown field, unknown `exportType`, bad or missing "
                "`dateKey`; bad `filters` (a date without time zone, `createdFrom >= createdTo`, "
                "an empty, over-long or repeated `marketIds`, filters on a type that does not "
                "read entries); or unknown campaign (`CampaignNotFound`) or a market not of the "
                "campaign (`MarketNotFound`); or malformed campaign id.",
            ),
            _UNAUTHORIZED,
            _NO_REPORT,
            _error(413, "Body over the configured limit (64 KiB by default)."),
            _error(415, "Body is not `application/json`."),
            _DB_DOWN,
        ),
        path_params=(CAMPAIGN_ID,),
        body=CreateExport,
        body_example={
            "exportType": "entries",
            "includeAllMarkets": True,
            "filters": {"createdFrom": "2026-11-01T00:00:00Z"},
        },
    ),
    Operation(
        "get",
        "/campaigns/{campaignId}/exports/{exportId}",
        "getExport",
        "exports",
        "Get one export",
        "When `FINISHED`, every entry of `files` carries a signed `url` and, for a single file, "
        "`path` is its signed URL (24 h by default). A terminal export with webhook "
        "subscriptions lists their delivery state in `notifications`.",
        (
            Answer(200, "The export.", ExportView),
            _error(400, _BAD_ID),
            _UNAUTHORIZED,
            _NO_REPORT,
            _error(404, "Unknown export, or an export of another campaign."),
            _DB_DOWN,
        ),
        path_params=(CAMPAIGN_ID, EXPORT_ID),
    ),
    Operation(
        "post",
        "/campaigns/{campaignId}/exports/{exportId}/cancel",
        "cancelExport",
        "exports",
        "Cancel an export",
        "A `PENDING` export ends `FAILED` with `error.code` `Cancelled` at once (`200`). A "
        "`TRIGGERED` one is answered `202` with `cancelRequested: true`: its worker, in whichever "
        "process, stops within a few seconds, removes every object it wrote, and the export ends "
        "`FAILED` `Cancelled`; the next `PENDING` export then starts. Cancelling a cancelled "
        "export answers `200` and changes nothing. No body.",
        (
            Answer(200, "Cancelled (it was `PENDING`), or already cancelled.", ExportView),
            Answer(202, "Running: its worker stops it; poll the export.", ExportView),
            _error(400, "Malformed campaign id."),
            _UNAUTHORIZED,
            _NO_REPORT,
            _error(404, "Unknown or malformed export id, or an export of another campaign."),
            _error(409, "The export already ended otherwise (`ExportFinished`); unchanged."),
            _DB_DOWN,
        ),
        path_params=(CAMPAIGN_ID, EXPORT_ID),
    ),
    Operation(
        "get",
        "/campaigns/{campaignId}/exports",
        "listExports",
        "exports",
        "List a campaign's exports",
        "Newest first, optionally filtered by type and status.",
        (
            Answer(200, "A page of exports.", ExportList),
            _error(400, _BAD_ID),
            _UNAUTHORIZED,
            _NO_REPORT,
            _DB_DOWN,
        ),
        path_params=(CAMPAIGN_ID,),
        query=ListExports,
    ),
    Operation(
        "delete",
        "/ccpa/users/{userId}",
        "deleteUserExports",
        "privacy",
        "Delete a fan's exported data (CCPA)",
        "For every campaign the user is associated with, deletes each export of a CCPA type: its "
        "S3 objects, then its document. Idempotent: a second call answers zeros. Needs a "
        "`supreme` token.",
        (
            Answer(200, "What was deleted.", CcpaResult),
            _error(400, "Malformed user id."),
            _UNAUTHORIZED,
            _error(403, "The token is not `supreme`."),
            _error(
                503,
                "Some exports could not be deleted (`CcpaIncomplete`, S3 failing): what "
                "`payload.deletedCount` reports is gone, the rest is intact; repeat the request. "
                "Or MongoDB is not reachable (`ServiceUnavailable`).",
            ),
        ),
        path_params=(USER_ID,),
    ),
    Operation(
        "get",
        "/heartbeat",
        "heartbeat",
        "operations",
        "Liveness",
        "`200` while the worker loop (in `api` mode: a MongoDB probe every polling interval) "
        "makes progress; a failing MongoDB is progress too (see `/ready`). `503` once it has "
        "been stuck for `livenessTimeoutMillis`: the process is wedged and should be restarted.",
        (
            Answer(200, "Alive.", Heartbeat),
            Answer(503, "Stuck: restart the process.", Heartbeat),
        ),
        secured=False,
    ),
    Operation(
        "get",
        "/ready",
        "ready",
        "operations",
        "Readiness",
        "`200` only when MongoDB and S3 both answer within 2 s.",
        (
            Answer(200, "MongoDB and S3 answer.", Readiness),
            Answer(503, "A dependency does not answer; `checks` says which.", Readiness),
        ),
        secured=False,
    ),
    Operation(
        "get",
        "/metrics",
        "metrics",
        "operations",
        "Prometheus metrics",
        "Prometheus text exposition, including queue depth by status and the oldest "
        "`PENDING` export's age.",
        (Answer(200, "Prometheus text.", media_type="text/plain"),),
        secured=False,
    ),
    Operation(
        "get",
        "/openapi.json",
        "openapi",
        "docs",
        "This OpenAPI document",
        "OpenAPI 3.1, generated from the service's pydantic models.",
        (Answer(200, "The document.", media_type=JSON),),
        secured=False,
    ),
    Operation(
        "get",
        "/docs",
        "docs",
        "docs",
        "API documentation page",
        "This document rendered as one self-contained HTML page (no scripts, no external "
        "resources).",
        (Answer(200, "HTML.", media_type="text/html"),),
        secured=False,
    ),
    Operation(
        "get",
        "/admin",
        "adminConsole",
        "admin",
        "Admin console",
        "A page for campaign admins: paste a token (kept in the tab only), pick a campaign, "
        "request, watch, download and cancel its exports. It calls only this API, from the "
        "browser; its own files are served by the service (no CDN), under a CSP without "
        "inline scripts or styles.",
        (Answer(200, "HTML.", media_type="text/html"),),
        secured=False,
    ),
    Operation(
        "get",
        "/admin/admin.js",
        "adminScript",
        "admin",
        "Admin console script",
        "The console's script (plain JavaScript, no build step).",
        (Answer(200, "JavaScript.", media_type="text/javascript"),),
        secured=False,
    ),
    Operation(
        "get",
        "/admin/admin.css",
        "adminStyle",
        "admin",
        "Admin console style sheet",
        "The console's styles (system fonts only).",
        (Answer(200, "CSS.", media_type="text/css"),),
        secured=False,
    ),
)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`X | None = None` in a query model means "may be omitted": a query string has no null."""
    # The parameter object carries the description; pydantic's generated titles are noise.
    schema = {k: v for k, v in schema.items() if k not in ("title", "default", "description")} | (
        {"default": schema["default"]} if schema.get("default") is not None else {}
    )
    branches = schema.pop("anyOf", None)
    if branches is None:
        return schema
    kept = [b for b in branches if b != {"type": "null"}]
    return {**(kept[0] if len(kept) == 1 else {"anyOf": kept}), **schema}


def _query_parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(schema.get("required", ()))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            **({"description": prop["description"]} if "description" in prop else {}),
            "schema": _without_null(prop),
        }
        for name, prop in schema["properties"].items()
    ]


def _path_parameter(param: PathParam) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": "path",
        "required": True,
        "description": param.description,
        "schema": dict(_ID_SCHEMA),
        "example": param.example,
    }


def _answer(answer: Answer, refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    if answer.model is not None:
        schema: dict[str, Any] = dict(refs[answer.model])
    elif answer.media_type == JSON:
        schema = {"type": "object"}
    else:
        schema = {"type": "string"}
    return {"description": answer.description, "content": {answer.media_type: {"schema": schema}}}


def _models() -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    pairs: dict[type[BaseModel], JsonSchemaMode] = {}
    for op in OPERATIONS:
        for model in (op.body, op.query):
            if model is not None:
                pairs[model] = "validation"
        for answer in op.answers:
            if answer.model is not None:
                pairs[answer.model] = "serialization"
    pairs[WebhookEventBody] = "serialization"
    return list(pairs.items())


def _webhook(body: dict[str, Any]) -> dict[str, Any]:
    """The POST every subscription of EXPORT_SERVICE_WEBHOOKS receives (OpenAPI 3.1 `webhooks`)."""

    def header(name: str, description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "header",
            "required": True,
            "description": description,
            "schema": {"type": "string"},
        }

    return {
        "post": {
            "operationId": "exportEnded",
            "tags": ["exports"],
            "summary": "An export ended (FINISHED, FAILED or EXPIRED)",
            "description": "Sent to each subscription whose `exportTypes`/`campaignIds` match, at "
            "least once: a non-2xx answer, a redirect or no answer within 10 s is retried with "
            "backoff (5 s, 30 s, 2 min, …) up to `webhookMaxAttempts`, always with the same "
            "`webhook-id`. Verify it with any Standard Webhooks library and the `whsec_` secret.",
            "security": [],
            "parameters": [
                header(
                    "webhook-id", "The event's id: the same on every retry (deduplicate on it)."
                ),
                header("webhook-timestamp", "Unix seconds of this attempt."),
                header(
                    "webhook-signature",
                    '`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with the secret.',
                ),
            ],
            "requestBody": {"required": True, "content": {JSON: {"schema": body}}},
            "responses": {
                "2XX": {"description": "Received; the event is not sent again."},
            },
        }
    }


@functools.cache
def _build() -> Document:
    models = _models()
    keys, top = models_json_schema(models, ref_template=REF_TEMPLATE)
    components: dict[str, Any] = top.get("$defs", {})
    refs = {model: keys[(model, mode)] for model, mode in models}
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "tags": [op.tag],
            "summary": op.summary,
            "description": op.description,
            "security": [{SECURITY_SCHEME: []}] if op.secured else [],
        }
        parameters = [_path_parameter(p) for p in op.path_params]
        if op.query is not None:
            parameters += _query_parameters(components[op.query.__name__])
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            media: dict[str, Any] = {"schema": refs[op.body]}
            if op.body_example is not None:
                media["example"] = op.body_example
            operation["requestBody"] = {"required": True, "content": {JSON: media}}
        operation["responses"] = {str(a.status): _answer(a, refs) for a in op.answers}
        paths.setdefault(op.path, {})[op.method] = operation
    # Query models become parameters, not bodies: keep them out of the schema list.
    for op in OPERATIONS:
        if op.query is not None:
            components.pop(op.query.__name__, None)
    return {
        "openapi": "3.1.0",
        "webhooks": {"exportEnded": _webhook(refs[WebhookEventBody])},
        "info": {
            "title": "export-service",
            "version": __version__,
            "description": (
                "Campaign admins request CSV/ZIP exports of fan-campaign data; a worker streams "
                "them to S3. All routes but health, metrics and docs need "
                "`Authorization: Bearer <JWT>` (HS256 or RS256, `exp` and `sub` required); "
                "campaign routes need `REPORT` in `permissions[campaignId]`, CCPA needs "
                '`supreme: true`. Errors are `{"error": {"status", "message", '
                '"payload"}}`, and a rejected request writes nothing.'
            ),
        },
        "tags": [
            {"name": "exports", "description": "Request, read and list exports."},
            {"name": "privacy", "description": "CCPA deletion."},
            {"name": "operations", "description": "Health, readiness and metrics."},
            {"name": "docs", "description": "This documentation."},
            {"name": "admin", "description": "The admin console, a page over this API."},
        ],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                SECURITY_SCHEME: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def openapi_document() -> Document:
    """A fresh copy each call: callers (tests, schemathesis) may mutate what they get."""
    return copy.deepcopy(_build())
