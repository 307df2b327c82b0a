"""Observation: the vital signs the ICU uses (``clinic.observations``) as FHIR R4 vital-signs
Observations (R4 observation-vitalsigns.html): category ``vital-signs``, the LOINC code with the
code as received (e.g. ISO/IEEE 11073 MDC from a PCD-01 gateway), ``valueQuantity`` in UCUM,
``effectiveDateTime``, the device as ``device.display`` and ``subject`` the domain patient.

Observations created through FHIR that are not domain rows stay generic-stored (uuid ids).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.observations.models import Observation, VitalSign
from integrations.fhir.domain.base import (
    LOINC,
    UCUM,
    ProjectedProvider,
    compact,
    instant,
    outdated,
    reference,
)

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MDC = "urn:iso:std:iso:11073:10101"
#: VitalSign -> (LOINC code, display), from the vital-signs profile where it names one.
VITAL_LOINC: dict[str, tuple[str, str]] = {
    VitalSign.HEART_RATE: ("8867-4", "Heart rate"),
    VitalSign.RESPIRATORY_RATE: ("9279-1", "Respiratory rate"),
    VitalSign.SPO2: ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
    VitalSign.TEMPERATURE: ("8310-5", "Body temperature"),
    VitalSign.SYSTOLIC_BP: ("8480-6", "Systolic blood pressure"),
    VitalSign.DIASTOLIC_BP: ("8462-4", "Diastolic blood pressure"),
    VitalSign.SUPPLEMENTAL_O2: ("3151-8", "Inhaled oxygen flow rate"),
    VitalSign.CONSCIOUSNESS: ("67775-7", "Level of responsiveness"),
}
#: HL7 v2 coding systems (table 0396) as FHIR system URIs.
SOURCE_SYSTEMS = {"LN": LOINC, "MDC": MDC, "UCUM": UCUM}
STATUSES = {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error"}


def observation_body(row: Observation) -> dict[str, Any]:
    coding = []
    if row.code in VITAL_LOINC:
        code, display = VITAL_LOINC[row.code]
        coding.append({"system": LOINC, "code": code, "display": display})
    source_system = SOURCE_SYSTEMS.get(row.source_system.upper(), f"urn:hl7v2:0396:{row.source_system}")
    if not coding or coding[0]["code"] != row.source_code or source_system != LOINC:
        coding.append(
            compact({"system": source_system, "code": row.source_code, "display": row.source_display})
        )
    value: dict[str, Any] = {}
    if row.value is not None:
        quantity = compact(
            {"value": row.value, "unit": row.unit, "system": UCUM if row.unit else "", "code": row.unit}
        )
        value = {"valueQuantity": quantity}
    elif row.value_text:
        value = {"valueString": row.value_text}
    category = [{"coding": [{"system": CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}]
    return compact(
        {
            "status": row.status if row.status in STATUSES else "unknown",
            "category": category if row.code in VITAL_LOINC else [],
            "code": compact({"coding": coding, "text": row.source_display}),
            "subject": reference("Patient", row.patient_id),
            "effectiveDateTime": instant(row.observed_at),
            "issued": instant(row.recorded_at),
            **value,
            "device": {"display": row.device} if row.device else None,
        }
    )


class ObservationProvider(ProjectedProvider):
    def __init__(self) -> None:
        super().__init__("Observation")

    def pending(self, session: Session) -> Iterable[tuple[str, dict[str, Any]]]:
        query = outdated(select(Observation), Observation.id, [Observation.recorded_at], "Observation")
        return [(str(r.id), observation_body(r)) for r in session.scalars(query)]
