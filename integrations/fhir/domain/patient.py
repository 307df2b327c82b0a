"""Patient: the patients ADT (HL7 v2) and DICOM created (``clinic.patients``), FHIR R4 Patient.

``Patient.identifier`` lists every ``patient_identifiers`` row (system = assigning authority,
type = HL7 table 0203), so ``GET /fhir/Patient?identifier=SMARTHOSP|8007421`` finds the patient
ADT^A01 admitted. A merged patient (ADT^A40) is ``active: false`` with ``link`` *replaced-by* the
survivor, and the survivor links back with *replaces* (R4 patient.html §8.1.1.4).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.patients.models import Patient, PatientIdentifier
from integrations.fhir.domain.base import ProjectedProvider, compact, outdated, reference

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
GENDERS = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown"}


def human_name(name: str) -> dict[str, Any] | None:
    """An HL7 XPN-style ``FAMILY^GIVEN^MIDDLE`` or a plain display name as a HumanName."""
    if not name:
        return None
    parts = [p for p in name.split("^")]
    family, given = parts[0], [p for p in parts[1:3] if p]
    text = " ".join([*given, family]) if "^" in name else name
    return compact({"use": "official", "text": text, "family": family if "^" in name else "", "given": given})


def patient_body(row: Patient, identifiers: list[PatientIdentifier], replaces: list[int]) -> dict[str, Any]:
    idents = [(i.issuer, i.value, i.type_code) for i in identifiers]
    if (row.issuer, row.identifier) not in {(s, v) for s, v, _ in idents}:
        idents.insert(0, (row.issuer, row.identifier, ""))
    links = (
        [{"other": reference("Patient", row.merged_into_id), "type": "replaced-by"}]
        if row.merged_into_id
        else []
    )
    links += [{"other": reference("Patient", old), "type": "replaces"} for old in replaces]
    return compact(
        {
            "identifier": [
                compact(
                    {
                        "type": {"coding": [{"system": V2_0203, "code": code}]} if code else None,
                        "system": system,
                        "value": value,
                    }
                )
                for system, value, code in idents
            ],
            "active": bool(row.active),
            "name": [n] if (n := human_name(row.name)) else [],
            "gender": GENDERS.get(row.sex.upper()[:1], "unknown") if row.sex else None,
            "birthDate": row.birth_date.isoformat() if row.birth_date else None,
            "link": links,
        }
    )


class PatientProvider(ProjectedProvider):
    def __init__(self) -> None:
        super().__init__("Patient")

    def pending(self, session: Session) -> Iterable[tuple[str, dict[str, Any]]]:
        rows = list(session.scalars(outdated(select(Patient), Patient.id, [Patient.updated_at], "Patient")))
        if not rows:
            return []
        ids = [r.id for r in rows]
        idents: dict[int, list[PatientIdentifier]] = defaultdict(list)
        for ident in session.scalars(
            select(PatientIdentifier)
            .where(PatientIdentifier.patient_id.in_(ids))
            .order_by(PatientIdentifier.id)
        ):
            idents[ident.patient_id].append(ident)
        replaces: dict[int, list[int]] = defaultdict(list)
        for old_id, survivor_id in session.execute(
            select(Patient.id, Patient.merged_into_id).where(Patient.merged_into_id.in_(ids))
        ):
            if survivor_id is not None:
                replaces[survivor_id].append(old_id)
        return [(str(r.id), patient_body(r, idents[r.id], replaces[r.id])) for r in rows]
