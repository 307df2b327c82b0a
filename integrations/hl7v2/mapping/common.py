"""Segments that several mappings share: PID (the patient), PV1 (the visit) and the event time.

HL7 v2.5.1 §3.4.2 PID, §3.4.3 PV1, §3.4.1 EVN; data types CX (§2A.14), XPN (§2A.88), XCN (§2A.89),
PL (§2A.53).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from clinic.encounters.service import EncounterIn, visit_id
from clinic.patients.models import Patient
from clinic.patients.service import IdentifierIn, PatientDemographics, identify_patient
from integrations.hl7v2.errors import MappingError
from integrations.hl7v2.mapping.parse import (
    Message,
    Segment,
    hd,
    parse_date,
    parse_datetime,
    patient_name,
    person,
    required,
)
from integrations.hl7v2.tables import ErrorCode

# Column sizes of patients / patient_identifiers; longer values are clipped, never refused.
_ID, _TYPE, _SEX = 64, 8, 16

#: ``Session.info`` keys of the patients and visits already resolved in this unit of work. A vitals
#: feed repeats the same PID and PV1 every minute and the processor maps up to 200 messages in one
#: transaction, so a repeat skips the look-ups (measured: about a third of an ORU's mapping time).
#: Only what existed before the message is remembered (a savepoint rolled back cannot leave a
#: stale id), and messages that change identities (ADT, orders) clear it (:func:`forget`).
_PATIENTS, _VISITS = "hl7v2.mapping.patients", "hl7v2.mapping.visits"


@dataclass
class Context:
    """What one mapping run knows: the stored message's id and the notes it reports."""

    message_id: int | None
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def identifiers(pid: Segment) -> list[IdentifierIn]:
    """PID-3 repetitions (CX: 1 id, 4 assigning authority, 5 identifier type); PID-2 (v2.3 external
    id) when PID-3 is empty. A :class:`MappingError` (101, PID-3) when there is none."""
    found: list[IdentifierIn] = []
    for number in (3, 2):
        for rep in pid.repetitions(number):
            value = pid.part(rep, 1)
            if value:
                issuer = pid.part(rep, 4, 1) or pid.part(rep, 4, 2)
                found.append(IdentifierIn(value[:_ID], issuer[:_ID], pid.part(rep, 5).upper()[:_TYPE]))
        if found:
            return found
    raise MappingError(
        "PID-3 patient identifier list is empty", code=ErrorCode.REQUIRED_FIELD_MISSING, location="PID-3"
    )


def demographics(pid: Segment) -> PatientDemographics:
    """PID-5 name, PID-7 birth date, PID-8 administrative sex (table 0001)."""
    return PatientDemographics(
        identifier="",
        name=patient_name(pid, 5)[:200],
        birth_date=parse_date(pid.get(7), "PID-7"),
        sex=pid.get(8).upper()[:_SEX],
    )


def identify(session: Session, pid: Segment, ctx: Context) -> Patient:
    """The patient PID names (created when new), with its identifiers recorded."""
    result = identify_patient(session, identifiers(pid), demographics(pid))
    _report(result.conflicts, ctx)
    return result.patient


def _report(conflicts: list[IdentifierIn], ctx: Context) -> None:
    for conflict in conflicts:
        who = f"{conflict.issuer or '-'}/{conflict.type_code or '-'}"
        ctx.note(f"PID-3 identifier {who} belongs to another patient; left there")


def patient_id(session: Session, pid: Segment, ctx: Context) -> int:
    """:func:`identify`, remembered for this unit of work (see ``_PATIENTS``)."""
    cache: dict[tuple[str, ...], int] = session.info.setdefault(_PATIENTS, {})
    key = (pid[3], pid[2], pid[5], pid[7], pid[8])
    if key in cache:
        return cache[key]
    result = identify_patient(session, identifiers(pid), demographics(pid))
    _report(result.conflicts, ctx)
    if not result.created and not result.conflicts:
        cache[key] = result.patient.id
    return result.patient.id


def encounter_id(session: Session, visit: EncounterIn) -> int | None:
    """The encounter of a visit number (PV1-19), remembered for this unit of work."""
    if not visit.visit_number:
        return None
    cache: dict[tuple[str, str], int] = session.info.setdefault(_VISITS, {})
    key = (visit.visit_number, visit.visit_issuer)
    if key not in cache:
        found = visit_id(session, *key)
        if found is None:
            return None
        cache[key] = found
    return cache[key]


def forget(session: Session) -> None:
    session.info.pop(_PATIENTS, None)
    session.info.pop(_VISITS, None)


def patient_of(session: Session, message: Message, ctx: Context) -> Patient:
    return identify(session, required(message.first("PID"), "PID", 3), ctx)


def encounter_in(pv1: Segment | None) -> EncounterIn:
    """PV1-2 class, PV1-3 location (PL: point of care ^ room ^ bed ^ facility), PV1-7 attending
    doctor, PV1-19 visit number (CX with its authority), PV1-44/45 admit and discharge times."""
    if pv1 is None:
        return EncounterIn()
    attending = person(pv1, 7)
    return EncounterIn(
        visit_number=pv1.get(19),
        visit_issuer=hd(pv1, 19, 4),
        patient_class=pv1.get(2).upper(),
        point_of_care=pv1.get(3, 1),
        room=pv1.get(3, 2),
        bed=pv1.get(3, 3),
        facility=hd(pv1, 3, 4),
        attending_id=attending.id,
        attending_name=attending.name,
        admitted_at=parse_datetime(pv1.get(44), "PV1-44"),
        discharged_at=parse_datetime(pv1.get(45), "PV1-45"),
    )


def event_time(message: Message) -> dt.datetime | None:
    """EVN-2 recorded date/time, else MSH-7 (date/time of message)."""
    evn = message.first("EVN")
    if evn is not None and evn.get(2):
        return parse_datetime(evn.get(2), "EVN-2")
    return parse_datetime(message.msh.get(7), "MSH-7")
