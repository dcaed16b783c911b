""" "One row per user": entries streamed in (userId, date.created, _id) order, grouped by user.

The cursor is sorted by user, so one user's entries arrive together (possibly split across two
batches); only the current user's entries are held in memory, whatever the campaign's size.
Contact fields come from the user's earliest entry (contract §2); what a spec decides from the
others (e.g. the latest opt-in) is up to its row function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from export_service import sources
from export_service.exporters.spec import Context, Doc, Source

# A user's entries, earliest first → that user's rows (0..n).
UserRows = Callable[[Context, list[Doc]], Iterable[Any]]

USER_SORT: Sequence[tuple[str, int]] = (("userId", 1), ("date.created", 1), ("_id", 1))


def user_source(filter_fn: Callable[[Context], Doc], projection: Doc | None) -> Source:
    """Entries of the campaign, sorted so that each user's entries are adjacent."""
    return Source(sources.ENTRIES, filter_fn, projection, USER_SORT)


@dataclass(frozen=True, slots=True)
class PerUser:
    """A transform/finish pair for `ExporterSpec` that calls `rows` once per user."""

    rows: UserRows

    def _state(self, ctx: Context) -> list[Doc]:
        state: list[Doc] = ctx.lookups.setdefault("_user_group", [])
        return state

    async def transform(self, ctx: Context, docs: list[Doc]) -> list[Any]:
        group = self._state(ctx)
        out: list[Any] = []
        for doc in docs:
            if group and group[0].get("userId") != doc.get("userId"):
                out.extend(self.rows(ctx, group))
                group.clear()
            group.append(doc)
        return out

    async def finish(self, ctx: Context) -> list[Any]:
        group = self._state(ctx)
        out = list(self.rows(ctx, group)) if group else []
        group.clear()
        return out
