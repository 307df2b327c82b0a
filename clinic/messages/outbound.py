"""Outbound HL7 v2 messages (``hl7_outbound``): the queue, its delivery bookkeeping, and what an
AI-result message says.

Delivery (DESIGN.md §4 rules 2-4; Saleor's webhook deliveries; the discipline is
:class:`clinic.outbox.delivery.DeliveryQueue`, shared with the FHIR pushes):

* a message is queued as a ``pending`` row in the transaction of the state it reports (the AI read),
  with the outbox row of its delivery task (:func:`dispatch`);
* the task :func:`claim` s the row (the dispatch token, ``attempts``, makes a duplicated task
  message a no-op), sends it outside any transaction, and :func:`record_attempt` stores the outcome
  and one :class:`OutboundHL7Attempt` row: ``success`` -> ``sent``; ``permanent`` (AE/AR, a
  malformed destination) -> ``failed``, listed by ``clinic hl7 outbound --status failed``;
  ``transient`` (destination down, timeout, unreadable or foreign ACK) -> stays ``pending`` with
  ``next_attempt_at`` after an exponential backoff;
* the relay's sweep :func:`dispatch` es again every pending row that is due: after a backoff, after a
  worker died mid-send, and rows that other code queued without a task (the processor's
  application acknowledgements). A destination that is down delays messages and loses none.

The caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.ai.models import AIRead
from clinic.db import utcnow
from clinic.imaging.models import Study
from clinic.messages.models import OutboundHL7, OutboundHL7Attempt
from clinic.orders.models import ImagingOrder, OrderStatus
from clinic.outbox.delivery import DeliveryQueue
from clinic.patients.models import Patient

#: Celery task name of the delivery task (``worker.hl7_tasks`` defines it) and its queue.
DELIVER_TASK = "clinic.hl7_deliver"
DELIVER_QUEUE = "outbound"
#: ``subject_kind`` of AI results.
AI_READ_SUBJECT = "ai_read"
#: A dispatched row whose task has not claimed it after this long is dispatched again (the task
#: message was lost: a broker without persistence, a worker killed before it acknowledged).
DISPATCH_LEASE = dt.timedelta(seconds=120)
#: A claimed row whose sender died mid-send is dispatched again after this long; it must exceed
#: the send timeout (``worker.hl7_tasks.SEND_TIMEOUT_S``) with room to record the outcome.
SEND_LEASE = dt.timedelta(seconds=90)


class OutboundStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    HELD = "held"  # stored, not sent: no destination configured (application ACKs)


class AttemptOutcome(StrEnum):
    SUCCESS = "success"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


def new_control_id() -> str:
    """MSH-10 of a message we send: unique, 20 characters (the v2.5 length of MSH-10)."""
    return uuid.uuid4().hex[:20].upper()


def queue_message(
    session: Session,
    *,
    destination: str,
    control_id: str,
    message_type: str,
    raw: bytes,
    subject_kind: str,
    subject_id: int | None,
) -> OutboundHL7:
    """A pending outbound message and the outbox row of its delivery, in the caller's unit of work."""
    row = OutboundHL7(
        destination=destination,
        control_id=control_id,
        message_type=message_type[:64],
        subject_kind=subject_kind,
        subject_id=subject_id,
        raw=raw,
        status=OutboundStatus.PENDING,
    )
    session.add(row)
    session.flush()
    dispatch(session, row)
    return row


def find_for_subject(
    session: Session, subject_kind: str, subject_id: int, destination: str
) -> OutboundHL7 | None:
    return session.scalars(
        select(OutboundHL7).where(
            OutboundHL7.subject_kind == subject_kind,
            OutboundHL7.subject_id == subject_id,
            OutboundHL7.destination == destination,
        )
    ).first()


QUEUE: DeliveryQueue[OutboundHL7] = DeliveryQueue(
    OutboundHL7, DELIVER_TASK, DELIVER_QUEUE, dispatch_lease=DISPATCH_LEASE, send_lease=SEND_LEASE
)


def dispatch(session: Session, row: OutboundHL7, now: dt.datetime | None = None) -> None:
    """Write the delivery task's outbox row for *row*; the row is not due again for a lease."""
    QUEUE.dispatch(session, row, now)


def dispatch_due(session: Session, now: dt.datetime | None = None, limit: int = 100) -> list[int]:
    """Dispatch pending rows that are due (the relay's sweep); returns their ids. Rows without a
    destination (held application ACKs) are never handed out."""
    return QUEUE.dispatch_due(session, now, limit, where=[OutboundHL7.destination != ""])


@dataclass(frozen=True)
class Claimed:
    """What the sender needs, as plain values (read inside the claim's transaction)."""

    id: int
    destination: str
    control_id: str
    raw: bytes
    attempt: int
    #: MSH-9, e.g. "ORU^R01^ORU_R01"; an "ACK..." expects no acknowledgement back.
    message_type: str = ""
    subject_kind: str = ""
    subject_id: int | None = None

    @property
    def expects_ack(self) -> bool:
        return not self.message_type.upper().startswith("ACK")


def claim(session: Session, outbound_id: int, token: int, now: dt.datetime | None = None) -> Claimed | None:
    """Take *outbound_id* for one send, or ``None`` when it is not pending or *token* (the attempt
    count at dispatch) is stale: another task message for it ran already."""
    row = QUEUE.claim(session, outbound_id, token, now)
    if row is None:
        return None
    return Claimed(
        row.id, row.destination, row.control_id, row.raw, row.attempts, row.message_type,
        row.subject_kind, row.subject_id,
    )  # fmt: skip


def store_built(session: Session, outbound_id: int, raw: bytes) -> None:
    """Keep the bytes built for *outbound_id* on its first attempt: later attempts (and a resend)
    send exactly these, under the same control id."""
    row = session.get(OutboundHL7, outbound_id)
    if row is None:
        raise LookupError(f"no outbound HL7 message {outbound_id}")
    row.raw = raw


def record_attempt(
    session: Session,
    outbound_id: int,
    outcome: AttemptOutcome,
    *,
    ack_code: str = "",
    error: str = "",
    retry_in: dt.timedelta = dt.timedelta(0),
    now: dt.datetime | None = None,
) -> OutboundHL7:
    """Store the outcome of one send and the attempt row."""
    now = now or utcnow()
    row = session.get(OutboundHL7, outbound_id)
    if row is None:
        raise LookupError(f"no outbound HL7 message {outbound_id}")
    session.add(
        OutboundHL7Attempt(
            message_id=row.id, at=now, outcome=outcome, ack_code=ack_code[:2], error=error[:4000]
        )
    )
    row.ack_code = ack_code[:2]
    QUEUE.settle(row, outcome, error=error, retry_in=retry_in, now=now)
    return row


def list_outbound(session: Session, status: str | None = None, limit: int = 100) -> Sequence[OutboundHL7]:
    query = select(OutboundHL7).order_by(OutboundHL7.id.desc()).limit(limit)
    if status:
        query = query.where(OutboundHL7.status == status)
    return session.scalars(query).all()


def attempts_of(session: Session, outbound_id: int) -> Sequence[OutboundHL7Attempt]:
    return session.scalars(
        select(OutboundHL7Attempt)
        .where(OutboundHL7Attempt.message_id == outbound_id)
        .order_by(OutboundHL7Attempt.id)
    ).all()


# --- what an AI result says -----------------------------------------------------------------------


@dataclass(frozen=True)
class FindingResult:
    code: str
    label: str
    probability: float
    threshold: float
    positive: bool


@dataclass(frozen=True)
class AIReadResult:
    """An AI read with its patient, study and order, as plain values for the ORU^R01 builder."""

    read_id: int
    read_at: dt.datetime
    model_id: str
    model_name: str
    model_version: str
    is_synthetic: bool
    disclaimer: str
    findings: tuple[FindingResult, ...]
    study_uid: str
    accession_number: str
    patient_identifier: str
    patient_issuer: str
    patient_name: str
    patient_birth_date: dt.date | None
    patient_sex: str
    placer_order_number: str = ""
    placer_issuer: str = ""
    filler_order_number: str = ""
    procedure_code: str = ""
    procedure_text: str = ""
    procedure_system: str = ""


def ai_read_result(session: Session, read_id: int) -> AIReadResult:
    """What the ORU^R01 of read *read_id* reports; the study's active order when it has one."""
    read = session.get(AIRead, read_id)
    if read is None:
        raise LookupError(f"no AI read {read_id}")
    study = session.get(Study, read.study_id)
    assert study is not None  # foreign key
    patient = session.get(Patient, study.patient_id)
    assert patient is not None  # foreign key
    order = session.scalars(
        select(ImagingOrder)
        .where(ImagingOrder.study_id == study.id, ImagingOrder.status != OrderStatus.REVOKED)
        .order_by(ImagingOrder.priority.desc(), ImagingOrder.id)
        .limit(1)
    ).first()
    return AIReadResult(
        read_id=read.id,
        read_at=read.created_at,
        model_id=read.model_id,
        model_name=read.model_name,
        model_version=read.model_version,
        is_synthetic=read.is_synthetic,
        disclaimer=read.disclaimer,
        findings=tuple(
            FindingResult(f.code, f.label, f.probability, f.threshold, f.positive) for f in read.findings
        ),
        study_uid=study.study_uid,
        accession_number=(
            order.accession_number if order and order.accession_number else study.accession_number
        ),
        patient_identifier=patient.identifier,
        patient_issuer=patient.issuer,
        patient_name=patient.name,
        patient_birth_date=patient.birth_date,
        patient_sex=patient.sex,
        placer_order_number=order.placer_order_number if order else "",
        placer_issuer=order.placer_issuer if order else "",
        filler_order_number=order.filler_order_number if order else "",
        procedure_code=order.procedure_code if order else "",
        procedure_text=order.procedure_text if order else "",
        procedure_system=order.procedure_system if order else "",
    )
