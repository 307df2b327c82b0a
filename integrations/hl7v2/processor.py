"""Processing of stored HL7 v2 messages, in arrival order, outside the listener.

A dedicated loop (run by the worker next to the outbox relay, :mod:`worker.hl7`), not a Celery task
per message: an outbox row plus a broker hop per message would cost more than the mapping itself
(DESIGN.md §10: ~12 ms per hop on the embedded broker, against a target of >= 300 messages/s).

One pass (:meth:`Processor.run_once`) is one transaction:

1. take the processing turn (PostgreSQL advisory lock; SQLite serialises writers anyway), so that
   with several workers the messages of one sender are still processed in order;
2. claim the oldest RECEIVED messages in id (arrival) order;
3. for each, in its own SAVEPOINT: call the mapping (:func:`integrations.hl7v2.mapping.
   process_message`), then move the message to PROCESSED (with the mapping's notes) or, when the
   mapping raises :class:`~integrations.hl7v2.errors.MappingError` (or anything unexpected), roll
   the mapping's writes back and move it to FAILED with the reason; attempts += 1;
4. commit. The status change commits with the mapping's writes, so a crash anywhere leaves the
   message RECEIVED with nothing of its mapping kept, and the next pass processes it: never twice,
   never lost.

A transient database fault (``OperationalError``: locked, unreachable) rolls the whole pass back;
it is tried again after a pause. A failed message does not stop the ones after it (a sender's feed
keeps flowing); it is listed (``clinic hl7 messages --status failed``) and can be replayed.

Enhanced mode (MSH-15/MSH-16): when MSH-16 asks for an application acknowledgement (AL; ER on
failure; SU on success), it is built here and queued as an ``hl7_outbound`` row in the same
transaction, to the return destination configured for the sender
(``CLINIC_HL7_ACK_DESTINATIONS``). Without one it is stored with status ``held`` and the reason,
and not sent.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import make_engine, make_session_factory, unit_of_work
from clinic.messages.models import HL7Message
from clinic.messages.service import (
    claim_received,
    lock_processing,
    mark_failed,
    mark_processed,
    queue_application_ack,
)
from clinic.settings import Settings
from integrations.hl7v2.ack import application_response, build_ack, new_control_id
from integrations.hl7v2.codec import MessageHeader, message_text, parse_header
from integrations.hl7v2.errors import HL7Error, MappingError, MessageParseError
from integrations.hl7v2.mapping.parse import sender_timezone, timezone_named

log = logging.getLogger(__name__)

ProcessFn = Callable[[Session, HL7Message], str]

#: Messages claimed per pass, and the most time one pass may spend mapping before it commits. On
#: SQLite the pass holds the single write lock, which the listener needs for every group commit,
#: so a pass stays short (50 ms: the listener's ACKs wait at most that long) and is followed by a
#: pause (5 ms) in which the listener, polling for the lock every 0.5 ms, gets it.
BATCH_SIZE = 200
BATCH_SECONDS = 0.05
PASS_PAUSE_SECONDS = 0.005
#: Pause when there is nothing to do, and after a transient database fault.
IDLE_SECONDS = 0.05
RETRY_SECONDS = 1.0


@dataclass
class PassResult:
    processed: int = 0
    failed: int = 0
    application_acks: int = 0

    @property
    def total(self) -> int:
        return self.processed + self.failed


def load_mapping() -> ProcessFn:
    """Part B's entry point, imported when first needed (the listener never imports it)."""
    from integrations.hl7v2.mapping import process_message

    return process_message


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.OperationalError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


class Processor:
    """Claims and processes stored messages; see the module docstring."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        process: ProcessFn,
        *,
        ack_destinations: Mapping[str, str] | None = None,
        batch_size: int = BATCH_SIZE,
        batch_seconds: float = BATCH_SECONDS,
        timezone: str = "",
    ) -> None:
        self.session_factory = session_factory
        self.process = process
        self.ack_destinations = dict(ack_destinations or {})
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        #: ``hl7_timezone``: the zone of timestamps sent without an offset ("" this server's).
        self.timezone = timezone
        timezone_named(timezone)  # an unknown name fails here, at start-up, not per message

    def run_once(self) -> PassResult:
        """One pass, one transaction; returns what it did (0 messages: nothing was waiting)."""
        result = PassResult()
        with sender_timezone(self.timezone), unit_of_work(self.session_factory) as session:
            lock_processing(session)
            deadline = time.monotonic() + self.batch_seconds
            for message in claim_received(session, self.batch_size):
                self._process_one(session, message, result)
                if time.monotonic() > deadline:
                    break  # the rest stay RECEIVED, first in line for the next pass
        return result

    def run_until_idle(self, timeout: float = 60.0) -> PassResult:
        """Passes until nothing is waiting (tests, ``clinic hl7 process``)."""
        total = PassResult()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.run_once()
            total.processed += done.processed
            total.failed += done.failed
            total.application_acks += done.application_acks
            if done.total == 0:
                break
        return total

    def run(self, stop: threading.Event, idle_seconds: float = IDLE_SECONDS) -> None:
        """Process until *stop* is set."""
        log.info("HL7 processor started")
        while not stop.is_set():
            try:
                done = self.run_once()
            except Exception as exc:
                if not _is_transient(exc):
                    log.exception("HL7 processing pass failed")
                else:
                    log.warning("HL7 processing paused: %s", type(exc).__name__)
                stop.wait(RETRY_SECONDS)
                continue
            if done.total:
                log.debug("HL7 processed %d, failed %d", done.processed, done.failed)
                stop.wait(PASS_PAUSE_SECONDS)
            else:
                stop.wait(idle_seconds)
        log.info("HL7 processor stopped")

    def _process_one(self, session: Session, message: HL7Message, result: PassResult) -> None:
        header: MessageHeader | None = None
        error: HL7Error | None = None
        notes = ""
        try:
            header = parse_header(message_text(message.raw, message.charset))
        except MessageParseError as exc:
            error = exc
        if error is None:
            savepoint = session.begin_nested()
            try:
                notes = self.process(session, message) or ""
                savepoint.commit()
            except MappingError as exc:
                savepoint.rollback()
                error = exc
            except Exception as exc:
                if _is_transient(exc):
                    raise  # the whole pass is rolled back and tried again
                savepoint.rollback()
                # Where, not what: an exception's text may quote the message (patient data).
                where = traceback.extract_tb(exc.__traceback__)[-1]
                log.error(
                    "HL7 message %d: unexpected %s in processing at %s:%s",
                    message.id, type(exc).__name__, where.filename, where.lineno,
                )  # fmt: skip
                error = HL7Error(f"internal error: {type(exc).__name__}: {exc}"[:2000])
        if error is None:
            mark_processed(message, notes)
            result.processed += 1
        else:
            mark_failed(message, error.reason)
            result.failed += 1
            log.info("HL7 message %d failed: %s", message.id, error.code.text)
        if header is not None and self._application_ack(session, message, header, error):
            result.application_acks += 1

    def _application_ack(
        self, session: Session, message: HL7Message, header: MessageHeader, error: HL7Error | None
    ) -> bool:
        code = application_response(header, error)
        if code is None:
            return False
        control_id = new_control_id()
        payload = build_ack(header, code, error, codec=message.charset or "ascii", control_id=control_id)
        destination = self.ack_destinations.get(message.sending_application, "")
        held = (
            ""
            if destination
            else f"no return MLLP destination for sending application "
            f"{message.sending_application[:40]!r} (CLINIC_HL7_ACK_DESTINATIONS)"
        )
        queue_application_ack(
            session,
            message,
            destination=destination,
            control_id=control_id,
            message_type=f"ACK^{header.trigger_event}^ACK",
            raw=payload,
            held_reason=held,
        )
        return True


def run_processor(settings: Settings, stop: threading.Event, process: ProcessFn | None = None) -> None:
    """The worker's processor thread: its own engine, the mapping loaded once."""
    engine = make_engine(settings.resolved_database_url, hide_parameters=True)
    try:
        processor = Processor(
            make_session_factory(engine),
            process or load_mapping(),
            ack_destinations=settings.hl7_ack_destinations,
            timezone=settings.hl7_timezone,
        )
        processor.run(stop)
    finally:
        engine.dispose()
