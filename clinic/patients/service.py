"""Patient look-up and creation, safe when several processes see the same patient at once.

A patient is known by every identifier of its :class:`PatientIdentifier` rows (HL7 PID-3
repetitions: value, assigning authority, identifier type) as well as by its own (identifier, issuer)
pair. Look-ups follow merges (ADT^A40, :func:`merge_patients`): the identifier of a merged patient
finds the survivor.

An identifier without an issuer (DICOM PatientID without IssuerOfPatientID, the common case) finds
the one patient whose MR identifier has that value, whatever its assigning authority; and an HL7
MR identifier adopts a patient created from DICOM with that value and no issuer. So the images, the
orders and the vitals of one patient meet on one row in the usual single-hospital set-up; where two
authorities use the same MR value, an issuer-less identifier matches neither (a new patient).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import CursorResult, delete, exists, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from clinic.encounters.models import Encounter
from clinic.imaging.models import Study
from clinic.observations.models import Observation
from clinic.orders.models import ImagingOrder
from clinic.patients.models import Patient, PatientIdentifier

#: HL7 table 0203 identifier type of a medical record number.
MEDICAL_RECORD = "MR"
#: Longest merge chain followed (A merged into B merged into C ...); a longer one is a data fault.
_MAX_MERGE_HOPS = 16


@dataclass(frozen=True)
class PatientDemographics:
    identifier: str
    issuer: str = ""
    name: str = ""
    birth_date: dt.date | None = None
    sex: str = ""


def find_patient(session: Session, identifier: str, issuer: str = "") -> Patient | None:
    """The (surviving) patient known by *identifier* within *issuer*, or ``None``."""
    patient = session.scalars(
        select(Patient).where(Patient.identifier == identifier, Patient.issuer == issuer)
    ).one_or_none()
    if patient is None:
        patient = session.scalars(
            select(Patient)
            .join(PatientIdentifier, PatientIdentifier.patient_id == Patient.id)
            .where(PatientIdentifier.issuer == issuer, PatientIdentifier.value == identifier)
        ).one_or_none()
    if patient is None and not issuer:
        patient = _unique_medical_record(session, identifier)
    return survivor(session, patient) if patient is not None else None


def _unique_medical_record(session: Session, value: str) -> Patient | None:
    ids = session.scalars(
        select(PatientIdentifier.patient_id)
        .where(PatientIdentifier.value == value, PatientIdentifier.type_code == MEDICAL_RECORD)
        .distinct()
        .limit(2)
    ).all()
    return session.get(Patient, ids[0]) if len(ids) == 1 else None


def survivor(session: Session, patient: Patient) -> Patient:
    """*patient*, or the patient it was merged into (following a chain of merges)."""
    for _ in range(_MAX_MERGE_HOPS):
        if patient.merged_into_id is None:
            return patient
        target = session.get(Patient, patient.merged_into_id)
        if target is None:
            return patient
        patient = target
    raise ValueError(f"patient {patient.id}: merge chain longer than {_MAX_MERGE_HOPS}")


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


# --- identifiers (HL7 PID-3, FHIR Patient.identifier) -------------------------------------------


@dataclass(frozen=True)
class IdentifierIn:
    """One identifier as received: value, assigning authority, HL7 table 0203 type (MR, NI, ...)."""

    value: str
    issuer: str = ""
    type_code: str = ""


def primary_identifier(identifiers: Sequence[IdentifierIn]) -> IdentifierIn:
    """The identifier that names the patient row: the medical record number, or the first."""
    if not identifiers:
        raise ValueError("a patient needs at least one identifier")
    return next((i for i in identifiers if i.type_code == MEDICAL_RECORD), identifiers[0])


@dataclass
class IdentifiedPatient:
    patient: Patient
    created: bool = False
    #: Identifiers that already belong to another patient (left there; the caller reports them).
    conflicts: list[IdentifierIn] = field(default_factory=list)


def find_patient_by_identifiers(session: Session, identifiers: Sequence[IdentifierIn]) -> Patient | None:
    """The patient any of *identifiers* names (the primary one first), or ``None``.

    An MR identifier also finds a patient created from DICOM with that value and no issuer.
    """
    primary = primary_identifier(identifiers)
    ordered = [primary, *(i for i in identifiers if i != primary)]
    for ident in ordered:
        patient = find_patient(session, ident.value, ident.issuer)
        if patient is not None:
            return patient
    for ident in ordered:
        if ident.type_code == MEDICAL_RECORD and ident.issuer:
            patient = find_patient(session, ident.value, "")
            if patient is not None:
                return patient
    return None


def identify_patient(
    session: Session, identifiers: Sequence[IdentifierIn], demographics: PatientDemographics
) -> IdentifiedPatient:
    """Find the patient *identifiers* name, or create it under the primary identifier; record every
    identifier (:class:`PatientIdentifier`) and fill in *demographics* (its identifier fields are
    ignored). Safe against a concurrent creation of the same patient.

    The common case, a patient whose identifiers are all known, is one query (identifiers joined
    with their patients): this runs for every ADT, order and vitals message.
    """
    known = _known_identifiers(session, [(i.issuer, i.value) for i in identifiers if i.value])
    primary = primary_identifier(identifiers)
    patient = None
    for ident in (primary, *identifiers):
        found = known.get((ident.issuer, ident.value))
        if found is not None:
            patient = survivor(session, found[1])
            break
    if patient is None:  # not known by an identifier row: by its own pair, or a DICOM patient to adopt
        patient = find_patient_by_identifiers(session, identifiers)
    created = False
    if patient is None:
        before = find_patient(session, primary.value, primary.issuer)
        patient = upsert_patient(
            session,
            PatientDemographics(
                primary.value, primary.issuer, demographics.name, demographics.birth_date, demographics.sex
            ),
        )
        created = before is None
    else:
        _update_demographics(patient, demographics)
    conflicts = add_identifiers(
        session, patient, [IdentifierIn(patient.identifier, patient.issuer), *identifiers], known=known
    )
    return IdentifiedPatient(patient, created, conflicts)


def _update_demographics(patient: Patient, demo: PatientDemographics) -> None:
    if demo.name and demo.name != patient.name:
        patient.name = demo.name
    if demo.birth_date and demo.birth_date != patient.birth_date:
        patient.birth_date = demo.birth_date
    if demo.sex and demo.sex != patient.sex:
        patient.sex = demo.sex


_Known = dict[tuple[str, str], tuple[PatientIdentifier, Patient]]


def _known_identifiers(session: Session, keys: Sequence[tuple[str, str]]) -> _Known:
    """The identifier rows of *keys* ((issuer, value) pairs) with their patients, in one query.
    The patients are returned, not only loaded: the session's identity map holds objects weakly,
    and a patient nobody references would be read again."""
    if not keys:
        return {}
    rows = session.execute(
        select(PatientIdentifier, Patient)
        .join(Patient, Patient.id == PatientIdentifier.patient_id)
        .where(tuple_(PatientIdentifier.issuer, PatientIdentifier.value).in_(list(keys)))
    ).all()
    return {(row[0].issuer, row[0].value): (row[0], row[1]) for row in rows}


def add_identifiers(
    session: Session,
    patient: Patient,
    identifiers: Sequence[IdentifierIn],
    known: _Known | None = None,
) -> list[IdentifierIn]:
    """Record *identifiers* for *patient*; returns those that belong to another patient. *known*:
    rows already read for some of them (from :func:`_known_identifiers`)."""
    wanted = {(i.issuer, i.value): i for i in identifiers if i.value}
    have = {k: v[0] for k, v in (known or {}).items() if k in wanted}
    missing = [k for k in wanted if k not in have]
    if missing:
        have.update({k: v[0] for k, v in _known_identifiers(session, missing).items()})
    conflicts: list[IdentifierIn] = []
    for key, ident in wanted.items():
        row = have.get(key)
        if row is None:
            row = _insert_identifier(session, patient, ident)
        if row is None:
            continue
        if (
            row.patient_id != patient.id
            and survivor(session, _patient(session, row.patient_id)).id != patient.id
        ):
            conflicts.append(ident)
        elif ident.type_code and row.type_code != ident.type_code:
            row.type_code = ident.type_code
    return conflicts


def _insert_identifier(session: Session, patient: Patient, ident: IdentifierIn) -> PatientIdentifier | None:
    """A new identifier row; ``None`` when inserted, the existing row when another process (or
    this patient's previous message) recorded it first."""
    try:
        with session.begin_nested():
            session.add(
                PatientIdentifier(
                    patient_id=patient.id, issuer=ident.issuer, value=ident.value, type_code=ident.type_code
                )
            )
            session.flush()
    except IntegrityError:
        return session.scalars(
            select(PatientIdentifier).where(
                PatientIdentifier.issuer == ident.issuer, PatientIdentifier.value == ident.value
            )
        ).one()
    return None


def _patient(session: Session, patient_id: int) -> Patient:
    patient = session.get(Patient, patient_id)
    assert patient is not None  # a foreign key guarantees it
    return patient


# --- merge (HL7 ADT^A40) -----------------------------------------------------------------------


@dataclass(frozen=True)
class MergeResult:
    survivor_id: int
    merged_id: int
    #: Rows moved to the survivor, by table; empty when the merge had been done already.
    moved: dict[str, int]


def merge_patients(session: Session, survivor_patient: Patient, merged: Patient) -> MergeResult:
    """Merge *merged* into *survivor_patient* (HL7 v2.5.1 §3.3.40 ADT^A40, "merge patient - patient
    identifier list"): its studies, encounters, orders, observations and identifiers move to the
    survivor; *merged* stays as an inactive row with ``merged_into_id``, so that look-ups by its
    identifiers find the survivor and audit records keep pointing at the row they were written for.

    Idempotent: merging a patient already merged into the survivor moves nothing. An observation
    the survivor already holds (same natural key) is dropped from the merged patient, not doubled.
    """
    if merged.id == survivor_patient.id or merged.merged_into_id == survivor_patient.id:
        return MergeResult(survivor_patient.id, merged.id, {})
    if survivor(session, survivor_patient).id == merged.id:
        raise ValueError(f"patient {survivor_patient.id} was merged into {merged.id}: cannot merge back")
    session.flush()
    source, target = merged.id, survivor_patient.id
    moved: dict[str, int] = {}
    kept = aliased(Observation)
    duplicate = exists().where(
        kept.patient_id == target,
        kept.source_system == Observation.source_system,
        kept.source_code == Observation.source_code,
        kept.observed_at == Observation.observed_at,
        kept.device == Observation.device,
    )
    dropped = _rowcount(
        session.execute(
            delete(Observation).where(Observation.patient_id == source, duplicate),
            execution_options={"synchronize_session": False},
        )
    )
    for model in (Study, Encounter, ImagingOrder, Observation, PatientIdentifier):
        result = session.execute(
            update(model).where(model.patient_id == source).values(patient_id=target),
            execution_options={"synchronize_session": False},
        )
        moved[str(model.__tablename__)] = _rowcount(result)
    moved["observations_dropped_as_duplicates"] = dropped
    session.execute(
        update(Patient).where(Patient.merged_into_id == source).values(merged_into_id=target),
        execution_options={"synchronize_session": False},
    )
    merged.active = False
    merged.merged_into_id = target
    _update_demographics(
        survivor_patient,
        PatientDemographics(
            "",
            name="" if survivor_patient.name else merged.name,
            birth_date=None if survivor_patient.birth_date else merged.birth_date,
            sex="" if survivor_patient.sex else merged.sex,
        ),
    )
    session.flush()
    session.expire_all()
    add_identifiers(session, survivor_patient, [IdentifierIn(merged.identifier, merged.issuer)])
    return MergeResult(target, source, moved)


def _rowcount(result: object) -> int:
    """Rows an UPDATE/DELETE touched (``Session.execute`` is typed as returning a plain Result)."""
    return int(result.rowcount) if isinstance(result, CursorResult) else 0
