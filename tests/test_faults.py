"""Self-tests for tests/support/faults.py against real servers (SecantusDB, moto's S3 server)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError, ServerSelectionTimeoutError
from yarl import URL

from tests.support.faults import S3FaultProxy, TcpProxy, classify_s3_request
from tests.support.servers import port_of

MiB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Real servers
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def mongo_port(mongo_uri: str) -> int:
    return port_of(mongo_uri)


@pytest.fixture
async def s3_proxy(s3_endpoint: str) -> AsyncIterator[S3FaultProxy]:
    proxy = await S3FaultProxy.start(s3_endpoint)
    try:
        yield proxy
    finally:
        await proxy.close()


def s3_client(endpoint: str, **config: Any) -> Any:
    config.setdefault("retries", {"max_attempts": 10, "mode": "standard"})
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}, **config),
    )


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"faults-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


# ---------------------------------------------------------------------------------------------
# TcpProxy
# ---------------------------------------------------------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _assert_dropped(reader: asyncio.StreamReader) -> None:
    # Depending on what was in flight, an aborted connection reads as EOF or as a reset.
    try:
        rest = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return
    assert rest == b""


def _proxy_tasks() -> set[asyncio.Task[Any]]:
    return {
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "").startswith("TcpProxy.")
    }


async def test_tcp_proxy_pumps_stalls_drops_and_refuses() -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    proxy = await TcpProxy.start("127.0.0.1", echo_port)
    try:
        assert proxy.address == f"127.0.0.1:{proxy.port}"
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)

        payload = bytes(range(256)) * 4096  # 1 MiB, several 64 KiB chunks each way
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        assert proxy.open_connections == 1

        proxy.stall(True)
        writer.write(b"held")
        await writer.drain()
        # Proving absence needs a window; nothing may come back while stalled.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.2)
        proxy.stall(False)
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"

        assert proxy.drop_all() == 1
        await _assert_dropped(reader)
        writer.close()

        proxy.refuse(True)
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        await _assert_dropped(r2)
        w2.close()
        assert proxy.connections_refused == 1
        proxy.refuse(False)

        # A stalled link must still be torn down by close() (its pumps sit on the gate).
        r3, w3 = await asyncio.open_connection("127.0.0.1", proxy.port)
        w3.write(b"x")
        assert await asyncio.wait_for(r3.readexactly(1), 5) == b"x"
        proxy.stall(True)
        w3.write(b"y")
        assert proxy.connections_total == 3
    finally:
        await proxy.close()
        echo.close()
    await _assert_dropped(r3)
    w3.close()
    assert proxy.open_connections == 0
    assert _proxy_tasks() == set()


async def test_mongo_ping_through_proxy(mongo_port: int) -> None:
    async with await TcpProxy.start("127.0.0.1", mongo_port) as proxy:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            proxy.mongo_uri, serverSelectionTimeoutMS=5000
        )
        try:
            assert (await client.admin.command("ping"))["ok"] == 1
            await client.faults_selftest.things.insert_one({"_id": 1, "blob": "x" * 200_000})
            doc = await client.faults_selftest.things.find_one({"_id": 1})
            assert doc is not None and len(doc["blob"]) == 200_000
            assert proxy.connections_total >= 1
        finally:
            await client.close()


async def test_mongo_unreachable_then_back(mongo_port: int) -> None:
    async with await TcpProxy.start("127.0.0.1", mongo_port) as proxy:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            proxy.mongo_uri,
            serverSelectionTimeoutMS=1500,
            connectTimeoutMS=1000,
        )
        try:
            await client.admin.command("ping")
            proxy.refuse(True)
            assert proxy.drop_all() >= 1
            with pytest.raises(PyMongoError):
                await client.admin.command("ping")
            # Still refusing: the server is unreachable, not merely one broken socket.
            with pytest.raises(ServerSelectionTimeoutError):
                await client.admin.command("ping")
            assert proxy.connections_refused >= 1

            proxy.refuse(False)
            assert (await client.admin.command("ping"))["ok"] == 1
        finally:
            await client.close()


# ---------------------------------------------------------------------------------------------
# S3 classification and raw HTTP forwarding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "query", "path", "headers", "expected"),
    [
        ("PUT", "partNumber=1&uploadId=abc", "/b/k", None, "UploadPart"),
        ("PUT", "partNumber=1&uploadId=abc", "/b/k", {"x-amz-copy-source": "/b/o"}, "other"),
        ("POST", "uploads", "/b/k", None, "CreateMultipartUpload"),
        ("POST", "uploadId=abc", "/b/k", None, "CompleteMultipartUpload"),
        ("DELETE", "uploadId=abc", "/b/k", None, "AbortMultipartUpload"),
        ("GET", "uploadId=abc", "/b/k", None, "other"),
        ("PUT", "", "/b/dir/k", None, "PutObject"),
        ("PUT", "", "/b/k", {"x-amz-copy-source": "/b/o"}, "other"),
        ("PUT", "acl", "/b/k", None, "other"),
        ("PUT", "", "/b", None, "other"),
        ("GET", "", "/b/k", None, "GetObject"),
        ("GET", "partNumber=2&response-content-type=x", "/b/k", None, "GetObject"),
        ("GET", "tagging", "/b/k", None, "other"),
        ("GET", "list-type=2", "/b", None, "other"),
        ("HEAD", "", "/b/k", None, "other"),
        ("GET", "x-id=GetObject", "/b/k", None, "GetObject"),
        ("put", {"partNumber": "1", "uploadId": "u"}, None, None, "UploadPart"),
    ],
)
def test_classify_s3_request(
    method: str, query: Any, path: str | None, headers: dict[str, str] | None, expected: str
) -> None:
    assert classify_s3_request(method, query, path, headers) == expected


async def test_s3_proxy_forwards_http_faithfully() -> None:
    seen: list[dict[str, Any]] = []

    async def upstream_handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": list(request.headers.items()),
                "body": body,
            }
        )
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": "12345", "ETag": '"e"'})
        response = web.StreamResponse(status=207, reason="Multi Things")
        response.headers["X-Upstream"] = "yes"
        response.headers["Keep-Alive"] = "timeout=5"
        await response.prepare(request)  # no length: chunked to the proxy
        await response.write(json.dumps({"n": len(body)}).encode())
        await response.write(b"-tail")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    upstream = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with await S3FaultProxy.start(upstream) as proxy, aiohttp.ClientSession() as http:

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(3):
                    yield b"a" * 1000

            raw = "/bucket/a%20b/c%2Fd?uploads&x=%2F"
            async with http.post(
                URL(proxy.url + raw, encoded=True),
                data=chunks(),
                expect100=True,
                headers={
                    "Host": "signed-host.example:9000",
                    "X-Amz-Date": "20250101T000000Z",
                    "Connection": "X-Hop",
                    "X-Hop": "1",
                },
            ) as resp:
                assert resp.status == 207
                assert resp.reason == "Multi Things"
                assert resp.headers["X-Upstream"] == "yes"
                assert "Keep-Alive" not in resp.headers
                assert await resp.read() == b'{"n": 3000}-tail'

            async with http.head(proxy.url + "/bucket/key") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Length"] == "12345"
                assert await resp.read() == b""

        got = seen[0]
        headers = {k.lower(): v for k, v in got["headers"]}
        assert got["method"] == "POST"
        assert got["raw_path"] == raw
        assert got["body"] == b"a" * 3000
        assert headers["host"] == "signed-host.example:9000"
        assert headers["x-amz-date"] == "20250101T000000Z"
        assert headers["content-length"] == "3000"
        for hop in ("x-hop", "expect", "transfer-encoding"):
            assert hop not in headers
        assert proxy.requests == {"CreateMultipartUpload": 1, "other": 1}
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------------------------
# S3FaultProxy against moto
# ---------------------------------------------------------------------------------------------


async def test_multipart_upload_survives_upload_part_failures(
    s3_proxy: S3FaultProxy, bucket: str, s3_endpoint: str
) -> None:
    # Seed 2 fails three UploadPart attempts (500 and 503) across two parts of four.
    rule = s3_proxy.fail_rate(0.3, seed=2)
    parts = [bytes([i]) * (5 * MiB) for i in range(1, 4)] + [b"tail" * 1000]
    client = s3_client(s3_proxy.url)

    def upload() -> None:
        mpu = client.create_multipart_upload(Bucket=bucket, Key="big.bin")
        etags = []
        for number, data in enumerate(parts, start=1):
            # A file-like body makes botocore send "Expect: 100-continue".
            out = client.upload_part(
                Bucket=bucket,
                Key="big.bin",
                UploadId=mpu["UploadId"],
                PartNumber=number,
                Body=io.BytesIO(data),
            )
            etags.append({"PartNumber": number, "ETag": out["ETag"]})
        client.complete_multipart_upload(
            Bucket=bucket,
            Key="big.bin",
            UploadId=mpu["UploadId"],
            MultipartUpload={"Parts": etags},
        )

    await asyncio.to_thread(upload)

    assert rule.injected == 3
    assert s3_proxy.faults == {"UploadPart": 3}
    assert s3_proxy.requests["UploadPart"] == len(parts) + 3
    assert s3_proxy.requests["CreateMultipartUpload"] == 1
    assert s3_proxy.requests["CompleteMultipartUpload"] == 1

    expected = b"".join(parts)
    direct = s3_client(s3_endpoint)
    body = await asyncio.to_thread(
        lambda: direct.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
    )
    assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()

    # Range reads pass through with their 206 and Content-Range intact.
    def get_range() -> tuple[dict[str, Any], bytes]:
        # The body is read in the thread too: a blocking read on the event loop would starve
        # the proxy that serves it.
        out = client.get_object(Bucket=bucket, Key="big.bin", Range="bytes=10-19")
        return out, out["Body"].read()

    ranged, data = await asyncio.to_thread(get_range)
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["ContentRange"] == f"bytes 10-19/{len(expected)}"
    assert data == expected[10:20]
    assert s3_proxy.requests["GetObject"] == 1


async def test_fail_always_on_complete_surfaces_client_error(
    s3_proxy: S3FaultProxy, bucket: str
) -> None:
    s3_proxy.fail_always(403, "AccessDenied", match="CompleteMultipartUpload")
    client = s3_client(s3_proxy.url)

    def upload() -> None:
        mpu = client.create_multipart_upload(Bucket=bucket, Key="denied.bin")
        part = client.upload_part(
            Bucket=bucket, Key="denied.bin", UploadId=mpu["UploadId"], PartNumber=1, Body=b"x"
        )
        client.complete_multipart_upload(
            Bucket=bucket,
            Key="denied.bin",
            UploadId=mpu["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )

    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(upload)
    assert info.value.response["Error"]["Code"] == "AccessDenied"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # A 403 is not retryable: exactly one attempt.
    assert s3_proxy.requests["CompleteMultipartUpload"] == 1
    assert s3_proxy.faults_injected == 1

    s3_proxy.reset()
    assert await asyncio.to_thread(client.list_objects_v2, Bucket=bucket)


async def test_stall_makes_client_read_timeout_fire(s3_proxy: S3FaultProxy, bucket: str) -> None:
    release = asyncio.Event()
    rule = s3_proxy.stall(match="PutObject", until=release)
    client = s3_client(
        s3_proxy.url, read_timeout=1, retries={"total_max_attempts": 1, "mode": "standard"}
    )

    with pytest.raises(ReadTimeoutError):
        await asyncio.to_thread(client.put_object, Bucket=bucket, Key="slow", Body=b"data")
    assert rule.injected == 1

    release.set()
    await asyncio.to_thread(client.put_object, Bucket=bucket, Key="slow", Body=b"data")
    got = await asyncio.to_thread(
        lambda: client.get_object(Bucket=bucket, Key="slow")["Body"].read()
    )
    assert got == b"data"
    assert rule.injected == 1

    # A stall without an event holds until the proxy closes; the fixture's close() must not hang.
    s3_proxy.stall(match="PutObject")
    with pytest.raises(ReadTimeoutError):
        await asyncio.to_thread(client.put_object, Bucket=bucket, Key="slow2", Body=b"data")


async def test_drop_loses_the_answer_and_retries_recover(
    s3_proxy: S3FaultProxy, bucket: str, s3_endpoint: str
) -> None:
    rule = s3_proxy.drop_rate(1.0, match="PutObject", after_forward=True)
    once = s3_client(s3_proxy.url, retries={"total_max_attempts": 1, "mode": "standard"})
    with pytest.raises(ConnectionClosedError):
        await asyncio.to_thread(once.put_object, Bucket=bucket, Key="applied", Body=b"v1")
    # The write reached S3 even though the client saw a dropped connection.
    head = await asyncio.to_thread(s3_client(s3_endpoint).head_object, Bucket=bucket, Key="applied")
    assert head["ContentLength"] == 2
    rule.remove()

    # Seed 1 drops the first attempt and lets the retry through.
    rule = s3_proxy.drop_rate(0.5, match="PutObject", seed=1)
    await asyncio.to_thread(
        s3_client(s3_proxy.url).put_object, Bucket=bucket, Key="retried", Body=b"v2"
    )
    assert rule.injected == 1
    assert s3_proxy.faults["PutObject"] == 2
