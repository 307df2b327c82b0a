"""Encounter: the visits ADT opened and closed (PV1, ``clinic.encounters``) as FHIR R4 Encounter:
status, ``class`` from PV1-2 (HL7 table 0004) in v3 ActCode, subject, period (admission,
discharge), the assigned location (PV1-3) and attending doctor (PV1-7) as displays, and the visit
number (PV1-19, type VN of v2-0203) as identifier. Search by ``patient``/``subject``, ``status``,
``date`` (the period) and ``identifier`` is part 1's index of the projection.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.encounters.models import Encounter
from integrations.fhir.domain.base import ProjectedProvider, compact, instant, outdated, reference
from integrations.fhir.domain.patient import V2_0203

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0004 = "http://terminology.hl7.org/CodeSystem/v2-0004"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
#: HL7 table 0004 patient class -> v3 ActCode (the HL7 v2-to-FHIR concept map "PatientClass").
#: Classes without an ActCode (B obstetrics, C commercial account, N not applicable, U unknown)
#: keep their v2-0004 coding: Encounter.class is an extensible binding (R4 encounter.html).
CLASSES: dict[str, tuple[str, str]] = {
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "E": ("EMER", "emergency"),
    "P": ("PRENC", "pre-admission"),
    "R": ("AMB", "ambulatory"),
}
UNKNOWN_CLASS = {"system": V2_0004, "code": "U", "display": "Unknown"}


def encounter_class(patient_class: str) -> dict[str, str]:
    if patient_class in CLASSES:
        code, display = CLASSES[patient_class]
        return {"system": ACT_CODE, "code": code, "display": display}
    return {"system": V2_0004, "code": patient_class} if patient_class else UNKNOWN_CLASS


def location_display(row: Encounter) -> str:
    """PV1-3 as people read it: ``ICU, room 12, bed A (SMARTHOSP)``."""
    parts = [row.point_of_care, f"room {row.room}" if row.room else "", f"bed {row.bed}" if row.bed else ""]
    text = ", ".join(p for p in parts if p)
    return f"{text} ({row.facility})" if row.facility and text else text or row.facility


def encounter_body(row: Encounter) -> dict[str, Any]:
    location = location_display(row)
    attending = compact(
        {
            "display": row.attending_name,
            "identifier": {"value": row.attending_id} if row.attending_id else None,
        }
    )
    return compact(
        {
            "identifier": [
                compact(
                    {
                        "type": {"coding": [{"system": V2_0203, "code": "VN"}]},
                        "system": row.visit_issuer,
                        "value": row.visit_number,
                    }
                )
            ]
            if row.visit_number
            else [],
            "status": str(row.status),
            "class": encounter_class(row.patient_class),
            "subject": reference("Patient", row.patient_id),
            "period": compact({"start": instant(row.admitted_at), "end": instant(row.discharged_at)}) or None,
            "location": [{"location": {"display": location}}] if location else [],
            "participant": [
                {
                    "type": [{"coding": [{"system": PARTICIPATION, "code": "ATND", "display": "attender"}]}],
                    "individual": attending,
                }
            ]
            if attending
            else [],
        }
    )


class EncounterProvider(ProjectedProvider):
    """Encounters are ADT's: their projections are read-only; Encounters POSTed by FHIR clients
    without a domain row stay generic-stored."""

    def __init__(self) -> None:
        super().__init__("Encounter")

    def pending(
        self, session: Session, since: dt.datetime | None = None, limit: int | None = None, after: int = 0
    ) -> Iterable[tuple[str, dict[str, Any]]]:
        query = outdated(
            select(Encounter), Encounter.id, [Encounter.updated_at], "Encounter", since, limit, after
        )
        return [(str(r.id), encounter_body(r)) for r in session.scalars(query)]
