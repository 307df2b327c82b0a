"""The delivery discipline shared by the queues that send to other systems over the network:
outbound HL7 v2 (``clinic.messages.outbound``) and FHIR pushes (``clinic.fhirpush``).

DESIGN.md §4 rules 2-4. A row is ``pending`` from the transaction of the state it reports, with the
outbox row of its delivery task (:meth:`DeliveryQueue.dispatch`); the task :meth:`~DeliveryQueue.claim`
s it (the dispatch token, ``attempts``, makes a duplicated task message a no-op; the row is not
due again for the send lease), sends outside any transaction, and records the outcome
(:meth:`~DeliveryQueue.settle`): ``success`` -> ``sent``; ``permanent`` -> ``failed``, for an
engineer to see; ``transient`` -> ``pending`` again after a backoff. The relay's sweep
(:meth:`~DeliveryQueue.dispatch_due`) hands out every pending row that is due: after a backoff,
after a worker died mid-send, after a lost task message. Each queue keeps its own table and its own
attempt rows (what a peer answers differs: an MSA code, an HTTP status); the caller owns the
transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from clinic.db import utcnow
from clinic.outbox import service as outbox

PENDING, SENT, FAILED = "pending", "sent", "failed"
SUCCESS, PERMANENT, TRANSIENT = "success", "permanent", "transient"


class Deliverable(Protocol):
    """The columns every queue's row has."""

    id: Any
    status: Any
    attempts: Any
    next_attempt_at: Any
    last_error: Any
    sent_at: Any


Row = TypeVar("Row", bound=Deliverable)


@dataclass(frozen=True)
class DeliveryQueue(Generic[Row]):
    """One queue: its model, its delivery task and the leases of its two waits."""

    model: type[Row]
    task: str
    queue: str
    #: A dispatched row whose task has not claimed it after this long is dispatched again (the
    #: task message was lost: a broker without persistence, a worker killed before it acked).
    dispatch_lease: dt.timedelta
    #: A claimed row whose sender died mid-send is dispatched again after this long; it exceeds
    #: the send timeout with room to record the outcome.
    send_lease: dt.timedelta

    def dispatch(self, session: Session, row: Row, now: dt.datetime | None = None) -> None:
        """Write the delivery task's outbox row for *row*; not due again for the dispatch lease."""
        now = now or utcnow()
        outbox.enqueue(session, self.task, self.queue, {"outbound_id": row.id, "token": row.attempts})
        row.next_attempt_at = now + self.dispatch_lease

    def dispatch_due(
        self,
        session: Session,
        now: dt.datetime | None = None,
        limit: int = 100,
        where: Sequence[ColumnElement[bool]] = (),
    ) -> list[int]:
        """Dispatch the pending rows that are due (and match *where*); their ids."""
        now = now or utcnow()
        model: Any = self.model
        rows = session.scalars(
            select(model)
            .where(model.status == PENDING, model.next_attempt_at <= now, *where)
            .order_by(model.next_attempt_at, model.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            self.dispatch(session, row, now)
        return [row.id for row in rows]

    def claim(self, session: Session, row_id: int, token: int, now: dt.datetime | None = None) -> Row | None:
        """Take *row_id* for one attempt (locked, attempts counted); None when it is not pending or
        *token* (its attempts at dispatch) is stale: another task message for it ran already."""
        model: Any = self.model
        row = session.scalars(select(model).where(model.id == row_id).with_for_update()).one_or_none()
        if row is None or row.status != PENDING or row.attempts != token:
            return None
        row.attempts += 1
        row.next_attempt_at = (now or utcnow()) + self.send_lease
        return row  # type: ignore[no-any-return]

    def settle(
        self,
        row: Row,
        outcome: str,
        *,
        error: str = "",
        retry_in: dt.timedelta = dt.timedelta(0),
        now: dt.datetime | None = None,
    ) -> None:
        """The row's state after one attempt ended with *outcome* (success, permanent, transient)."""
        now = now or utcnow()
        row.last_error = error[:4000]
        if outcome == SUCCESS:
            row.status, row.sent_at = SENT, now
        elif outcome == PERMANENT:
            row.status = FAILED
        else:
            row.next_attempt_at = now + retry_in
