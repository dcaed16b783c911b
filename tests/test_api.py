"""The REST API over a real socket: status codes, error bodies, and that rejections write nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from tests.support.app import app_services, auth
from tests.support.data import CAMPAIGN, add_campaign

Client = TestClient[Any, Any]
URL = f"/campaigns/{CAMPAIGN}/exports"


async def export_count(client: Client) -> int:
    return await app_services(client).db["exports"].count_documents({})


async def test_create_returns_202_pending_export(client: Client) -> None:
    await add_campaign(app_services(client).db)
    resp = await client.post(URL, json={"exportType": "entries"}, headers=auth([CAMPAIGN]))
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "PENDING"
    assert body["campaignId"] == CAMPAIGN
    assert body["campaignName"] == "Tour 2026"
    assert body["exportType"] == "entries"
    assert body["requesterUserId"] == "admin-1"
    assert body["date"]["created"].endswith("Z")
    assert body["progress"] == {"processed": 0}
    got = await client.get(f"{URL}/{body['id']}", headers=auth([CAMPAIGN]))
    assert got.status == 200
    assert (await got.json())["id"] == body["id"]


async def test_identical_request_returns_existing_with_200(client: Client) -> None:
    await add_campaign(app_services(client).db)
    first = await client.post(URL, json={"exportType": "codes"}, headers=auth([CAMPAIGN]))
    again = await client.post(URL, json={"exportType": "codes"}, headers=auth([CAMPAIGN]))
    assert (first.status, again.status) == (202, 200)
    assert (await first.json())["id"] == (await again.json())["id"]
    other = await client.post(
        URL, json={"exportType": "entries", "includeAllMarkets": True}, headers=auth([CAMPAIGN])
    )
    assert other.status == 202
    assert await export_count(client) == 2


async def test_twenty_concurrent_identical_posts_create_one_export(client: Client) -> None:
    await add_campaign(app_services(client).db)
    responses = await asyncio.gather(
        *(
            client.post(URL, json={"exportType": "scoring"}, headers=auth([CAMPAIGN]))
            for _ in range(20)
        )
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 19 + [202]
    ids = {(await r.json())["id"] for r in responses}
    assert len(ids) == 1
    assert await export_count(client) == 1


async def test_bad_requests_are_rejected_and_write_nothing(client: Client) -> None:
    await add_campaign(app_services(client).db)
    headers = auth([CAMPAIGN])
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"json": {"exportType": "nope"}}, 400, "exportType"),
        ({"json": {}}, 400, "exportType"),
        ({"json": {"exportType": {"$gt": ""}}}, 400, "exportType"),
        ({"json": {"exportType": "codeWaves"}}, 400, "dateKey"),
        ({"json": {"exportType": "codeWaves", "dateKey": "20261331"}}, 400, "dateKey"),
        ({"json": {"exportType": "codeWaves", "dateKey": "2026-11-23"}}, 400, "dateKey"),
        ({"json": {"exportType": "codeWaves", "dateKey": 20261123}}, 400, "dateKey"),
        ({"json": {"exportType": "entries", "includeAllMarkets": "yes"}}, 400, "includeAllMarkets"),
        ({"json": {"exportType": "entries", "extra": 1}}, 400, "extra"),
        ({"json": ["entries"]}, 400, "BadRequest"),
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "BadRequest"),
        ({"data": b'{"exportType": "\xff"}', "headers": {"Content-Type": "application/json"}}, 400,
         "BadRequest"),
        ({"data": b"exportType=entries", "headers": {"Content-Type": "text/plain"}}, 415,
         "UnsupportedMediaType"),
        ({"data": b"{" + b" " * 70_000 + b"}", "headers": {"Content-Type": "application/json"}},
         413, "PayloadTooLarge"),
    ]  # fmt: skip
    for kwargs, status, needle in cases:
        extra_headers = kwargs.pop("headers", {})
        resp = await client.post(URL, headers={**headers, **extra_headers}, **kwargs)
        body = await resp.json()
        assert resp.status == status, (kwargs, body)
        assert body["error"]["status"] == status
        assert needle in body["error"]["message"] or needle in str(body["error"]["payload"])
    assert await export_count(client) == 0


async def test_code_waves_without_a_date_names_the_campaigns_wave_dates(client: Client) -> None:
    db = app_services(client).db
    await add_campaign(db)
    await db["codes"].insert_many([
        {"_id": f"c{i}", "campaignId": CAMPAIGN, "code": f"C{i}", "waveDateKey": key}
        for i, key in enumerate(["20260928", "20260926", None, "20260926"])
    ])  # fmt: skip
    await db["codes"].insert_one({"_id": "other", "campaignId": "x", "waveDateKey": "20990101"})
    resp = await client.post(URL, json={"exportType": "codeWaves"}, headers=auth([CAMPAIGN]))
    body = await resp.json()
    assert resp.status == 400
    assert "wave dates: 20260926, 20260928" in body["error"]["message"]
    assert body["error"]["payload"]["waveDateKeys"] == ["20260926", "20260928"]
    assert await export_count(client) == 0


async def test_unknown_campaign_is_400_campaign_not_found(client: Client) -> None:
    resp = await client.post(
        "/campaigns/ghost/exports", json={"exportType": "entries"}, headers=auth(["ghost"])
    )
    assert resp.status == 400
    body = await resp.json()
    assert "CampaignNotFound" in body["error"]["message"]
    assert body["error"]["payload"]["code"] == "CampaignNotFound"
    assert await export_count(client) == 0


async def test_auth_matrix(client: Client) -> None:
    await add_campaign(app_services(client).db)
    await add_campaign(app_services(client).db, "camp-2")
    created = await client.post(URL, json={"exportType": "codes"}, headers=auth([CAMPAIGN]))
    export_id = (await created.json())["id"]
    routes = [
        ("POST", URL, {"exportType": "entries"}),
        ("GET", URL, None),
        ("GET", f"{URL}/{export_id}", None),
    ]
    for method, url, body in routes:
        resp = await client.request(method, url, json=body)
        assert resp.status == 401, (method, url)
        resp = await client.request(method, url, json=body, headers={"Authorization": "Bearer x.y"})
        assert resp.status == 401
        resp = await client.request(
            method, url, json=body, headers=auth([CAMPAIGN], ttl_seconds=-10)
        )
        assert resp.status == 401
        resp = await client.request(method, url, json=body, headers=auth(["camp-2"]))
        assert resp.status == 403
        resp = await client.request(
            method, url, json=body, headers=auth([CAMPAIGN], actions=("VIEW",))
        )
        assert resp.status == 403
    # Another campaign's export is not reachable through a campaign the token may read.
    resp = await client.get(f"/campaigns/camp-2/exports/{export_id}", headers=auth(["camp-2"]))
    assert resp.status == 404
    resp = await client.delete("/ccpa/users/u1", headers=auth([CAMPAIGN]))
    assert resp.status == 403
    resp = await client.delete("/ccpa/users/u1")
    assert resp.status == 401


async def test_list_is_newest_first_with_filters_and_limits(client: Client) -> None:
    await add_campaign(app_services(client).db)
    headers = auth([CAMPAIGN])
    ids = []
    for export_type in ("entries", "codes", "scoring"):
        resp = await client.post(URL, json={"exportType": export_type}, headers=headers)
        ids.append((await resp.json())["id"])
    resp = await client.get(URL, headers=headers)
    assert [e["id"] for e in (await resp.json())["exports"]] == ids[::-1]
    resp = await client.get(URL, params={"exportType": "codes"}, headers=headers)
    assert [e["id"] for e in (await resp.json())["exports"]] == [ids[1]]
    resp = await client.get(URL, params={"limit": "2", "offset": "1"}, headers=headers)
    assert [e["id"] for e in (await resp.json())["exports"]] == ids[1::-1]
    for bad in ({"limit": "501"}, {"limit": "0"}, {"offset": "-1"}, {"status": "DONE"},
                {"limit": "9" * 30}, {"exportType": "x"}):  # fmt: skip
        resp = await client.get(URL, params=bad, headers=headers)
        assert resp.status == 400, bad


async def test_unknown_export_is_404(client: Client) -> None:
    resp = await client.get(f"{URL}/nope", headers=auth([CAMPAIGN]))
    assert resp.status == 404
    resp = await client.get(f"{URL}/..%2F..%2Fetc", headers=auth([CAMPAIGN]))
    assert resp.status == 404


async def test_health_and_readiness(client: Client) -> None:
    assert (await client.get("/heartbeat")).status == 200
    ready = await client.get("/ready")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"mongodb": "ok", "s3": "ok"}
    metrics = await client.get("/metrics")
    assert metrics.status == 200
    assert "export_service_queue_depth" in await metrics.text()
