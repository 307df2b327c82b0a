"""Observation: the vital signs the ICU uses (``clinic.observations``) as FHIR R4 vital-signs
Observations (R4 observation-vitalsigns.html): category ``vital-signs``, the LOINC code with the
code as received (e.g. ISO/IEEE 11073 MDC from a PCD-01 gateway), ``valueQuantity`` in UCUM,
``effectiveDateTime``, the device as ``device.display`` and ``subject`` the domain patient.

Observations created through FHIR that are not domain rows stay generic-stored (uuid ids).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Row, Table, select
from sqlalchemy.orm import Session

from clinic.observations.models import Observation, VitalSign
from clinic.observations.service import ObservationIn, natural_key, upsert_observations
from clinic.patients.models import Patient
from integrations.fhir.domain.base import (
    LOINC,
    UCUM,
    ProjectedProvider,
    compact,
    instant,
    outdated,
    reference,
)
from integrations.fhir.outcome import unprocessable
from integrations.fhir.providers import NewResource, StoredResource

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
#: LOINC code -> VitalSign for vital-sign Observations written through FHIR (the profile's codes
#: and the alternatives HL7 v2 senders use, as in integrations/hl7v2/mapping/vitals.py).
FHIR_VITALS: dict[str, VitalSign] = {
    **{code: VitalSign(vital) for vital, (code, _) in VITAL_LOINC.items()},
    "2708-6": VitalSign.SPO2,
    "80288-4": VitalSign.CONSCIOUSNESS,
}
STATUSES = {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error"}


def _seconds(moment: dt.datetime) -> str | None:
    """An instant without a fraction when it has none: what a FHIR client sent comes back."""
    if moment.microsecond:
        return instant(moment)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def observation_body(row: Observation | Row[Any]) -> dict[str, Any]:
    """The FHIR view of an observation: an ORM row, or a plain row of the table's columns."""
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
            "effectiveDateTime": _seconds(row.observed_at),
            "issued": instant(row.recorded_at),
            **value,
            "device": {"display": row.device} if row.device else None,
        }
    )


def vital_sign(body: dict[str, Any]) -> tuple[VitalSign, str] | None:
    """(vital sign, LOINC code) when *body* is a vital-signs Observation (category
    ``vital-signs``, R4 observation-vitalsigns.html) with a LOINC code the platform knows and a
    time it was taken."""
    categories = {
        (c.get("system"), c.get("code"))
        for cat in body.get("category") or []
        for c in cat.get("coding") or []
    }
    if (CATEGORY, "vital-signs") not in categories:
        return None
    if effective_instant(body) is None:
        return None
    for coding in (body.get("code") or {}).get("coding") or []:
        if coding.get("system") == LOINC and coding.get("code") in FHIR_VITALS:
            return FHIR_VITALS[coding["code"]], coding["code"]
    return None


def effective_instant(body: dict[str, Any]) -> dt.datetime | None:
    """``effectiveDateTime`` (or ``effectivePeriod.start``) when it carries a time, in UTC. A
    day-precision date is valid for the vital-signs profile (vs-1) but cannot be scored by NEWS2
    timing, so such an Observation stays generic-stored."""
    raw = body.get("effectiveDateTime") or (body.get("effectivePeriod") or {}).get("start") or ""
    if "T" not in raw:
        return None
    moment = dt.datetime.fromisoformat(raw)
    return moment.astimezone(dt.UTC) if moment.tzinfo is not None else None


def observation_in(body: dict[str, Any], vital: VitalSign, loinc: str, patients: set[int]) -> ObservationIn:
    """The domain observation of a vital-signs Observation; 422 unless its subject is one of
    *patients* (the patients of this server the batch names)."""
    ident = subject_id(body)
    if ident is None or ident not in patients:
        raise unprocessable("a vital sign's subject must be a Patient of this server", "Observation.subject")
    quantity = body.get("valueQuantity") or {}
    concept = body.get("valueCodeableConcept") or {}
    text = (
        body.get("valueString")
        or concept.get("text")
        or next((c.get("code", "") for c in concept.get("coding") or []), "")
    )
    code_text = (body.get("code") or {}).get("text") or VITAL_LOINC.get(vital, ("", ""))[1]
    return ObservationIn(
        patient_id=ident,
        source_code=loinc,
        observed_at=effective_instant(body) or dt.datetime.now(dt.UTC),
        code=str(vital),
        source_system="LN",
        source_display=code_text,
        value=float(quantity["value"]) if quantity.get("value") is not None else None,
        value_text=str(text),
        unit=quantity.get("code") or quantity.get("unit") or "",
        device=(body.get("device") or {}).get("display", ""),
        status=body.get("status", "final"),
        source="fhir",
    )


def subject_id(body: dict[str, Any]) -> int | None:
    """The patient id of ``subject`` when it is a ``Patient/<number>`` reference."""
    kind, _, ident = ((body.get("subject") or {}).get("reference") or "").partition("/")
    return int(ident) if kind == "Patient" and ident.isdigit() else None


class ObservationProvider(ProjectedProvider):
    """Vital signs POSTed (alone or in a transaction) become domain observations (source
    ``fhir``) that the ICU board scores, and answer ``Observation/<observations.id>``; a second
    POST of the same natural key (patient, code, time, device) updates that row. Other
    Observations are generic-stored. Domain ones are read-only through PUT (405)."""

    #: What a domain row determines; the rest of a POSTed vital sign (encounter, note,
    #: interpretation, ...) is kept in its projection.
    domain_elements = frozenset(
        {
            "status",
            "category",
            "code",
            "subject",
            "issued",
            "device",
            *(f"effective{t}" for t in ("DateTime", "Period", "Instant", "Timing")),
            *(f"value{t}" for t in ("Quantity", "String", "CodeableConcept", "Boolean", "Integer")),
        }
    )

    def __init__(self) -> None:
        super().__init__("Observation")

    def create(self, session: Session, items: Sequence[NewResource]) -> list[StoredResource]:
        """Generic Observations through the store; vital signs as domain rows, written for the
        whole batch at once: one query for their patients, one upsert that returns the rows, and
        their projections created together (a transaction of 100 vital signs is a handful of
        statements, not a few per entry)."""
        vitals = [None if i.method == "PUT" else vital_sign(i.body) for i in items]
        generic = iter(super().create(session, [i for i, v in zip(items, vitals, strict=True) if v is None]))
        domain = [(item, found) for item, found in zip(items, vitals, strict=True) if found is not None]
        projected = iter(self._create_vitals(session, domain))
        return [next(generic) if found is None else next(projected) for found in vitals]

    def _create_vitals(
        self, session: Session, domain: list[tuple[NewResource, tuple[VitalSign, str]]]
    ) -> list[StoredResource]:
        if not domain:
            return []
        named = {i for i in (subject_id(item.body) for item, _ in domain) if i is not None}
        patients = set(session.scalars(select(Patient.id).where(Patient.id.in_(named)))) if named else set()
        wanted = [observation_in(item.body, vital, loinc, patients) for item, (vital, loinc) in domain]
        by_key = upsert_observations(session, wanted)
        upserted = [by_key[natural_key(obs)] for obs in wanted]
        written = [w.row for w in upserted]
        ids = [str(row.id) for row in written]
        # A row this statement inserted has no projection yet (nobody else can see it): only the
        # updated ones, or all where the database does not say, are looked up.
        maybe = [lid for lid, w in zip(ids, upserted, strict=True) if not w.inserted]
        rows = [
            (lid, observation_body(row), self.extras(item.body))
            for lid, row, (item, _) in zip(ids, written, domain, strict=True)
        ]
        return self.project_many(session, rows, look_up=maybe)

    def pending(
        self, session: Session, since: dt.datetime | None = None, limit: int | None = None, after: int = 0
    ) -> Iterable[tuple[str, dict[str, Any]]]:
        # Plain rows, not ORM objects: a backlog of vital signs (100,000 after a feed's catch-up)
        # is not kept in the session's identity map for the rest of the request. (The slow first
        # sync of 100,000 that this was first meant for came from a look-up's query plan: see
        # clinic.fhirstore.service._among.)
        columns = select(*cast(Table, Observation.__table__).columns)
        query = outdated(
            columns, Observation.id, [Observation.recorded_at], "Observation", since, limit, after
        )
        return [(str(r.id), observation_body(r)) for r in session.execute(query)]
