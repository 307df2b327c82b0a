"""Encounters from admission, discharge and transfer events (HL7 v2.5.1 chapter 3, PV1).

Each event names what happens to the visit; :func:`apply_event` applies it to the encounter found
by its visit number (PV1-19) or, without one, to the patient's latest matching encounter:

==========  ==========================================  =======================================
event       HL7 trigger                                 encounter
==========  ==========================================  =======================================
ADMIT       A01 admit/visit notification                in-progress, admitted_at (PV1-44)
REGISTER    A04 register a patient                      in-progress, admitted_at (PV1-44)
UPDATE      A08 update patient information              fields updated, status unchanged
DISCHARGE   A03 discharge/end visit                     finished, discharged_at (PV1-45)
CANCEL      A11 cancel admit/visit notification         cancelled
UNDO_END    A13 cancel discharge/end visit              in-progress, discharged_at cleared
==========  ==========================================  =======================================

Statuses are FHIR Encounter.status values (:class:`EncounterStatus`). The caller owns the
transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.db import utcnow
from clinic.encounters.models import Encounter, EncounterStatus


class EncounterEvent(StrEnum):
    ADMIT = "admit"
    REGISTER = "register"
    UPDATE = "update"
    DISCHARGE = "discharge"
    CANCEL = "cancel"
    UNDO_END = "undo_end"


#: The status an event leaves the encounter in (``None``: unchanged).
_STATUS_AFTER = {
    EncounterEvent.ADMIT: EncounterStatus.IN_PROGRESS,
    EncounterEvent.REGISTER: EncounterStatus.IN_PROGRESS,
    EncounterEvent.UPDATE: None,
    EncounterEvent.DISCHARGE: EncounterStatus.FINISHED,
    EncounterEvent.CANCEL: EncounterStatus.CANCELLED,
    EncounterEvent.UNDO_END: EncounterStatus.IN_PROGRESS,
}

#: Without a visit number, which of the patient's encounters an event applies to (latest first).
_CANDIDATES = {
    EncounterEvent.UPDATE: (EncounterStatus.IN_PROGRESS, EncounterStatus.PLANNED),
    EncounterEvent.DISCHARGE: (EncounterStatus.IN_PROGRESS,),
    EncounterEvent.CANCEL: (EncounterStatus.IN_PROGRESS, EncounterStatus.PLANNED),
    EncounterEvent.UNDO_END: (EncounterStatus.FINISHED,),
}

# Column sizes (encounters); longer values are clipped, never refused.
_SHORT, _CLASS, _NAME = 64, 8, 200


@dataclass(frozen=True)
class EncounterIn:
    """PV1 as plain values ("" / ``None`` = not given: an update leaves the stored value)."""

    visit_number: str = ""
    visit_issuer: str = ""
    patient_class: str = ""
    point_of_care: str = ""
    room: str = ""
    bed: str = ""
    facility: str = ""
    attending_id: str = ""
    attending_name: str = ""
    admitted_at: dt.datetime | None = None
    discharged_at: dt.datetime | None = None


def find_by_visit(session: Session, visit_number: str, visit_issuer: str = "") -> Encounter | None:
    return session.scalars(
        select(Encounter)
        .where(Encounter.visit_number == visit_number, Encounter.visit_issuer == visit_issuer)
        .order_by(Encounter.id.desc())
        .limit(1)
    ).first()


def visit_id(session: Session, visit_number: str, visit_issuer: str = "") -> int | None:
    """The id of the encounter with this visit number (the latest), without loading it."""
    if not visit_number:
        return None
    return session.scalar(
        select(Encounter.id)
        .where(Encounter.visit_number == visit_number, Encounter.visit_issuer == visit_issuer)
        .order_by(Encounter.id.desc())
        .limit(1)
    )


def _latest(session: Session, patient_id: int, statuses: tuple[EncounterStatus, ...]) -> Encounter | None:
    return session.scalars(
        select(Encounter)
        .where(Encounter.patient_id == patient_id, Encounter.status.in_(statuses))
        .order_by(Encounter.id.desc())
        .limit(1)
    ).first()


def apply_event(
    session: Session, patient_id: int, event: EncounterEvent, data: EncounterIn, at: dt.datetime | None = None
) -> Encounter:
    """Apply an ADT *event* to the patient's encounter (created when none matches); *at* is the
    event time (EVN-2 / MSH-7), used when PV1-44/45 are empty."""
    at = at or utcnow()
    encounter = None
    if data.visit_number:
        encounter = find_by_visit(session, data.visit_number, data.visit_issuer)
    elif event in _CANDIDATES:
        encounter = _latest(session, patient_id, _CANDIDATES[event])
    if encounter is None:
        encounter = Encounter(
            patient_id=patient_id,
            visit_number=data.visit_number[:_SHORT],
            visit_issuer=data.visit_issuer[:_SHORT],
            status=EncounterStatus.IN_PROGRESS,
        )
        session.add(encounter)
    elif encounter.patient_id != patient_id:
        # The same visit number announced for another patient is a merge or a correction
        # upstream; the latest message wins (HL7 ADT is a stream of current state).
        encounter.patient_id = patient_id
    _fill(encounter, data)
    status = _STATUS_AFTER[event]
    if status is not None:
        encounter.status = status
    if event in (EncounterEvent.ADMIT, EncounterEvent.REGISTER) and encounter.admitted_at is None:
        encounter.admitted_at = data.admitted_at or at
    if event is EncounterEvent.DISCHARGE:
        encounter.discharged_at = data.discharged_at or encounter.discharged_at or at
    if event is EncounterEvent.UNDO_END:
        encounter.discharged_at = None
    encounter.updated_at = utcnow()
    session.flush()
    return encounter


def _fill(encounter: Encounter, data: EncounterIn) -> None:
    for name, size in (
        ("patient_class", _CLASS),
        ("point_of_care", _SHORT),
        ("room", _SHORT),
        ("bed", _SHORT),
        ("facility", _SHORT),
        ("attending_id", _SHORT),
        ("attending_name", _NAME),
    ):
        value = getattr(data, name)
        if value:
            setattr(encounter, name, value[:size])
    if data.admitted_at is not None:
        encounter.admitted_at = data.admitted_at
    if data.discharged_at is not None:
        encounter.discharged_at = data.discharged_at


def patient_encounters(session: Session, patient_id: int) -> list[Encounter]:
    return list(
        session.scalars(
            select(Encounter).where(Encounter.patient_id == patient_id).order_by(Encounter.id)
        ).all()
    )
