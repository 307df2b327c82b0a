"""ADT (HL7 v2.5.1 chapter 3) -> patients, identifiers and encounters.

=========  ==================  =====================================================================
trigger    structure           effect
=========  ==================  =====================================================================
A01        ADT_A01             patient + encounter admitted (in-progress, PV1-44 admit time)
A04        ADT_A01             patient + encounter registered (in-progress)
A08        ADT_A01             patient demographics and encounter fields updated
A03        ADT_A03             encounter discharged (finished, PV1-45 discharge time)
A11        ADT_A09             admission cancelled (cancelled)
A13        ADT_A01             discharge cancelled (in-progress again)
A40        ADT_A39             merge: MRG-1 prior patient merged into the PID-3 survivor
=========  ==================  =====================================================================
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from clinic.encounters.service import EncounterEvent, apply_event
from clinic.patients.service import IdentifierIn, find_patient_by_identifiers, merge_patients
from integrations.hl7v2.errors import MappingError
from integrations.hl7v2.mapping.common import Context, encounter_in, event_time, identify
from integrations.hl7v2.mapping.parse import Message, Segment, required
from integrations.hl7v2.tables import ErrorCode

EVENTS = {
    "A01": EncounterEvent.ADMIT,
    "A04": EncounterEvent.REGISTER,
    "A08": EncounterEvent.UPDATE,
    "A03": EncounterEvent.DISCHARGE,
    "A11": EncounterEvent.CANCEL,
    "A13": EncounterEvent.UNDO_END,
}
MERGE = "A40"
TRIGGERS = frozenset({*EVENTS, MERGE})


def map_adt(session: Session, message: Message, ctx: Context) -> None:
    if message.trigger == MERGE:
        _merge(session, message, ctx)
        return
    event = EVENTS[message.trigger]
    patient = identify(session, required(message.first("PID"), "PID", 3), ctx)
    pv1 = message.first("PV1")
    if pv1 is None:
        if event is EncounterEvent.UPDATE:
            return  # A08 without a visit: demographics only
        raise MappingError(
            f"ADT^{message.trigger} without PV1", code=ErrorCode.SEGMENT_SEQUENCE_ERROR, location="PV1"
        )
    encounter = apply_event(session, patient.id, event, encounter_in(pv1), at=event_time(message))
    if not encounter.visit_number:
        ctx.note("PV1-19 visit number empty: the patient's latest matching encounter was used")


def _prior_identifiers(mrg: Segment) -> list[IdentifierIn]:
    """MRG-1 prior patient identifier list (CX, repeating)."""
    found = []
    for rep in mrg.repetitions(1):
        value = mrg.part(rep, 1)
        if value:
            issuer = mrg.part(rep, 4, 1) or mrg.part(rep, 4, 2)
            found.append(IdentifierIn(value, issuer, mrg.part(rep, 5).upper()))
    return found


def _merge(session: Session, message: Message, ctx: Context) -> None:
    """ADT_A39: one or more PATIENT groups (PID, [PD1], MRG, [PV1]), each merging MRG-1 into PID-3."""
    pairs: list[tuple[Segment, Segment | None]] = []
    for segment in message:
        if segment.name == "PID":
            pairs.append((segment, None))
        elif segment.name == "MRG" and pairs and pairs[-1][1] is None:
            pairs[-1] = (pairs[-1][0], segment)
    if not pairs:
        raise MappingError("ADT^A40 without PID", code=ErrorCode.SEGMENT_SEQUENCE_ERROR, location="PID-3")
    for pid, mrg in pairs:
        if mrg is None:
            raise MappingError(
                "ADT^A40 PID without MRG", code=ErrorCode.SEGMENT_SEQUENCE_ERROR, location="MRG-1"
            )
        prior_ids = _prior_identifiers(mrg)
        if not prior_ids:
            raise MappingError(
                "MRG-1 prior patient identifier is empty",
                code=ErrorCode.REQUIRED_FIELD_MISSING,
                location="MRG-1",
            )
        prior = find_patient_by_identifiers(session, prior_ids)
        survivor = identify(session, pid, ctx)
        if prior is None:
            ctx.note("MRG-1 names no patient we know: nothing to merge")
            continue
        try:
            result = merge_patients(session, survivor, prior)
        except ValueError as exc:
            raise MappingError(
                str(exc), code=ErrorCode.APPLICATION_INTERNAL_ERROR, location="MRG-1"
            ) from None
        if result.moved:
            moved = ", ".join(f"{k} {v}" for k, v in result.moved.items() if v)
            ctx.note(
                f"patient {result.merged_id} merged into {result.survivor_id} ({moved or 'nothing to move'})"
            )
        else:
            ctx.note(f"patient {result.merged_id} already merged into {result.survivor_id}")
