"""Every tunable of the service, read from `EXPORT_SERVICE_*` variables and an optional file.

No configuration at all means "embedded": a local MongoDB-wire server and a local S3 server are
started (or reused) by the service itself. Setting `EXPORT_SERVICE_MONGO_URI` switches to a
real MongoDB, and `EXPORT_SERVICE_S3_ENDPOINT_URL` unset means AWS S3 with the standard `AWS_*`
variables.
"""

from __future__ import annotations

import os
import tempfile
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from export_service.models import ExportType
from export_service.webhooks.addresses import is_public_address
from export_service.webhooks.subscriptions import WebhookSubscription, unique_names

SETTINGS_FILE_ENV = "EXPORT_SERVICE_SETTINGS_FILE"

ReadPreferenceMode = Literal[
    "primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest"
]


class BucketRole(StrEnum):
    """Which configured bucket an export type writes to (contract §6)."""

    EXPORTS = "exportsS3"
    SCORING = "scoringS3"
    VF_SCORING = "vfScoringS3"
    SFMC = "sfmcS3"


DEFAULT_REGION_BY_COUNTRY = {"US": "NA", "CA": "NA", "MX": "NA", "GB": "UK", "IE": "UK"}
DEFAULT_LOCALE_ALIASES = {
    "en-mx": "en-us",
    "en-uk": "en-gb",
    "en-ie": "en-gb",
    "en-nz": "en-au",
}
DEFAULT_COUNTRY_LOCALES = {
    "US": "en-us",
    "CA": "en-ca",
    "MX": "es-mx",
    "GB": "en-gb",
    "IE": "en-gb",
}
DEFAULT_SFMC_PREFIXES = {
    "NA": "Ticketmaster/7222895/TMDemandMgmt/DM_ArtistPresale_V03",
    "UK": "TMInternational/1314420/DM_ArtistPresale/DM_ArtistPresale_V03",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EXPORT_SERVICE_",
        env_file=os.environ.get(SETTINGS_FILE_ENV),
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        # A start-up error names the setting and the reason, never the value: it may be a
        # secret (a webhook's `whsec_` key, a Mongo URI with its password).
        hide_input_in_errors=True,
    )

    # --- MongoDB -------------------------------------------------------------------------
    mongo_uri: SecretStr | None = Field(
        default=None, description="MongoDB URI; unset = start/reuse the embedded server."
    )
    mongo_db: str = Field(
        default="verifiedfan", description="Database holding sources and exports."
    )
    mongo_timeout_ms: int = Field(default=5_000, ge=100, description="Server selection timeout.")
    mongo_connect_timeout_ms: int = Field(
        default=10_000, ge=100, description="TCP connect timeout of a new connection."
    )
    mongo_socket_timeout_ms: int = Field(
        default=300_000,
        ge=1_000,
        description="Upper bound on one driver round trip (a getMore of a large batch included).",
    )
    mongo_max_pool_size: int = Field(
        default=50, ge=1, description="Connections per MongoDB server, per process."
    )
    mongo_min_pool_size: int = Field(
        default=0, ge=0, description="Connections kept open per server while idle."
    )
    mongo_app_name: str = Field(
        default="export-service", description="`appName` shown in MongoDB's logs and currentOp."
    )
    source_read_preference: ReadPreferenceMode = Field(
        default="primary",
        description="Read preference of every exporter read of the source collections "
        "(cursors, counts, lookups); never used for `exports` or for CCPA's lookups. "
        "`secondaryPreferred` keeps exports off the primary.",
    )
    source_max_staleness_seconds: int | None = Field(
        default=None,
        ge=90,
        description="With a secondary read preference: skip secondaries lagging more than this.",
    )

    # --- S3 ------------------------------------------------------------------------------
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint; unset = AWS (or the embedded server if no Mongo URI).",
    )
    s3_access_key_id: SecretStr | None = Field(
        default=None, description="Static S3 key id; unset = the standard AWS credential chain."
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="Static S3 secret key (with `s3_access_key_id`)."
    )
    s3_region: str = Field(default="us-east-1", description="Region for S3 and URL signing.")
    s3_addressing_style: str = Field(default="auto", description="`path` for moto/MinIO.")
    s3_acl_enabled: bool = Field(
        default=True, description="Send ACLs; turn off for buckets with ACLs disabled."
    )
    s3_call_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Upper bound on any single S3 call."
    )
    s3_max_attempts: int = Field(default=5, ge=1, description="botocore retry attempts per call.")
    s3_part_size_bytes: int = Field(
        default=8 * 1024 * 1024, ge=5 * 1024 * 1024, description="Multipart part size."
    )
    s3_upload_concurrency: int = Field(default=2, ge=1, description="Parts in flight per export.")
    bucket_exports: str = Field(default="exports", description="Bucket `exportsS3`.")
    bucket_scoring: str = Field(default="scoring", description="Bucket `scoringS3`.")
    bucket_vf_scoring: str = Field(default="vf-scoring", description="Bucket `vfScoringS3`.")
    bucket_sfmc: str = Field(default="sfmc", description="Bucket `sfmcS3`.")
    signed_url_ttl_seconds: int = Field(default=86_400, ge=60, description="TTL of download URLs.")

    # --- API -----------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="API bind address.")
    port: int = Field(default=8080, ge=0, le=65535, description="API port.")
    jwt_secret: SecretStr | None = Field(default=None, description="HS256 secret.")
    jwt_public_key: str | None = Field(default=None, description="RS256 public key (PEM).")
    jwt_issuer: str | None = Field(
        default=None, description="When set, a token's `iss` must be this (else 401)."
    )
    jwt_audience: str | None = Field(
        default=None, description="When set, a token's `aud` must name this (else 401)."
    )
    auth_cache_size: int = Field(
        default=10_000,
        ge=0,
        description="Verified tokens remembered per process, each until its `exp`; 0 = off.",
    )
    signed_url_cache_size: int = Field(
        default=10_000,
        ge=0,
        description="Signed download URLs remembered per process, each for the first tenth of "
        "its lifetime; 0 = off.",
    )
    max_body_bytes: int = Field(default=64 * 1024, description="Largest accepted request body.")

    # --- Queue / worker ------------------------------------------------------------------
    polling_interval_millis: int = Field(default=1_000, ge=10, description="Idle poll period.")
    timeout_millis: int = Field(
        default=1_800_000, ge=50, description="TRIGGERED longer than this becomes EXPIRED."
    )
    heartbeat_interval_millis: int = Field(
        default=5_000, ge=10, description="How often a running export proves its worker alive."
    )
    heartbeat_timeout_millis: int = Field(
        default=60_000, ge=50, description="No heartbeat for this long = the worker died."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Runs lost to dead workers before an export is FAILED."
    )
    max_concurrent_exports: int = Field(default=1, ge=1, description="TRIGGERED at once, globally.")
    shutdown_grace_seconds: float = Field(
        default=30.0, ge=0, description="On SIGTERM, time the running export gets to finish."
    )
    progress_interval_millis: int = Field(
        default=1_000, ge=10, description="How often a running export writes `progress.processed`."
    )
    cancel_check_interval_millis: int = Field(
        default=500,
        ge=10,
        le=1_000,
        description="How often a running export checks MongoDB for a cancel request.",
    )
    liveness_timeout_millis: int = Field(
        default=60_000,
        ge=100,
        description="`/heartbeat` answers 503 when the worker loop (`api`: the MongoDB probe) "
        "has made no progress for this long, so that a wedged process is restarted.",
    )

    # --- Exports -------------------------------------------------------------------------
    max_rows_per_file: int = Field(default=500_000, ge=1, description="Split point of ZIP parts.")
    reminder_sample_size: int = Field(default=100, ge=1, description="Rows per sample file.")
    batch_size: int = Field(default=2_000, ge=1, description="Cursor batch size.")
    encoder_processes: int | None = Field(
        default=None,
        ge=0,
        description="Child processes per worker that CSV-encode batches (types that have an "
        "encoder: `entries`, `verifiedEntries`, `codes`, `scoring`). Unset: one per usable CPU "
        "(cgroup CPU limit honoured, at most 4; none on one CPU); 0: encode in the "
        "worker process.",
    )
    spool_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "export-service-spool",
        description="Where partitioned exports (reminder, promoter types) spool their rows, one "
        "directory per running export; leftovers of a dead worker are removed at worker start.",
    )
    spool_max_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Largest spool of one export (compressed bytes); passing it fails the export "
        "with SpoolDiskFull, like a full disk. Unset: bounded by the disk only.",
    )
    default_region: str = Field(default="NA", description="Region of unlisted countries.")
    region_by_country: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_REGION_BY_COUNTRY)
    )
    locale_aliases: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_LOCALE_ALIASES))
    country_locales: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_COUNTRY_LOCALES))
    fallback_locale: str = Field(default="en-us", description="Locale when nothing else fits.")
    sfmc_prefixes: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_SFMC_PREFIXES))

    # --- Completion webhooks (contract §11) -----------------------------------------------
    webhooks: list[WebhookSubscription] = Field(
        default_factory=list,
        description="JSON list of `{name, url, secret, exportTypes?, campaignIds?}`; `secret` is "
        "a Standard Webhooks secret (`whsec_` + base64 of 24..64 bytes).",
    )
    webhook_allow_private: bool = Field(
        default=False, description="Allow receivers on loopback, private or link-local addresses."
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, description="Attempts per event before it is FAILED."
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Upper bound on one delivery attempt."
    )
    webhook_backoff_seconds: list[float] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 3600.0, 10800.0, 21600.0],
        min_length=1,
        description="Delay before retry n (the last one repeats), each with ±20 % jitter.",
    )
    webhook_concurrency: int = Field(
        default=8, ge=1, description="Deliveries in flight at once per worker process."
    )
    webhook_poll_interval_millis: int = Field(
        default=1_000, ge=10, description="How often an idle worker looks for due events."
    )

    # --- Retention (contract §13) --------------------------------------------------------
    retention_days: int = Field(
        default=0,
        ge=0,
        description="FINISHED exports older than this many days (since `date.finished`) lose "
        "their S3 objects and are marked purged; 0 keeps them forever.",
    )
    retention_days_by_type: dict[ExportType, int] = Field(
        default_factory=dict,
        description="JSON object `{exportType: days}` overriding `retention_days` per type "
        '(0: keep that type forever), e.g. `{"scoring": 7, "entries": 90}`.',
    )
    retention_sweep_interval_millis: int = Field(
        default=3_600_000,
        ge=10,
        description="At most one retention sweep per this period across all workers.",
    )
    retention_batch_size: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="Most exports one retention sweep purges; a longer backlog takes more sweeps.",
    )

    # --- Embedded servers ----------------------------------------------------------------
    data_dir: Path = Field(
        default=Path(".export-service"), description="Embedded servers' data directory."
    )
    embedded_mongo_port: int = Field(default=27018, description="Embedded MongoDB-wire port.")
    embedded_s3_port: int = Field(default=4566, description="Embedded S3 port.")

    # --- Observability -------------------------------------------------------------------
    log_format: str = Field(default="auto", description="`json`, `console` or `auto` (tty).")
    log_level: str = Field(default="INFO", description="Minimum log level.")
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector, e.g. `http://otel-collector:4318` (`/v1/traces` added).",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="`worker` command: serve /metrics and /heartbeat on this port (unset = off).",
    )

    @field_validator("region_by_country", "country_locales")
    @classmethod
    def _upper_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return {k.upper(): v for k, v in value.items()}

    @field_validator("webhooks")
    @classmethod
    def _unique_webhooks(cls, value: list[WebhookSubscription]) -> list[WebhookSubscription]:
        return unique_names(value)

    @field_validator("webhook_backoff_seconds")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("backoff delays must be >= 0")
        return value

    @field_validator("retention_days_by_type")
    @classmethod
    def _retention_days(cls, value: dict[ExportType, int]) -> dict[ExportType, int]:
        if any(days < 0 for days in value.values()):
            raise ValueError("retention days must be >= 0 (0 keeps the type forever)")
        return value

    @model_validator(mode="after")
    def _public_receivers(self) -> Settings:
        # A literal address is refused at start; DNS names are checked at each delivery.
        if not self.webhook_allow_private:
            for subscription in self.webhooks:
                address = subscription.literal_address()
                if address is not None and not is_public_address(address):
                    raise ValueError(
                        f"webhook {subscription.name!r}: {address} is not a public address "
                        "(set EXPORT_SERVICE_WEBHOOK_ALLOW_PRIVATE=true to allow it)"
                    )
        return self

    def retention_days_for(self, export_type: ExportType) -> int:
        """Days a FINISHED export of this type keeps its objects; 0 means forever."""
        return self.retention_days_by_type.get(export_type, self.retention_days)

    @property
    def retention_enabled(self) -> bool:
        return any(self.retention_days_for(t) > 0 for t in ExportType)

    @property
    def embedded(self) -> bool:
        return self.mongo_uri is None

    @cached_property
    def buckets(self) -> dict[BucketRole, str]:
        return {
            BucketRole.EXPORTS: self.bucket_exports,
            BucketRole.SCORING: self.bucket_scoring,
            BucketRole.VF_SCORING: self.bucket_vf_scoring,
            BucketRole.SFMC: self.bucket_sfmc,
        }

    def bucket(self, role: BucketRole) -> str:
        return self.buckets[role]
