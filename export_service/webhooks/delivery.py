"""Delivers the outbox's events: signed POSTs, bounded, retried with backoff, one lease each.

`Dispatcher.run()` is its own task beside the worker loop, so a slow or dead receiver never
delays a claim or an export; `deliver_due(now=…)` is one step of it (tests drive it with a
clock of their own). Up to `webhook_concurrency` attempts run at once, each bounded by
`webhook_timeout_seconds`; its event's lease lasts longer than that, so no other worker can
take the event while the attempt runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from datetime import UTC, datetime, timedelta

import aiohttp
import structlog

from export_service import metrics
from export_service.models import iso, utcnow
from export_service.queue.repository import ExportRepository
from export_service.settings import Settings
from export_service.storage import Storage
from export_service.views import signed_view
from export_service.webhooks.addresses import (
    PrivateAddressRefused,
    PublicResolver,
    refuse_unless_public,
)
from export_service.webhooks.notifier import Notifier
from export_service.webhooks.outbox import Outbox, WebhookEvent
from export_service.webhooks.signer import signed_headers
from export_service.webhooks.subscriptions import WebhookSubscription

log = structlog.get_logger(__name__)

# How long past its time limit an attempt's lease lasts: covers a slow database write of the
# outcome, so only a dead worker's event is ever taken by another.
LEASE_MARGIN = timedelta(seconds=60)
JITTER = 0.2
USER_AGENT = "export-service-webhooks/1"


class _Permanent(Exception):
    """An attempt that retrying cannot fix (no such subscription, export deleted, address)."""


def backoff(attempts: int, schedule: list[float], rng: random.Random) -> timedelta:
    """Delay after the `attempts`-th failed attempt: the schedule's entry, ±20 % jitter."""
    base = schedule[min(attempts, len(schedule)) - 1]
    return timedelta(seconds=base * rng.uniform(1 - JITTER, 1 + JITTER))


class Dispatcher:
    def __init__(
        self,
        notifier: Notifier,
        storage: Storage,
        settings: Settings,
        *,
        owner: str,
        rng: random.Random | None = None,
    ) -> None:
        self.notifier = notifier
        self.outbox: Outbox = notifier.outbox
        self.repository: ExportRepository = notifier.repository
        self.storage = storage
        self.settings = settings
        self.owner = owner
        self.subscriptions: dict[str, WebhookSubscription] = {
            s.name: s for s in notifier.subscriptions
        }
        self.rng = rng or random.Random()
        self.timeout = settings.webhook_timeout_seconds
        self.lease = timedelta(seconds=self.timeout) + LEASE_MARGIN
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        notifier.listeners.append(self._wake.set)

    # ---- loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until `shutdown()`; attempts in flight are given their time limit to end."""
        interval = self.settings.webhook_poll_interval_millis / 1000
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                in_flight = {task for task in in_flight if not task.done()}
                claimed = 0
                try:
                    await self.notifier.recover()
                    free = self.settings.webhook_concurrency - len(in_flight)
                    if free > 0:
                        now = utcnow()
                        events = await self.outbox.claim_due(now, free, self.lease, self.owner)
                        claimed = len(events)
                        for event in events:
                            in_flight.add(asyncio.create_task(self.attempt(event, now)))
                except Exception as exc:
                    # The database is away: keep the loop, the next turn may find it back.
                    log.warning("webhook_step_failed", error=f"{type(exc).__name__}: {exc}")
                if claimed and len(in_flight) < self.settings.webhook_concurrency:
                    continue  # more may be due
                wake = asyncio.create_task(self._wake.wait())
                stop = asyncio.create_task(self._stopping.wait())
                await asyncio.wait(
                    {*in_flight, wake, stop}, timeout=interval, return_when=asyncio.FIRST_COMPLETED
                )
                wake.cancel()
                stop.cancel()
        finally:
            if in_flight:
                # Bounded by the attempt timeout; anything cut off keeps its lease, which
                # expires, and the event goes out again (at least once).
                _, pending = await asyncio.wait(in_flight, timeout=self.timeout + 1)
                for task in pending:
                    task.cancel()

    def shutdown(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver_due(self, now: datetime | None = None) -> list[WebhookEvent]:
        """One step: recover missing events, then attempt every event due at `now` (bounded by
        `webhook_concurrency`) and wait for the attempts. Returns the events as they ended."""
        await self.notifier.recover()
        now = now or utcnow()  # after the recovery: the events it inserts are due at once
        events = await self.outbox.claim_due(
            now, self.settings.webhook_concurrency, self.lease, self.owner
        )
        await asyncio.gather(*(self.attempt(event, now) for event in events))
        settled = [await self.outbox.get(event.id) for event in events]
        return [event for event in settled if event is not None]

    # ---- one attempt --------------------------------------------------------------------

    async def attempt(self, event: WebhookEvent, now: datetime) -> None:
        """POST the event once and record the outcome under its lease.

        Never raises: if even the outcome cannot be written (the database is away), the lease
        runs out and the event is attempted again."""
        try:
            await self._attempt(event, now)
        except Exception as exc:
            log.warning(
                "webhook_attempt_unrecorded",
                event_id=event.id,
                subscription=event.subscription,
                error=f"{type(exc).__name__}: {exc}",
            )

    async def _attempt(self, event: WebhookEvent, now: datetime) -> None:
        fields = {
            "event_id": event.id,
            "export_id": event.export_id,
            "subscription": event.subscription,
            "event_type": event.type,
            "attempt": event.attempts,
        }
        try:
            status = await self._post(event)
        except _Permanent as exc:
            await self._give_up(event, now, str(exc), fields)
            return
        except TimeoutError:
            error = f"Timeout: no answer within {self.timeout:g} s"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, PrivateAddressRefused):
                await self._give_up(event, now, f"PrivateAddressRefused: {exc.os_error}", fields)
                return
            error = f"ConnectionFailed: {exc.os_error.strerror or type(exc.os_error).__name__}"
        except aiohttp.ClientError as exc:
            # Not str(exc): some carry the receiver's URL, which may hold a token.
            error = f"ConnectionFailed: {type(exc).__name__}"

        else:
            if 200 <= status < 300:
                if await self.outbox.delivered(event, utcnow()):
                    metrics.WEBHOOKS_DELIVERED.labels(event.subscription).inc()
                    log.info("webhook_delivered", status_code=status, **fields)
                return
            # A 3xx too: redirects are not followed, so the event did not arrive.
            error = f"HTTP {status}"
        if event.attempts >= self.settings.webhook_max_attempts:
            await self._give_up(event, now, error, fields)
            return
        delay = backoff(event.attempts, self.settings.webhook_backoff_seconds, self.rng)
        if await self.outbox.retry_at(event, now + delay, error):
            metrics.WEBHOOK_RETRIES.labels(event.subscription).inc()
            log.warning("webhook_retry_scheduled", error=error, retry_in_s=round(
                delay.total_seconds(), 1), **fields)  # fmt: skip

    async def _give_up(
        self, event: WebhookEvent, now: datetime, error: str, fields: dict[str, object]
    ) -> None:
        if await self.outbox.failed(event, now, error):
            metrics.WEBHOOKS_FAILED.labels(event.subscription).inc()
            log.error("webhook_failed", error=error, **fields)

    async def _post(self, event: WebhookEvent) -> int:
        subscription = self.subscriptions.get(event.subscription)
        if subscription is None:
            raise _Permanent("SubscriptionRemoved: no longer in EXPORT_SERVICE_WEBHOOKS")
        export = await self.repository.get(event.export_id)
        if export is None:
            raise _Permanent("ExportDeleted: the export no longer exists")
        if not self.settings.webhook_allow_private:
            try:
                refuse_unless_public(subscription.host)
            except PrivateAddressRefused as exc:
                raise _Permanent(f"PrivateAddressRefused: {exc}") from exc
        body = json.dumps(
            {
                "type": event.type,
                "timestamp": iso(event.created_at),
                "data": await signed_view(self.storage, export),
            },
            separators=(",", ":"),
        )
        headers = signed_headers(
            subscription.secret.get_secret_value(), event.id, datetime.now(UTC), body
        )
        headers["content-type"] = "application/json"
        headers["user-agent"] = USER_AGENT
        async with (
            asyncio.timeout(self.timeout),
            self._client().post(
                subscription.url, data=body.encode(), headers=headers, allow_redirects=False
            ) as response,
        ):
            # Read (and drop) the answer so the connection can be reused.
            with contextlib.suppress(aiohttp.ClientPayloadError):
                await response.content.read(64 * 1024)
            return response.status

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.settings.webhook_concurrency,
                resolver=None if self.settings.webhook_allow_private else PublicResolver(),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # Trust nothing from the environment: no proxy settings, no .netrc credentials.
                trust_env=False,
            )
        return self._session
