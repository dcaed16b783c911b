"""Contact fields of the users a batch names, joined from their earliest entry in one query.

Types whose rows come from `codes` or `scoring` still print the user's email/name/phone, which
live on entries. Looking them up per row would be one round trip per row; instead each batch
asks once for the entries of all the users it names (`$in`, served by the
`campaign_user_created_id` index) and keeps each user's earliest one (DESIGN §2).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from export_service.exporters.spec import Context, Doc
from export_service.exporters.users import USER_SORT


def user_ids(values: Iterable[Any]) -> list[str]:
    """The distinct string ids among `values` (ids are strings; anything else matches no one)."""
    return list(dict.fromkeys(v for v in values if isinstance(v, str)))


async def earliest_fields(
    ctx: Context, users: Iterable[Any], fields: Sequence[str]
) -> dict[str, Doc]:
    """userId → the `fields` sub-document (only `fields` keys) of that user's earliest entry.

    Users without an entry in the campaign are absent from the answer.
    """
    wanted = user_ids(users)
    if not wanted:
        return {}
    projection: Doc = {"_id": 0, "userId": 1, **{f"fields.{name}": 1 for name in fields}}
    cursor = ctx.db["entries"].find(
        {"campaignId": ctx.campaign_id, "userId": {"$in": wanted}},
        projection,
        sort=list(USER_SORT),
    )
    earliest: dict[str, Doc] = {}
    async for doc in cursor:
        # Sorted by (userId, date.created, _id): the first entry seen per user is the earliest.
        earliest.setdefault(doc["userId"], doc.get("fields") or {})
    return earliest


def contact_of(contacts: dict[str, Doc], user_id: Any) -> Doc:
    """The joined fields of `user_id`, or an empty document (no entry, or not an id)."""
    return contacts.get(user_id, {}) if isinstance(user_id, str) else {}
