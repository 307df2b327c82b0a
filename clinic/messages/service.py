"""The inbound HL7 v2 message store: record arrivals, hand them out in order, list and replay.

Plain bytes and strings: parsing and acknowledgement building stay in ``integrations.hl7v2``.

* :func:`record_arrivals` stores a batch of framed messages in the caller's transaction (the
  listener commits a whole batch at once, group commit, then sends every ACK of the batch). The key
  (MSH-3 sending application, MSH-10 control id) is unique: a repeat of a stored message is not
  stored again and gets the stored acknowledgement. A REJECTED row does not hold its key: a
  corrected message with the same MSH-10 is a new arrival (the rejected row keeps its history under
  ``<control id>#rejected-<n>``).
* :func:`claim_received` hands RECEIVED messages out in arrival (id) order; the caller processes
  each and moves it to PROCESSED or FAILED in the same transaction, so a crash leaves it RECEIVED
  and it is picked up again, and it is never processed twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, tuple_, update
from sqlalchemy.orm import Session

from clinic.db import utcnow
from clinic.messages.models import HL7Message, MessageStatus, OutboundHL7

#: PostgreSQL advisory lock key held by the processor for one transaction: processors take turns,
#: so messages of one sender are processed in order even with several workers.
PROCESSING_LOCK_KEY = 0x484C37  # "HL7"
CONTROL_ID_MAX = 199
#: ``hl7_outbound.subject_kind`` of application acknowledgements; ``status`` of those that have no
#: return destination configured (kept, not sent).
APPLICATION_ACK_SUBJECT = "hl7_message"
OUTBOUND_HELD = "held"


class MessageNotFoundError(LookupError):
    def __init__(self, message_id: int) -> None:
        super().__init__(f"no HL7 message {message_id}")


class ReplayNotAllowedError(ValueError):
    """Only a FAILED message can be replayed: a processed one would be processed twice, a
    rejected one was refused at the door and would fail the same way."""


@dataclass(frozen=True, slots=True)
class Arrival:
    """A framed message as the listener read it, with the acknowledgement it answers with."""

    raw: bytes
    peer: str
    sending_application: str
    sending_facility: str
    control_id: str
    message_type: str
    version: str
    #: The Python codec that decoded it ("" when it could not be decoded).
    charset: str
    status: MessageStatus  # RECEIVED or REJECTED
    error: str
    ack: bytes  # b"": no acknowledgement (an ACK received; enhanced mode that asks for none)
    ack_code: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.sending_application, self.control_id)


@dataclass(frozen=True, slots=True)
class Recorded:
    """What became of one arrival, and the bytes to answer with."""

    message_id: int
    duplicate: bool
    ack: bytes
    ack_code: str


@dataclass(slots=True)
class _Known:
    message_id: int | None  # None: inserted by this batch, id not known yet
    status: str
    ack: bytes
    ack_code: str
    row: dict[str, object] | None = None
    index: int = -1  # position in this batch's inserted rows


def _aside(control_id: str) -> str:
    suffix = f"#rejected-{uuid.uuid4().hex[:8]}"
    return control_id[: CONTROL_ID_MAX - len(suffix)] + suffix


def _row(arrival: Arrival, now: dt.datetime) -> dict[str, object]:
    return {
        "received_at": now,
        "sending_application": arrival.sending_application,
        "sending_facility": arrival.sending_facility,
        "control_id": arrival.control_id,
        "message_type": arrival.message_type,
        "version": arrival.version,
        "charset": arrival.charset,
        "raw": arrival.raw,
        "peer": arrival.peer,
        "status": arrival.status.value,
        "error": arrival.error,
        "ack_code": arrival.ack_code,
        "ack": arrival.ack,
        "attempts": 0,
        "notes": "",
    }


_INSERT_NEW: dict[str, Any] = {}


def _dialect(db: Session | Connection) -> str:
    return db.dialect.name if isinstance(db, Connection) else db.get_bind().dialect.name


def _insert_new(session: Session | Connection, rows: list[dict[str, object]]) -> dict[tuple[str, str], int]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING: the ids of the rows whose key was free."""
    dialect = _dialect(session)
    statement = _INSERT_NEW.get(dialect)
    if statement is None:  # built once: constructing it costs more than executing it
        from sqlalchemy.dialects import postgresql, sqlite

        table = HL7Message.__table__
        if dialect == "postgresql":
            base: Any = postgresql.insert(HL7Message)
        elif dialect == "sqlite":
            base = sqlite.insert(HL7Message)
        else:  # pragma: no cover - the two backends we run on
            raise NotImplementedError(dialect)
        statement = _INSERT_NEW[dialect] = base.on_conflict_do_nothing(
            index_elements=["sending_application", "control_id"]
        ).returning(table.c.id, table.c.sending_application, table.c.control_id)
    return {(row[1], row[2]): row[0] for row in session.execute(statement, rows)}


def record_arrivals(session: Session | Connection, arrivals: Sequence[Arrival]) -> list[Recorded]:
    """Store *arrivals* in the caller's transaction; ids follow the order of *arrivals*.

    The common case, all keys new, is one INSERT ... ON CONFLICT DO NOTHING for the whole batch
    (the listener's group commit; SQLAlchemy's ORM per-row path cost ~1 ms per message here). When
    a key is taken (a repeat, or a rejected message being replaced) that insert is undone and the
    batch goes through :func:`_record_exactly`, in order. Works on a Session or, cheaper (the
    listener's per-batch cost), on a Core Connection in a transaction."""
    if not arrivals:
        return []
    if len({a.key for a in arrivals}) == len(arrivals):
        now = utcnow()
        inserted = _insert_new(session, [_row(a, now) for a in arrivals])
        if len(inserted) == len(arrivals):
            return [Recorded(inserted[a.key], False, a.ack, a.ack_code) for a in arrivals]
        if inserted:
            session.execute(delete(HL7Message).where(HL7Message.id.in_(list(inserted.values()))))
    return _record_exactly(session, arrivals)


#: Columns whose value is the same for every row of a batch (bound once per batch).
_PER_BATCH = frozenset({"received_at", "attempts", "notes"})


class ArrivalWriter:
    """The listener's hot path: all-new batches inserted on a DBAPI connection kept open, below
    SQLAlchemy (one transaction of one message: ~45 µs against ~170 µs through a Core connection,
    measured with SQLite; the listener is CPU-bound, so this is its throughput).

    :meth:`try_insert` stores a batch whose keys are all free, in one INSERT ... ON CONFLICT DO
    NOTHING RETURNING statement and its own committed transaction, or stores nothing and returns
    None (some key is taken, or repeats within the batch); the caller then uses
    :func:`record_arrivals`. Values are bound through the columns' SQLAlchemy types, so rows are
    exactly what the ORM would write. SQLite transactions begin IMMEDIATE, as in :mod:`clinic.db`.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        if self.dialect.name not in ("sqlite", "postgresql"):  # pragma: no cover
            raise NotImplementedError(self.dialect.name)
        table = HL7Message.__table__
        self._columns = [c for c in table.columns if c.name != "id"]
        self._processors = [c.type._cached_bind_processor(self.dialect) for c in self._columns]
        self._placeholder = "?" if self.dialect.paramstyle == "qmark" else "%s"
        self._sql: dict[int, str] = {}
        self._connection: Any = None  # SQLAlchemy's pooled DBAPI connection
        #: SQLite: the connection is in autocommit mode (clinic.db) and we begin ourselves.
        self._begin = "BEGIN IMMEDIATE" if self.dialect.name == "sqlite" else None

    def _statement(self, rows: int) -> str:
        sql = self._sql.get(rows)
        if sql is None:
            one = "(" + ", ".join([self._placeholder] * len(self._columns)) + ")"
            sql = self._sql[rows] = (
                f"INSERT INTO {HL7Message.__tablename__} ({', '.join(c.name for c in self._columns)}) "
                f"VALUES {', '.join([one] * rows)} "
                "ON CONFLICT (sending_application, control_id) DO NOTHING "
                "RETURNING id, sending_application, control_id"
            )
        return sql

    def _parameters(self, arrivals: Sequence[Arrival]) -> list[object]:
        now = utcnow()
        values: list[object] = []
        cache: dict[int, object] = {}  # received_at and the constant columns: bound once a batch
        for arrival in arrivals:
            row = _row(arrival, now)
            for i, (column, process) in enumerate(zip(self._columns, self._processors, strict=True)):
                value = row.get(column.name)  # absent: a nullable column left NULL
                if process is not None and value is not None:
                    if column.name in _PER_BATCH:
                        if i not in cache:
                            cache[i] = process(value)
                        value = cache[i]
                    else:
                        value = process(value)
                values.append(value)
        return values

    def try_insert(self, arrivals: Sequence[Arrival]) -> list[Recorded] | None:
        if not arrivals or len({a.key for a in arrivals}) != len(arrivals):
            return None
        if self._connection is None:
            self._connection = self.engine.raw_connection()
        dbapi = self._connection.driver_connection
        cursor = dbapi.cursor()
        try:
            if self._begin:
                cursor.execute(self._begin)
            cursor.execute(self._statement(len(arrivals)), self._parameters(arrivals))
            inserted = {(row[1], row[2]): row[0] for row in cursor.fetchall()}
            if len(inserted) != len(arrivals):
                self._rollback(cursor, dbapi)
                return None
            if self._begin:
                cursor.execute("COMMIT")
            else:
                dbapi.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                self._rollback(cursor, dbapi)
                cursor.close()
            self.close(invalidate=True)  # a fresh connection next time (this one may be broken)
            raise
        cursor.close()
        return [Recorded(inserted[a.key], False, a.ack, a.ack_code) for a in arrivals]

    def _rollback(self, cursor: Any, dbapi: Any) -> None:
        if self._begin:
            if dbapi.in_transaction:
                cursor.execute("ROLLBACK")
        else:
            dbapi.rollback()

    def close(self, *, invalidate: bool = False) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                if invalidate:
                    self._connection.invalidate()
                else:
                    self._connection.close()
            self._connection = None


def _record_exactly(session: Session | Connection, arrivals: Sequence[Arrival]) -> list[Recorded]:
    """The general path: repeats, rejected rows giving their key up, repeats within the batch."""
    keys = list({a.key for a in arrivals})
    known: dict[tuple[str, str], _Known] = {}
    if keys:
        query = select(
            HL7Message.id,
            HL7Message.sending_application,
            HL7Message.control_id,
            HL7Message.status,
            HL7Message.ack,
            HL7Message.ack_code,
        ).where(tuple_(HL7Message.sending_application, HL7Message.control_id).in_(keys))
        for row in session.execute(query):
            known[(row[1], row[2])] = _Known(row[0], row[3], row[4], row[5])
    now = utcnow()
    rows: list[dict[str, object]] = []
    plan: list[int | _Known] = []  # index into rows (new) or the known original (duplicate)
    for arrival in arrivals:
        seen = known.get(arrival.key)
        if seen is not None and seen.status != MessageStatus.REJECTED:
            plan.append(seen)
            continue
        if seen is not None:  # a rejected row gives its key up to the new arrival
            if seen.row is not None:
                seen.row["control_id"] = _aside(arrival.control_id)
            elif seen.message_id is not None:
                session.execute(
                    update(HL7Message)
                    .where(HL7Message.id == seen.message_id)
                    .values(control_id=_aside(arrival.control_id))
                )
        new_row = _row(arrival, now)
        known[arrival.key] = _Known(
            None, arrival.status.value, arrival.ack, arrival.ack_code, new_row, index=len(rows)
        )
        plan.append(len(rows))
        rows.append(new_row)
    ids: list[int] = []
    if rows:
        statement = insert(HL7Message).returning(HL7Message.id, sort_by_parameter_order=True)
        ids = list(session.scalars(statement, rows))
    out: list[Recorded] = []
    for arrival, step in zip(arrivals, plan, strict=True):
        if isinstance(step, int):
            out.append(Recorded(ids[step], False, arrival.ack, arrival.ack_code))
        else:
            original = step.message_id if step.message_id is not None else ids[step.index]
            out.append(Recorded(original, True, step.ack, step.ack_code))
    return out


# --- processing ----------------------------------------------------------------------------------


def lock_processing(session: Session) -> None:
    """Take the processing turn for this transaction (PostgreSQL; SQLite's BEGIN IMMEDIATE
    already serialises writers)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PROCESSING_LOCK_KEY})


def claim_received(session: Session, limit: int) -> Sequence[HL7Message]:
    """The oldest RECEIVED messages, in arrival order, locked for this transaction."""
    query = (
        select(HL7Message)
        .where(HL7Message.status == MessageStatus.RECEIVED)
        .order_by(HL7Message.id)
        .limit(limit)
        .with_for_update()
    )
    return session.scalars(query).all()


def mark_processed(message: HL7Message, notes: str = "") -> None:
    message.status = MessageStatus.PROCESSED
    message.attempts += 1
    message.processed_at = utcnow()
    message.notes = notes[:10_000]
    message.error = ""


def mark_failed(message: HL7Message, reason: str) -> None:
    message.status = MessageStatus.FAILED
    message.attempts += 1
    message.processed_at = utcnow()
    message.error = reason[:10_000]


def received_count(session: Session) -> int:
    query = select(func.count()).select_from(HL7Message).where(HL7Message.status == MessageStatus.RECEIVED)
    return session.scalar(query) or 0


# --- operations ----------------------------------------------------------------------------------


def list_messages(
    session: Session,
    status: MessageStatus | None = None,
    *,
    limit: int = 100,
    before_id: int | None = None,
) -> Sequence[HL7Message]:
    """Newest first, optionally of one status; page with *before_id*."""
    query = select(HL7Message).order_by(HL7Message.id.desc()).limit(limit)
    if status is not None:
        query = query.where(HL7Message.status == status)
    if before_id is not None:
        query = query.where(HL7Message.id < before_id)
    return session.scalars(query).all()


def get_message(session: Session, message_id: int) -> HL7Message:
    message = session.get(HL7Message, message_id)
    if message is None:
        raise MessageNotFoundError(message_id)
    return message


def replay(session: Session, message_id: int) -> HL7Message:
    """Put a FAILED message back to RECEIVED: the processor takes it again (its attempts and
    last error stay visible until then)."""
    message = session.get(HL7Message, message_id, with_for_update=True)
    if message is None:
        raise MessageNotFoundError(message_id)
    if message.status != MessageStatus.FAILED:
        raise ReplayNotAllowedError(
            f"message {message_id} is {message.status}: only failed messages can be replayed"
        )
    message.status = MessageStatus.RECEIVED
    message.processed_at = None
    return message


def status_counts(session: Session) -> dict[str, int]:
    query = select(HL7Message.status, func.count()).group_by(HL7Message.status)
    return {str(status): int(count) for status, count in session.execute(query)}


def queue_application_ack(
    session: Session,
    message: HL7Message,
    *,
    destination: str,
    control_id: str,
    message_type: str,
    raw: bytes,
    held_reason: str = "",
) -> OutboundHL7:
    """An enhanced-mode application acknowledgement (MSH-16) of *message*, as an outbound message.

    With a *destination* it is ``pending`` (the outbound sender delivers it); without one it is
    ``held`` with *held_reason*: stored, visible, not sent."""
    row = OutboundHL7(
        destination=destination,
        control_id=control_id,
        message_type=message_type[:64],
        subject_kind=APPLICATION_ACK_SUBJECT,
        subject_id=message.id,
        raw=raw,
        status="pending" if destination else OUTBOUND_HELD,
        last_error=held_reason,
    )
    session.add(row)
    return row
