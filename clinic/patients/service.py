"""Patient look-up and creation, safe when several processes see the same patient at once."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clinic.patients.models import Patient


@dataclass(frozen=True)
class PatientDemographics:
    identifier: str
    issuer: str = ""
    name: str = ""
    birth_date: dt.date | None = None
    sex: str = ""


def find_patient(session: Session, identifier: str, issuer: str = "") -> Patient | None:
    return session.scalars(
        select(Patient).where(Patient.identifier == identifier, Patient.issuer == issuer)
    ).one_or_none()


def upsert_patient(session: Session, demo: PatientDemographics) -> Patient:
    """Return the patient with this identifier, creating it or filling in new demographics."""
    patient = find_patient(session, demo.identifier, demo.issuer)
    if patient is None:
        try:
            with session.begin_nested():
                patient = Patient(
                    identifier=demo.identifier,
                    issuer=demo.issuer,
                    name=demo.name,
                    birth_date=demo.birth_date,
                    sex=demo.sex,
                )
                session.add(patient)
                session.flush()
        except IntegrityError:  # another process created it between our SELECT and INSERT
            patient = find_patient(session, demo.identifier, demo.issuer)
            assert patient is not None
        return patient
    if demo.name and demo.name != patient.name:
        patient.name = demo.name
    if demo.birth_date and demo.birth_date != patient.birth_date:
        patient.birth_date = demo.birth_date
    if demo.sex and demo.sex != patient.sex:
        patient.sex = demo.sex
    return patient


def display_name(person_name: str) -> str:
    """A DICOM/HL7 person name (``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX``, PS3.5 §6.2) for people.

    ``KIM^JISOO`` → ``KIM, JISOO``; ``DOE^JOHN^Q^DR^JR`` → ``DOE, DR JOHN Q JR``. Ideographic and
    phonetic groups after ``=`` are kept, each formatted alike.
    """
    groups = []
    for group in person_name.split("="):
        parts = [p.strip() for p in group.split("^")] + [""] * 5
        family, given, middle, prefix, suffix = parts[:5]
        rest = " ".join(p for p in (prefix, given, middle) if p)
        name = ", ".join(p for p in (family, rest) if p)
        if suffix:
            name = f"{name} {suffix}" if name else suffix
        if name:
            groups.append(name)
    return " = ".join(groups)
