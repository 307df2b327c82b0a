"""Imaging orders (HL7 ORM^O01 / OMI^O23, later FHIR ServiceRequest) and their studies.

An order and its study meet by Study Instance UID or accession number, whichever arrives second:
:func:`apply_order` links a new order to a study already received, and
:func:`link_study_to_order` (called by ``clinic.imaging.service.record_instance`` when a series is
first seen) links an arriving study to an order already placed. The linked study takes the highest
priority of its active orders (``Study.order_priority``, which the worklist and the analysis queue
read); a cancelled order gives its priority back. The reason for exam is stored on the order for
model routing.

An order and a study of different patients are never linked: a wrong-patient link is worse than
none (the link is logged by ids, never names, and the order stays unlinked).

Order control (HL7 table 0119, ORC-1): NW new, XO change, CA/OC/DC cancel or discontinue, SC status
changed (ORC-5, table 0038: CM completed, IP/SC in process, HD on hold, CA/DC cancelled). The
caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from clinic.db import utcnow
from clinic.imaging.models import Study
from clinic.orders.models import ImagingOrder, OrderStatus
from clinic.patients.models import Patient
from clinic.patients.service import survivor
from clinic.radiology.priority import Priority

log = logging.getLogger(__name__)


class OrderControl(StrEnum):
    """HL7 table 0119 values we act on."""

    NEW = "NW"
    CHANGE = "XO"
    CANCEL = "CA"
    CANCELLED = "OC"  # order cancelled by the filler
    DISCONTINUE = "DC"
    STATUS_CHANGED = "SC"


#: HL7 table 0038 order status (ORC-5) -> our status; others leave the status as it is.
_ORDER_STATUS = {
    "CM": OrderStatus.COMPLETED,
    "CA": OrderStatus.REVOKED,
    "DC": OrderStatus.REVOKED,
    "HD": OrderStatus.ON_HOLD,
    "IP": OrderStatus.ACTIVE,
    "SC": OrderStatus.ACTIVE,
}

#: HL7 table 0027 priority (TQ1-9, ORC-7.6, OBR-27.6, OBR-5) -> worklist priority.
PRIORITY_CODES = {"S": Priority.STAT, "A": Priority.URGENT, "R": Priority.ROUTINE}

_SHORT, _NAME = 64, 200


class OrderError(Exception):
    """An order message that cannot be applied (e.g. a change for an order never placed)."""


@dataclass(frozen=True)
class OrderIn:
    placer_order_number: str
    placer_issuer: str = ""
    filler_order_number: str = ""
    accession_number: str = ""
    study_uid: str = ""
    procedure_code: str = ""
    procedure_text: str = ""
    procedure_system: str = ""
    modality: str = ""
    reason_for_exam: str = ""
    reason_code: str = ""
    priority: Priority = Priority.ROUTINE
    ordering_provider_id: str = ""
    ordering_provider_name: str = ""
    ordered_at: dt.datetime | None = None
    #: ORC-5 (table 0038) when ORC-1 is SC.
    order_status: str = ""


def priority_from_code(code: str) -> Priority | None:
    """Table 0027 code -> priority; ``None`` for a code we do not rank (P, C, T: routine)."""
    return PRIORITY_CODES.get(code.strip().upper()[:1])


def find_order(session: Session, placer_order_number: str, placer_issuer: str = "") -> ImagingOrder | None:
    return session.scalars(
        select(ImagingOrder).where(
            ImagingOrder.placer_order_number == placer_order_number,
            ImagingOrder.placer_issuer == placer_issuer,
        )
    ).one_or_none()


def apply_order(
    session: Session, patient_id: int, control: OrderControl, data: OrderIn, encounter_id: int | None = None
) -> ImagingOrder:
    """Apply one ORC/OBR order to the database and link it to its study when that has arrived."""
    order = find_order(session, data.placer_order_number, data.placer_issuer)
    if order is None:
        if control not in (OrderControl.NEW, OrderControl.CHANGE, OrderControl.STATUS_CHANGED):
            raise OrderError(f"ORC-1 {control.value} for order {data.placer_order_number!r}, never placed")
        order = ImagingOrder(
            patient_id=patient_id,
            placer_order_number=data.placer_order_number[:_SHORT],
            placer_issuer=data.placer_issuer[:_SHORT],
            status=OrderStatus.ACTIVE,
        )
        session.add(order)
    order.patient_id = patient_id
    if encounter_id is not None:
        order.encounter_id = encounter_id
    _fill(order, data, control)
    if control in (OrderControl.CANCEL, OrderControl.CANCELLED, OrderControl.DISCONTINUE):
        order.status = OrderStatus.REVOKED
    elif control is OrderControl.STATUS_CHANGED and data.order_status.upper() in _ORDER_STATUS:
        order.status = _ORDER_STATUS[data.order_status.upper()]
    elif control is OrderControl.NEW and order.status == OrderStatus.REVOKED:
        order.status = OrderStatus.ACTIVE  # placed again under the same number
    order.updated_at = utcnow()
    session.flush()
    if order.study_id is None:
        study = _study_for(session, order)
        if study is not None:
            _link(session, order, study)
    if order.study_id is not None:
        refresh_study_priority(session, order.study_id)
    return order


def _fill(order: ImagingOrder, data: OrderIn, control: OrderControl) -> None:
    """Copy what the message gives; a cancel or status message with fewer fields keeps the rest."""
    for name, size in (
        ("filler_order_number", _SHORT),
        ("accession_number", _SHORT),
        ("study_uid", _SHORT),
        ("procedure_code", _SHORT),
        ("procedure_text", _NAME),
        ("procedure_system", _SHORT),
        ("modality", 16),
        ("reason_code", _SHORT),
        ("ordering_provider_id", _SHORT),
        ("ordering_provider_name", _NAME),
    ):
        value = getattr(data, name)
        if value:
            setattr(order, name, value[:size])
    if data.reason_for_exam:
        order.reason_for_exam = data.reason_for_exam
    if data.ordered_at is not None:
        order.ordered_at = data.ordered_at
    if control in (OrderControl.NEW, OrderControl.CHANGE) or data.priority > Priority.ROUTINE:
        order.priority = int(data.priority)


def _study_for(session: Session, order: ImagingOrder) -> Study | None:
    """The study this order names: by Study Instance UID, else by accession number (when exactly one
    study, or exactly one of the order's patient, carries it)."""
    if order.study_uid:
        study = session.scalars(select(Study).where(Study.study_uid == order.study_uid)).one_or_none()
        if study is not None:
            return study
    if not order.accession_number:
        return None
    studies = session.scalars(
        select(Study)
        .where(Study.accession_number == order.accession_number, Study.is_prior.is_(False))
        .limit(5)
    ).all()
    same_patient = [s for s in studies if s.patient_id == order.patient_id]
    if len(same_patient) == 1:
        return same_patient[0]
    return studies[0] if len(studies) == 1 else None


def _same_patient(session: Session, a: int, b: int) -> bool:
    if a == b:
        return True
    first, second = session.get(Patient, a), session.get(Patient, b)
    return (
        first is not None
        and second is not None
        and survivor(session, first).id == survivor(session, second).id
    )


def _link(session: Session, order: ImagingOrder, study: Study) -> bool:
    if not _same_patient(session, order.patient_id, study.patient_id):
        log.warning(
            "order %s and study %s share an accession number or UID but not the patient; not linked",
            order.id,
            study.id,
        )
        return False
    order.study_id = study.id
    if not order.study_uid:
        order.study_uid = study.study_uid
    if not order.accession_number and study.accession_number:
        order.accession_number = study.accession_number
    return True


def link_study_to_order(session: Session, study_id: int) -> list[int]:
    """Link the study *study_id* to the unlinked orders naming it (UID or accession number) and set
    its order priority; returns the ids of the orders linked. Cheap when nothing matches: one
    indexed query. Called whenever a series is first seen, so a study that arrives before its order
    and one that arrives after both end up linked."""
    study = session.get(Study, study_id)
    if study is None or study.is_prior:
        return []
    conditions = [ImagingOrder.study_uid == study.study_uid]
    if study.accession_number:
        conditions.append(ImagingOrder.accession_number == study.accession_number)
    orders = session.scalars(
        select(ImagingOrder).where(ImagingOrder.study_id.is_(None), or_(*conditions))
    ).all()
    linked = []
    for order in orders:
        # A modality that ignores the worklist makes its own Study Instance UID: the accession
        # number still names the procedure, so it links all the same.
        if _link(session, order, study):
            linked.append(order.id)
    if linked:
        refresh_study_priority(session, study.id)
    return linked


def refresh_study_priority(session: Session, study_id: int) -> int:
    """Set ``Study.order_priority`` to the highest priority of the study's orders that are not
    cancelled (ROUTINE when none is left); returns it."""
    session.flush()
    value = session.scalar(
        select(func.max(ImagingOrder.priority)).where(
            ImagingOrder.study_id == study_id,
            ImagingOrder.status.not_in((OrderStatus.REVOKED, OrderStatus.ENTERED_IN_ERROR)),
        )
    )
    priority = int(Priority.clamp(value or 0))
    study = session.get(Study, study_id)
    if study is not None and study.order_priority != priority:
        study.order_priority = priority
        session.flush()  # before a caller's bulk UPDATE or expire() could drop the change
    return priority


def orders_for_study(session: Session, study_id: int) -> list[ImagingOrder]:
    return list(
        session.scalars(
            select(ImagingOrder).where(ImagingOrder.study_id == study_id).order_by(ImagingOrder.id)
        )
    )


def order_reason(session: Session, study_id: int) -> str:
    """The reason for exam of the study's active orders as ``code|text`` (lower case), for model
    routing (DESIGN.md §7); "" when the study has no active order with a reason."""
    codes: list[str] = []
    texts: list[str] = []
    for order in orders_for_study(session, study_id):
        if order.status != OrderStatus.ACTIVE and order.status != OrderStatus.COMPLETED:
            continue
        if order.reason_code:
            codes.append(order.reason_code.strip())
        if order.reason_for_exam:
            texts.append(order.reason_for_exam.strip())
    if not codes and not texts:
        return ""
    return f"{' '.join(codes)}|{' '.join(texts)}".lower()
