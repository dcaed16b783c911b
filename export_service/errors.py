"""One exception root for the whole service; the API maps these to HTTP in one place."""

from __future__ import annotations

from typing import Any


class ExportServiceError(Exception):
    """Root of every error the service raises on purpose.

    `code` is stable and machine-readable (it is stored in `export.error.code` and sent in API
    payloads); `status` is the HTTP status the API answers with when it surfaces there.
    `message` says what happened without repeating the code: the API's error middleware shows
    it as `code: message`.
    """

    status: int = 500
    code: str = "InternalError"

    def __init__(self, message: str | None = None, **payload: Any) -> None:
        self.message = message or self.code
        self.payload = payload
        super().__init__(self.message)


class BadRequest(ExportServiceError):
    status = 400
    code = "BadRequest"


class CampaignNotFound(BadRequest):
    code = "CampaignNotFound"


class MarketNotFound(BadRequest):
    code = "MarketNotFound"


class Unauthorized(ExportServiceError):
    status = 401
    code = "Unauthorized"


class Forbidden(ExportServiceError):
    status = 403
    code = "Forbidden"


class NotFound(ExportServiceError):
    status = 404
    code = "NotFound"


class ExportFinished(ExportServiceError):
    """A cancel of an export that already ended (other than by a cancel)."""

    status = 409
    code = "ExportFinished"


class PayloadTooLarge(ExportServiceError):
    status = 413
    code = "PayloadTooLarge"


class UnsupportedMediaType(ExportServiceError):
    status = 415
    code = "UnsupportedMediaType"


class NotAvailable(ExportServiceError):
    status = 501
    code = "NotAvailable"


class ServiceUnavailable(ExportServiceError):
    status = 503
    code = "ServiceUnavailable"


class CcpaIncomplete(ServiceUnavailable):
    """Some exports could not be deleted (S3 failed); re-running the request completes it."""

    code = "CcpaIncomplete"


class ExportFailed(ExportServiceError):
    """An export cannot be produced; its `code` ends up in `export.error.code`."""

    code = "ExportFailed"


class NoMarketsFound(ExportFailed):
    code = "NoMarketsFound"


class PromotersNotFound(ExportFailed):
    code = "PromotersNotFound"


class SfmcPrefixNotConfigured(ExportFailed):
    """autoReminderEmail has rows for a region that has no SFMC prefix in the settings."""

    code = "SfmcPrefixNotConfigured"


class StorageError(ExportFailed):
    code = "StorageError"


class SpoolDiskFull(ExportFailed):
    """The local disk (or `SPOOL_MAX_BYTES`) has no room for a partitioned export's spool."""

    code = "SpoolDiskFull"


class InternalError(ExportServiceError):
    """Anything else that went wrong in a run: a bug (its message names the exception)."""

    code = "InternalError"


class Timeout(ExportFailed):
    """The run went past `timeoutMillis`: the export ends EXPIRED."""

    code = "Timeout"


class WorkerLost(ExportFailed):
    """Its worker stopped beating `maxAttempts` times: the export ends FAILED, not run again."""

    code = "WorkerLost"


class CcpaDeleted(ExportFailed):
    """A CCPA request took the running export and stopped before deleting it: it never runs
    again with the user's rows."""

    code = "CcpaDeleted"


class ExportLost(ExportServiceError):
    """The export was taken away from this worker (expired, deleted) while it ran."""

    code = "ExportLost"


class ExportCancelled(ExportServiceError):
    """A user cancelled the running export: raised where the run learns it (before an object
    is made visible), and carried out by the worker like a lost export, with clean-up."""

    code = "Cancelled"


class EncoderLost(ExportServiceError):
    """An encoder process died (killed, out of memory) under a running export.

    Nothing is wrong with the export: like a lost database connection it is not failed but
    re-queued by the sweep, and runs again with a fresh encoder process.
    """

    code = "EncoderLost"


class EncoderStartFailed(ExportFailed):
    """An encoder process could not start (a broken installation): the export fails with the
    reason rather than being retried."""

    code = "EncoderStartFailed"


class Halted(ExportServiceError):
    """A run's halt event was set before the work it raced ended (`halting.unless_halted`)."""

    code = "Halted"
