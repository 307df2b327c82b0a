"""One validated settings object for the whole platform.

Values come from ``CLINIC_*`` environment variables and, optionally, a TOML file named by
``CLINIC_CONFIG``. Build it once at start-up (:func:`load_settings`) and pass it in; nothing reads
settings at import time.
"""

from __future__ import annotations

import os
import secrets
import zoneinfo
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

#: Secrets that must never protect a real deployment.
KNOWN_DEFAULT_SECRETS = frozenset({"", "secret", "changeme", "change-me", "dev", "development"})


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"
    TEST = "test"


class ResultsTrigger(StrEnum):
    """What sends an AI result out as HL7 ORU^R01 (``hl7_results_trigger``)."""

    AI_READ = "ai_read"
    SIGNED = "signed"


class Settings(BaseSettings):
    """Platform configuration. Embedded defaults need no server at all."""

    model_config = SettingsConfigDict(env_prefix="CLINIC_", extra="forbid")

    environment: Environment = Environment.DEVELOPMENT
    data_dir: Path = Path("./var")
    #: SQLAlchemy URL. Empty: SQLite (WAL) in the data dir. Scaled: postgresql+psycopg://...
    database_url: str = ""
    #: Celery broker URL. Empty: kombu's filesystem transport under the data dir.
    #: Scaled: redis://127.0.0.1:6379/0 or amqp://guest:guest@127.0.0.1:5672//
    broker_url: str = ""
    #: Filesystem-transport polling interval in seconds. Measured here: 10 ms gives ~12 ms task
    #: latency and ~500 tasks/s; kombu's default of 1 s adds a second to every hop.
    broker_polling_interval: float = 0.01
    #: Redis/SQS-style visibility timeout for unacknowledged tasks (seconds).
    broker_visibility_timeout: int = 3600

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    dicom_host: str = "0.0.0.0"
    dicom_port: int = 11112
    dicom_ae: str = Field(default="CLINIC", max_length=16)
    mllp_port: int = 2575
    #: HL7 v2 MLLP listener (integrations.hl7v2.listener).
    mllp_host: str = "0.0.0.0"
    #: Character set of messages whose MSH-18 is empty: an HL7 table 0211 name ("ASCII", "8859/1",
    #: "UNICODE UTF-8", "KS X 1001") or a Python codec name. The standard says ASCII; set it for
    #: feeds that send accented or Hangul text without declaring MSH-18.
    hl7_default_charset: str = "ASCII"
    #: Larger messages are answered AR and not stored (an ORU with an embedded PDF can be MBs).
    hl7_max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    #: An MLLP connection silent this long is closed (senders reconnect; half-open sockets freed).
    hl7_idle_timeout_s: float = Field(default=600.0, gt=0)
    #: TLS for the MLLP listener: both set, or neither (plain TCP).
    hl7_tls_cert: Path | None = None
    hl7_tls_key: Path | None = None
    #: With TLS: accept only senders whose client certificate this CA (PEM file) signed (mutual
    #: TLS, as IHE ATNA's secure node asks). Unset: any sender may connect.
    hl7_tls_client_ca: Path | None = None
    #: Time zone (IANA name, e.g. "Asia/Seoul") of HL7 v2 timestamps that carry no UTC offset:
    #: the sender's local time. Empty: this server's own zone.
    hl7_timezone: str = ""
    #: Return MLLP destinations ("host:port") of enhanced-mode application acknowledgements, by
    #: sending application (MSH-3). Without one, the application ACK is stored, held, not sent.
    hl7_ack_destinations: dict[str, str] = Field(default_factory=dict)
    #: MLLP destination ("host:port") of AI results as HL7 ORU^R01; "" = not sent.
    hl7_results_destination: str = Field(default="", pattern=r"^$|^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):\d{1,5}$")
    #: When results are sent: "ai_read" (once a model has read the study) or "signed" (once a
    #: radiologist signs the report; report signing does not exist yet, so nothing is sent then).
    hl7_results_trigger: ResultsTrigger = ResultsTrigger.AI_READ
    #: Refuse associations from calling AE titles that are not known remote AEs allowed to store
    #: (``clinic dicom ae add``). Off: any calling AE may store (embedded/demo default).
    dicom_allowlist: bool = False
    #: Send AI result objects (TID 1500 SR, SEG) to every remote AE marked ``receives_results``.
    results_send: bool = True
    #: Delivery retries: first after this many seconds, doubling up to the cap; a destination that
    #: is down delays results and loses none (a delivery stays pending until it is sent).
    #: Base URL of an external FHIR server that receives AI reads' DiagnosticReports (issue 5
    #: item 6, ``worker.fhir_tasks``); "" = off.
    fhir_push_url: str = Field(default="", pattern=r"^$|^https?://\S+$")
    #: Bearer token sent to that server ("" = none).
    fhir_push_token: str = ""
    delivery_backoff_seconds: float = 2.0
    delivery_backoff_cap_seconds: float = 300.0
    #: How many previous studies (same patient, same modality) to fetch from the prior PACS.
    priors_limit: int = Field(default=3, ge=0)

    #: Folder of MONAI bundles. Empty: ``<data_dir>/models``.
    models_dir: Path | None = None
    #: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    inference_device: str = "auto"

    #: A series counts as complete after this many seconds without a new instance.
    series_quiet_seconds: float = 5.0
    #: Relay/sweeper loop period (seconds).
    relay_interval_seconds: float = 0.05
    #: An analysis job not finished this long after it started is handed out again.
    job_lease_seconds: float = 300.0
    #: A job whose message was published this long ago and never taken is published again.
    job_pending_timeout_seconds: float = 900.0

    #: Every study reaches top priority after waiting this long (DESIGN.md §6, worklist).
    worklist_max_wait_minutes: float = 120.0

    #: Signs access tokens. Empty: a random key kept in ``<data_dir>/secret_key``.
    secret_key: SecretStr = SecretStr("")
    access_token_minutes: int = 480
    #: Failed logins of one user name (or from one client address) within the lockout window
    #: after which further attempts are refused (429 with Retry-After) until the window passes.
    login_max_failures: int = Field(default=5, ge=1)
    login_lockout_minutes: float = Field(default=15.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("CLINIC_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @field_validator("hl7_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        if value:
            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown time zone {value!r}: use an IANA name such as Asia/Seoul"
                ) from None
        return value

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        value = self.secret_key.get_secret_value()
        if self.environment is Environment.PRODUCTION and value.lower() in KNOWN_DEFAULT_SECRETS:
            raise ValueError(
                "CLINIC_SECRET_KEY must be set to a long random value when CLINIC_ENVIRONMENT=production"
            )
        if value and len(value) < 16 and self.environment is Environment.PRODUCTION:
            raise ValueError("CLINIC_SECRET_KEY must be at least 16 characters in production")
        return self

    # --- derived values -------------------------------------------------------------------

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'clinic.db'}"

    @property
    def is_embedded_broker(self) -> bool:
        return not self.broker_url or self.broker_url.startswith("filesystem")

    @property
    def broker_dir(self) -> Path:
        return self.resolved_data_dir / "broker"

    @property
    def dicom_dir(self) -> Path:
        return self.resolved_data_dir / "dicom"

    @property
    def results_dir(self) -> Path:
        """Heatmaps and other derived files of AI reads."""
        return self.resolved_data_dir / "results"

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.resolved_data_dir / "models").expanduser().resolve()

    def signing_key(self) -> str:
        """The token-signing key; a random one is created once and kept in the data dir."""
        value = self.secret_key.get_secret_value()
        if value:
            return value
        path = self.resolved_data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        return key

    def ensure_dirs(self) -> None:
        for path in (self.resolved_data_dir, self.dicom_dir, self.results_dir, self.resolved_models_dir):
            path.mkdir(parents=True, exist_ok=True)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once, at start-up."""
    return Settings(**overrides)
