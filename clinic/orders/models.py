"""Imaging orders: accession number, procedure, reason for exam, priority, ordering provider."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clinic.db import Base, UTCDateTime, utcnow


class OrderStatus(StrEnum):
    """FHIR ServiceRequest.status values (http://hl7.org/fhir/request-status)."""

    ACTIVE = "active"
    COMPLETED = "completed"
    REVOKED = "revoked"  # cancelled (ORC-1 CA / OC)
    ON_HOLD = "on-hold"
    ENTERED_IN_ERROR = "entered-in-error"


class ImagingOrder(Base):
    __tablename__ = "imaging_orders"
    __table_args__ = (UniqueConstraint("placer_issuer", "placer_order_number", name="uq_orders_placer"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"), default=None)
    #: ORC-2 / OBR-2 placer order number (with its namespace), ORC-3 filler order number.
    placer_order_number: Mapped[str] = mapped_column(String(64))
    placer_issuer: Mapped[str] = mapped_column(String(64), default="")
    filler_order_number: Mapped[str] = mapped_column(String(64), default="")
    #: OBR-18 (ORM) / IPC-1 (OMI) accession number: links the order to the arriving study.
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    #: IPC-3 Study Instance UID when the order gives it.
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), default=None, index=True)
    #: OBR-4 universal service id: code, text, coding system.
    procedure_code: Mapped[str] = mapped_column(String(64), default="")
    procedure_text: Mapped[str] = mapped_column(String(200), default="")
    procedure_system: Mapped[str] = mapped_column(String(64), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    #: OBR-31 reason for study (text; code when given): feeds model routing.
    reason_for_exam: Mapped[str] = mapped_column(Text, default="")
    reason_code: Mapped[str] = mapped_column(String(64), default="")
    #: clinic.radiology.priority.Priority value from ORC-7/TQ1-9 (S stat, A asap, R routine).
    priority: Mapped[int] = mapped_column(Integer, default=0)
    #: ORC-12 / OBR-16 ordering provider: id and display name.
    ordering_provider_id: Mapped[str] = mapped_column(String(64), default="")
    ordering_provider_name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[OrderStatus] = mapped_column(String(24), default=OrderStatus.ACTIVE)
    ordered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
