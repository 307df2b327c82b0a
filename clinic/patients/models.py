"""Patients: one row per identifier within its assigning authority."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Date, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clinic.db import Base, UTCDateTime, utcnow


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("issuer", "identifier", name="uq_patients_issuer_identifier"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: DICOM PatientID (0010,0020) / HL7 PID-3 identifier.
    identifier: Mapped[str] = mapped_column(String(64))
    #: DICOM IssuerOfPatientID (0010,0021) / HL7 assigning authority; "" when not given.
    issuer: Mapped[str] = mapped_column(String(64), default="")
    #: Display name (PHI: never logged).
    name: Mapped[str] = mapped_column(String(200), default="")
    birth_date: Mapped[dt.date | None] = mapped_column(Date, default=None)
    sex: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
