"""Encounters from ADT (PV1): class, location, attending doctor, admission and discharge."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from clinic.db import Base, UTCDateTime, utcnow


class EncounterStatus(StrEnum):
    """FHIR Encounter.status values we use (http://hl7.org/fhir/encounter-status)."""

    PLANNED = "planned"
    IN_PROGRESS = "in-progress"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    ENTERED_IN_ERROR = "entered-in-error"


class Encounter(Base):
    __tablename__ = "encounters"
    __table_args__ = (Index("ix_encounters_patient_status", "patient_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    #: PV1-19 visit number (with its assigning authority in ``visit_issuer``); unique when given.
    visit_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    visit_issuer: Mapped[str] = mapped_column(String(64), default="")
    #: PV1-2 patient class (HL7 table 0004: I inpatient, O outpatient, E emergency, ...).
    patient_class: Mapped[str] = mapped_column(String(8), default="")
    status: Mapped[EncounterStatus] = mapped_column(String(24), default=EncounterStatus.IN_PROGRESS)
    #: PV1-3 assigned location: point of care ^ room ^ bed ^ facility.
    point_of_care: Mapped[str] = mapped_column(String(64), default="")
    room: Mapped[str] = mapped_column(String(64), default="")
    bed: Mapped[str] = mapped_column(String(64), default="")
    facility: Mapped[str] = mapped_column(String(64), default="")
    #: PV1-7 attending doctor: id and display name (XCN).
    attending_id: Mapped[str] = mapped_column(String(64), default="")
    attending_name: Mapped[str] = mapped_column(String(200), default="")
    admitted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    discharged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
