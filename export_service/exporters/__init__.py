"""The registry of export types: each one a declarative `ExporterSpec`."""

from __future__ import annotations

from export_service.exporters.assignments import CODE_ASSIGNMENTS, CODE_WAVES
from export_service.exporters.codes import CODES
from export_service.exporters.entries import ENTRIES, VERIFIED_ENTRIES
from export_service.exporters.optins import (
    ARTIST_OPT_IN,
    ARTIST_SMS_OPT_IN,
    FANLIST,
    LIVENATION_OPT_IN,
)
from export_service.exporters.promoters import PROMOTER_EMAIL_OPT_IN
from export_service.exporters.reminders import (
    AUTO_REMINDER_EMAIL,
    REMINDER_EMAIL,
    REMINDER_EMAIL_SAMPLE,
)
from export_service.exporters.scoring import SCORING
from export_service.exporters.spec import ExporterSpec
from export_service.exporters.waitlist import WAITLIST
from export_service.models import ExportType

EXPORTERS: dict[ExportType, ExporterSpec] = {
    spec.export_type: spec
    for spec in (
        ENTRIES,
        CODES,
        SCORING,
        VERIFIED_ENTRIES,
        CODE_ASSIGNMENTS,
        CODE_WAVES,
        FANLIST,
        ARTIST_OPT_IN,
        ARTIST_SMS_OPT_IN,
        LIVENATION_OPT_IN,
        WAITLIST,
        REMINDER_EMAIL,
        REMINDER_EMAIL_SAMPLE,
        AUTO_REMINDER_EMAIL,
        PROMOTER_EMAIL_OPT_IN,
    )
}


def spec_for(export_type: ExportType) -> ExporterSpec | None:
    return EXPORTERS.get(export_type)
