"""Imaging orders: ORM^O01 (v2.3-v2.5, IHE SWF with ZDS) and OMI^O23 (v2.5+, IHE RAD with IPC).

Each ORC starts an order; the OBR, TQ1, IPC and ZDS after it belong to it (HL7 v2.5.1 §4.4.1 ORC,
§4.5.3 OBR, §4.5.4 TQ1, §4.5.6 IPC; IHE RAD TF-2 §4.4 for ZDS):

=====================  ==================================================================
domain                 field (first non-empty)
=====================  ==================================================================
placer order number    ORC-2, OBR-2 (EI: number ^ namespace)
filler order number    ORC-3, OBR-3
accession number       IPC-1, OBR-18 (IHE: placer field 1)
study instance UID     IPC-3, ZDS-1
procedure              OBR-4 (CE: code ^ text ^ system)
modality               IPC-5
reason for exam        OBR-31 (CE, repeating: texts joined), else OBR-13 relevant clinical info
priority               TQ1-9, ORC-7.6, OBR-27.6, OBR-5 (table 0027: S stat, A asap -> urgent,
                       R routine; others routine)
ordering provider      ORC-12, OBR-16 (XCN)
ordered at             ORC-9, OBR-6, MSH-7
order control          ORC-1 (table 0119): NW new, XO/RP change, CA/OC/DC cancel, SC status (ORC-5)
=====================  ==================================================================
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from clinic.encounters.service import visit_id
from clinic.orders.service import OrderControl, OrderError, OrderIn, apply_order, priority_from_code
from clinic.radiology.priority import Priority
from integrations.hl7v2.errors import MappingError
from integrations.hl7v2.mapping.common import Context, encounter_in, patient_of
from integrations.hl7v2.mapping.parse import Message, Segment, coded, entity, parse_datetime, person
from integrations.hl7v2.tables import ErrorCode

TRIGGERS = {"ORM": frozenset({"O01"}), "OMI": frozenset({"O23"})}

#: ORC-1 values treated as another one (RP order replace request = change).
_CONTROL_ALIASES = {"RP": OrderControl.CHANGE, "RU": OrderControl.CHANGE}
_ORDER_SEGMENTS = frozenset({"ORC", "OBR", "TQ1", "IPC", "ZDS"})


def map_order(session: Session, message: Message, ctx: Context) -> None:
    patient = patient_of(session, message, ctx)
    visit = encounter_in(message.first("PV1"))
    encounter_id = visit_id(session, visit.visit_number, visit.visit_issuer)
    groups = _groups(message)
    if not groups:
        raise MappingError(
            f"{message.code}^{message.trigger} without ORC",
            code=ErrorCode.SEGMENT_SEQUENCE_ERROR,
            location="ORC-1",
        )
    for number, group in enumerate(groups, start=1):
        control = _control(group["ORC"], number, ctx)
        if control is None:
            continue
        data = _order_in(message, group)
        if not data.placer_order_number:
            raise MappingError(
                "placer order number missing (ORC-2 and OBR-2 empty)",
                code=ErrorCode.REQUIRED_FIELD_MISSING,
                location="ORC-2",
            )
        try:
            order = apply_order(session, patient.id, control, data, encounter_id)
        except OrderError as exc:
            raise MappingError(str(exc), code=ErrorCode.UNKNOWN_KEY_IDENTIFIER, location="ORC-2") from None
        if order.study_id is not None:
            ctx.note(f"order {order.id} linked to study {order.study_id}")


def _groups(message: Message) -> list[dict[str, Segment]]:
    """ORC-led groups; within a group the first segment of each kind counts."""
    groups: list[dict[str, Segment]] = []
    for segment in message:
        if segment.name == "ORC":
            groups.append({"ORC": segment})
        elif segment.name in _ORDER_SEGMENTS and groups:
            groups[-1].setdefault(segment.name, segment)
    return groups


def _control(orc: Segment, number: int, ctx: Context) -> OrderControl | None:
    value = orc.get(1).upper()
    if value in _CONTROL_ALIASES:
        return _CONTROL_ALIASES[value]
    try:
        return OrderControl(value)
    except ValueError:
        ctx.note(f"order {number}: ORC-1 {value or '(empty)'} not acted on")
        return None


def _first(*values: str) -> str:
    return next((v for v in values if v), "")


def _priority(orc: Segment, obr: Segment | None, tq1: Segment | None) -> Priority:
    candidates = [tq1.get(9) if tq1 else "", orc.get(7, 6)]
    if obr is not None:
        candidates += [obr.get(27, 6), obr.get(5)]
    code = _first(*candidates)
    return (priority_from_code(code) if code else None) or Priority.ROUTINE


def _reason(obr: Segment | None) -> tuple[str, str]:
    """OBR-31 reason for study: (texts joined by "; ", first code); OBR-13 as the text fallback."""
    if obr is None:
        return "", ""
    texts, codes = [], []
    for index, _ in enumerate(obr.repetitions(31), start=1):
        reason = coded(obr, 31, index)
        text = reason.text or reason.code
        if text:
            texts.append(text)
        if reason.code and reason.text:
            codes.append(reason.code)
    if not texts and obr.get(13):
        texts.append(obr.get(13))
    return "; ".join(texts), codes[0] if codes else ""


def _order_in(message: Message, group: dict[str, Segment]) -> OrderIn:
    orc, obr, ipc, zds = group["ORC"], group.get("OBR"), group.get("IPC"), group.get("ZDS")
    placer, placer_issuer = entity(orc, 2)
    filler, _ = entity(orc, 3)
    if obr is not None:
        if not placer:
            placer, placer_issuer = entity(obr, 2)
        filler = filler or obr.get(3)
    procedure = coded(obr, 4) if obr is not None else None
    reason, reason_code = _reason(obr)
    provider = person(orc, 12)
    if not provider.id and not provider.name and obr is not None:
        provider = person(obr, 16)
    ordered = _first(orc.get(9), obr.get(6) if obr else "", message.msh.get(7))
    return OrderIn(
        placer_order_number=placer,
        placer_issuer=placer_issuer,
        filler_order_number=filler,
        accession_number=_first(ipc.get(1) if ipc else "", obr.get(18) if obr else ""),
        study_uid=_first(ipc.get(3) if ipc else "", zds.get(1) if zds else ""),
        procedure_code=procedure.code if procedure else "",
        procedure_text=procedure.text if procedure else "",
        procedure_system=procedure.system if procedure else "",
        modality=ipc.get(5).upper() if ipc else "",
        reason_for_exam=reason,
        reason_code=reason_code,
        priority=_priority(orc, obr, group.get("TQ1")),
        ordering_provider_id=provider.id,
        ordering_provider_name=provider.name,
        ordered_at=parse_datetime(ordered, "ORC-9"),
        order_status=orc.get(5).upper(),
    )
