"""The outbox relay and sweeper (DESIGN.md §4 rule 2).

Every ``relay_interval_seconds`` one pass:

1. **complete** quiet series, and for each study that is now complete create its analysis job and
   outbox row, in the same unit of work (so a completed study always has its job), plus the
   ``clinic.fetch_priors`` row when a PACS is a prior source; a prior fetched from a PACS gets
   neither (it is shown for comparison, never analysed);
2. **requeue** jobs whose lease ran out (their worker died), and result deliveries and outbound
   HL7 messages that are due (backoff over, or their message or attempt lost) - same unit of work;
3. **publish** due outbox rows to the broker and mark them published; a row that cannot be
   published gets ``last_error`` and an exponential backoff and is tried again later. A broker outage
   delays work and never loses it; a crash between publish and commit publishes the row again, and
   the task's idempotency absorbs the duplicate (at-least-once).

The broker connection is made (and re-made, at most once a second) *outside* any database
transaction, so that on SQLite, where a unit of work holds the single write lock (BEGIN IMMEDIATE),
the lock is never held while waiting for a broker to answer a connect. Publishing itself does not
retry (``retry=False``): a dead connection fails at once and the row is tried again after its
backoff. Several relays may run at once: PostgreSQL hands rows out with SKIP LOCKED, SQLite
serialises the units of work.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from celery import Celery
from kombu.connection import Connection
from sqlalchemy.orm import Session, sessionmaker

from clinic.ai.service import request_analysis, requeue_expired, requeue_stale_pending
from clinic.db import make_engine, make_session_factory, unit_of_work
from clinic.fhirpush.service import dispatch_due as dispatch_due_fhir
from clinic.imaging.priors import request_priors
from clinic.imaging.service import complete_quiet_series
from clinic.messages.outbound import dispatch_due as dispatch_due_hl7
from clinic.outbox.models import OutboxMessage
from clinic.outbox.service import claim_unpublished, mark_failed_attempt, mark_published
from clinic.results.service import requeue_due_deliveries
from clinic.settings import Settings
from worker.app import INGEST, PUBLISH_CONNECT_TIMEOUT_S, broker_priority, inference_queue

log = logging.getLogger(__name__)

#: Rows published per unit of work. One publish costs ~0.1-1 ms on loopback brokers, so a batch
#: holds the database lock for well under 100 ms.
PUBLISH_BATCH = 100
#: Least time between two attempts to (re)connect to a broker that is down.
RECONNECT_INTERVAL_S = 1.0


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


class Publisher:
    """Sends outbox rows as Celery task messages over one kept broker connection."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._connection: Connection | None = None
        self._producer: Any = None
        self._next_connect_at = 0.0
        self.last_error = ""

    @property
    def connected(self) -> bool:
        return self._producer is not None

    def connect(self) -> bool:
        """(Re)connect if needed, at most once per :data:`RECONNECT_INTERVAL_S`; True when usable."""
        if self._producer is not None:
            return True
        now = time.monotonic()
        if now < self._next_connect_at:
            return False
        self._next_connect_at = now + RECONNECT_INTERVAL_S
        # heartbeat=0: this connection is idle between publishes and nobody would answer heartbeats.
        connection = self.app.connection_for_write(heartbeat=0)
        try:
            connection.ensure_connection(max_retries=0, timeout=PUBLISH_CONNECT_TIMEOUT_S)
            self._producer = self.app.amqp.Producer(connection, auto_declare=False)
        except Exception as exc:
            connection.release()
            if not self.last_error:
                log.warning("broker unreachable (%s); outbox rows wait", describe(exc))
            self.last_error = f"broker unreachable: {describe(exc)}"
            return False
        self._connection = connection
        if self.last_error:
            log.info("broker reachable again")
        self.last_error = ""
        return True

    def publish(self, message: OutboxMessage) -> None:
        if self._producer is None:
            raise ConnectionError(self.last_error or "not connected to the broker")
        self.app.send_task(
            message.task,
            kwargs=dict(message.kwargs),
            queue=message.queue,
            priority=broker_priority(self.app, message.priority),
            task_id=f"outbox-{message.id}-{message.attempts}",
            producer=self._producer,
            retry=False,
        )

    def reset(self, error: str) -> None:
        self.last_error = error
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # already broken; nothing more to free
                log.debug("closing a broken broker connection failed", exc_info=True)
        self._connection = None
        self._producer = None

    def close(self) -> None:
        self.reset("closed")


class Relay:
    """One relay: the sweep and the publish steps, each its own unit of work."""

    def __init__(self, settings: Settings, app: Celery, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.app = app
        self.session_factory = session_factory
        self.queue = inference_queue(settings)
        self.publisher = Publisher(app)
        self.pending_timeout = dt.timedelta(seconds=settings.job_pending_timeout_seconds)

    def sweep(self) -> tuple[int, int]:
        """Complete quiet series (and ask for their analysis) and requeue expired jobs."""
        quiet = dt.timedelta(seconds=self.settings.series_quiet_seconds)
        with unit_of_work(self.session_factory) as session:
            studies = complete_quiet_series(session, quiet=quiet)
            for study in studies:
                if study.is_prior:
                    # Fetched from a PACS for comparison: shown, never analysed, and it fetches
                    # no priors of its own (no recursion).
                    continue
                request_analysis(session, study, self.queue, priority=study.order_priority)
                if self.settings.priors_limit > 0:
                    request_priors(session, study, INGEST)  # only while a prior source is configured
            requeued = requeue_expired(session, self.queue)
            stale = requeue_stale_pending(session, self.queue, older_than=self.pending_timeout)
            # result deliveries whose backoff passed, or whose message or attempt was lost
            deliveries = requeue_due_deliveries(session, handout_lease=self.pending_timeout)
            # outbound HL7 messages due: new, backoff over, or their task message or sender lost
            hl7_due = dispatch_due_hl7(session)
            # FHIR pushes due (fhir_push_url): new, backoff over, or their task or sender lost
            fhir_due = dispatch_due_fhir(session)
        if stale:
            log.warning("jobs %s: published but never taken (message lost?); handed out again", stale)
        for study in studies:
            what = "prior, not analysed" if study.is_prior else "analysis requested"
            log.info("study %s complete; %s", study.id, what)
        if requeued:
            log.warning("jobs %s: lease expired (worker lost?); handed out again", requeued)
        if deliveries:
            log.info("result deliveries %s due; handed out again", deliveries)
        if hl7_due:
            log.info("outbound HL7 messages %s due; handed out", hl7_due)
        if fhir_due:
            log.info("FHIR pushes %s due; handed out", fhir_due)
        return len(studies), len(requeued)

    def publish_due(self) -> tuple[int, int]:
        """Publish due outbox rows; returns (published, failed)."""
        self.publisher.connect()  # outside the transaction: never wait on a broker under a DB lock
        published = failed = 0
        with unit_of_work(self.session_factory) as session:
            for message in claim_unpublished(session, limit=PUBLISH_BATCH):
                if self.publisher.connected:
                    try:
                        self.publisher.publish(message)
                    except Exception as exc:
                        log.warning("publishing outbox row %s failed: %s", message.id, describe(exc))
                        self.publisher.reset(f"publish failed: {describe(exc)}")
                    else:
                        mark_published(message)
                        published += 1
                        continue
                mark_failed_attempt(message, self.publisher.last_error or "broker unreachable")
                failed += 1
        return published, failed

    def tick(self) -> None:
        self.sweep()
        self.publish_due()

    def close(self) -> None:
        self.publisher.close()


def run_relay(
    settings: Settings,
    celery_app: Celery,
    stop: threading.Event,
    session_factory: sessionmaker[Session] | None = None,
) -> None:
    """Run the relay loop until *stop* is set. A failing pass (database away) is logged and retried."""
    engine = None
    if session_factory is None:
        engine = make_engine(settings.resolved_database_url)
        session_factory = make_session_factory(engine)
    relay = Relay(settings, celery_app, session_factory)
    failures = 0
    log.info("outbox relay running every %.3f s", settings.relay_interval_seconds)
    try:
        while not stop.is_set():
            try:
                relay.tick()
                failures = 0
                delay = settings.relay_interval_seconds
            except Exception:
                failures += 1
                # the database is away (or locked for long): back off 0.1 s .. 5 s, keep going
                delay = min(5.0, 0.1 * 2 ** min(failures, 6))
                log.exception("relay pass failed (%d in a row); next in %.1f s", failures, delay)
            stop.wait(delay)
    finally:
        relay.close()
        if engine is not None:
            engine.dispose()
        log.info("outbox relay stopped")
