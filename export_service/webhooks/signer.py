"""Standard Webhooks signatures, by the specification's own library (`standardwebhooks`)."""

from __future__ import annotations

from datetime import datetime
from math import floor

from standardwebhooks import Webhook


def signed_headers(secret: str, message_id: str, sent_at: datetime, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers for `body` sent at `sent_at` (an aware datetime)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(floor(sent_at.timestamp())),
        # `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
        "webhook-signature": Webhook(secret).sign(message_id, sent_at, body),
    }
