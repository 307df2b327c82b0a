"""Writing to and draining the outbox. The relay in ``worker`` publishes what is written here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from clinic.db import utcnow
from clinic.outbox.models import OutboxMessage


def enqueue(
    session: Session, task: str, queue: str, kwargs: dict[str, object], priority: int = 0
) -> OutboxMessage:
    """Add a message; it is published only once the caller's transaction commits."""
    message = OutboxMessage(task=task, queue=queue, kwargs=kwargs, priority=priority)
    session.add(message)
    return message


def claim_unpublished(session: Session, limit: int = 100) -> Sequence[OutboxMessage]:
    """Unpublished messages due now, locked so that two relays never publish the same one."""
    query = (
        select(OutboxMessage)
        .where(OutboxMessage.published_at.is_(None), OutboxMessage.next_attempt_at <= utcnow())
        .order_by(OutboxMessage.priority.desc(), OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return session.scalars(query).all()


def mark_published(message: OutboxMessage) -> None:
    message.published_at = utcnow()
    message.attempts += 1
    message.last_error = ""


def backoff(attempts: int, base_s: float, cap_s: float) -> dt.timedelta:
    """Delay after the *attempts*-th failed try: base, 2·base, 4·base, ... capped. One rule for
    every retry of background work: publishing, result deliveries, HL7 and FHIR sends."""
    return dt.timedelta(seconds=min(cap_s, base_s * 2.0 ** max(0, attempts - 1)))


def mark_failed_attempt(message: OutboxMessage, error: str, backoff_cap_s: float = 30.0) -> None:
    """Record a failed publish and back off exponentially (0.5 s, 1 s, 2 s, ... capped)."""
    message.attempts += 1
    message.last_error = error[:2000]
    message.next_attempt_at = utcnow() + backoff(message.attempts, 0.5, backoff_cap_s)


def pending_count(session: Session) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.published_at.is_(None))
        )
        or 0
    )
