"""What the service sends to MongoDB, seen through the driver's command monitoring."""

from __future__ import annotations

import copy
from typing import Any

from pymongo import monitoring

Doc = dict[str, Any]


class ExportWrites(monitoring.CommandListener):
    """Every update statement sent to the `exports` collection, as (filter, update)."""

    def __init__(self) -> None:
        self.updates: list[tuple[Doc, Doc]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "update" and event.command.get("update") == "exports":
            for statement in event.command.get("updates", ()):
                self.updates.append((copy.deepcopy(statement["q"]), copy.deepcopy(statement["u"])))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None

    def pushes(self, export_id: str) -> list[tuple[Doc, Doc]]:
        """The writes that recorded an upload on the export."""
        return [(q, u) for q, u in self.updates if q.get("_id") == export_id and "$push" in u]
