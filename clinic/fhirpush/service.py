"""The FHIR push queue (``fhir_outbound``): AI reads' DiagnosticReports to an external FHIR server.

The same delivery discipline as outbound HL7 (:class:`clinic.outbox.delivery.DeliveryQueue`;
DESIGN.md §4 rules 2-4): a ``pending`` row and its task's outbox row commit with the read
(:func:`queue_push`); the task :func:`claim` s the row (the token, ``attempts``, makes a
duplicated task message a no-op), sends outside any transaction, and :func:`record_attempt` stores
the outcome with one :class:`FhirOutboundAttempt`: ``success`` -> ``sent``; ``permanent`` ->
``failed`` (listed by ``clinic fhir outbound --status failed``); ``transient`` -> ``pending``
again after a backoff, handed out by the relay's sweep (:func:`dispatch_due`). The caller owns the
transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.db import utcnow
from clinic.fhirpush.models import FhirOutbound, FhirOutboundAttempt, PushOutcome, PushStatus
from clinic.messages.outbound import DISPATCH_LEASE
from clinic.outbox.delivery import DeliveryQueue

#: Celery task name (``worker.fhir_tasks`` defines it) and its queue.
PUSH_TASK = "clinic.fhir_push"
PUSH_QUEUE = "outbound"
#: A claimed row whose sender died mid-send is handed out again after this long; it exceeds the
#: request timeout (``worker.fhir_tasks.PUSH_TIMEOUT_S``) with room to record the outcome.
SEND_LEASE = dt.timedelta(seconds=90)

__all__ = ["PushOutcome", "PushStatus"]


def queue_push(session: Session, resource_type: str, resource_id: str, url: str) -> FhirOutbound:
    """A pending push and its task's outbox row; the existing row when already queued."""
    existing = session.scalars(
        select(FhirOutbound).where(
            FhirOutbound.resource_type == resource_type,
            FhirOutbound.resource_id == resource_id,
            FhirOutbound.url == url,
        )
    ).first()
    if existing is not None:
        return existing
    row = FhirOutbound(
        resource_type=resource_type, resource_id=resource_id, url=url, status=PushStatus.PENDING
    )
    session.add(row)
    session.flush()
    dispatch(session, row)
    return row


QUEUE: DeliveryQueue[FhirOutbound] = DeliveryQueue(
    FhirOutbound, PUSH_TASK, PUSH_QUEUE, dispatch_lease=DISPATCH_LEASE, send_lease=SEND_LEASE
)


def dispatch(session: Session, row: FhirOutbound, now: dt.datetime | None = None) -> None:
    QUEUE.dispatch(session, row, now)


def dispatch_due(session: Session, now: dt.datetime | None = None, limit: int = 100) -> list[int]:
    """Hand out pending pushes that are due (the relay's sweep); their ids."""
    return QUEUE.dispatch_due(session, now, limit)


@dataclass(frozen=True)
class ClaimedPush:
    id: int
    resource_type: str
    resource_id: str
    url: str
    attempt: int


def claim(
    session: Session, outbound_id: int, token: int, now: dt.datetime | None = None
) -> ClaimedPush | None:
    """Take *outbound_id* for one attempt; None when not pending or *token* is stale."""
    row = QUEUE.claim(session, outbound_id, token, now)
    if row is None:
        return None
    return ClaimedPush(row.id, row.resource_type, row.resource_id, row.url, row.attempts)


def record_attempt(
    session: Session,
    outbound_id: int,
    outcome: PushOutcome,
    *,
    http_status: int | None = None,
    error: str = "",
    retry_in: dt.timedelta = dt.timedelta(0),
    now: dt.datetime | None = None,
) -> FhirOutbound:
    now = now or utcnow()
    row = session.get(FhirOutbound, outbound_id)
    if row is None:
        raise LookupError(f"no FHIR push {outbound_id}")
    session.add(
        FhirOutboundAttempt(
            outbound_id=row.id, at=now, outcome=outcome, http_status=http_status, error=error[:4000]
        )
    )
    QUEUE.settle(row, outcome, error=error, retry_in=retry_in, now=now)
    return row


def list_pushes(session: Session, status: str | None = None, limit: int = 100) -> Sequence[FhirOutbound]:
    query = select(FhirOutbound).order_by(FhirOutbound.id.desc()).limit(limit)
    if status:
        query = query.where(FhirOutbound.status == status)
    return session.scalars(query).all()


def attempts_of(session: Session, outbound_id: int) -> Sequence[FhirOutboundAttempt]:
    return session.scalars(
        select(FhirOutboundAttempt)
        .where(FhirOutboundAttempt.outbound_id == outbound_id)
        .order_by(FhirOutboundAttempt.id)
    ).all()
