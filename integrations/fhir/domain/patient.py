"""Patient: the patients ADT (HL7 v2) and DICOM created (``clinic.patients``), FHIR R4 Patient.

``Patient.identifier`` lists every ``patient_identifiers`` row (system = assigning authority,
type = HL7 table 0203), so ``GET /fhir/Patient?identifier=SMARTHOSP|8007421`` finds the patient
ADT^A01 admitted. A merged patient (ADT^A40) is ``active: false`` with ``link`` *replaced-by* the
survivor, and the survivor links back with *replaces* (R4 patient.html §8.1.1.4).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.patients.models import Patient, PatientIdentifier
from clinic.patients.service import IdentifierIn, PatientDemographics, add_identifiers, identify_patient
from integrations.fhir.domain.base import ProjectedProvider, compact, method_not_allowed, outdated, reference
from integrations.fhir.outcome import unprocessable
from integrations.fhir.providers import NewResource, StoredResource, VersionConflictError

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
GENDERS = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown"}
SEXES = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
#: Column widths of ``patients`` / ``patient_identifiers`` (issuer, value).
_ISSUER_MAX, _VALUE_MAX = 64, 64


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


def identifiers_in(body: dict[str, Any]) -> list[IdentifierIn]:
    """``Patient.identifier`` as domain identifiers: system = assigning authority (issuer), type =
    the v2-0203 code. 422 without one: an identifier is how ADT, orders and DICOM find a patient."""
    found = []
    for n, ident in enumerate(body.get("identifier") or []):
        value, system = ident.get("value") or "", ident.get("system") or ""
        if not value:
            continue
        if len(value) > _VALUE_MAX or len(system) > _ISSUER_MAX:
            raise unprocessable(
                f"identifier system and value are limited to {_ISSUER_MAX} characters",
                f"Patient.identifier[{n}]",
            )
        codes = [
            c.get("code", "")
            for c in (ident.get("type") or {}).get("coding", [])
            if c.get("system") == V2_0203
        ]
        found.append(IdentifierIn(value, system, codes[0] if codes else ""))
    if not found:
        raise unprocessable("a Patient needs an identifier with a value", "Patient.identifier")
    return found


def demographics_in(body: dict[str, Any]) -> PatientDemographics:
    """Name (first HumanName as ``FAMILY^GIVEN^MIDDLE``, or its text), sex, birth date (a full
    date only: a partial one is kept in the resource but not in ``patients.birth_date``)."""
    name = ""
    names = body.get("name") or []
    if names:
        first = names[0]
        given = first.get("given") or []
        if first.get("family") or given:
            name = "^".join([first.get("family", ""), *given[:2]]).rstrip("^")
        else:
            name = first.get("text", "")
    birth = body.get("birthDate") or ""
    return PatientDemographics(
        identifier="",
        name=name[:200],
        birth_date=dt.date.fromisoformat(birth) if len(birth) == 10 else None,
        sex=SEXES.get(body.get("gender") or "", ""),
    )


class PatientProvider(ProjectedProvider):
    """Patients are domain patients: a POST identifies (or creates) the patient by its identifiers
    like ADT^A04 does and answers ``Patient/<patients.id>``; a PUT to ``Patient/<id>`` updates its
    demographics and adds identifiers (never removes one: other systems still send them). Client
    ids are not supported (update-as-create is 405): the platform assigns patient ids."""

    domain_elements = frozenset({"identifier", "active", "name", "gender", "birthDate", "link"})

    def __init__(self) -> None:
        super().__init__("Patient")

    def create(self, session: Session, items: Sequence[NewResource]) -> list[StoredResource]:
        if any(item.method == "PUT" for item in items):  # update-as-create with a client id
            raise method_not_allowed(
                "Patient ids are assigned by the platform (update-as-create is not supported): "
                "POST the Patient, or PUT Patient?identifier=system|value",
                "Patient.id",
            )
        stored = []
        for item in items:
            identified = identify_patient(session, identifiers_in(item.body), demographics_in(item.body))
            if identified.conflicts:
                raise unprocessable("an identifier belongs to another patient", "Patient.identifier")
            stored.append(self._project_written(session, identified.patient, item.body))
        return stored

    def write_domain(
        self, session: Session, logical_id: str, body: dict[str, Any], expected_version: int | None
    ) -> StoredResource | None:
        # The patient row's lock serialises writers of one patient (PostgreSQL; SQLite has one
        # writer anyway), so If-Match is checked against the version the last writer committed
        # and every PUT makes its own version.
        patient = session.get(Patient, int(logical_id), with_for_update=True, populate_existing=True)
        if patient is None:
            return None
        session.expire_all()  # rows read before the lock may be older than the winner's commit
        current = self._caught_up(session, patient)
        if expected_version is not None and current is not None and current.version_id != expected_version:
            raise VersionConflictError(expected_version, current.version_id)
        demo = demographics_in(body)
        patient.name, patient.birth_date, patient.sex = demo.name, demo.birth_date, demo.sex
        if "active" in body and patient.merged_into_id is None:
            patient.active = bool(body["active"])
        if add_identifiers(session, patient, identifiers_in(body)):
            raise unprocessable("an identifier belongs to another patient", "Patient.identifier")
        return self._project_written(session, patient, body)

    def _caught_up(self, session: Session, patient: Patient) -> StoredResource | None:
        """The patient's projection, re-projected first when the row changed since (only this
        patient's: a full sync under the row lock would lock other patients' projections)."""
        current = super().read(session, str(patient.id))
        if current is not None and current.last_updated >= patient.updated_at:
            return current
        ((logical_id, body),) = self.bodies(session, [patient])
        return self.project(session, logical_id, body)

    def _project_written(self, session: Session, patient: Patient, body: dict[str, Any]) -> StoredResource:
        session.flush()
        # Lock order patient row -> projection, as in write_domain: two orders deadlock (PostgreSQL).
        session.get(Patient, patient.id, with_for_update=True, populate_existing=True)
        logical_id = str(patient.id)
        projected = next((b for lid, b in self.bodies(session, [patient]) if lid == logical_id), None)
        assert projected is not None
        stored = self.project(session, logical_id, projected, extras=self.extras(body))
        assert stored is not None
        return stored

    def pending(
        self, session: Session, since: dt.datetime | None = None, limit: int | None = None, after: int = 0
    ) -> Iterable[tuple[str, dict[str, Any]]]:
        rows = list(
            session.scalars(
                outdated(select(Patient), Patient.id, [Patient.updated_at], "Patient", since, limit, after)
            )
        )
        return self.bodies(session, rows) if rows else []

    def bodies(self, session: Session, rows: list[Patient]) -> list[tuple[str, dict[str, Any]]]:
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
