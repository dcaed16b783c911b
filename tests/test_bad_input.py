"""Hostile and malformed input over a raw socket: every one gets a clean 4xx and writes nothing.

"Clean" is the JSON error body `{"error": {"status", "message", "payload": {"code"}}}` with the status
repeated. "Writes nothing" is checked on every collection of the test database, not just `exports`.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from aiohttp.http import HttpRequestParser
from aiohttp.test_utils import TestClient
from pymongo.asynchronous.database import AsyncDatabase

from export_service.runtime import Services
from export_service.worker_http import worker_listener
from tests.support.app import app_services, auth, token
from tests.support.data import CAMPAIGN, add_campaign, entry, snapshot

Client = TestClient[Any, Any]
URL = f"/campaigns/{CAMPAIGN}/exports"
LIMIT = 64 * 1024  # settings.max_body_bytes default


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        error: dict[str, Any] = json.loads(self.body)["error"]
        assert error["status"] == self.status
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["payload"]["code"], str)
        return error


async def raw(client: Client, request: bytes) -> Answer:
    """One request written byte for byte (no client-side normalisation of paths or framing)."""
    assert client.port is not None
    return await raw_port(client.port, request)


async def raw_port(port: int, request: bytes) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if head.startswith(b"HTTP/1.1 100"):  # interim answer to Expect: 100-continue
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        return Answer(int(lines[0].split()[1]), headers, body)
    finally:
        writer.close()


def request(
    method: str,
    target: str,
    body: bytes | None = None,
    *,
    bearer: str | None = None,
    content_type: str | None = "application/json",
    chunked: bool = False,
    extra: tuple[str, ...] = (),
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *extra]
    if bearer:
        lines.append(f"Authorization: Bearer {bearer}")
    payload = b""
    if body is not None:
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            step = 4096
            payload = b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step])
                for i in range(0, len(body), step)
            )
            payload += b"0\r\n\r\n"
        else:
            lines.append(f"Content-Length: {len(body)}")
            payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def setup(client: Client) -> tuple[AsyncDatabase[dict[str, Any]], dict[str, int]]:
    db = app_services(client).db
    await add_campaign(db)
    return db, await snapshot(db)


async def test_operator_injection_in_the_body_is_400(client: Client) -> None:
    db, before = await setup(client)
    bodies: list[Any] = [
        {"exportType": {"$gt": ""}},
        {"exportType": {"$ne": None}},
        {"exportType": ["entries"]},
        {"exportType": "entries", "dateKey": {"$gt": ""}},
        {"exportType": "codeWaves", "dateKey": {"$ne": None}},
        {"exportType": "codeWaves", "dateKey": ["20261123"]},
        {"exportType": "entries", "includeAllMarkets": {"$gt": ""}},
        {"exportType": "entries", "includeAllMarkets": {"$exists": True}},
        {"exportType": "entries", "$where": "sleep(1000)"},
        {"exportType": "entries", "campaignId": "camp-2"},
        {"exportType": "entries", "status": "FINISHED"},
        {"$or": [{"exportType": "entries"}]},
    ]
    for body in bodies:
        resp = await raw(
            client, request("POST", URL, json.dumps(body).encode(), bearer=token([CAMPAIGN]))
        )
        assert resp.status == 400, (body, resp)
        resp.error()
    assert await snapshot(db) == before


async def test_operator_injection_and_pollution_in_the_query_is_400(client: Client) -> None:
    db, before = await setup(client)
    created = await client.post(URL, json={"exportType": "codes"}, headers=auth([CAMPAIGN]))
    assert created.status == 202
    before = await snapshot(db)
    queries = [
        "status[$ne]=x",
        "status%5B%24ne%5D=x",
        "exportType=" + quote('{"$gt":""}'),
        "exportType[$regex]=.*",
        "limit[$gt]=0",
        "campaignId=camp-2",
        "$where=1",
        "status=PENDING&status=FAILED",
        "exportType=codes&exportType[$ne]=x",
        "limit=10&limit=600",
    ]
    for query in queries:
        resp = await raw(client, request("GET", f"{URL}?{query}", bearer=token([CAMPAIGN])))
        assert resp.status == 400, (query, resp)
        resp.error()
    assert await snapshot(db) == before


async def test_bodies_over_64_kib_are_413_with_or_without_content_length(client: Client) -> None:
    db, before = await setup(client)
    bearer = token([CAMPAIGN])

    def padded(export_type: str, size: int) -> bytes:
        body = json.dumps({"exportType": export_type}).encode()
        return body + b" " * (size - len(body))

    for chunked in (False, True):
        for content_type in ("application/json", "text/plain"):
            resp = await raw(
                client,
                request(
                    "POST", URL, padded("entries", LIMIT + 1), bearer=bearer,
                    content_type=content_type, chunked=chunked,
                ),
            )  # fmt: skip
            # Over the limit and not JSON: either answer is right, neither may write.
            assert resp.status == 413 or (content_type != "application/json" and resp.status == 415)
            resp.error()
    # A huge announced length is refused at once, without waiting for a body that never comes.
    for expect in ((), ("Expect: 100-continue",)):
        resp = await raw(
            client,
            request("POST", URL, bearer=bearer, extra=(
                "Content-Type: application/json", f"Content-Length: {10**12}", *expect,
            )),
        )  # fmt: skip
        assert resp.status == 413, resp
        resp.error()
    assert await snapshot(db) == before
    # Exactly the limit is accepted, framed either way.
    for chunked, export_type in ((False, "entries"), (True, "codes")):
        resp = await raw(
            client, request("POST", URL, padded(export_type, LIMIT), bearer=bearer, chunked=chunked)
        )
        assert resp.status == 202, resp
    assert await db["exports"].count_documents({}) == 2


async def test_bodies_that_are_not_utf8_json_objects_are_400(client: Client) -> None:
    db, before = await setup(client)
    bodies = [
        b"",
        b"null",
        b"true",
        b"1",
        b'"entries"',
        b'["entries"]',
        b"{}",
        b'{"exportType":"entr\xffies"}',
        b'\xff\xfe{"exportType":"entries"}',
        '{"exportType":"entries"}'.encode("utf-16"),
        '{"exportType":"entries"}'.encode("utf-32"),
        b'\xef\xbb\xbf{"exportType":"entries"}',
        b'{"exportType":"\xc0\xbcentries"}',
        b'{"exportType":"\\ud800"}',
        b'{"exportType":"codeWaves","dateKey":"2026112\\u0000"}',
        b'{"exportType":"entries","includeAllMarkets":NaN}',
        b'{"exportType":"entries"} {"exportType":"codes"}',
        b'{"exportType":"entries"',
        b"[" * 60_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    ]
    for body in bodies:
        resp = await raw(client, request("POST", URL, body, bearer=token([CAMPAIGN])))
        assert resp.status == 400, (body[:40], resp)
        resp.error()
    assert await snapshot(db) == before


# Bodies whose bytes are not what their Content-Encoding says: plain JSON under gzip or deflate,
# a zlib header followed by no deflate stream. (A gzip stream cut short is not one: aiohttp hands
# over the bytes decoded so far, which are then no JSON object, a 400 of its own.)
MISENCODED = [
    ("gzip", b'{"exportType":"entries"}'),
    ("deflate", b'{"exportType":"entries"}'),
    ("deflate", b"\x78\x9c" + b"\xff" * 40),
]


async def test_a_body_that_does_not_match_its_content_encoding_is_400(client: Client) -> None:
    db, before = await setup(client)
    await db["entries"].insert_one(entry("e-fan", "fan-1"))
    before = await snapshot(db)
    creator, officer = token([CAMPAIGN]), token(supreme=True)
    for chunked in (False, True):
        for encoding, body in MISENCODED:
            for method, target, bearer in (("POST", URL, creator),
                                           ("DELETE", "/ccpa/users/fan-1", officer)):  # fmt: skip
                resp = await raw(
                    client,
                    request(method, target, body, bearer=bearer, chunked=chunked,
                            extra=(f"Content-Encoding: {encoding}",)),
                )  # fmt: skip
                assert resp.status == 400, (method, encoding, body[:12], chunked, resp)
                assert resp.error()["payload"]["code"] == "BadRequest"
    # Nothing was written: no export, no ccpa_requests audit record, nothing deleted.
    assert await snapshot(db) == before
    # A body that matches its encoding is still accepted.
    resp = await raw(
        client,
        request("POST", URL, gzip.compress(b'{"exportType":"entries"}'), bearer=creator,
                extra=("Content-Encoding: gzip",)),
    )  # fmt: skip
    assert resp.status == 202, resp


async def test_out_of_range_and_non_numeric_limit_and_offset_are_400(client: Client) -> None:
    db, before = await setup(client)
    values = [str(10**30), "9" * 5000, "-1", "abc", "", "1.5", "1e3", "0x10", "%00", "%EF%BC%95",
              "NaN", "Infinity", quote("[1]")]  # fmt: skip
    for name in ("limit", "offset"):
        for value in values:
            resp = await raw(
                client, request("GET", f"{URL}?{name}={value}", bearer=token([CAMPAIGN]))
            )
            assert resp.status == 400, (name, value, resp)
            resp.error()
    assert await snapshot(db) == before


# Raw path segments as a client might send them; aiohttp decodes some (%2F, %00) and keeps others
# (%ZZ, a lone %C3) as they are.
ODD_IDS = [
    "..%2F..%2Fetc%2Fpasswd",
    "..",
    "%2E%2E",
    "abc%00",
    "abc%0A",
    "%20abc",
    "a%2Fb",
    "%C3%A9t%C3%A9",
    "%F0%9F%98%80",
    "%ZZ",
    "%C3",
    "%24gt",
    quote('{"$gt":""}', safe=""),
    "a" * 129,
    "b" * 4000,
]


async def test_odd_ids_in_paths_are_clean_4xx(client: Client) -> None:
    db, before = await setup(client)
    for segment in ODD_IDS:
        # The token may read exactly that campaign, so the id check itself must answer (or the
        # router, which matches no `{` or `}` in a path parameter).
        bearer = token([segment, unquote(segment)], supreme=True)
        resp = await raw(client, request("GET", f"/campaigns/{segment}/exports", bearer=bearer))
        assert resp.status == (404 if "%7B" in segment else 400), (segment, resp)
        resp.error()
        resp = await raw(
            client,
            request("POST", f"/campaigns/{segment}/exports", b'{"exportType":"entries"}',
                    bearer=bearer),
        )  # fmt: skip
        assert resp.status in (400, 404), (segment, resp)
        resp.error()
        resp = await raw(client, request("GET", f"{URL}/{segment}", bearer=token([CAMPAIGN])))
        assert resp.status == 404, (segment, resp)
        resp.error()
        resp = await raw(client, request("DELETE", f"/ccpa/users/{segment}", bearer=bearer))
        assert resp.status in (400, 404), (segment, resp)
        resp.error()
    # Dot segments never climb out of the route into another one.
    resp = await raw(client, request("GET", f"{URL}/../../../heartbeat", bearer=token([CAMPAIGN])))
    assert resp.status == 404
    resp.error()
    assert await snapshot(db) == before


def parser_refusals(bearer: str) -> list[tuple[bytes, int]]:
    """Requests aiohttp's parser refuses before any handler runs, and the status each gets."""
    pad = "x" * 10_000
    return [
        (request("GET", f"{URL}/{'c' * 10_000}", bearer=bearer), 414),
        (request("POST", f"{URL}?{pad}", b'{"exportType":"entries"}', bearer=bearer), 414),
        (request("GET", URL, bearer=bearer, extra=(f"X-Pad: {pad}",)), 431),
        (request("GET", URL, bearer=pad), 431),
        (request("GET", URL, bearer=bearer, extra=(f"X-{pad}: 1",)), 431),
        (request("GET", URL, bearer=bearer, extra=tuple(f"X-H{i}: 1" for i in range(200))), 431),
        (request("GET", URL, bearer=bearer, extra=("Content-Length: 1", "Content-Length: 2")), 400),
        (request("POST", URL, bearer=bearer, extra=("Content-Length: -1",)), 400),
        (request("GE(T", URL, bearer=bearer), 400),
        (request("GET", URL, bearer=bearer, extra=("X-Bad\x01: 1",)), 400),
    ]


def assert_refused(resp: Answer, status: int) -> None:
    assert resp.status == status, resp
    code = {400: "BadRequest", 414: "URITooLong", 431: "RequestHeaderFieldsTooLarge"}[status]
    assert resp.error()["payload"]["code"] == code


async def test_over_long_targets_and_headers_and_bad_framing_answer_json(client: Client) -> None:
    """414 for a request target over 8190 bytes, 431 for a header field over 8192 bytes or over
    128 headers, 400 for malformed framing: in the API's error shape, though aiohttp's (C)
    parser refuses them before any handler or middleware runs."""
    assert HttpRequestParser.__module__ == "aiohttp._http_parser"  # the C parser, the default
    db, before = await setup(client)
    for sent, status in parser_refusals(token([CAMPAIGN])):
        assert_refused(await raw(client, sent), status)
    assert await snapshot(db) == before
    # Right at the limits the request goes through to the routes.
    target = f"{URL}/"
    resp = await raw(
        client, request("GET", target + "c" * (8190 - len(target)), bearer=token([CAMPAIGN]))
    )
    assert resp.status == 404, resp
    resp.error()
    pad = "X-Pad: " + "p" * (8192 - len("X-Pad"))
    resp = await raw(client, request("GET", URL, bearer=token([CAMPAIGN]), extra=(pad,)))
    assert resp.status == 200, resp


async def test_the_worker_port_answers_parser_refusals_in_json(services: Services) -> None:
    """The `worker` command's /metrics and /heartbeat port runs the API's server."""
    async with worker_listener(services, "127.0.0.1", 0) as port:
        for sent, status in parser_refusals(token())[:3]:
            assert_refused(await raw_port(port, sent), status)
        resp = await raw_port(port, request("GET", "/heartbeat"))
        assert resp.status == 200, resp


async def test_unsupported_method_is_405_naming_the_allowed_ones(client: Client) -> None:
    db, before = await setup(client)
    for method, path, allowed in (("PATCH", URL, {"GET", "POST"}), ("PUT", f"{URL}/x", {"GET"}),
                                  ("GET", "/ccpa/users/u1", {"DELETE"})):  # fmt: skip
        resp = await raw(client, request(method, path, b"{}", bearer=token([CAMPAIGN])))
        assert resp.status == 405, (method, path, resp)
        resp.error()
        assert allowed <= {m.strip() for m in resp.headers["allow"].split(",")}
    assert await snapshot(db) == before
