"""FHIR resources pushed to an external FHIR server (issue 5 item 6): one row per resource and
server, and one row per attempt."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clinic.db import Base, UTCDateTime, utcnow


class PushStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class PushOutcome(StrEnum):
    SUCCESS = "success"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


class FhirOutbound(Base):
    __tablename__ = "fhir_outbound"
    __table_args__ = (
        # one push of a resource to a server: a redelivered task or a second hook call adds nothing
        UniqueConstraint("resource_type", "resource_id", "url", name="uq_fhir_outbound_resource_url"),
        Index("ix_fhir_outbound_status_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: What is pushed: e.g. ("DiagnosticReport", "17"), the id of this server's resource.
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    #: The external server's base URL (``fhir_push_url`` when queued).
    url: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16), default=PushStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


class FhirOutboundAttempt(Base):
    __tablename__ = "fhir_outbound_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    outbound_id: Mapped[int] = mapped_column(ForeignKey("fhir_outbound.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    outcome: Mapped[str] = mapped_column(String(16))  # PushOutcome
    #: The server's HTTP status; None when no answer came (connection refused, timeout).
    http_status: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str] = mapped_column(Text, default="")
