"""Webhook subscriptions, from settings only (`EXPORT_SERVICE_WEBHOOKS`): never from a request.

Validated when the settings are read, so a bad URL, a secret that is not a Standard Webhooks
secret, an unknown export type or two subscriptions of one name stop the process at start with
a message naming the subscription, instead of surfacing at the first delivery.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from export_service.models import ExportType

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
# The Standard Webhooks specification asks for secrets of 24 to 64 random bytes.
SECRET_MIN_BYTES = 24
SECRET_MAX_BYTES = 64


class WebhookSubscription(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    url: str
    secret: SecretStr
    # None = every export type / every campaign.
    exportTypes: frozenset[ExportType] | None = None
    campaignIds: frozenset[str] | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an absolute http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("url must not carry credentials")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"url has a bad port: {exc}") from exc
        return value

    @field_validator("secret")
    @classmethod
    def _standard_secret(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not raw.startswith(SECRET_PREFIX):
            raise ValueError(f"secret must be {SECRET_PREFIX!r} followed by base64")
        try:
            key = base64.b64decode(raw[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"secret after {SECRET_PREFIX!r} is not valid base64") from exc
        if not SECRET_MIN_BYTES <= len(key) <= SECRET_MAX_BYTES:
            raise ValueError(
                f"secret must decode to {SECRET_MIN_BYTES}..{SECRET_MAX_BYTES} bytes, "
                f"not {len(key)}"
            )
        return value

    @field_validator("exportTypes", "campaignIds")
    @classmethod
    def _not_empty(cls, value: frozenset[str] | None) -> frozenset[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list matches nothing: leave it out to match all")
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    def literal_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The host as an IP address when the URL names one instead of a DNS name."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def matches(self, campaign_id: str, export_type: ExportType) -> bool:
        return (self.exportTypes is None or export_type in self.exportTypes) and (
            self.campaignIds is None or campaign_id in self.campaignIds
        )


def unique_names(subscriptions: list[WebhookSubscription]) -> list[WebhookSubscription]:
    seen: set[str] = set()
    for subscription in subscriptions:
        if subscription.name in seen:
            raise ValueError(f"two webhook subscriptions are named {subscription.name!r}")
        seen.add(subscription.name)
    return subscriptions
