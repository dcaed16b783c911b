"""Who may do what (contract §4): every route against every kind of bad token, and no secret or
token in the logs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict
from pymongo import AsyncMongoClient

from export_service import logs
from export_service.app.factory import create_app
from export_service.app.routes import SERVICES
from tests.support.app import JWT_SECRET, app_services, auth, make_settings, token
from tests.support.data import CAMPAIGN, add_campaign
from tests.support.faults import TcpProxy
from tests.support.gates import until

Client = TestClient[Any, Any]
OTHER = "camp-2"
USER = "fan-1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "admin-1",
        "supreme": True,
        "permissions": {CAMPAIGN: ["REPORT"], OTHER: ["REPORT"]},
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    """A token crafted by hand: `alg: none` (or any header) and no signature."""
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


def rsa_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


PRIVATE_PEM, PUBLIC_PEM = rsa_key()


def _hs512(payload: dict[str, Any]) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test secret is short for HS512, on purpose
        return jwt.encode(payload, JWT_SECRET, algorithm="HS512")


# Each: an Authorization header value that must not authenticate (401 on every route).
UNAUTHENTICATED: dict[str, str | None] = {
    "no token": None,
    "empty bearer": "Bearer ",
    "not a bearer": f"Basic {base64.b64encode(b'admin:pw').decode()}",
    "token without scheme": jwt.encode(claims(), JWT_SECRET, algorithm="HS256"),
    "malformed": "Bearer not-a-jwt",
    "three garbage parts": "Bearer abc.def.ghi",
    "expired": "Bearer " + jwt.encode(claims(exp=int(time.time()) - 60), JWT_SECRET, "HS256"),
    "no exp": "Bearer " + jwt.encode(claims(exp=None), JWT_SECRET, algorithm="HS256"),
    "no sub": "Bearer " + jwt.encode(claims(sub=None), JWT_SECRET, algorithm="HS256"),
    "wrong signature": "Bearer "
    + jwt.encode(claims(), "another-secret-which-is-long-enough", algorithm="HS256"),
    "tampered payload": "Bearer "
    + ".".join(
        [
            jwt.encode(claims(supreme=False), JWT_SECRET, algorithm="HS256").split(".")[0],
            _b64(json.dumps(claims()).encode()),
            jwt.encode(claims(supreme=False), JWT_SECRET, algorithm="HS256").split(".")[2],
        ]
    ),
    "alg none": "Bearer " + unsigned(claims()),
    "alg None": "Bearer " + unsigned(claims(), alg="None"),
    "alg none with a signature": "Bearer "
    + unsigned(claims())
    + jwt.encode(claims(), JWT_SECRET, algorithm="HS256").split(".")[2],
    "RS256 while only HS256 is configured": "Bearer "
    + jwt.encode(claims(), PRIVATE_PEM, algorithm="RS256"),
    "HS512 with the right secret": "Bearer " + _hs512(claims()),
}


def bearer(**overrides: Any) -> str:
    return "Bearer " + jwt.encode(claims(**overrides), JWT_SECRET, algorithm="HS256")


# Each: a valid token whose claims do not allow campaign routes on CAMPAIGN (403).
NO_REPORT_ON_CAMPAIGN = {
    "REPORT on another campaign": bearer(permissions={OTHER: ["REPORT"]}),
    "no permissions": bearer(permissions=None),
    "missing action": bearer(permissions={CAMPAIGN: []}),
    "another action only": bearer(permissions={CAMPAIGN: ["READ", "report"]}),
    "action not in a list": bearer(permissions={CAMPAIGN: "REPORT"}),
    "supreme without REPORT": bearer(permissions={OTHER: ["REPORT"]}, supreme=True),
}

# Each: a valid token that must not delete (403 on CCPA).
NOT_SUPREME = {
    "supreme false": bearer(supreme=False),
    "supreme missing": bearer(supreme=None),
    "supreme as a string": bearer(supreme="true"),
    "supreme as 1": bearer(supreme=1),
}


def routes(export_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    base = f"/campaigns/{CAMPAIGN}/exports"
    return [
        ("POST", base, {"json": {"exportType": "entries"}}),
        ("GET", f"{base}/{export_id}", {}),
        ("GET", base, {}),
        ("DELETE", f"/ccpa/users/{USER}", {}),
    ]


async def call(client: Client, method: str, path: str, header: str | None, **kw: Any) -> Any:
    headers = {"Authorization": header} if header is not None else {}
    resp = await client.request(method, path, headers=headers, **kw)
    body = await resp.json()
    assert body["error"]["status"] == resp.status if resp.status >= 400 else True
    return resp.status, body


@pytest.fixture
async def world(client: Client) -> dict[str, str]:
    """Two campaigns, one export each (requested by a user with REPORT on both)."""
    db = app_services(client).db
    await add_campaign(db)
    await add_campaign(db, OTHER)
    await db["entries"].insert_one(
        {"_id": "e1", "campaignId": CAMPAIGN, "userId": USER, "marketId": f"{CAMPAIGN}-m1"}
    )
    ids = {}
    for campaign in (CAMPAIGN, OTHER):
        resp = await client.post(
            f"/campaigns/{campaign}/exports",
            json={"exportType": "entries"},
            headers=auth([CAMPAIGN, OTHER]),
        )
        assert resp.status == 202
        ids[campaign] = (await resp.json())["id"]
    return ids


async def stored(client: Client) -> tuple[int, int]:
    db = app_services(client).db
    return await db["exports"].count_documents({}), await db["ccpa_requests"].count_documents({})


async def test_every_route_rejects_every_unauthenticated_request(
    client: Client, world: dict[str, str]
) -> None:
    before = await stored(client)
    seen = {}
    for name, header in UNAUTHENTICATED.items():
        for method, path, kw in routes(world[CAMPAIGN]):
            status, body = await call(client, method, path, header, **kw)
            seen[(name, method, path)] = status
            assert "payload" in body["error"]
    wrong = {k: v for k, v in seen.items() if v != 401}
    assert wrong == {}
    assert len(seen) == 4 * len(UNAUTHENTICATED)
    assert await stored(client) == before  # a rejected request writes nothing


async def test_two_authorization_headers_are_refused_on_every_route(
    client: Client, world: dict[str, str]
) -> None:
    """A valid token then garbage (or the reverse): neither wins, 401, nothing written."""
    before = await stored(client)
    good = bearer(supreme=True)
    for pair in ((good, "Bearer garbage"), ("Bearer garbage", good), (good, good)):
        for method, path, kw in routes(world[CAMPAIGN]):
            headers = CIMultiDict([("Authorization", pair[0]), ("Authorization", pair[1])])
            resp = await client.request(method, path, headers=headers, **kw)
            assert resp.status == 401, (method, path)
            assert (await resp.json())["error"]["status"] == 401
    assert await stored(client) == before


async def test_campaign_routes_need_report_on_that_campaign(
    client: Client, world: dict[str, str]
) -> None:
    before = await stored(client)
    for name, header in NO_REPORT_ON_CAMPAIGN.items():
        for method, path, kw in routes(world[CAMPAIGN])[:3]:
            status, body = await call(client, method, path, header, **kw)
            assert (name, method, path, status) == (name, method, path, 403)
            assert body["error"]["payload"]["code"] == "Forbidden"
    assert await stored(client) == before
    # The same routes with REPORT (and nothing else) answer.
    report_only = bearer(permissions={CAMPAIGN: ["REPORT"]}, supreme=False)
    statuses = [
        (await call(client, method, path, report_only, **kw))[0]
        for method, path, kw in routes(world[CAMPAIGN])[:3]
    ]
    assert statuses == [200, 200, 200]  # the POST finds the identical export PENDING


async def test_ccpa_needs_supreme(client: Client, world: dict[str, str]) -> None:
    before = await stored(client)
    for name, header in NOT_SUPREME.items():
        status, body = await call(client, "DELETE", f"/ccpa/users/{USER}", header)
        assert (name, status) == (name, 403)
        assert body["error"]["payload"]["code"] == "Forbidden"
    assert await stored(client) == before  # no deletion, no audit record
    # REPORT on every campaign is not enough, supreme is; supreme needs no REPORT.
    status, _ = await call(client, "DELETE", f"/ccpa/users/{USER}", bearer(permissions=None))
    assert status == 200


async def test_a_token_never_reads_one_campaigns_export_through_another(
    client: Client, world: dict[str, str]
) -> None:
    mine, theirs = world[CAMPAIGN], world[OTHER]
    both = bearer()
    # REPORT on both campaigns: the export exists, but not under the other campaign's route.
    status, body = await call(client, "GET", f"/campaigns/{OTHER}/exports/{mine}", both)
    assert status == 404 and set(body) == {"error"}
    status, body = await call(client, "GET", f"/campaigns/{CAMPAIGN}/exports/{theirs}", both)
    assert status == 404
    status, body = await call(client, "GET", f"/campaigns/{OTHER}/exports", both)
    assert status == 200 and [e["id"] for e in body["exports"]] == [theirs]
    # REPORT on the other campaign only: its own route does not reach this one's exports.
    other_only = bearer(permissions={OTHER: ["REPORT"]}, supreme=False)
    status, _ = await call(client, "GET", f"/campaigns/{OTHER}/exports/{mine}", other_only)
    assert status == 404
    status, _ = await call(client, "GET", f"/campaigns/{CAMPAIGN}/exports/{mine}", other_only)
    assert status == 403
    # An unknown export and another campaign's export answer alike.
    status, unknown = await call(
        client, "GET", f"/campaigns/{OTHER}/exports/{uuid.uuid4().hex[:24]}", other_only
    )
    status_mine, foreign = await call(
        client, "GET", f"/campaigns/{OTHER}/exports/{mine}", other_only
    )
    assert (status, unknown["error"]["payload"]) == (status_mine, foreign["error"]["payload"])


async def test_rs256_only_service_rejects_hs256_signed_with_its_public_key(
    mongo_uri: str, s3_endpoint: str
) -> None:
    settings = make_settings(mongo_uri, s3_endpoint, jwt_secret=None, jwt_public_key=PUBLIC_PEM)
    app = create_app(settings, run_worker=False, create_buckets=True)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        try:
            await add_campaign(app[SERVICES].db)
            path = f"/campaigns/{CAMPAIGN}/exports"
            good = "Bearer " + jwt.encode(claims(), PRIVATE_PEM, algorithm="RS256")
            assert (await call(client, "GET", path, good))[0] == 200
            # Key confusion: the public key (which is public) used as an HMAC secret.
            header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
            payload = _b64(json.dumps(claims()).encode())
            signature = hmac.new(
                PUBLIC_PEM.encode(), f"{header}.{payload}".encode(), hashlib.sha256
            ).digest()
            confused = f"Bearer {header}.{payload}.{_b64(signature)}"
            assert (await call(client, "GET", path, confused))[0] == 401
            hs256 = "Bearer " + jwt.encode(claims(), JWT_SECRET, algorithm="HS256")
            assert (await call(client, "GET", path, hs256))[0] == 401
            assert (await call(client, "GET", path, "Bearer " + unsigned(claims())))[0] == 401
        finally:
            await app[SERVICES].client.drop_database(settings.mongo_db)


async def test_a_configured_issuer_and_audience_are_required(
    mongo_uri: str, s3_endpoint: str
) -> None:
    """JWT_ISSUER / JWT_AUDIENCE (contract §16): a token without them, or with others, is 401
    on every kind of route; one with both is accepted."""
    issuer, audience = "https://id.example.test/", "export-service"
    settings = make_settings(mongo_uri, s3_endpoint, jwt_issuer=issuer, jwt_audience=audience)
    app = create_app(settings, run_worker=False, create_buckets=True)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        try:
            await add_campaign(app[SERVICES].db)
            db = app[SERVICES].db

            def bearer(**overrides: Any) -> str:
                wanted = {"iss": issuer, "aud": audience, **overrides}
                return "Bearer " + jwt.encode(claims(**wanted), JWT_SECRET, algorithm="HS256")

            routes = [("GET", f"/campaigns/{CAMPAIGN}/exports"),
                      ("DELETE", f"/ccpa/users/{USER}")]  # fmt: skip
            for method, path in routes:
                for wrong in (
                    bearer(iss=None),
                    bearer(iss="https://other.example.test/"),
                    bearer(aud=None),
                    bearer(aud="another-service"),
                    bearer(aud=["another-service"]),
                    auth([CAMPAIGN], supreme=True)["Authorization"],  # neither claim
                ):
                    status, body = await call(client, method, path, wrong)
                    assert status == 401, (method, path, wrong, body)
                    assert body["error"]["payload"]["code"] == "Unauthorized"
            assert await db["ccpa_requests"].count_documents({}) == 0
            for method, path in routes:
                assert (await call(client, method, path, bearer()))[0] == 200, (method, path)
            # `aud` may list several audiences; naming ours is enough.
            status, _ = await call(client, "GET", routes[0][1], bearer(aud=["x", audience]))
            assert status == 200
        finally:
            await app[SERVICES].client.drop_database(settings.mongo_db)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo the service's log configuration, which the test applies to its captured stdout."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        structlog.reset_defaults()
        root.handlers, root.level = handlers, level


async def test_secrets_and_tokens_never_reach_the_logs(
    mongo_uri: str, s3_endpoint: str, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure("json")  # what the console command does, onto the captured stdout
    # A database user with a password, so that the service's Mongo URI carries one.
    user, password = f"svc{uuid.uuid4().hex[:8]}", f"Pw-{uuid.uuid4().hex}"
    admin: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    await admin.admin.command("createUser", user, pwd=password, roles=["root"])
    port = int(mongo_uri.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    tokens: list[str] = []
    try:
        async with await TcpProxy.start("127.0.0.1", port) as proxy:
            uri = f"mongodb://{user}:{password}@{proxy.address}/?directConnection=true"
            settings = make_settings(uri, s3_endpoint, mongo_timeout_ms=300, log_format="json")
            app = create_app(settings, run_worker=True, create_buckets=True)
            async with TestClient(TestServer(app, host="127.0.0.1")) as client:
                services = app[SERVICES]
                try:
                    await add_campaign(services.db)
                    path = f"/campaigns/{CAMPAIGN}/exports"
                    # Failing authentication and authorization, tokens in the header.
                    for header in [*UNAUTHENTICATED.values(), *NO_REPORT_ON_CAMPAIGN.values()]:
                        if header:
                            tokens.append(header.removeprefix("Bearer ").strip())
                        await call(client, "GET", path, header)
                    # An export, with a good token.
                    good = token([CAMPAIGN])
                    tokens.append(good)
                    ended = services.worker.subscribe()
                    headers = {"Authorization": f"Bearer {good}"}
                    resp = await client.post(path, json={"exportType": "codes"}, headers=headers)
                    assert resp.status == 202
                    done = await asyncio.wait_for(ended.get(), 20)
                    assert done.status.value == "FINISHED"
                    resp = await client.get(f"{path}/{done.id}", headers=headers)
                    assert "X-Amz-Signature" in (await resp.json())["path"]
                    # The database away: errors from the driver, on /ready and in the worker.
                    proxy.refuse(True)
                    proxy.drop_all()
                    assert (await client.get("/ready")).status == 503
                    assert (await client.get(path, headers=headers)).status == 503
                    # An error message that carries the URI itself, as a driver's might.
                    structlog.get_logger("export_service.queue.worker").warning(
                        "worker_step_failed", error=f"ConfigurationError: cannot use {uri}"
                    )
                    proxy.refuse(False)

                    async def ready() -> bool:
                        return (await client.get("/ready")).status == 200

                    await until("MongoDB to be back", ready)
                finally:
                    await services.client.drop_database(settings.mongo_db)
    finally:
        await admin.admin.command("dropUser", user)
        await admin.close()

    out, err = capsys.readouterr()
    text = out + err
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    # The run was logged (so the test looks at real output): the rejected requests, the
    # export, the database errors ...
    assert {"export_finished", "worker_step_failed"} <= {r["event"] for r in records}
    rejected = [r for r in records if r.get("status") in (401, 403)]
    assert len(rejected) >= len(UNAUTHENTICATED) + len(NO_REPORT_ON_CAMPAIGN)
    # ... and no secret is in it.
    assert password not in text
    assert JWT_SECRET not in text
    leaked = [t for t in tokens if t and len(t) > 12 and t in text]
    assert leaked == []
    assert "X-Amz-Signature=" not in text or "X-Amz-Signature=[REDACTED]" in text
