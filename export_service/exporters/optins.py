"""`fanlist`, `artistOptIn`, `livenationOptIn`, `artistSmsOptIn`: one row per user (contract §6).

All four stream the campaign's entries grouped by user (`users.PerUser`). Contact fields come
from the user's earliest entry (contract §2); consent comes from the user's latest entry, because
the most recent answer a fan gave is the one that holds (a fan who opted out later is out). A
missing opt-in key, or a missing `optIns`, is false.

None of them counts rows beforehand: the number of distinct qualifying users is only known after
reading every entry of the campaign, which is what the export itself does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from export_service.encoding.formatting import cell, text, upper
from export_service.exporters.spec import Context, Doc, ExporterSpec, Row, entries_filter
from export_service.exporters.users import PerUser, user_source
from export_service.models import ExportType

OPTIN_COLUMNS = (
    "user_id",
    "email",
    "first_name",
    "last_name",
    "postal_code",
    "country_code",
    "locale",
)
SMS_OPTIN_COLUMNS = ("user_id", "phone", "first_name", "last_name", "country_code", "locale")

USER_PROJECTION: Doc = {
    "_id": 1,
    "userId": 1,
    "fields.email": 1,
    "fields.first_name": 1,
    "fields.last_name": 1,
    "fields.phone": 1,
    "fields.postal_code": 1,
    "countryCode": 1,
    "locale": 1,
    "optIns": 1,
    "phoneConfirmed": 1,
    "date.created": 1,
}


def contact_row(entry: Doc) -> Row:
    """`OPTIN_COLUMNS` of one entry (the user's earliest)."""
    fields = entry.get("fields") or {}
    return [
        cell(entry.get("userId")),
        cell(fields.get("email")),
        text(fields.get("first_name")),
        text(fields.get("last_name")),
        text(fields.get("postal_code")),
        upper(entry.get("countryCode")),
        text(entry.get("locale")),
    ]


def sms_contact_row(entry: Doc) -> Row:
    """`SMS_OPTIN_COLUMNS` of one entry (the user's earliest)."""
    fields = entry.get("fields") or {}
    return [
        cell(entry.get("userId")),
        cell(fields.get("phone")),
        text(fields.get("first_name")),
        text(fields.get("last_name")),
        upper(entry.get("countryCode")),
        text(entry.get("locale")),
    ]


def opted_in(entry: Doc, key: str) -> bool:
    """Whether `entry` says yes to `optIns.<key>`; anything but `true` is no."""
    opt_ins = entry.get("optIns")
    return isinstance(opt_ins, dict) and opt_ins.get(key) is True


def _sms_consent(entry: Doc) -> bool:
    return opted_in(entry, "allowSms") and entry.get("phoneConfirmed") is True


def _per_user_spec(
    export_type: ExportType,
    columns: Sequence[str],
    qualifies: Callable[[Doc], bool],
    row: Callable[[Doc], Row],
) -> ExporterSpec:
    def rows(ctx: Context, entries: list[Doc]) -> Iterable[Row]:
        # `entries` is earliest first: the last one carries the user's current consent.
        if qualifies(entries[-1]):
            yield row(entries[0])

    per_user = PerUser(rows)
    return ExporterSpec(
        export_type=export_type,
        source=user_source(entries_filter, USER_PROJECTION),
        columns=lambda ctx: columns,
        transform=per_user.transform,
        finish=per_user.finish,
        needs_markets=True,
    )


FANLIST = _per_user_spec(ExportType.FANLIST, OPTIN_COLUMNS, lambda entry: True, contact_row)
ARTIST_OPT_IN = _per_user_spec(
    ExportType.ARTIST_OPT_IN,
    OPTIN_COLUMNS,
    lambda entry: opted_in(entry, "allowMarketing"),
    contact_row,
)
LIVENATION_OPT_IN = _per_user_spec(
    ExportType.LIVENATION_OPT_IN,
    OPTIN_COLUMNS,
    lambda entry: opted_in(entry, "allowLiveNation"),
    contact_row,
)
ARTIST_SMS_OPT_IN = _per_user_spec(
    ExportType.ARTIST_SMS_OPT_IN, SMS_OPTIN_COLUMNS, _sms_consent, sms_contact_row
)
