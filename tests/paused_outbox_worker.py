"""`export-service worker` that stops for good between an export's terminal write and the
insert of its webhook events, and says so on stdout: the webhook test SIGKILLs it there.

The pause is patched in here, in the test's own child process; the service has no such seam.
"""

from __future__ import annotations

import asyncio
import json
import sys

from export_service import cli
from export_service.models import Export
from export_service.webhooks.notifier import Notifier


async def _paused(self: Notifier, export: Export) -> int:
    print(json.dumps({"event": "paused_before_outbox", "export_id": export.id}), flush=True)
    await asyncio.Event().wait()
    return 0


if __name__ == "__main__":
    Notifier.ended = _paused  # type: ignore[method-assign]
    sys.exit(cli.main(sys.argv[1:]))
