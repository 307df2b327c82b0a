"""Audit trail: who read or changed what, and when."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from clinic.db import Base, UTCDateTime, utcnow


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        # Login throttling counts recent failed sign-ins per user name and per client address.
        Index("ix_audit_events_action_username_at", "action", "username", "at"),
        Index("ix_audit_events_action_client_at", "action", "client", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(32))
    #: e.g. "read", "create", "update", "login", "login-failed".
    action: Mapped[str] = mapped_column(String(32))
    #: e.g. "worklist", "study", "instance-image", "heatmap".
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(128), default="")
    #: Internal id of the patient whose data was touched (never the name).
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), default=None, index=True)
    client: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
