"""Patients: one row per identifier within its assigning authority."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, Date, ForeignKey, String, UniqueConstraint
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
    #: False once merged into another patient (ADT^A40); ``merged_into_id`` names the survivor.
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow, index=True)


class PatientIdentifier(Base):
    """Every identifier a patient is known by (HL7 PID-3 repetitions, FHIR Patient.identifier).

    The patient's own (identifier, issuer) pair is one of them; others (national id, other
    facilities' MRNs) are looked up here. Unique per (issuer, value) across patients.
    """

    __tablename__ = "patient_identifiers"
    __table_args__ = (UniqueConstraint("issuer", "value", name="uq_patient_identifiers_issuer_value"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    issuer: Mapped[str] = mapped_column(String(64), default="")
    value: Mapped[str] = mapped_column(String(64))
    #: HL7 table 0203 identifier type (MR, NI, PI, ...), "" when not given.
    type_code: Mapped[str] = mapped_column(String(8), default="")
