"""Outbound HL7 v2: AI results as ORU^R01 to the EMR, delivered over MLLP with retries.

* :func:`queue_ai_result` is called by ``worker.tasks.analyse_study`` in the unit of work that
  records a read: when ``hl7_results_destination`` is set and ``hl7_results_trigger`` is
  ``ai_read`` it queues the message (control id and subject) with its delivery's outbox row
  (``clinic.messages.outbound``), so the read and its message commit together. The ORU^R01 itself
  (``integrations.hl7v2.oru``, hl7apy: ~40 ms per read on this 2-core machine) is built by the
  delivery task on its first attempt, outside the read's transaction, and kept for later attempts;
  one hl7apy refuses fails the delivery for good, with the reason, listed by
  ``clinic hl7 outbound --status failed``. ``signed`` sends nothing yet: report signing does not
  exist.
* ``clinic.hl7_deliver(outbound_id, token)`` claims the row (committed at once), sends it outside
  any transaction (``integrations.hl7v2.client.deliver``: MSA-2 must echo our MSH-10) and records
  the attempt: AA/CA sent; AE/AR (and CE/CR) failed for good, listed by
  ``clinic hl7 outbound --status failed``; anything else pending again after
  ``delivery_backoff_seconds`` doubling up to ``delivery_backoff_cap_seconds``. The retry is
  handed out by the relay's sweep (``clinic.messages.outbound.dispatch_due``), from the database,
  so a worker restart loses no retry; the task itself never sleeps or uses Celery's countdown.
  The same task delivers the processor's enhanced-mode application acknowledgements (rows queued
  by ``clinic.messages.service.queue_application_ack``): sent without waiting for an answer,
  since nobody acknowledges an acknowledgement.
"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy.orm import Session

from clinic.db import unit_of_work
from clinic.messages.models import OutboundHL7
from clinic.messages.outbound import (
    AI_READ_SUBJECT,
    DELIVER_TASK,
    AttemptOutcome,
    Claimed,
    ai_read_result,
    claim,
    find_for_subject,
    new_control_id,
    queue_message,
    record_attempt,
    store_built,
)
from clinic.outbox.service import backoff
from clinic.settings import ResultsTrigger, Settings
from integrations.hl7v2.client import deliver
from integrations.hl7v2.oru import MESSAGE_TYPE, build_ai_result
from worker.tasks import WorkerContext, is_transient, process_context

log = logging.getLogger(__name__)

#: Connect, send and ACK wait, per attempt. A loopback or LAN peer answers in milliseconds; 10 s
#: bounds a hung peer and stays well under clinic.messages.outbound.SEND_LEASE (90 s).
SEND_TIMEOUT_S = 10.0


def queue_ai_result(session: Session, settings: Settings, read_id: int) -> OutboundHL7 | None:
    """Queue the ORU^R01 of read *read_id* when configured; idempotent per (read, destination).

    Only the row (control id, subject) and its delivery's outbox row are written here, in the
    read's unit of work; the message itself is built by the delivery task on its first attempt
    (:func:`built_message`), outside that transaction."""
    destination = settings.hl7_results_destination
    if not destination or settings.hl7_results_trigger is not ResultsTrigger.AI_READ:
        return None
    existing = find_for_subject(session, AI_READ_SUBJECT, read_id, destination)
    if existing is not None:
        return existing
    return queue_message(
        session,
        destination=destination,
        control_id=new_control_id(),
        message_type=MESSAGE_TYPE,
        raw=b"",
        subject_kind=AI_READ_SUBJECT,
        subject_id=read_id,
    )


def built_message(context: WorkerContext, claimed: Claimed) -> bytes:
    """The bytes of *claimed*: those stored, or, for a read's ORU^R01 not built yet, built now
    with hl7apy from the read as committed and stored for later attempts. Raises
    :class:`NotBuiltError` when there is nothing to send."""
    if claimed.raw:
        return claimed.raw
    if claimed.subject_kind != AI_READ_SUBJECT or claimed.subject_id is None:
        raise NotBuiltError("the message has no content")
    with unit_of_work(context.session_factory) as session:
        result = ai_read_result(session, claimed.subject_id)
        try:
            raw = build_ai_result(
                result, control_id=claimed.control_id, sending_facility=context.settings.dicom_ae
            )
        except Exception as exc:  # a value hl7apy refuses: the message fails, visibly, for good
            raise NotBuiltError(f"{type(exc).__name__}: {exc}") from exc
        store_built(session, claimed.id, raw)
    return raw


class NotBuiltError(Exception):
    """The message cannot be built; its delivery fails for good with this reason."""


def deliver_outbound(context: WorkerContext, outbound_id: int, token: int) -> str:
    """One delivery attempt of *outbound_id*; returns the outcome (or ``skipped``)."""
    settings = context.settings
    with unit_of_work(context.session_factory) as session:
        claimed = claim(session, outbound_id, token)
    if claimed is None:
        log.info("outbound HL7 %s: sent, failed or taken by another attempt; nothing to do", outbound_id)
        return "skipped"
    try:
        raw = built_message(context, claimed)
    except NotBuiltError as exc:
        log.error("outbound HL7 %s cannot be built: %s", outbound_id, exc)
        with unit_of_work(context.session_factory) as session:
            record_attempt(session, outbound_id, AttemptOutcome.PERMANENT, error=f"not built: {exc}")
        return AttemptOutcome.PERMANENT.value
    result = deliver(
        claimed.destination,
        raw,
        claimed.control_id,
        timeout=SEND_TIMEOUT_S,
        expect_ack=claimed.expects_ack,
    )
    retry_in = backoff(
        claimed.attempt, settings.delivery_backoff_seconds, settings.delivery_backoff_cap_seconds
    )
    with unit_of_work(context.session_factory) as session:
        record_attempt(
            session,
            outbound_id,
            result.outcome,
            ack_code=result.ack_code,
            error=result.error,
            retry_in=retry_in,
        )
    if result.outcome is AttemptOutcome.SUCCESS:
        log.info("outbound HL7 %s delivered to %s (%s)", outbound_id, claimed.destination, result.ack_code)
    elif result.outcome is AttemptOutcome.PERMANENT:
        log.warning("outbound HL7 %s refused by %s: %s", outbound_id, claimed.destination, result.error)
    else:
        log.warning(
            "outbound HL7 %s attempt %d to %s failed (%s); next in %.0f s",
            outbound_id,
            claimed.attempt,
            claimed.destination,
            result.error,
            retry_in.total_seconds(),
        )
    return result.outcome.value


def register(app: Celery, settings: Settings) -> None:
    """Define the delivery task on *app* (called by :func:`worker.app.create_celery`)."""

    @app.task(name=DELIVER_TASK, acks_late=True)
    def deliver_task(outbound_id: int, token: int = 0) -> str:
        try:
            return deliver_outbound(process_context(settings), int(outbound_id), int(token))
        except Exception as exc:
            if not is_transient(exc):
                raise
            # The database is away: the claimed row (if any) comes back through the relay's
            # sweep once its lease has passed; nothing to retry here.
            log.warning(
                "outbound HL7 %s: transient fault (%s); the sweep retries", outbound_id, type(exc).__name__
            )
            return "deferred"
