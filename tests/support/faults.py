"""Fault-injection proxies for reliability tests.

Both helpers sit in front of REAL servers and forward real traffic; faults are switched on and
off by the test. Nothing here fakes a protocol.

* :class:`TcpProxy` - a byte pump for any TCP protocol (used for the MongoDB wire protocol):
  drop every connection, refuse new ones, or stall traffic without closing anything.
* :class:`S3FaultProxy` - an HTTP reverse proxy for a path-style S3 endpoint (moto): fail,
  drop or hold selected requests, with S3-shaped XML error bodies so botocore's retry logic
  reacts exactly as it would against AWS.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import secrets
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping
from yarl import URL

__all__ = [
    "OPERATIONS",
    "Fault",
    "S3FaultProxy",
    "S3Request",
    "TcpProxy",
    "classify_s3_request",
    "operations",
]

CHUNK_SIZE = 64 * 1024

# ---------------------------------------------------------------------------------------------
# TCP
# ---------------------------------------------------------------------------------------------


class _ClosedOnExit(ABC):
    """`async with` a proxy closes it on the way out."""

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _Link:
    """One client connection and its upstream connection."""

    __slots__ = ("client", "dropped", "pumps", "upstream")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.pumps: list[asyncio.Task[None]] = []
        self.dropped = False

    def abort(self) -> None:
        self.dropped = True
        # abort() rather than close(): a dropped link must not politely flush what is queued,
        # and the peer should see the connection die at once.
        self.client.transport.abort()
        if self.upstream is not None:
            self.upstream.transport.abort()
        # A pump may be parked on the stall gate rather than on the socket, where an abort
        # would never wake it.
        for task in self.pumps:
            task.cancel()


class TcpProxy(_ClosedOnExit):
    """Transparent TCP proxy with switchable faults.

    Counters: ``connections_total`` (every accepted connection, refused ones included),
    ``connections_refused``, ``upstream_failures`` (accepted but the target could not be
    reached) and ``open_connections`` (links currently being proxied).
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = "127.0.0.1"
        self.port = 0
        self.connections_total = 0
        self.connections_refused = 0
        self.upstream_failures = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[object]] = set()
        self._refusing = False
        self._closing = False
        # Set = bytes flow. A single gate shared by every pump makes stall/resume atomic for
        # all links, including ones opened while stalled.
        self._flowing = asyncio.Event()
        self._flowing.set()

    @classmethod
    async def start(cls, target_host: str, target_port: int) -> TcpProxy:
        proxy = cls(target_host, target_port)
        proxy._server = await asyncio.start_server(proxy._handle, proxy.host, 0, limit=CHUNK_SIZE)
        proxy.port = proxy._server.sockets[0].getsockname()[1]
        return proxy

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``, ready for a connection string."""
        return f"{self.host}:{self.port}"

    @property
    def mongo_uri(self) -> str:
        """A MongoDB connection string to the server behind the proxy, through it."""
        return f"mongodb://{self.address}/?directConnection=true"

    @property
    def open_connections(self) -> int:
        return len(self._links)

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    @property
    def refusing(self) -> bool:
        return self._refusing

    def drop_all(self) -> int:
        """Abort every open connection now; returns how many were dropped."""
        links = list(self._links)
        for link in links:
            link.abort()
        return len(links)

    def refuse(self, on: bool = True) -> None:
        """While on, new connections are accepted and closed at once (existing ones live on)."""
        self._refusing = on

    def stall(self, on: bool = True) -> None:
        """While on, no byte is forwarded in either direction; nothing is closed.

        Data keeps arriving into (bounded) buffers and is delivered in order on resume.
        """
        if on:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        self.drop_all()
        # Accepted sockets may still be on their way to a handler task; loop until none is
        # left so no task outlives the proxy.
        while self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        if self._refusing or self._closing:
            self.connections_refused += 1
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        link = _Link(writer)
        self._links.add(link)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port, limit=CHUNK_SIZE
                )
            except OSError:
                self.upstream_failures += 1
                return
            link.upstream = up_writer
            if link.dropped:
                # drop_all() ran while we were connecting.
                return
            link.pumps = [
                asyncio.create_task(self._pump(reader, up_writer, link)),
                asyncio.create_task(self._pump(up_reader, writer, link)),
            ]
            # return_exceptions: a cancelled pump (drop_all) must not abort the other's cleanup.
            await asyncio.gather(*link.pumps, return_exceptions=True)
        finally:
            self._links.discard(link)
            link.abort()
            self._handlers.discard(task)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while True:
                data = await src.read(CHUNK_SIZE)
                await self._flowing.wait()
                if not data:
                    break
                dst.write(data)
                await dst.drain()
            # Forward the half-close so request/response protocols that signal "done" with
            # EOF still work; the link ends once both directions have finished.
            if dst.can_write_eof():
                dst.write_eof()
        except OSError:
            # One side died: tear the other down too, as a real broken path would.
            link.abort()


# ---------------------------------------------------------------------------------------------
# S3 operation classification
# ---------------------------------------------------------------------------------------------

UPLOAD_PART = "UploadPart"
CREATE_MPU = "CreateMultipartUpload"
COMPLETE_MPU = "CompleteMultipartUpload"
ABORT_MPU = "AbortMultipartUpload"
PUT_OBJECT = "PutObject"
GET_OBJECT = "GetObject"
DELETE_OBJECTS = "DeleteObjects"
OTHER = "other"

OPERATIONS: tuple[str, ...] = (
    UPLOAD_PART,
    CREATE_MPU,
    COMPLETE_MPU,
    ABORT_MPU,
    PUT_OBJECT,
    GET_OBJECT,
    DELETE_OBJECTS,
    OTHER,
)

# Query keys that still address the plain object rather than a sub-resource (?acl, ?tagging,
# ...). botocore adds x-id to some request URIs to make them unambiguous.
_OBJECT_QUERY_KEYS = frozenset({"versionId", "partNumber", "x-id"})


def classify_s3_request(
    method: str,
    query: str | Mapping[str, object] | Iterable[str],
    path: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Name the S3 operation of a request: one of :data:`OPERATIONS`.

    ``query`` is a raw query string, a mapping or the query keys. ``path`` is the path-style
    path (``/bucket/key``); when omitted the request is assumed to address an object. ``headers``
    (case-insensitive mapping) tells copies apart from uploads.
    """
    if isinstance(query, str):
        keys = {k for k, _ in parse_qsl(query.lstrip("?"), keep_blank_values=True)}
    else:
        keys = set(query)
    m = method.upper()
    is_copy = headers is not None and "x-amz-copy-source" in headers

    x_id = None
    if isinstance(query, Mapping):
        x_id = query.get("x-id")
    elif isinstance(query, str):
        x_id = dict(parse_qsl(query.lstrip("?"), keep_blank_values=True)).get("x-id")
    if isinstance(x_id, str) and x_id:
        return x_id if x_id in OPERATIONS else OTHER

    if "uploadId" in keys:
        if m == "PUT" and "partNumber" in keys:
            return OTHER if is_copy else UPLOAD_PART
        if m == "POST":
            return COMPLETE_MPU
        if m == "DELETE":
            return ABORT_MPU
        return OTHER  # ListParts
    if m == "POST" and "uploads" in keys:
        return CREATE_MPU

    if path is not None:
        _, _, key = path.lstrip("/").partition("/")
        if not key:
            # A bucket-level operation; the batched delete is the one told apart.
            return DELETE_OBJECTS if m == "POST" and "delete" in keys else OTHER
    plain_object = all(k in _OBJECT_QUERY_KEYS or k.startswith("response-") for k in keys)
    if m == "PUT" and plain_object and "partNumber" not in keys and not is_copy:
        return PUT_OBJECT
    if m == "GET" and plain_object:
        return GET_OBJECT
    return OTHER


# ---------------------------------------------------------------------------------------------
# S3 fault proxy
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Request:
    """What a ``match`` predicate gets to look at. ``path`` is the raw (encoded) path."""

    method: str
    path: str
    query: MultiMapping[str]
    headers: CIMultiDictProxy[str]
    body: bytes
    operation: str


Match = Callable[[S3Request], bool] | str | None


def operations(*names: str) -> Callable[[S3Request], bool]:
    """Predicate matching requests whose operation is one of ``names``."""
    wanted = frozenset(names)
    unknown = wanted - set(OPERATIONS)
    if unknown:
        raise ValueError(f"unknown S3 operation(s) {sorted(unknown)}; known: {OPERATIONS}")
    return lambda req: req.operation in wanted


def _matcher(match: Match) -> Callable[[S3Request], bool]:
    if match is None:
        return operations(UPLOAD_PART)
    if isinstance(match, str):
        return operations(match)
    return match


def _check_fraction(fraction: float) -> float:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    return fraction


_ERROR_CODES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Bad Request"),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    501: ("NotImplemented", "A header you provided implies functionality that is not implemented."),
    503: ("SlowDown", "Please reduce your request rate."),
}

_MESSAGES: dict[str, str] = {code: msg for code, msg in _ERROR_CODES.values()}
_MESSAGES["ServiceUnavailable"] = "Service is unable to handle request."


def s3_error_response(
    status: int, code: str | None = None, message: str | None = None, resource: str = ""
) -> web.Response:
    """An error answer shaped like AWS S3's (XML body, request-id headers)."""
    default_code, default_message = _ERROR_CODES.get(status, ("InternalError", "Error"))
    code = code or default_code
    message = message or _MESSAGES.get(code, default_message)
    request_id = secrets.token_hex(8).upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
    )
    return web.Response(
        status=status,
        body=body.encode(),
        headers={
            "Content-Type": "application/xml",
            "x-amz-request-id": request_id,
            "x-amz-id-2": secrets.token_hex(16),
        },
    )


FaultKind = Literal["fail", "drop", "stall", "answer"]


@dataclass(eq=False)
class Fault:
    """One active fault rule, as returned by the ``S3FaultProxy`` control methods.

    ``injected`` counts the requests it has hit; ``remove()`` switches it off (and lets requests
    it is holding through).
    """

    kind: FaultKind
    match: Callable[[S3Request], bool]
    fraction: float = 1.0
    seed: int | None = 0
    statuses: tuple[int, ...] = (500,)
    code: str | None = None
    message: str | None = None
    until: asyncio.Event | None = None
    after_forward: bool = False
    body: bytes = b""
    injected: int = 0
    _owner: S3FaultProxy | None = field(default=None, repr=False)
    _released: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _fires(self) -> bool:
        # Only matching requests consume randomness, so the fault sequence depends on the seed
        # and on the sequence of matching requests alone, not on unrelated traffic.
        if self.fraction >= 1.0:
            return True
        return self._rng.random() < self.fraction

    def _spent(self) -> bool:
        # A released stall lets later requests through untouched and must not shadow rules
        # added after it.
        return self.kind == "stall" and (
            self._released.is_set() or (self.until is not None and self.until.is_set())
        )

    def remove(self) -> None:
        self._released.set()
        if self._owner is not None:
            self._owner._remove(self)
            self._owner = None


_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def _end_to_end(headers: CIMultiDictProxy[str], extra_drop: Iterable[str]) -> CIMultiDict[str]:
    drop = set(_HOP_BY_HOP) | {h.lower() for h in extra_drop}
    for value in headers.getall("Connection", []):
        drop.update(token.strip().lower() for token in value.split(",") if token.strip())
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out


class S3FaultProxy(_ClosedOnExit):
    """Reverse proxy in front of a path-style S3 endpoint, injecting faults on demand.

    Fault rules are checked in the order they were added; the first one that matches and fires
    decides the request's fate, otherwise it is forwarded untouched. Every control method
    defaults ``match`` to UploadPart requests; ``match`` may be a predicate over
    :class:`S3Request`, or an operation name.

    Counters: ``requests[operation]`` (every request seen, faulted or not), ``faults[operation]``
    and ``faults_injected`` (total).
    """

    def __init__(self, upstream_url: str) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.host = "127.0.0.1"
        self.port = 0
        self.requests: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self._rules: list[Fault] = []
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def start(cls, upstream_url: str) -> S3FaultProxy:
        proxy = cls(upstream_url)
        proxy._session = aiohttp.ClientSession(
            # Bodies are relayed byte for byte, Content-Encoding included.
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        app = web.Application(client_max_size=1024**3)
        # A route (not a bare web.Server) so aiohttp answers "Expect: 100-continue" for us.
        app.router.add_route("*", "/{tail:.*}", proxy._handle)
        proxy._runner = web.AppRunner(
            app,
            access_log=None,
            # A client that gives up (read timeout) must not leave its held request running.
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await proxy._runner.setup()
        site = web.TCPSite(proxy._runner, proxy.host, 0)
        await site.start()
        proxy.port = proxy._runner.addresses[0][1]
        return proxy

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    # -- controls -------------------------------------------------------------------------

    def fail_rate(
        self,
        fraction: float,
        statuses: Iterable[int] = (500, 503),
        match: Match = None,
        seed: int | None = 0,
    ) -> Fault:
        """Answer ``fraction`` of matching requests with an S3 error (status drawn from
        ``statuses``: 500 -> InternalError, 503 -> SlowDown) instead of forwarding them."""
        statuses = tuple(statuses)
        if not statuses:
            raise ValueError("statuses must not be empty")
        return self._add(
            Fault("fail", _matcher(match), _check_fraction(fraction), seed, statuses=statuses)
        )

    def fail_always(
        self, status: int, code: str, match: Match = None, message: str | None = None
    ) -> Fault:
        """Answer every matching request with ``status``/``code`` (e.g. 403 AccessDenied)."""
        return self._add(
            Fault("fail", _matcher(match), 1.0, statuses=(status,), code=code, message=message)
        )

    def drop_rate(
        self,
        fraction: float,
        match: Match = None,
        seed: int | None = 0,
        after_forward: bool = False,
    ) -> Fault:
        """Close the connection of ``fraction`` of matching requests without an answer.

        With ``after_forward`` the request reaches S3 first and only the answer is lost - the
        nasty case where the client cannot know the write happened.
        """
        return self._add(
            Fault(
                "drop",
                _matcher(match),
                _check_fraction(fraction),
                seed,
                after_forward=after_forward,
            )
        )

    def answer(self, body: bytes, match: Match = None, status: int = 200) -> Fault:
        """Answer matching requests with ``body`` (XML) instead of forwarding them: S3 "succeeds"
        with whatever the test says, e.g. a DeleteObjects result listing per-key errors."""
        return self._add(Fault("answer", _matcher(match), 1.0, statuses=(status,), body=body))

    def stall(self, match: Match = None, until: asyncio.Event | None = None) -> Fault:
        """Hold matching requests unanswered until ``until`` is set (then forward them), or
        forever. ``reset()``/``Fault.remove()`` also release them; ``close()`` drops them."""
        return self._add(Fault("stall", _matcher(match), 1.0, until=until))

    def reset(self) -> None:
        """Remove every fault rule (held requests proceed). Counters are kept."""
        for rule in list(self._rules):
            rule.remove()

    def reset_counters(self) -> None:
        self.requests.clear()
        self.faults.clear()

    async def close(self) -> None:
        """Stop listening; requests still held by a stall are dropped. Safe to call twice."""
        if self._closing.is_set():
            return
        self._closing.set()
        self.reset()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _add(self, rule: Fault) -> Fault:
        rule._owner = self
        self._rules.append(rule)
        return rule

    def _remove(self, rule: Fault) -> None:
        with contextlib.suppress(ValueError):
            self._rules.remove(rule)

    # -- request path -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        # The whole body is read before any fault decision: bodies are small in tests, and a
        # consumed body keeps the keep-alive connection usable after an injected error.
        body = await request.read()
        raw_path = request.rel_url.raw_path
        operation = classify_s3_request(request.method, request.query, raw_path, request.headers)
        self.requests[operation] += 1
        info = S3Request(request.method, raw_path, request.query, request.headers, body, operation)
        for rule in list(self._rules):
            if rule._spent():
                continue
            if rule.match(info) and rule._fires():
                rule.injected += 1
                self.faults[operation] += 1
                return await self._inject(rule, request, body)
        return await self._forward(request, body)

    async def _inject(self, rule: Fault, request: web.Request, body: bytes) -> web.StreamResponse:
        if rule.kind == "fail":
            status = rule._rng.choice(rule.statuses) if len(rule.statuses) > 1 else rule.statuses[0]
            return s3_error_response(status, rule.code, rule.message, request.path)
        if rule.kind == "answer":
            return web.Response(
                status=rule.statuses[0],
                body=rule.body,
                headers={"Content-Type": "application/xml",
                         "x-amz-request-id": secrets.token_hex(8).upper()},
            )  # fmt: skip
        if rule.kind == "drop":
            if rule.after_forward:
                await self._forward(request, body, discard=True)
            return self._drop(request)
        # stall
        waiters = [asyncio.ensure_future(self._closing.wait())]
        waiters.append(asyncio.ensure_future(rule._released.wait()))
        if rule.until is not None:
            waiters.append(asyncio.ensure_future(rule.until.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._closing.is_set():
            return self._drop(request)
        return await self._forward(request, body)

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        # Nothing reaches the client any more; aiohttp just needs a response object.
        return web.Response(status=500)

    async def _forward(
        self, request: web.Request, body: bytes, discard: bool = False
    ) -> web.StreamResponse:
        assert self._session is not None
        # Host stays as the client sent it (it is part of the SigV4 signature). Expect is
        # consumed here (aiohttp already sent 100 Continue), and the body is re-framed with a
        # Content-Length since it was read in full.
        headers = _end_to_end(request.headers, ("Expect", "Content-Length"))
        had_body = "Content-Length" in request.headers or "Transfer-Encoding" in request.headers
        if had_body:
            headers["Content-Length"] = str(len(body))
        url = URL(self.upstream_url + request.raw_path, encoded=True)
        try:
            upstream = await self._session.request(
                request.method,
                url,
                headers=headers,
                # BytesIO: aiohttp warns that large raw bytes block the loop while sent.
                data=io.BytesIO(body) if had_body else None,
                allow_redirects=False,
                # Send only what the client sent; aiohttp would add its own defaults.
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            )
        except aiohttp.ClientError as exc:
            return s3_error_response(502, "BadGateway", f"upstream unreachable: {exc}")
        async with upstream:
            if discard:
                await upstream.read()
                return web.Response(status=502)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.extend(_end_to_end(upstream.headers, ("Content-Length",)))
            length = upstream.headers.get("Content-Length")
            if length is not None:
                response.content_length = int(length)
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(CHUNK_SIZE):
                await response.write(chunk)
            await response.write_eof()
            return response


# Settings of the MongoDB fault tests: a dead server is noticed within a second.
FAST: dict[str, int] = {
    "mongo_timeout_ms": 300,
    "heartbeat_interval_millis": 100,
    "heartbeat_timeout_millis": 1000,
    # 60 rows of 110 kB in batches of 25: the gate holds the export on its first batch, the
    # second is read ahead, the third is read after the gate opens, with a 5 MiB part (and so
    # a multipart upload) under way.
    "batch_size": 25,
}
