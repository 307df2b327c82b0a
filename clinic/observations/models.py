"""Timestamped observations per patient with their source device and codes as received."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import Float, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clinic.db import Base, UTCDateTime, utcnow


class VitalSign(StrEnum):
    """The vital signs the platform understands (NEWS2 parameters, DESIGN.md §6), with the LOINC
    code FHIR's vital-signs profile uses for each."""

    HEART_RATE = "heart_rate"  # LOINC 8867-4, /min
    RESPIRATORY_RATE = "respiratory_rate"  # LOINC 9279-1, /min
    SPO2 = "spo2"  # LOINC 59408-5 (2708-6), %
    TEMPERATURE = "temperature"  # LOINC 8310-5, Cel
    SYSTOLIC_BP = "systolic_bp"  # LOINC 8480-6, mm[Hg]
    DIASTOLIC_BP = "diastolic_bp"  # LOINC 8462-4, mm[Hg]
    SUPPLEMENTAL_O2 = "supplemental_o2"  # on oxygen: value 1/0 (or flow L/min in value)
    CONSCIOUSNESS = "consciousness"  # ACVPU: A, C, V, P, U in value_text


class Observation(Base):
    """One observation. ``code`` is a :class:`VitalSign` value, or "" when the source code is not one
    we know: such observations are kept (with their source code and system) and reported."""

    __tablename__ = "observations"
    __table_args__ = (
        Index("ix_observations_patient_code_time", "patient_id", "code", "observed_at"),
        UniqueConstraint(
            "patient_id",
            "source_system",
            "source_code",
            "observed_at",
            "device",
            name="uq_observations_natural",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    encounter_id: Mapped[int | None] = mapped_column(ForeignKey("encounters.id"), default=None)
    code: Mapped[str] = mapped_column(String(32), default="")
    #: The code as received (OBX-3): e.g. "150456" in "MDC" or "59408-5" in "LN".
    source_code: Mapped[str] = mapped_column(String(64))
    source_system: Mapped[str] = mapped_column(String(32), default="")
    source_display: Mapped[str] = mapped_column(String(200), default="")
    value: Mapped[float | None] = mapped_column(Float, default=None)
    value_text: Mapped[str] = mapped_column(String(200), default="")
    #: UCUM unit (converted from MDC units where needed), e.g. "/min", "%", "Cel", "mm[Hg]".
    unit: Mapped[str] = mapped_column(String(32), default="")
    observed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: OBX-18 equipment instance identifier (the monitor), or "" when not given.
    device: Mapped[str] = mapped_column(String(128), default="")
    #: FHIR Observation.status (final, amended, entered-in-error, ...).
    status: Mapped[str] = mapped_column(String(24), default="final")
    #: Where it came from: "hl7v2", "fhir", ...; and the inbound message id when HL7.
    source: Mapped[str] = mapped_column(String(16), default="hl7v2")
    message_id: Mapped[int | None] = mapped_column(ForeignKey("hl7_messages.id"), default=None)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
